"""Hydra ``Sweeper`` plugin: each batch of ``n_jobs`` trials is asked from an Optuna study, launched
through Hydra's configured launcher (local, submitit SLURM, ...), and told its return value."""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    """Settings of ``hydra/sweeper=densitylab_optuna`` (the names of hydra-optuna-sweeper's)."""

    _target_: str = "hydra_plugins.densitylab_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    direction: str = "minimize"  # minimize | maximize
    n_trials: int = 20
    n_jobs: int = 1  # trials launched together (one launcher batch)
    study_name: str | None = None
    storage: str | None = None  # e.g. sqlite:///optuna.db to share or resume a study
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="densitylab_optuna", node=OptunaSweeperConf, provider="densitylab"
)


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval`` with an
    optional ``log`` tag), or the fixed value of a plain override.

    Raises:
        ValueError: for a sweep type Optuna cannot sample (e.g. a glob) or an empty range.
    """
    import optuna.distributions as D

    value = override.value()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if isinstance(value, ChoiceSweep):
        return D.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{override.input_line}: empty range")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return D.IntDistribution(int(values[0]), int(values[-1]), step=int(step))
        return D.FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if isinstance(value, IntervalSweep):
        log_ = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return D.IntDistribution(value.start, value.end, log=log_)
        return D.FloatDistribution(float(value.start), float(value.end), log=log_)
    raise ValueError(f"{override.input_line}: expected choice(...), range(...) or interval(...) for the Optuna sweeper")


class OptunaSweeper(Sweeper):
    """Minimize (or maximize) the task function's return value (``train.py`` returns the metric named
    by ``optimized_metric``, default ``val/loss``) over ``params`` and the command line's sweep
    overrides. Failed or non-finite trials are told as FAIL and never stop the study. Writes
    ``optimization_results.yaml`` (best value and parameters) into the sweep folder."""

    def __init__(
        self,
        direction: str,
        n_trials: int,
        n_jobs: int,
        study_name: str | None,
        storage: str | None,
        sampler: Any,
        params: dict[str, str] | None,
    ) -> None:
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction={direction!r}: expected 'minimize' or 'maximize'")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: expected positive integers")
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.study_name, self.storage, self.sampler_cfg = study_name, storage, sampler
        self.params = dict(params or {})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: list[str]) -> tuple:
        parser = OverridesParser.create()
        space: dict[str, Any] = {}
        fixed: list[str] = []
        for o in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]) + parser.parse_overrides(
            arguments
        ):
            d = distribution(o)
            if isinstance(d, str):
                space.pop(o.get_key_element(), None)
                fixed.append(o.input_line)
            else:
                fixed = [f for f in fixed if not f.startswith(o.get_key_element() + "=")]
                space[o.get_key_element()] = d
        return space, fixed

    def sweep(self, arguments: list[str]) -> list:
        import optuna
        from hydra.utils import instantiate

        space, fixed = self._search_space(arguments)
        if not space:
            raise ValueError(
                "the Optuna sweeper found nothing to search: set hydra.sweeper.params or pass sweep overrides"
            )
        # Hydra instantiates plugin arguments recursively: the sampler usually arrives as an object
        if self.sampler_cfg is None or isinstance(self.sampler_cfg, optuna.samplers.BaseSampler):
            sampler = self.sampler_cfg
        else:
            sampler = instantiate(self.sampler_cfg)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=sampler,
            direction=self.direction,
            load_if_exists=True,
        )
        log.info(
            "Optuna study %s, %s over %s; %d trials, %d at a time",
            study.study_name,
            self.direction,
            {k: str(v) for k, v in space.items()},
            self.n_trials,
            self.n_jobs,
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        all_returns = []
        done = 0
        while done < self.n_trials:
            trials = [study.ask(fixed_distributions=space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [tuple(fixed) + tuple(f"{k}={_format(v)}" for k, v in t.params.items()) for t in trials]
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                try:
                    value = float(ret.return_value)
                except Exception as e:  # the job raised (or returned None): a failed trial, the study goes on
                    log.warning(
                        "trial %d failed: %s", trial.number, str(e).splitlines()[0] if str(e) else type(e).__name__
                    )
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                if math.isfinite(value):
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            done += len(trials)
            all_returns.append(returns)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results = {
            "name": "optuna",
            "direction": self.direction,
            "n_trials": len(study.trials),
            "completed": len(complete),
        }
        if complete:
            results.update(best_value=study.best_value, best_params=study.best_params)
            log.info("best %s: %s with %s", self.direction, study.best_value, study.best_params)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        return all_returns


def _format(v: Any) -> str:
    """A sampled value as a Hydra override value (floats in repr form, strings as given)."""
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    return str(v)
