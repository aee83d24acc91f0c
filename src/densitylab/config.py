"""Config helpers: the OmegaConf resolvers, Hydra's multi-line composition errors as one clear line, and composing
``conf/`` in-process (:func:`compose_run_config`, for the tests and ``bench/``)."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the repository's conf/ (a source checkout)


def register_resolvers() -> None:
    """Register densitylab's OmegaConf resolvers (idempotent): ``${width_at_budget:...}`` (see
    :func:`width_at_budget`), ``${run_folder_group:...}`` (:func:`run_folder_group`), ``${run_folder_parent:...}``
    (:func:`run_folder_parent`), integer ``${mul:A,B}`` and ``${add:A,B}`` (the study's step counts and sequence
    length follow the model and ``study.steps``) and ``${cwd:}``, the
    working directory at resolution time. ``conf/config.yaml`` roots ``paths`` there instead of at
    ``${hydra:runtime.cwd}``, which Hydra has not set yet when a multirun resolves ``hydra.sweep.dir``."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
    if not OmegaConf.has_resolver("width_at_budget"):
        OmegaConf.register_new_resolver("width_at_budget", width_at_budget)
    if not OmegaConf.has_resolver("run_folder_group"):
        OmegaConf.register_new_resolver("run_folder_group", run_folder_group)
    if not OmegaConf.has_resolver("run_folder_parent"):
        OmegaConf.register_new_resolver("run_folder_parent", run_folder_parent)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b))  # ${mul:${study.steps},2}
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda a, b: int(a) + int(b))  # ${add:${model.net.block_size},1}


def run_folder_group(output_dir: str | None, log_dir: str) -> str | None:
    """``${run_folder_group:RUN_DIR,LOG_DIR}``: the W&B group of a run folder, its path below ``LOG_DIR``
    (``smoke/runs/2026-12-01_10-00-00-000000``), or its absolute path when it lies elsewhere. Every attempt of
    one run folder (a resume in the same folder) carries the same group. None outside a run (``--cfg job``)."""
    if output_dir is None:
        return None
    out, root = Path(os.path.abspath(output_dir)), Path(os.path.abspath(log_dir))
    try:
        return out.relative_to(root).as_posix()
    except ValueError:
        return out.as_posix()


def run_folder_parent(output_dir: str | None, log_dir: str) -> str | None:
    """``${run_folder_parent:RUN_DIR,LOG_DIR}``: :func:`run_folder_group` of the run folder's parent, i.e. of a
    multirun job its multirun folder (``familiarity_study/multiruns/2026-12-01_10-00-00-000000``): the W&B group of
    a study, so every arm of one ``-m`` launch is one group."""
    if output_dir is None:  # composed outside a run (``--cfg job``): no run folder yet
        return None
    return run_folder_group(str(Path(os.path.abspath(output_dir)).parent), log_dir)


def width_at_budget(budget: int, n_layer: int, n_head: int) -> int:
    """``${width_at_budget:BUDGET,N_LAYER,N_HEAD}``: the model width d (a multiple of n_head) whose
    transformer-block weight count 12·n_layer·d² (attention 4d², MLP 8d² at mlp_ratio 4; embeddings,
    biases and LayerNorms not counted) is closest to ``budget`` parameters, for depth-against-width
    sweeps at a fixed budget.

    Raises:
        ValueError: for a non-positive argument.
    """
    budget, n_layer, n_head = int(budget), int(n_layer), int(n_head)
    if budget <= 0 or n_layer <= 0 or n_head <= 0:
        raise ValueError(
            f"width_at_budget({budget}, {n_layer}, {n_head}): expected positive budget, n_layer and n_head"
        )
    return max(n_head, n_head * round((budget / (12 * n_layer)) ** 0.5 / n_head))


register_resolvers()


def _one_line(exc: BaseException) -> str:
    parts: list[str] = []
    e: BaseException | None = exc
    while e is not None:
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        text = re.sub(r"\s*full_key: .*$", "", text)
        if text and text not in parts:
            parts.append(text)
        e = e.__cause__
    msg = "; ".join(parts) or type(exc).__name__
    msg = re.sub(r"\s*Config search path:.*$", "", msg)
    msg = re.sub(r"\s*Set the environment variable HYDRA_FULL_ERROR.*$", "", msg)
    msg = msg.replace(" Available options in", "; expected one of the options in")
    return msg


def check_overrides(config_dir: str | Path, config_name: str, overrides: list[str]) -> str | None:
    """Compose ``config_name`` with ``overrides`` once, as ``@hydra.main`` will, and return a
    one-line error message if composition fails (unknown key, unknown group option, bad syntax),
    or None when it succeeds.

    Command lines with Hydra flags (``-m``, ``--cfg``, ``--help`` ...) or sweep syntax
    (``a=1,2``, ``glob(...)``, ``range(...)``) are not checked here: Hydra reports those itself.
    """
    if any(a.startswith("-") for a in overrides):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        return _one_line(e)
    if any(o.is_sweep_override() for o in parsed):
        return None
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except Exception as e:
        return _one_line(e)
    finally:
        GlobalHydra.instance().clear()
    return None


_COMPOSED: dict[tuple[str, tuple[str, ...]], object] = {}


def _composed(config_dir: Path, overrides: tuple[str, ...]):
    """``config.yaml`` of ``config_dir`` composed with ``overrides`` and the Hydra config, once per process (callers
    get a deep copy; interpolations such as ``${cwd:}`` resolve later, where the copy is read)."""
    key = (str(config_dir), overrides)
    if key not in _COMPOSED:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            _COMPOSED[key] = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return _COMPOSED[key]


def compose_run_config(
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path,
    cache_dir: str | Path,
    return_hydra_config: bool = True,
    config_dir: str | Path | None = None,
):
    """Compose ``conf/config.yaml`` in-process with ``overrides`` as ``train.py`` would (without running anything), as
    lightning-hydra-template's tests do: ``paths.output_dir`` and ``paths.cache_dir`` point at the given folders and
    ``HydraConfig`` is set so that ``${hydra:...}`` interpolations resolve (``hydra.runtime.output_dir``, job number
    0). The composition itself is cached per process. Call :func:`clear_hydra_config` afterwards.

    Args:
        overrides: Hydra overrides, e.g. ``["experiment=smoke", "trainer.max_steps=20"]``.
        output_dir: the run folder; cache_dir: the data cache.
        return_hydra_config: False drops the ``hydra`` node from the returned config (HydraConfig is set either way).
        config_dir: the config folder (default: the repository's ``conf/``).

    Returns:
        The composed ``DictConfig`` (a fresh copy).
    Raises:
        hydra.errors.HydraException / omegaconf errors: for an override that does not compose.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = copy.deepcopy(_composed(Path(config_dir or CONF_DIR).resolve(), tuple(overrides)))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    if not return_hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def clear_hydra_config() -> None:
    """Undo :func:`compose_run_config`'s global state (``HydraConfig`` and Hydra's global instance)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()
