"""Lightning adapter for the knowledge probe: what the model knows about each panel person, and where it
makes things up (:mod:`densitylab.probes.knowledge`, :mod:`densitylab.probes.hallucination`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

from densitylab.callbacks.base import ProbeCallback, ProbeResult, with_tokens_seen
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.errors import ConfigError
from densitylab.io import write_parquet_atomic
from densitylab.probes import hallucination as H
from densitylab.probes import knowledge as K
from densitylab.probes.panel import PanelSpec, draw_panel
from densitylab.probes.schedule import periodic_interval

log = logging.getLogger(__name__)


def _bin_labels(edges: Sequence[int]) -> list[str]:
    out = []
    for k, lo in enumerate(edges):
        hi = edges[k + 1] - 1 if k + 1 < len(edges) else None
        out.append(f"{lo}+" if hi is None else (f"{lo}" if hi == lo else f"{lo}-{hi}"))
    return out


class KnowledgeCallback(ProbeCallback):
    """Closed-set fact recall of the person panel during training, and the sources of its wrong answers.

    **Synthetic data** (a generator's ``ground_truth/people.parquet``): every (person, attribute) of
    :data:`~densitylab.probes.knowledge.KNOWLEDGE_ATTRIBUTES` is asked with a leak-free prompt
    (:func:`~densitylab.probes.knowledge.knowledge_prompts`) and scored over all values of the attribute
    from the cached prompt. The people are the density probe's person panel (the DensityCallback's, or the
    same draw when density is off): its fixed 64-person **core** at step 0 and the log-spaced steps from
    ``min_step`` (16, 64, 256, ... with ``log_spaced=4``) and every ``every_n_steps``, the **whole panel**
    once at the last step. **Facts files** (``facts=FILE.jsonl``, :mod:`densitylab.probes.facts`): the
    file's items at the same steps, on any corpus. Without either the probe logs one line and stays off.

    Each call writes the items (``probes/knowledge.parquet``, :data:`~densitylab.probes.knowledge.RECORD_COLUMNS`:
    answer, confidence, margin, the subject's exposure and bin, ``known``, the wrong answer's ``source`` and
    its chance of being a leak), the accuracy curve (``probes/knowledge_curve.parquet``: accuracy per
    ``distinct_docs`` bin with person-clustered CIs, chance and popularity prior) and the hallucination
    statistics (``probes/hallucination.parquet``: confident errors, leak rate against its zero-exposure null,
    the AUROCs of confidence and exposure for telling wrong answers). Once at the end, outside every timed
    call: the logistic GLM slope (``knowledge/slope``), person-bootstrap CIs of the AUROCs and their paired
    difference, and knowing against density (``probes/knowing_density.parquet``, with a DensityCallback).

    Scalars per call (the core, or the facts file): ``knowledge/acc`` and ``knowledge/acc/bin{label}``
    (``bin0``, ``bin1-3``, ..., ``bin64+``; bins with >= ``min_entities`` persons; each with ``_ci_low``,
    ``_ci_high``, ``_n_entities``), ``hallucination/confident_error_rate`` (zero-exposure people: the
    hallucination rate), ``hallucination/leak_rate``, ``hallucination/leak_chance_rate``,
    ``hallucination/auroc_confidence``, ``hallucination/auroc_exposure`` (``auroc_cooccurrence`` on facts
    files); at the last step the same for the whole panel under ``knowledge/panel/...`` and
    ``hallucination/panel/...``; at the end ``knowledge/slope`` and the AUROCs' ``_ci_low`` / ``_ci_high``.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence (0 = none: the log-spaced steps and the last step only).
        log_spaced: log base of the early steps (4 = 1, 4, 16, 64, 256, ...; true = 2; false = none).
        thin_after: the periodic interval doubles each time the step doubles past it (None or 0: never).
        min_step: log-spaced steps below it are skipped (recall is at chance before ~16 steps).
        ledger: the LedgerCallback whose exposure and co-mention counts are read.
        panel: None = the DensityCallback's panel, else :class:`~densitylab.probes.panel.PanelSpec` fields
            (used when no density probe runs).
        attributes: the attributes asked.
        bin_edges: lower edges of the exposure bins (documents), starting 0, 1 (pre-registered in ``conf/``).
        exposure: ``distinct_docs`` (on data without document subjects: ``mentions``).
        min_entities: fewer persons in a bin: ``insufficient``, never an estimate.
        level: confidence level.
        tau: confidence above which a wrong answer is a confident error.
        known_threshold: ``known`` at or above it counts as known (knowing against density).
        n_boot: person-bootstrap replicates of the AUROC intervals (at the end).
        seed: the bootstrap's seed.
        facts: a facts file (JSON lines: ``prompt``, ``answer``, optional ``candidates``, ``entity``).
        prefix_eos: put ``<|endoftext|>`` before every prompt, so it starts a document as the training
            biographies do.

    Raises:
        ConfigError: at construction, for a bad setting or a bad facts file (one line naming the line and the
            field), before any training.
    """

    name = "knowledge"
    requires = {"ledger": LedgerCallback}

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 0,
        *,
        log_spaced: bool | int = 4,
        thin_after: int | None = 2000,
        min_step: int = 16,
        ledger: str | LedgerCallback | None = "ledger",
        panel: Mapping | PanelSpec | None = None,
        attributes: Sequence[str] = K.KNOWLEDGE_ATTRIBUTES,
        bin_edges: Sequence[int] = (0, 1, 4, 16, 64),
        exposure: str = "distinct_docs",
        min_entities: int = 10,
        level: float = 0.95,
        tau: float = 0.5,
        known_threshold: float = 0.5,
        n_boot: int = 1000,
        seed: int,
        facts: str | None = None,
        prefix_eos: bool = True,
    ) -> None:
        super().__init__(
            output_dir, every_n_steps, log_spaced=log_spaced, thin_after=thin_after, needs={"ledger": ledger}
        )
        where = "callbacks.knowledge"
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ConfigError(f"{where}.every_n_steps={every_n_steps!r}: expected an integer >= 0")
        if not isinstance(log_spaced, bool) and (not isinstance(log_spaced, int) or log_spaced < 2):
            raise ConfigError(f"{where}.log_spaced={log_spaced!r}: expected true, false or an integer >= 2")
        for key, v in (("min_step", min_step), ("n_boot", n_boot)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "min_step" else 10):
                raise ConfigError(f"{where}.{key}={v!r}: expected an integer >= {0 if key == 'min_step' else 10}")
        attributes = [attributes] if isinstance(attributes, str) else list(attributes or [])
        bad = [a for a in attributes if a not in K.KNOWLEDGE_ATTRIBUTES]
        if bad or not attributes:
            raise ConfigError(
                f"{where}.attributes={attributes!r}: expected a non-empty subset of {list(K.KNOWLEDGE_ATTRIBUTES)}"
            )
        e = list(bin_edges) if not isinstance(bin_edges, str) else None
        if (
            e is None
            or len(e) < 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in e)
            or e != sorted(set(e))
            or e[:2] != [0, 1]
        ):
            raise ConfigError(f"{where}.bin_edges={bin_edges!r}: expected increasing integers starting 0, 1")
        if exposure not in ("distinct_docs", "subject_docs", "mentions", "comentions"):
            raise ConfigError(
                f"{where}.exposure={exposure!r}: expected distinct_docs, subject_docs, mentions or comentions"
            )
        if isinstance(min_entities, bool) or not isinstance(min_entities, int) or min_entities < 2:
            raise ConfigError(f"{where}.min_entities={min_entities!r}: expected an integer >= 2")
        for key, v in (("level", level), ("tau", tau), ("known_threshold", known_threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{where}.{key}={v!r}: expected a number in (0, 1)")
        if panel is not None and not isinstance(panel, PanelSpec):
            try:
                panel = PanelSpec(**{"core_edges": tuple(e), **dict(panel)})
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{where}.panel={dict(panel)!r}: {str(err).splitlines()[0]}") from None
        self.min_step, self.panel_spec, self.attributes = min_step, panel, tuple(attributes)
        self.edges, self.labels, self.exposure = tuple(e), _bin_labels(e), exposure
        self.min_entities, self.level, self.tau, self.known_threshold = min_entities, level, tau, known_threshold
        self.n_boot, self.seed = n_boot, seed
        if not isinstance(prefix_eos, bool):
            raise ConfigError(f"{where}.prefix_eos={prefix_eos!r}: expected true or false")
        self.prefix_eos = prefix_eos
        self.prefix: list[int] = []
        self.facts_path = None if facts in (None, "") else Path(str(facts))
        self.facts = None
        if self.facts_path is not None:
            from densitylab.probes.facts import load_facts

            self.facts = load_facts(self.facts_path)  # ConfigError: one line, the line number and the field
        self.mode = "off"
        self.exposure_used = exposure
        self.strata: dict[int, str] = {}
        self.prompts: dict[str, list[K.Prompt]] = {}
        self.curve_rows: list[pd.DataFrame] = []
        self.halluc_rows: list[pd.DataFrame] = []
        self._pending: tuple[pd.DataFrame, pd.DataFrame] | None = None
        self._last_items: pd.DataFrame | None = None  # the last call's main-scope items, for the end analysis
        self._defer_figures = False
        self.headline: dict[str, float] = {}
        self.end_seconds = 0.0

    # ------------------------------------------------------------------ paths
    def _path(self, name: str) -> Path | None:
        return None if self.output_dir is None else self.output_dir / "probes" / f"{name}.parquet"

    # ------------------------------------------------------------------ schedule
    def is_due(self, step: int) -> bool:
        """:meth:`ProbeCallback.is_due`, skipping the log-spaced steps below ``min_step`` (step 0 stays)."""
        if not super().is_due(step):
            return False
        periodic = self.every_n_steps > 0 and step % periodic_interval(step, self.every_n_steps, self.thin_after) == 0
        return step == 0 or periodic or step >= self.min_step

    # ------------------------------------------------------------------ set-up
    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build the prompts once: the panel's core and whole panel (synthetic data) or the facts file's items;
        turn the probe off with one line when there is neither."""
        dm = trainer.datamodule
        self.tokenizer = dm.tokenizer
        eos = getattr(dm, "eos_id", None)  # None on data without documents (data=uniform)
        self.prefix = [int(eos)] if self.prefix_eos and eos is not None else []
        if self.facts is not None:
            self._prepare_facts(dm)
            return
        gt = getattr(dm, "ground_truth_dir", None)
        people_path = None if gt is None else Path(gt) / "people.parquet"
        people = pd.read_parquet(people_path) if people_path is not None and people_path.is_file() else None
        if people is None or not set(self.attributes) <= set(people.columns):
            self.enabled = False
            log.info(
                "knowledge: off (the data have no synthetic people table with attributes and "
                "callbacks.knowledge.facts is not set)"
            )
            return
        panel = None
        from densitylab.callbacks.density import DensityCallback, _plan_entities

        for cb in trainer.callbacks:
            if isinstance(cb, DensityCallback) and getattr(cb, "panel", None) is not None and self.panel_spec is None:
                panel = cb.panel
        if panel is None:
            from densitylab.probes.sets import exposure_plan

            spec = self.panel_spec or PanelSpec(core_edges=self.edges)
            panel = draw_panel(exposure_plan(dm.splits, _plan_entities(dm)), spec)
        self.setup_people(people, panel)

    def setup_people(self, people: pd.DataFrame, panel: pd.DataFrame) -> None:
        """Synthetic mode: the prompts of the panel's core and of the whole panel, the answered values of every
        person and the two popularity priors (across people; across planned training documents).

        Args:
            people: the generator's ``people`` table (``entity_id``, ``entity``, ``gender``, the attributes,
                ``planned_docs``).
            panel: the person panel (``entity_id``, ``core``; :func:`~densitylab.probes.panel.draw_panel`).
        """
        self.mode = "synthetic"
        self.exposure_used = self.exposure
        self.strata = dict(zip(panel["entity_id"].tolist(), panel["stratum"].tolist())) if "stratum" in panel else {}
        ids = panel["entity_id"].to_numpy(np.int64)
        core = ids[panel["core"].to_numpy(bool)]
        self.prompts = {
            "core": K.knowledge_prompts(people, core, self.attributes),
            "panel": K.knowledge_prompts(people, ids, self.attributes),
        }
        self.values = {a: K.answered_values(people, a) for a in self.attributes}
        self.prior_people = K.popularity_prior(people, self.attributes)
        weights = "planned_docs" if "planned_docs" in people else None
        self.prior_docs = K.popularity_prior(people, self.attributes, weights=weights)
        log.info(
            "knowledge: %d panel people (%d in the core) x %d attributes", len(ids), len(core), len(self.attributes)
        )

    def _prepare_facts(self, dm) -> None:
        from densitylab.probes.facts import facts_prompts, string_windows

        self.mode = "facts"
        self.exposure_used = "entity_windows"  # trained windows holding the entity (documents are not known here)
        prompts = facts_prompts(self.facts)
        for fact, p in zip(self.facts, prompts):  # prompt + the longest candidate must fit the model's context
            n = len(self.prefix) + len(dm.tokenizer.encode(p.text, add_special_tokens=False).ids)
            n += max(len(dm.tokenizer.encode(c, add_special_tokens=False).ids) for c in p.candidates) - 1
            if n > dm.block_size:  # the inputs: the prompt and every candidate token but the last
                raise ConfigError(
                    f"callbacks.knowledge.facts={self.facts_path} line {fact.line}: field 'prompt' with its longest "
                    f"candidate needs {n} input tokens: expected at most data.block_size={dm.block_size}"
                )
        self.prompts = {"facts": prompts}
        strings = sorted({p.entity for p in prompts if p.entity} | {c.strip() for p in prompts for c in p.candidates})
        self.windows = string_windows(dm.splits["train"], dm.tokenizer, strings)
        answers = pd.Series([p.answer for p in prompts])
        top = answers.value_counts()
        self.prior_people = {"fact": str(top[top == top.max()].index.min())}
        self.prior_docs = self.prior_people
        log.info("knowledge: %d facts from %s", len(prompts), self.facts_path)

    # ------------------------------------------------------------------ measurement
    def before_measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Sum the ledger over processes (a collective: every process, same step)."""
        self.dependency("ledger").ledger.sync()

    def _annotate(self, items: pd.DataFrame, step: int, scope: str, ledger) -> pd.DataFrame:
        """Add exposure, bin, ``known``, the source of each answer and its leak chance, confident errors."""
        items = items.copy()
        items.insert(0, "scope", scope)
        items.insert(0, "step", step)
        e = items["entity_id"].to_numpy(np.int64)
        cooc = np.full(len(items), math.nan)
        if self.mode == "facts":
            from densitylab.probes.facts import cooccurrence_counts

            seq = ledger.sequence_counts.cpu().numpy()
            ent = [self.windows.get(x) if x else None for x in items["entity"]]
            exposure = np.array([math.nan if w is None else float((seq[w] > 0).sum()) for w in ent], dtype=np.float64)
            ans = [self.windows.get(p, np.zeros(0, np.int64)) for p in items["predicted"]]
            cooc = np.asarray(cooccurrence_counts(ent, ans, seq), dtype=np.float64)
            partners: dict = {}
        else:
            name = self.exposure
            counts = getattr(ledger, f"entity_{name}")().cpu().numpy()
            exposure = counts[e].astype(np.float64)
            partners = H.partner_values(
                ledger.pair_a.cpu().numpy(),
                ledger.pair_b.cpu().numpy(),
                ledger.cooccurrence().cpu().numpy(),
                self.values,
                np.unique(e),
            )
        b = np.searchsorted(np.asarray(self.edges), np.nan_to_num(exposure, nan=-1), side="right") - 1
        items["exposure"] = exposure
        items["bin"] = [self.labels[k] if k >= 0 else "" for k in b]
        items["bin_index"] = np.where(np.isfinite(exposure), b, -1).astype(np.int64)
        items["known"] = K.person_known(items)
        items["source"] = H.classify_sources(items, partners, self.prior_docs)
        zero = exposure == 0
        null = H.null_answers(items, zero)
        items["leak_chance"] = H.leak_chance(items, partners, null, zero) if partners else math.nan
        items["confident_error"] = ~items["correct"].to_numpy(bool) & (items["confidence"].to_numpy() > self.tau)
        items["cooccurrence"] = cooc
        return items[K.RECORD_COLUMNS]

    def _summaries(self, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        step, scope = int(items["step"].iloc[0]), str(items["scope"].iloc[0])
        curve = K.accuracy_curve(
            items,
            self.labels,
            self.prior_people,
            exposure=self.exposure_used,
            min_entities=self.min_entities,
            level=self.level,
        )
        hall = H.hallucination_rows(items, self.labels, min_entities=self.min_entities, level=self.level)
        for df in (curve, hall):
            df.insert(0, "scope", scope)
            df.insert(0, "step", step)
        return curve, hall

    def _scalars(self, curve: pd.DataFrame, hall: pd.DataFrame, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        acc = curve[(curve["attribute"] == "all") & (curve["estimand"] == "accuracy")]
        for r in acc.itertuples():
            if r.status != "ok" or not math.isfinite(r.value):
                continue
            key = f"knowledge/{prefix}acc" + ("" if r.bin_index < 0 else f"/bin{r.bin}")
            out.update({key: r.value, f"{key}_ci_low": r.ci_low, f"{key}_ci_high": r.ci_high})
            out[f"{key}_n_entities"] = float(r.n_entities)
        pick = {
            ("confident_error_rate", self.labels[0]): "confident_error_rate",
            ("leak_rate", "all"): "leak_rate",
            ("leak_chance_rate", "all"): "leak_chance_rate",
            ("leak_excess", "all"): "leak_excess",
            ("shortest_answer_rate", "all"): "shortest_answer_rate",
            ("shortest_truth_rate", "all"): "shortest_truth_rate",
            ("shortest_chance_rate", "all"): "shortest_chance_rate",
            ("auroc_confidence", "all"): "auroc_confidence",
            ("auroc_exposure", "all"): "auroc_exposure",
            ("auroc_cooccurrence", "all"): "auroc_cooccurrence",
        }
        for r in hall.itertuples():
            key = pick.get((r.statistic, r.bin))
            if key is None or not math.isfinite(r.value) or r.status == "insufficient":
                continue
            out[f"hallucination/{prefix}{key}"] = r.value
            if r.method in ("cluster_mean", "cluster_wilson"):
                out[f"hallucination/{prefix}{key}_n_entities"] = float(r.n_entities)
                if key == "leak_excess":  # the paired test of leak against its chance rate
                    out.update(
                        {
                            f"hallucination/{prefix}{key}_ci_low": r.ci_low,
                            f"hallucination/{prefix}{key}_ci_high": r.ci_high,
                        }
                    )
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """Score the scheduled people's items (:func:`~densitylab.probes.knowledge.measure_knowledge`), annotate
        them and summarise them per scope (the core at every call; the whole panel at the last step too).

        Returns:
            The items (:data:`~densitylab.probes.knowledge.RECORD_COLUMNS`) and the scalars; the curve and
            hallucination rows wait in ``self._pending`` for :meth:`add_records`.
        """
        final = self.is_last_call(trainer, step)
        self._defer_figures = final  # the last step's images wait for the end analysis (one image per step)
        return self.measure_with(model, step, self.dependency("ledger").ledger, final)

    def measure_with(self, model, step: int, ledger, final: bool) -> ProbeResult:
        """:meth:`measure` given the ledger (an :class:`~densitylab.ledger.ExposureLedger` after its sync) and
        whether this is the last step (the whole panel then); what ``bench/`` times."""
        frames = []
        if self.mode == "facts":
            items = self._annotate(
                K.measure_knowledge(model, self.tokenizer, self.prompts["facts"], self.prefix), step, "facts", ledger
            )
            frames.append(items)
        else:
            prompts = self.prompts["panel" if final else "core"]
            raw = K.measure_knowledge(model, self.tokenizer, prompts, self.prefix)
            if final:
                frames.append(self._annotate(raw, step, "panel", ledger))
                core = {p.entity_id for p in self.prompts["core"]}
                raw = raw[raw["entity_id"].isin(core)].reset_index(drop=True)
            frames.insert(0, self._annotate(raw, step, "core", ledger))
        curves, halls, scalars = [], [], {}
        for items in frames:
            c, h = self._summaries(items)
            curves.append(c)
            halls.append(h)
            scope = str(items["scope"].iloc[0]) if len(items) else ""
            scalars.update(self._scalars(c, h, "panel/" if scope == "panel" else ""))
        self._pending = (pd.concat(curves, ignore_index=True), pd.concat(halls, ignore_index=True))
        self._last_items = frames[-1]
        self.headline = scalars
        return pd.concat(frames, ignore_index=True), scalars

    # ------------------------------------------------------------------ records
    def _write(self) -> None:
        for name, rows in (("knowledge_curve", self.curve_rows), ("hallucination", self.halluc_rows)):
            path = self._path(name)
            if path is not None and rows:
                write_parquet_atomic(pd.concat(rows, ignore_index=True), path)

    def add_records(self, records: pd.DataFrame) -> None:
        """Append this call's curve and hallucination rows and rewrite their tables (atomically), then the
        items (:meth:`ProbeCallback.add_records`)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.curve_rows.append(with_tokens_seen(pending[0], self.tokens_seen))
            self.halluc_rows.append(with_tokens_seen(pending[1], self.tokens_seen))
            self._write()
        super().add_records(records)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """As :meth:`ProbeCallback.on_fit_start`, and (rank 0) read the earlier curve and hallucination tables."""
        super().on_fit_start(trainer, pl_module)
        if self.enabled and trainer.is_global_zero:
            for name, attr in (("knowledge_curve", "curve_rows"), ("hallucination", "halluc_rows")):
                path = self._path(name)
                setattr(self, attr, [pd.read_parquet(path)] if path is not None and path.is_file() else [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the curve and hallucination rows with ``step <= trainer.global_step`` (resume), then
        :meth:`ProbeCallback.on_train_start`."""
        if self.enabled:
            step = trainer.global_step
            self.curve_rows = [r[r["step"] <= step] for r in self.curve_rows]
            self.halluc_rows = [r[r["step"] <= step] for r in self.halluc_rows]
        super().on_train_start(trainer, pl_module)

    # ------------------------------------------------------------------ the end
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final probe (:meth:`ProbeCallback.on_train_end`), then, once and outside every timed call (rank
        0): the GLM slope, the person-bootstrap AUROC intervals and knowing against density."""
        super().on_train_end(trainer, pl_module)
        items, self._last_items = self._last_items, None
        if not (self.enabled and trainer.is_global_zero) or items is None or not len(items):
            return
        t0 = time.perf_counter()
        step, scope = int(items["step"].iloc[0]), str(items["scope"].iloc[0])
        try:
            self._end_analysis(trainer, items, step, scope)
        except Exception as err:  # a secondary analysis never fails a finished run
            log.warning("knowledge end-of-run analysis skipped: %s", str(err).splitlines()[0])
        self.end_seconds = time.perf_counter() - t0
        if self._defer_figures:  # the last step's images, now with the bootstrap intervals (once per step)
            self._defer_figures = False
            self.log_figures(trainer, step, items)

    def _end_analysis(self, trainer: L.Trainer, items: pd.DataFrame, step: int, scope: str) -> None:
        slope = pd.DataFrame([K.knowledge_slope(items, exposure=self.exposure_used, level=self.level)])
        strata = None  # the panel's design strata: persons are resampled within them
        if self.mode == "synthetic" and self.strata:
            strata = np.array([self.strata.get(int(e), "") for e in items["entity_id"]], dtype=object)
        boot = H.bootstrap_rows(items, n_boot=self.n_boot, level=self.level, seed=self.seed, strata=strata)
        for df in (slope, boot):
            df.insert(0, "scope", scope)
            df.insert(0, "step", step)
        self.curve_rows.append(with_tokens_seen(slope[K.CURVE_COLUMNS], self.last_tokens_seen))  # the items' call
        self.halluc_rows.append(with_tokens_seen(boot[H.HALLUCINATION_COLUMNS], self.last_tokens_seen))
        self._write()
        scalars: dict[str, float] = {}
        s = slope.iloc[0]
        if s["status"] == "ok":
            scalars.update(
                {
                    "knowledge/slope": s["value"],
                    "knowledge/slope_ci_low": s["ci_low"],
                    "knowledge/slope_ci_high": s["ci_high"],
                    "knowledge/slope_n_entities": float(s["n_entities"]),
                }
            )
        prefix = "panel/" if scope == "panel" else ""
        for r in boot.itertuples():
            key = f"hallucination/{prefix}{r.statistic}"
            if math.isfinite(r.value) and key not in self.headline:  # the AUROCs themselves were logged at this step
                scalars[key] = r.value
            if math.isfinite(r.ci_low):
                scalars.update({f"{key}_ci_low": r.ci_low, f"{key}_ci_high": r.ci_high})
        self.headline.update(scalars)
        if scalars:
            self.log_scalars(trainer, step, scalars)
        if self.mode == "synthetic":
            self._knowing_density(trainer, items)

    def _knowing_density(self, trainer: L.Trainer, items: pd.DataFrame) -> None:
        from densitylab.callbacks.density import DensityCallback

        density = next((cb for cb in trainer.callbacks if isinstance(cb, DensityCallback)), None)
        positions = None if density is None else getattr(density, "_positions", None)
        path = self._path("knowing_density")
        if positions is None or not len(positions) or path is None:
            return
        persons = items.drop_duplicates("entity_id")[["entity_id", "known", "bin_index"]]
        table = K.knowing_density(
            positions,
            persons,
            metric=density.spec.metric,
            roles=tuple(density.spec.roles),
            labels=self.labels,
            threshold=self.known_threshold,
            min_entities=self.min_entities,
            level=self.level,
        )
        write_parquet_atomic(with_tokens_seen(table, self.last_tokens_seen), path)  # the last call's persons

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """``knowledge/vs_exposure`` (accuracy against exposure at the steps so far) and ``knowledge/auroc``
        (the AUROCs and confident errors over training) as W&B images
        (:mod:`densitylab.report.knowledge`)."""
        from densitylab.report.knowledge import plot_hallucination_auroc, plot_knowledge_vs_exposure

        if not self.curve_rows or self._defer_figures:
            return {}
        return {
            "knowledge/vs_exposure": plot_knowledge_vs_exposure(pd.concat(self.curve_rows, ignore_index=True), None),
            "knowledge/auroc": plot_hallucination_auroc(pd.concat(self.halluc_rows, ignore_index=True), None),
        }

    def final_metrics(self) -> dict[str, float]:
        """``summary.json``: the last call's scalars (the whole panel's at the last step), the end analysis'
        slope and AUROC intervals, ``knowledge/probe_calls`` and ``perf/knowledge_end_seconds``."""
        return {**self.headline, "knowledge/probe_calls": self.calls, "perf/knowledge_end_seconds": self.end_seconds}
