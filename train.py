"""densitylab entry point: compose conf/ with Hydra, build, fit. See README.md.

    python train.py                                  # default experiment (density_emergence)
    python train.py experiment=smoke                 # < 60 s end-to-end check
    python train.py data=text data.files=my.txt      # your own text
    python train.py -m seed=0,1,2                    # Hydra multirun
"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one run; return the final val/loss (for Hydra sweepers)."""
    from densitylab.errors import DensitylabError
    from densitylab.run import mark_failed, train

    try:
        return train(cfg).get("val/loss")
    except DensitylabError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        mark_failed(cfg.paths.output_dir, message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
