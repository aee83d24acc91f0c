"""densitylab entry point: compose conf/ with Hydra, build, fit. See README.md.

python train.py                                  # default experiment (density_emergence)
python train.py experiment=smoke                 # < 60 s end-to-end check
python train.py data=text data.source.files=my.txt   # your own text
python train.py -m seed=0,1,2                    # Hydra multirun
"""

import os
import sys

import hydra
from omegaconf import DictConfig

import densitylab.config  # noqa: F401  (registers the ${cwd:} resolver used by conf/config.yaml)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one run; return the summary value named by ``optimized_metric`` (default the final
    ``val/loss``) for Hydra sweepers (Optuna)."""
    from densitylab.errors import DensitylabError
    from densitylab.run import mark_failed, train

    try:
        return train(cfg).get(cfg.get("optimized_metric") or "val/loss")
    except DensitylabError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        mark_failed(cfg.paths.output_dir, message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        if _multirun():  # a failed job of a sweep: Hydra records it (Optuna: a FAILED trial) and the sweep goes on
            raise
        sys.exit(2)
    except BaseException as e:  # a bug or an interrupt: keep the traceback, but never look like a success
        mark_failed(cfg.paths.output_dir, f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    from densitylab.config import check_overrides

    problem, extra = check_overrides(CONFIG_DIR, "config", sys.argv[1:]), []
    if not problem:  # output folder and values, before Hydra writes the run folder (densitylab.preflight)
        from densitylab.preflight import check_launch

        problem, extra = check_launch(CONFIG_DIR, "config", sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv += extra  # a resume in its own folder: Hydra records it in .hydra/attempt-K, beside the run's own
    main()
