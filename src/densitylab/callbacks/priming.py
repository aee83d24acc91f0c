"""Lightning adapter for the priming probe: new facts put into planned batches, P_before / P_after around them, and
the threshold analysis at the end (:mod:`densitylab.probes.priming`, :mod:`densitylab.probes.threshold`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from densitylab.callbacks.base import ProbeCallback, ProbeResult
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.errors import ConfigError, DataError
from densitylab.io import write_parquet_atomic
from densitylab.probes import priming as P

log = logging.getLogger(__name__)

WHERE = "callbacks.priming"
#: The pre-registered endpoint's keys (``callbacks.priming.endpoint``).
ENDPOINT_KEYS = (
    "test", "score", "offset", "threshold", "sesoi_slope", "sesoi_rho", "predicted_sign", "min_orders", "min_per_side",
    "density_layer", "density_metric",
)  # fmt: skip
TESTS = ("slope_difference", "rho")
SCORES = ("S_prime_corrected", "S_prime", "S_mem_corrected", "S_mem")


def _int(v, key: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{WHERE}.{key}={v!r}: expected an integer >= {lo}")
    return int(v)


def _int_list(v, key: str, lo: int) -> list[int]:
    items = [v] if isinstance(v, int) and not isinstance(v, bool) else (list(v) if isinstance(v, Sequence) else None)
    if not items or isinstance(v, str) or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in items):
        raise ConfigError(f"{WHERE}.{key}={v!r}: expected a non-empty list of integers >= {lo}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{WHERE}.{key}={v!r}: expected distinct values")
    return items


def load_new_facts(path: str | os.PathLike) -> list[dict]:
    """Read a new-facts file: JSON lines ``{"attribute": ..., "keyword": ..., "k": ..., "cohort"?: ...,
    "person"?: ...}`` (blank lines skipped). ``k = 0`` lines are controls (never inserted); ``cohort`` (0-based,
    default: the line's order modulo the cohorts) and ``person`` (a zero-exposure person's full name; default: drawn)
    are optional. A keyword may be several tokens (its P is the product of the tokens' conditional probabilities).

    Returns:
        The lines as dicts (``line``: the 1-based line number), keywords stripped.
    Raises:
        ConfigError: one line naming ``callbacks.priming.facts=<path>``, the line and the field, for a missing or
            unreadable file, a line that is not a JSON object, an attribute outside
            :data:`~densitylab.probes.priming.PRIMING_ATTRIBUTES`, an empty keyword (it tokenizes to nothing), a
            ``k`` that is not an integer >= 0, a bad ``cohort`` or ``person``, or no line at all.
    """
    where = f"{WHERE}.facts={os.fspath(path)}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot be read ({type(e).__name__}): expected a JSON-lines file") from None
    out = []
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} line {n}: not valid JSON ({e.msg}): expected one object per line") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{where} line {n}: a JSON {type(obj).__name__}: expected an object")
        a = obj.get("attribute")
        if a not in P.PRIMING_ATTRIBUTES:
            raise ConfigError(
                f"{where} line {n}: attribute {a!r} is unknown: expected one of {list(P.PRIMING_ATTRIBUTES)}"
            )
        kw = obj.get("keyword")
        if not isinstance(kw, str) or not kw.strip():
            raise ConfigError(
                f"{where} line {n}: keyword {kw!r} tokenizes to nothing: expected a non-empty string (the value)"
            )
        k = obj.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"{where} line {n}: k={k!r}: expected an integer >= 0 (0 = a control, never inserted)")
        cohort = obj.get("cohort")
        if cohort is not None and (isinstance(cohort, bool) or not isinstance(cohort, int) or cohort < 0):
            raise ConfigError(f"{where} line {n}: cohort={cohort!r}: expected an integer >= 0")
        person = obj.get("person")
        if person is not None and (not isinstance(person, str) or not person.strip()):
            raise ConfigError(f"{where} line {n}: person={person!r}: expected a person's full name")
        out.append({"line": n, "attribute": a, "keyword": kw.strip(), "k": k, "cohort": cohort, "person": person})
    if not out:
        raise ConfigError(f"{where}: holds no fact: expected one JSON object per line")
    return out


def check_priming_settings(settings: Mapping, max_steps: int | None) -> dict:
    """Validate ``callbacks.priming``'s settings (no data needed): the schedule against ``trainer.max_steps``, the
    relations, the endpoint and a facts file's lines. Used by :class:`PrimingCallback` and by the launch
    pre-flight (:func:`densitylab.preflight.check_priming`), so a bad value is refused before anything is written.

    Returns:
        The normalised settings, with ``t0`` resolved (the default spread when ``t0`` is null). When ``t0`` is null
        and training is too short for the default schedule, ``t0`` is ``[]`` and ``off`` holds the reason (the probe
        logs it and stays off: ``trainer.max_steps=1`` checks of every experiment still run); an explicit ``t0``
        beyond ``max_steps`` is an error.
    Raises:
        ConfigError: one line naming the key, the bad value and what was expected.
    """
    s = dict(settings)
    out: dict = {}
    out["interval"] = _int(s.get("interval", 20), "interval", 1)
    out["offsets"] = _int_list(s.get("offsets", [0]), "offsets", 0)
    out["n_cohorts"] = _int(s.get("n_cohorts", 5), "n_cohorts", 1)
    if out["n_cohorts"] > 5:
        raise ConfigError(f"{WHERE}.n_cohorts={out['n_cohorts']}: expected at most 5 (one probe call per cohort)")
    out["n_thematic"] = _int(s.get("n_thematic", 12), "n_thematic", 10)
    attrs = s.get("attributes", list(P.PRIMING_ATTRIBUTES))
    attrs = [attrs] if isinstance(attrs, str) else list(attrs or [])
    bad = [a for a in attrs if a not in P.PRIMING_ATTRIBUTES]
    if bad or not attrs:
        raise ConfigError(f"{WHERE}.attributes={attrs!r}: attribute {bad[0] if bad else None!r} is unknown: expected "
                          f"a non-empty subset of {list(P.PRIMING_ATTRIBUTES)}")  # fmt: skip
    out["attributes"] = attrs
    facts = s.get("facts")
    out["facts"] = None if facts in (None, "") else str(facts)
    if out["facts"] is not None:
        lines = load_new_facts(out["facts"])
        out["k_values"] = sorted({f["k"] for f in lines if f["k"] > 0}) or [1]
        cohorts = [f["cohort"] for f in lines if f["cohort"] is not None]
        if cohorts and max(cohorts) >= out["n_cohorts"]:
            raise ConfigError(
                f"{WHERE}.facts={out['facts']}: cohort {max(cohorts)}: expected < n_cohorts={out['n_cohorts']}"
            )
    else:
        out["k_values"] = sorted(_int_list(s.get("k_values", [1, 2, 3, 5, 10]), "k_values", 1))
        out["n_facts"] = _int(s.get("n_facts", 200), "n_facts", 1)
        out["n_controls"] = _int(s.get("n_controls", 60), "n_controls", 0)
        if out["n_controls"] and out["n_controls"] < 2 * out["n_cohorts"]:
            raise ConfigError(f"{WHERE}.n_controls={out['n_controls']}: expected 0 or >= 2 per cohort "
                              f"({2 * out['n_cohorts']}: one for the drift correction, one for its check)")  # fmt: skip
    rng = s.get("log10_range", [-0.5, -6.0])
    if (
        not isinstance(rng, Sequence) or isinstance(rng, str) or len(rng) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v > 0 for v in rng) or rng[0] == rng[1]
    ):  # fmt: skip
        raise ConfigError(f"{WHERE}.log10_range={rng!r}: expected two distinct numbers <= 0 (log10 P_before)")
    out["log10_range"] = [float(v) for v in rng]
    frac = s.get("start_frac", 0.5)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        raise ConfigError(f"{WHERE}.start_frac={frac!r}: expected a number in [0, 1)")
    out["start_frac"] = float(frac)
    out["select_lead"] = _int(s.get("select_lead", 10), "select_lead", 0)
    topk = s.get("ignore_topk")
    if topk is not None:
        from densitylab.lit import check_ignore_topk

        try:
            topk = check_ignore_topk(topk)
        except ConfigError:
            raise ConfigError(f"{WHERE}.ignore_topk={topk!r}: expected a percentage in (0, 100), 0 or null") from None
    out["ignore_topk"] = topk
    ep = dict(s.get("endpoint") or {})
    unknown = sorted(set(ep) - set(ENDPOINT_KEYS))
    if unknown:
        raise ConfigError(f"{WHERE}.endpoint.{unknown[0]}: unknown key: expected {list(ENDPOINT_KEYS)}")
    ep.setdefault("test", "slope_difference")
    ep.setdefault("score", "S_prime")
    ep.setdefault("sesoi_slope", 0.1)
    ep.setdefault("min_orders", 3)
    ep.setdefault("min_per_side", 30)
    ep.setdefault("offset", out["offsets"][0])
    ep.setdefault("threshold", 1e-3)
    ep.setdefault("sesoi_rho", 0.1)
    ep.setdefault("predicted_sign", -1)
    ep.setdefault("density_layer", -1)
    ep.setdefault("density_metric", "active_frac_live")
    if ep["test"] not in TESTS:
        raise ConfigError(f"{WHERE}.endpoint.test={ep['test']!r}: expected one of {list(TESTS)}")
    if ep["test"] == "slope_difference" and ep.get("score") not in ("S_prime", "S_mem"):
        raise ConfigError(f"{WHERE}.endpoint.score={ep['score']!r}: expected S_prime or S_mem with test "
                          "slope_difference (raw scores: the controls are the correction)")  # fmt: skip
    for key in ("min_orders", "min_per_side"):
        if isinstance(ep[key], bool) or not isinstance(ep[key], (int, float)) or ep[key] < 0:
            raise ConfigError(f"{WHERE}.endpoint.{key}={ep[key]!r}: expected a number >= 0")
    if isinstance(ep["sesoi_slope"], bool) or not isinstance(ep["sesoi_slope"], (int, float)) or ep["sesoi_slope"] <= 0:
        raise ConfigError(f"{WHERE}.endpoint.sesoi_slope={ep['sesoi_slope']!r}: expected a number > 0")
    if ep["score"] not in SCORES:
        raise ConfigError(f"{WHERE}.endpoint.score={ep['score']!r}: expected one of {list(SCORES)}")
    if ep["offset"] not in out["offsets"]:
        raise ConfigError(f"{WHERE}.endpoint.offset={ep['offset']!r}: expected one of offsets={out['offsets']}")
    for key in ("threshold", "sesoi_rho"):
        v = ep[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ConfigError(f"{WHERE}.endpoint.{key}={v!r}: expected a number in (0, 1)")
    if ep["predicted_sign"] not in (-1, 1):
        raise ConfigError(f"{WHERE}.endpoint.predicted_sign={ep['predicted_sign']!r}: expected -1 or +1")
    if ep["density_metric"] not in ("active_frac", "active_frac_live"):
        raise ConfigError(f"{WHERE}.endpoint.density_metric={ep['density_metric']!r}: expected active_frac(_live)")
    if isinstance(ep["density_layer"], bool) or not isinstance(ep["density_layer"], int):
        raise ConfigError(f"{WHERE}.endpoint.density_layer={ep['density_layer']!r}: expected a layer index")
    out["endpoint"] = ep
    t0 = s.get("t0")
    if max_steps is None or isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"{WHERE}.max_steps={max_steps!r}: expected trainer.max_steps, an integer >= 1")
    out["off"] = None
    if t0 is None:
        try:
            t0 = P.cohort_starts(out["n_cohorts"], max_steps, out["k_values"], out["interval"], out["offsets"],
                                 out["start_frac"])  # fmt: skip
        except ConfigError as e:  # the default schedule does not fit (a 1-step check of every experiment): off
            out["off"], t0 = str(e), []
    else:
        t0 = [t0] if isinstance(t0, int) and not isinstance(t0, bool) else list(t0)
        if len(t0) != out["n_cohorts"]:
            raise ConfigError(f"{WHERE}.t0={t0!r}: expected {out['n_cohorts']} steps (n_cohorts), or null")
    P.check_schedule(t0, max_steps, out["k_values"], out["interval"], out["offsets"])
    for c, t in enumerate(t0):
        if t - 1 - out["select_lead"] < 1:
            raise ConfigError(f"{WHERE}.t0[{c}]={t}: the keywords are chosen at t0 - 1 - select_lead = "
                              f"{t - 1 - out['select_lead']}: expected t0 >= {out['select_lead'] + 2}")  # fmt: skip
    if out.get("n_controls", 1) == 0 and (ep["test"] == "slope_difference" or ep["score"].endswith("_corrected")):
        raise ConfigError(f"{WHERE}.n_controls=0: the endpoint ({ep['test']}, {ep['score']}) needs controls: "
                          f"expected >= {2 * out['n_cohorts']}")  # fmt: skip
    out["t0"] = [int(t) for t in t0]
    return out


class PrimingCallback(ProbeCallback):
    """New facts put into planned training batches, and how each spreads: Sun et al.'s S_mem and S_prime during
    pretraining (Sun et al. 2025, arXiv:2504.09522; :mod:`densitylab.probes.priming`).

    **Plan** (at fit start, deterministic from the corpus and ``seed``): ``n_facts`` facts and ``n_controls``
    controls (``k = 0``, never inserted), each about its own zero-exposure person of the synthetic corpus who is in
    no probe panel (density, knowledge), in one of ``attributes``; ``n_cohorts`` cohorts (one ``t0`` each; default
    evenly spread over the second half of training), within a cohort evenly over ``k_values``. A fact's copies are
    trained at steps ``t0, t0 + K, ..., t0 + (k-1)K`` (``interval`` = K). ``ground_truth/new_facts.parquet`` in the
    run folder holds the plan (text, keyword, attribute, person, cohort, k, planned steps, ledger window); the
    keyword columns are filled when a cohort's keywords are chosen.

    **Insertion**: the facts of one (cohort, k) share their copy steps; they are packed (first fit, each an
    ``<|endoftext|>``-led document) into insertion windows of ``block_size`` inputs, padding ignored by the loss.
    At a planned step the callback writes each due window over one slot of the batch (the last rows; the window
    displaced is simply not trained at that step) before the forward pass, on global rank 0 only, in the first
    micro-batch of the step. The windows have ledger sample ids after the training split's
    (:meth:`ledger_windows`), so the exposure ledger counts every copy like any other exposure: the person's
    mentions, subject documents, first and last step. ``probes/priming_insertions.parquet`` logs every slot written.

    **Keywords**: ``select_lead`` steps before P_before (the model after ``t0 - 1 - select_lead`` steps, so that
    P_before is a later measurement than the one the keyword was chosen by) each of the cohort's facts and controls
    gets a one-token keyword that no prompt of the run contains, chosen so that its probability in the fact's own
    prompt is near a target drawn stratified over ``log10_range`` (:func:`~densitylab.probes.priming.select_keywords`);
    all keywords of a run differ. With ``facts=FILE.jsonl`` (:func:`load_new_facts`) the file's keywords are used
    (any number of tokens).

    **Measurement** (``probes/priming_log.parquet``, one row per fact and prompt per call): log P(keyword) on the
    fact's own prompt and on ``n_thematic`` thematic prompts (the relation's templates about other, familiar
    people), at ``t0 - 1`` (P_before; with the density at the person's last name token on the own prompt) and at
    ``last_copy + offset`` for every inserted ``k`` and ``offset`` (P_after), for the whole cohort (controls too).

    **At the end** (rank 0): ``probes/priming.parquet`` (every fact, offset and prompt: P_before, P_after, S_mem,
    S_prime, raw and drift-corrected), ``probes/priming_facts.parquet`` (one row per fact and offset),
    ``probes/priming_threshold.parquet`` (the statistics below), ``plots/priming_vs_pbefore.png`` and scalars
    ``priming/*`` (also in ``summary.json``): the hinge fit of the endpoint's log score on log10 P_before (knee,
    slopes, bootstrap CIs over facts), Spearman ρ with its CI and the pre-registered verdict, the smallest ``k``
    whose ρ CI excludes 0, the control check (half-2 controls corrected by half 1: S_mem and S_prime ratios with
    CIs, expected to cover 1), and the density at insertion as a predictor of S_mem and S_prime.

    Args:
        output_dir: run folder.
        ledger: the LedgerCallback (config key) that counts the copies.
        max_steps: ``trainer.max_steps`` (the schedule is checked against it).
        n_facts, n_controls, k_values, n_cohorts, t0, start_frac, interval, offsets, attributes, n_thematic,
            log10_range, facts: the plan (see ``conf/callbacks/priming.yaml``).
        select_lead: steps between the keyword choice and P_before (0: both on the model after ``t0 - 1`` steps).
        ignore_topk: Sun et al.'s ignore-k at the steps that carry a copy only (:class:`~densitylab.lit.LitGPT`'s
            ``ignore_topk`` is set to it for those optimizer steps, on every process); None = off.
        endpoint: the pre-registered analysis (test, score, offset, threshold, sesoi_slope, sesoi_rho,
            predicted_sign, min_orders, min_per_side, density_layer, density_metric).
        n_boot, level, seed: bootstrap replicates, confidence level, the plan's and the bootstrap's seed.
        prefix_eos: every prompt starts with ``<|endoftext|>``, as every inserted document and biography does.

    Raises:
        ConfigError: at construction, for any bad setting (:func:`check_priming_settings`); at fit start, for a
            facts-file keyword that tokenizes to nothing or a person who is not a zero-exposure person.
        DataError: at fit start, when the corpus has too few zero-exposure people outside the panels.
    """

    name = "priming"
    requires = {"ledger": LedgerCallback}

    def __init__(
        self,
        output_dir: str | None = None,
        *,
        ledger: str | LedgerCallback | None = "ledger",
        max_steps: int,
        n_facts: int = 200,
        n_controls: int = 60,
        k_values: Sequence[int] = (1, 2, 3, 5, 10),
        n_cohorts: int = 5,
        t0: Sequence[int] | None = None,
        start_frac: float = 0.5,
        interval: int = 20,
        offsets: Sequence[int] = (0, 20, 100),
        attributes: Sequence[str] = P.PRIMING_ATTRIBUTES,
        n_thematic: int = 12,
        log10_range: Sequence[float] = (-0.5, -6.0),
        facts: str | None = None,
        select_lead: int = 10,
        ignore_topk: float | None = None,
        endpoint: Mapping | None = None,
        n_boot: int = 1000,
        level: float = 0.95,
        seed: int = 0,
        prefix_eos: bool = True,
    ) -> None:
        super().__init__(output_dir, 0, log_spaced=False, probe_at_start=False, needs={"ledger": ledger})
        settings = dict(
            n_facts=n_facts, n_controls=n_controls, k_values=list(k_values), n_cohorts=n_cohorts, t0=t0,
            start_frac=start_frac, interval=interval, offsets=list(offsets), attributes=attributes,
            n_thematic=n_thematic, log10_range=list(log10_range), facts=facts, endpoint=endpoint,
            select_lead=select_lead, ignore_topk=ignore_topk,
        )  # fmt: skip
        self.s = check_priming_settings(settings, max_steps)
        self.max_steps = max_steps
        self.t0, self.interval, self.offsets = self.s["t0"], self.s["interval"], self.s["offsets"]
        self.endpoint = self.s["endpoint"]
        self.select_lead, self.ignore_topk = self.s["select_lead"], self.s["ignore_topk"]
        self._topk_saved: tuple[int, float | None] | None = None  # (step, the module's own ignore_topk) while on
        _int(n_boot, "n_boot", 10)
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ConfigError(f"{WHERE}.level={level!r}: expected a number in (0, 1)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{WHERE}.seed={seed!r}: expected an integer")
        self.n_boot, self.level, self.seed, self.prefix_eos = n_boot, float(level), seed, bool(prefix_eos)
        self.file_facts = load_new_facts(self.s["facts"]) if self.s["facts"] else None
        self.facts: pd.DataFrame | None = None  # the plan (one row per fact), keywords filled per cohort
        self.thematic: pd.DataFrame | None = None
        self.first_window = -1  # the ledger sample id of insertion window 0
        self.windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # window -> (input_ids, labels) (T,)
        self.insertions: list[tuple[int, int, int]] = []  # (step, window, row) of every slot written
        self._inserted_step = -1
        self._chosen: dict[int, list[int]] = {}  # fact_id -> keyword token ids (checkpoint state)
        self.headline: dict[str, float] = {}
        self._planned = False

    # ------------------------------------------------------------------ paths
    @property
    def table_path(self) -> Path | None:
        """``probes/priming_log.parquet``: the raw measurements of every call (``probes/priming.parquet`` is the
        scored table written at the end)."""
        return None if self.output_dir is None else self.output_dir / "probes" / "priming_log.parquet"

    def _out(self, *parts: str) -> Path | None:
        return None if self.output_dir is None else self.output_dir.joinpath(*parts)

    # ------------------------------------------------------------------ plan
    def _plan(self, trainer: L.Trainer) -> None:
        """Build the plan once (every process; deterministic): facts, thematic prompts, token ids, windows."""
        if self._planned:
            return
        self._planned = True
        if self.s["off"]:
            self.enabled = False
            log.warning("priming: off (%s; or give callbacks.priming.t0)", self.s["off"])
            return
        dm = trainer.datamodule
        gt = getattr(dm, "ground_truth_dir", None)
        path = None if gt is None else Path(gt) / "people.parquet"
        if path is None or not path.is_file():
            self.enabled = False
            log.info("priming: off (the data have no synthetic people table)")
            return
        people = pd.read_parquet(path)
        self.tok, self.block_size = dm.tokenizer, int(dm.block_size)
        self.eos = int(dm.eos_id)
        self.prefix = [self.eos] if self.prefix_eos else []
        excluded = self._panel_people(trainer, dm)
        zero = people[(people["planned_docs"] == 0) & ~people["entity_id"].isin(excluded)]
        pool = zero["entity_id"].to_numpy(np.int64)
        if self.file_facts is not None:
            facts = self._plan_file(people, pool)
        else:
            facts = P.plan_facts(
                pool, people, n_facts=self.s["n_facts"], k_values=self.s["k_values"], n_controls=self.s["n_controls"],
                t0=self.t0, interval=self.interval, attributes=self.s["attributes"], seed=self.seed,
            )  # fmt: skip
        # thematic prompts: other, familiar people (not a fact's person), the same for every relation
        rng = np.random.default_rng(self.seed + 1)
        familiar = people.loc[people["planned_docs"] > 0, "entity_id"].to_numpy(np.int64)
        others = np.sort(rng.choice(familiar, size=min(self.s["n_thematic"], len(familiar)), replace=False))
        self.thematic = P.thematic_prompts(people, others, sorted(set(facts["attribute"])))
        self.thematic["ids"] = [self.prefix + self._encode(t) for t in self.thematic["prompt"]]
        # own prompt ids, the name's last token, the sentence's suffix (".") ids
        own, name_last, suffix = [], [], []
        for _, f in facts.iterrows():
            enc = self.tok.encode(f["prompt"], add_special_tokens=False)
            own.append(self.prefix + list(enc.ids))
            name_last.append(P.name_last_position(enc.offsets, len(f["entity"]), shift=len(self.prefix)))
            _, sentence = P.relation_template(f["attribute"], int(f["template"]))
            suffix.append(self._encode(sentence.split("{value}", 1)[1]))
        facts["prompt_ids"], facts["name_last"], facts["suffix_ids"] = own, name_last, suffix
        if self.file_facts is not None:
            kw = []
            for _, f in facts.iterrows():
                ids = self._encode(" " + f["keyword"])
                if not ids:
                    raise ConfigError(
                        f"{WHERE}.facts={self.s['facts']} line {f['line']}: keyword {f['keyword']!r} tokenizes to "
                        "nothing: expected a value the tokenizer encodes"
                    )
                where = f"{WHERE}.facts={self.s['facts']} line {f['line']}"
                if P.prompt_offers(f["prompt"], f["keyword"]):
                    raise ConfigError(f"{where}: keyword {f['keyword']!r} is in the fact's own prompt "
                                      f"{f['prompt']!r}: expected a value the prompt does not offer")  # fmt: skip
                kw.append(ids)
            facts["keyword_ids"] = kw
            for c, g in facts.groupby("cohort"):
                dup = g["keyword"][g["keyword"].duplicated()]
                if len(dup):
                    line = int(g.loc[dup.index[0], "line"])
                    raise ConfigError(f"{WHERE}.facts={self.s['facts']} line {line}: keyword {dup.iloc[0]!r} twice "
                                      f"in cohort {int(c)}: expected one fact per keyword in a cohort")  # fmt: skip
                if self.endpoint["score"].endswith("_corrected") and not (g["half"] == P.CORRECTION).any():
                    raise ConfigError(f"{WHERE}.facts={self.s['facts']}: cohort {int(c)} has no k = 0 control for the "
                                      f"drift correction of endpoint.score={self.endpoint['score']}: expected at "
                                      "least one k = 0 line per cohort")  # fmt: skip
            if self.endpoint["test"] == "slope_difference" and int((facts["k"] == 0).sum()) < 5:
                raise ConfigError(
                    f"{WHERE}.facts={self.s['facts']}: {int((facts['k'] == 0).sum())} k = 0 controls: "
                    "expected at least 5 for endpoint.test=slope_difference (the controls are its null)"
                )
        else:
            facts["keyword_ids"] = [[] for _ in range(len(facts))]
            facts["keyword"] = None
        # windows: per (cohort, k) group, first fit; auto keywords are one token
        ins = facts["k"] > 0
        lengths = [
            1 + len(f["prompt_ids"]) - len(self.prefix) + max(1, len(f["keyword_ids"])) + len(f["suffix_ids"])
            for _, f in facts.iterrows()
        ]
        window = np.full(len(facts), -1, dtype=np.int64)
        groups = [f"{c}/{k}" for c, k in zip(facts["cohort"], facts["k"])]
        sel = np.flatnonzero(ins.to_numpy())
        try:
            window[sel] = P.pack_windows([lengths[i] for i in sel], [groups[i] for i in sel], self.block_size)
        except ValueError as e:
            raise ConfigError(f"{WHERE}: {e} (data.block_size={self.block_size})") from None
        facts["window"] = window
        self.facts = facts
        per_step: dict[int, set[int]] = {}
        for _, f in facts[ins].iterrows():
            for s in f["planned_steps"]:
                per_step.setdefault(int(s), set()).add(int(f["window"]))
        most = max((len(v) for v in per_step.values()), default=0)
        if most > dm.batch_size:
            raise ConfigError(f"{WHERE}: {most} insertion windows at one step: expected at most data.batch_size="
                              f"{dm.batch_size} (fewer facts per cohort, or more cohorts)")  # fmt: skip
        self.per_step = {s: sorted(v) for s, v in per_step.items()}
        probe = {int(t) - 1 for t in self.t0} | {int(t) - 1 - self.select_lead for t in self.t0}
        for _, f in facts[ins].iterrows():
            probe |= {int(f["last_copy"]) + o for o in self.offsets}
        self.probe_steps = probe
        log.info(
            "priming: %d facts and %d controls in %d cohorts (t0 %s), %d insertion windows, %d probe steps",
            int(ins.sum()), int((~ins).sum()), len(self.t0), self.t0, int(window.max()) + 1 if ins.any() else 0,
            len(probe),
        )  # fmt: skip

    def _encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def _panel_people(self, trainer: L.Trainer, dm) -> set[int]:
        """Everyone the density or knowledge probe's panel holds (their exposure must stay as planned)."""
        from densitylab.callbacks.density import DensityCallback, _plan_entities
        from densitylab.callbacks.knowledge import KnowledgeCallback
        from densitylab.probes.panel import PanelSpec, draw_panel
        from densitylab.probes.sets import exposure_plan

        plan = exposure_plan(dm.splits, _plan_entities(dm))
        if plan is None:
            return set()
        specs = []
        density = [cb for cb in trainer.callbacks if isinstance(cb, DensityCallback) and not cb.windows_only]
        specs += [cb.panel_spec for cb in density]
        for cb in trainer.callbacks:  # the knowledge probe asks the density probe's panel unless it has its own
            if isinstance(cb, KnowledgeCallback) and (cb.panel_spec is not None or not density):
                specs.append(cb.panel_spec or PanelSpec(core_edges=cb.edges))
        out: set[int] = set()
        for spec in specs:
            out |= set(draw_panel(plan, spec)["entity_id"].astype(int).tolist())
        return out

    def _plan_file(self, people: pd.DataFrame, pool: np.ndarray) -> pd.DataFrame:
        by_name = dict(zip(people["entity"].astype(str), people["entity_id"].astype(int)))
        free = [int(p) for p in np.random.default_rng(self.seed).permutation(np.sort(pool))]
        pool_set = set(int(p) for p in pool)
        named = set()
        for f in self.file_facts:
            if f["person"] is not None:
                pid = by_name.get(f["person"].strip())
                if pid is None or pid not in pool_set:
                    raise ConfigError(
                        f"{WHERE}.facts={self.s['facts']} line {f['line']}: person {f['person']!r} is not a "
                        "zero-exposure person outside the probe panels: expected one of ground_truth/people.parquet's "
                        "people with planned_docs 0, or no person (drawn)"
                    )
                if pid in named:
                    raise ConfigError(f"{WHERE}.facts={self.s['facts']} line {f['line']}: person {f['person']!r} "
                                      "has a fact already: expected one fact per person")  # fmt: skip
                named.add(pid)
        free = [p for p in free if p not in named]
        need = sum(f["person"] is None for f in self.file_facts)
        if need > len(free):
            raise DataError(f"{WHERE}.facts={self.s['facts']}: {need} people to draw, {len(free)} zero-exposure "
                            "people outside the panels: expected fewer facts")  # fmt: skip
        table = people.set_index("entity_id")
        rows, it, n_ctrl = [], iter(free), {}
        n_c = len(self.t0)
        for i, f in enumerate(self.file_facts):
            pid = by_name[f["person"].strip()] if f["person"] is not None else next(it)
            c = f["cohort"] if f["cohort"] is not None else i % n_c
            k = int(f["k"])
            half = P.INSERTED
            if k == 0:
                half = P.CORRECTION + n_ctrl.get(c, 0) % 2
                n_ctrl[c] = n_ctrl.get(c, 0) + 1
            r = table.loc[pid]
            rows.append({
                "fact_id": i, "entity_id": pid, "entity": str(r["entity"]), "gender": str(r.get("gender", "male")),
                "attribute": f["attribute"], "template": 0, "cohort": c, "t0": self.t0[c], "k": k, "half": half,
                "planned_steps": P.copy_steps(self.t0[c], k, self.interval),
                "last_copy": P.last_copy(self.t0[c], k, self.interval),
                "prompt": P.fact_prompt(f["attribute"], str(r["entity"]), r.get("gender"), 0),
                "keyword": f["keyword"], "line": f["line"],
            })  # fmt: skip
        return pd.DataFrame(rows)

    def ledger_windows(self, trainer: L.Trainer, first_window: int):
        """The insertion windows for the exposure ledger (called by the LedgerCallback at fit start): each fact
        document's person is mentioned once in its window and is the document's subject.

        Returns:
            An :class:`~densitylab.ledger.incidence.ExtraWindows` with local window ids, or None when off.
        """
        from densitylab.ledger.incidence import ExtraWindows

        self._plan(trainer)
        if not self.enabled or self.facts is None:
            return None
        self.first_window = int(first_window)
        f = self.facts[self.facts["k"] > 0]
        w = f["window"].to_numpy(np.int64)
        e = f["entity_id"].to_numpy(np.int64)
        return ExtraWindows(
            n_windows=int(w.max()) + 1 if len(w) else 0,
            mention_window=w, mention_entity=e, mention_subject=e, doc_window=w, doc_subject=e,
        )  # fmt: skip

    # ------------------------------------------------------------------ set-up
    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The plan (already built when the ledger asked for its windows), restored keywords, the ground truth."""
        self._plan(trainer)
        if not self.enabled:
            return
        if self.first_window < 0:
            raise ConfigError(f"{WHERE}.ledger: the ledger did not reserve the insertion windows (expected the "
                              "LedgerCallback to call ledger_windows at fit start)")  # fmt: skip
        if self.file_facts is not None:
            for c in range(len(self.t0)):
                self._build_windows(c)
        for fid, ids in self._chosen.items():  # a resumed run: the keywords chosen before
            self._set_keyword(int(fid), ids)
        for c in sorted({int(self.facts.loc[self.facts["fact_id"] == f, "cohort"].iloc[0]) for f in self._chosen}):
            self._build_windows(c)
        self._write_ground_truth(trainer)

    def _set_keyword(self, fid: int, ids: list[int]) -> None:
        i = self.facts.index[self.facts["fact_id"] == fid][0]
        self.facts.at[i, "keyword_ids"] = [int(t) for t in ids]
        self.facts.at[i, "keyword"] = self.tok.decode([int(t) for t in ids]).strip()

    def _build_windows(self, cohort: int) -> None:
        f = self.facts[(self.facts["cohort"] == cohort) & (self.facts["k"] > 0)]
        for w, g in f.groupby("window"):
            docs = [[self.eos, *r["prompt_ids"][len(self.prefix) :], *r["keyword_ids"], *r["suffix_ids"]]
                    for _, r in g.sort_values("fact_id").iterrows()]  # fmt: skip
            inputs, labels = P.window_tokens(docs, self.block_size, self.eos)
            self.windows[int(w)] = (torch.from_numpy(inputs), torch.from_numpy(labels))

    def _write_ground_truth(self, trainer: L.Trainer) -> None:
        path = self._out("ground_truth", "new_facts.parquet")
        if path is None or not trainer.is_global_zero:
            return
        f = self.facts.copy()
        f["text"] = [
            None if not r["keyword_ids"] else self.tok.decode([self.eos, *r["prompt_ids"][len(self.prefix):],
                                                              *r["keyword_ids"], *r["suffix_ids"]][1:])
            for _, r in f.iterrows()
        ]  # fmt: skip
        f["ledger_window"] = np.where(f["window"] >= 0, f["window"] + self.first_window, -1)
        cols = ["fact_id", "text", "keyword", "keyword_ids", "attribute", "entity_id", "entity", "cohort", "k", "half",
                "t0", "planned_steps", "last_copy", "window", "ledger_window", "prompt", "name_last"]  # fmt: skip
        write_parquet_atomic(f[cols], path)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """Probe counters, the keywords chosen so far and the slots written (resume continues the same plan)."""
        return {
            **super().state_dict(),
            "keywords": {str(k): list(v) for k, v in self._chosen.items()},
            "insertions": [list(x) for x in self.insertions],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (applied at fit start, before the plan is built)."""
        super().load_state_dict(state_dict)
        self._chosen = {int(k): [int(t) for t in v] for k, v in state_dict.get("keywords", {}).items()}
        self.insertions = [tuple(int(v) for v in x) for x in state_dict.get("insertions", [])]

    # ------------------------------------------------------------------ insertion
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        """Write the windows due at this batch's step over the batch's last rows (rank 0, first micro-batch)."""
        if not self.enabled:
            return
        step = trainer.global_step + 1  # the optimizer step this batch is trained by
        if self.ignore_topk is not None and step in self.per_step and self._topk_saved is None:
            self._topk_saved = (step, getattr(pl_module, "ignore_topk", None))  # every rank: the update is shared
            pl_module.ignore_topk = self.ignore_topk
        if not trainer.is_global_zero or step == self._inserted_step or step not in self.per_step:
            return
        self._inserted_step = step
        ids, labels, sid = batch["input_ids"], batch["labels"], batch["sample_id"]
        B, T = ids.shape
        if T != self.block_size:
            raise DataError(f"{WHERE}: a training batch of {T} positions: expected data.block_size={self.block_size}")
        for j, w in enumerate(self.per_step[step]):
            if w not in self.windows:
                raise RuntimeError(f"{WHERE}: window {w} is due at step {step} but its keywords were never chosen")
            row = B - 1 - j
            x, y = self.windows[w]
            ids[row] = x.to(ids.device)
            labels[row] = y.to(labels.device)
            sid[row] = self.first_window + w
            self.insertions.append((step, w, row))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        """Restore the module's own ``ignore_topk`` once the insertion step's optimizer step ran; then probe."""
        if self._topk_saved is not None and trainer.global_step >= self._topk_saved[0]:
            pl_module.ignore_topk = self._topk_saved[1]
            self._topk_saved = None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # ------------------------------------------------------------------ schedule
    def is_due(self, step: int) -> bool:
        """True at ``t0 - 1`` of each cohort and at ``last_copy + offset`` of each inserted fact."""
        return self.enabled and step != self.last_step and step in getattr(self, "probe_steps", ())

    def before_measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Sum the ledger over processes (a collective: every process, same step)."""
        self.dependency("ledger").ledger.sync()

    # ------------------------------------------------------------------ measurement
    def _cohorts_at(self, step: int) -> tuple[list[int], list[int], list[int]]:
        select = [c for c, t in enumerate(self.t0) if t - 1 - self.select_lead == step]
        before = [c for c, t in enumerate(self.t0) if t - 1 == step]
        f = self.facts[self.facts["k"] > 0]
        after = sorted(
            {int(r["cohort"]) for _, r in f.iterrows() if step - int(r["last_copy"]) in self.offsets} - set(before)
        )
        return select, before, after

    def _choose_keywords(self, model, cohort: int) -> None:
        f = self.facts[self.facts["cohort"] == cohort]
        logp = P.next_token_logprobs(model, list(f["prompt_ids"]))
        cands = getattr(self, "_candidates", None)
        if cands is None:
            cands = self._candidates = P.keyword_candidates(self.tok.decode, len(logp[0]))
        # never a token of any prompt of the run (the thematic ones, every fact's and control's own: a keyword that
        # is a piece of someone's name would be trained in that person's window) nor of a sentence's suffix
        banned = {int(t) for ids in self.thematic["ids"] for t in ids}
        banned |= {int(t) for ids in self.facts["prompt_ids"] for t in ids}
        banned |= {int(t) for ids in self.facts["suffix_ids"] for t in ids}
        exclude = [banned] * len(f)
        rng = np.random.default_rng([self.seed, 17, cohort])
        targets = np.zeros(len(f))
        for idx in f.groupby(["k", "half"]).indices.values():  # every group spans the range
            targets[idx] = P.keyword_targets(len(idx), self.s["log10_range"], rng)
        used = {t for ids in self._chosen.values() for t in ids}  # every keyword of the run distinct
        try:
            chosen = P.select_keywords(logp, targets, cands, exclude, used)
        except ValueError:
            free = len(set(cands.tolist()) - banned - used)
            raise DataError(
                f"{WHERE}: cohort {cohort} needs {len(f)} keywords, the tokenizer has {free} word tokens left that no "
                "prompt uses and no earlier fact took: expected fewer facts or controls, or a larger "
                "tokenizer.vocab_size"
            ) from None
        for fid, tok in zip(f["fact_id"], chosen):
            self._chosen[int(fid)] = [int(tok)]
            self._set_keyword(int(fid), [int(tok)])
        i = f.index
        self.facts.loc[i, "target_log10"] = targets

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """Keywords (a cohort's first call, auto mode), then log P(keyword) on the own and thematic prompts of every
        cohort due at ``step``; the density at the name on the own prompts at a cohort's P_before call."""
        select, before, after = self._cohorts_at(step)
        chosen = False
        for c in select + before:
            if self.file_facts is None and not all(int(x) in self._chosen for x in self.facts.loc[
                    self.facts["cohort"] == c, "fact_id"]):  # fmt: skip
                self._choose_keywords(model, c)
                self._build_windows(c)
                chosen = True
        if chosen and trainer.is_global_zero:
            self._write_ground_truth(trainer)
        frames = []
        for c in sorted(set(select + before + after)):
            frames.append(self._measure_cohort(model, c, step, density=c in before))
        records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"step": []})
        scalars = {}
        if after:
            own = records[(records["kind"] == "own")]
            scalars["priming/cohorts_measured"] = float(len(before) + len(after))
            scalars["priming/mean_logp_own"] = float(own["logp"].mean())
        scalars["priming/facts_keyworded"] = float(len(self._chosen) if self.file_facts is None else len(self.facts))
        return records, scalars

    def _measure_cohort(self, model, cohort: int, step: int, density: bool) -> pd.DataFrame:
        f = self.facts[self.facts["cohort"] == cohort]
        pairs, meta = [], []
        for _, r in f.iterrows():
            pairs.append((r["prompt_ids"], r["keyword_ids"]))
            meta.append((int(r["fact_id"]), "own", -1, int(r["entity_id"])))
            th = self.thematic[self.thematic["attribute"] == r["attribute"]]
            for _, t in th.iterrows():
                pairs.append((t["ids"], r["keyword_ids"]))
                meta.append((int(r["fact_id"]), "thematic", int(t["prompt_index"]), int(t["entity_id"])))
        logp = P.continuation_logprobs(model, pairs)
        out = pd.DataFrame(meta, columns=["fact_id", "kind", "prompt_index", "prompt_entity_id"])
        out.insert(0, "step", step)
        out["logp"] = logp
        n_layer = model.config.n_layer
        for i in range(n_layer):
            out[f"L{i}/active_frac"] = np.nan
            out[f"L{i}/active_frac_live"] = np.nan
        if density:
            d = P.name_density(model, list(f["prompt_ids"]), list(f["name_last"]))
            own = np.flatnonzero(out["kind"].to_numpy() == "own")
            for i in range(n_layer):
                out.loc[own, f"L{i}/active_frac"] = d["active_frac"][:, i]
                out.loc[own, f"L{i}/active_frac_live"] = d["active_frac_live"][:, i]
        return out

    # ------------------------------------------------------------------ end
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The analysis, once (rank 0; outside every timed call): tables, statistics, figure, scalars."""
        if not self.enabled or not trainer.is_global_zero or not self.rows:
            return
        raw = pd.concat(self.rows, ignore_index=True)
        if self.output_dir is not None:
            ins = pd.DataFrame(self.insertions, columns=["step", "window", "row"])
            ins["ledger_window"] = ins["window"] + self.first_window
            write_parquet_atomic(ins, self._out("probes", "priming_insertions.parquet"))
        facts = self.facts.copy()
        if facts["keyword"].isna().any():
            log.info("priming: %d facts never got a keyword (training stopped before their cohort)",
                     int(facts["keyword"].isna().sum()))  # fmt: skip
            facts = facts[facts["keyword"].notna()]
        done = set(raw["step"].astype(int))
        offsets = [o for o in self.offsets if all(int(s) + o in done for s in facts.loc[facts["k"] > 0, "last_copy"])]
        if facts.empty or not offsets:
            log.info("priming: no fact completed its schedule; no analysis")
            return
        table, scores, stats, headline = P.analyse(
            raw, facts, offsets, self.endpoint, n_boot=self.n_boot, level=self.level, seed=self.seed,
            n_layer=pl_module.model.config.n_layer,
        )  # fmt: skip
        self.headline = headline
        if self.output_dir is not None:
            write_parquet_atomic(table, self._out("probes", "priming.parquet"))
            write_parquet_atomic(scores, self._out("probes", "priming_facts.parquet"))
            write_parquet_atomic(stats, self._out("probes", "priming_threshold.parquet"))
            from densitylab.report.priming import plot_priming

            fig_path = plot_priming(scores, stats, self.endpoint, self._out("plots", "priming_vs_pbefore.png"))
            self._log_image(trainer, fig_path)
        self.log_scalars(trainer, trainer.global_step, {k: v for k, v in headline.items() if isinstance(v, float)})
        from densitylab.report.priming import format_priming

        print(format_priming(stats), flush=True)

    def _log_image(self, trainer: L.Trainer, path: Path) -> None:
        from densitylab.callbacks.wandb_util import find_wandb_logger

        lg = find_wandb_logger(trainer.loggers)
        if lg is None or path is None:
            return
        import wandb

        lg.experiment.log({"priming/vs_pbefore": wandb.Image(str(path)), "trainer/global_step": trainer.global_step})

    def final_metrics(self) -> dict[str, float]:
        """The end analysis' ``priming/*`` numbers (see the class docstring)."""
        return dict(self.headline)
