"""Training throughput: plain PyTorch loop vs the Lightning training step, and the exposure ledger's cost.

    python bench/throughput.py                 # tiny model: 4 layers, 4 heads, d=128, T=128, B=32, V=4096, fp32
    python bench/throughput.py --steps 60 --repeats 3 --json out.json

Data: ``tinyshakespeare.txt`` from the folder named by ``DENSITYLAB_TEXT_DIR`` (default: a ``shared/data``
folder beside the repository) through the real DataModule (byte-level BPE, vocab 4096, capitalized-span
entities), or a random token stream with ``--data random``. All loops run the same GPT, AdamW (decay on
>= 2-D params), gradient clipping at 1.0, the same packed-window batches, fp32 on
CPU (bf16-mixed on CUDA; ``--precision bf16-mixed`` for bf16 autocast on CPU too). The Lightning runs use the
real ``LitGPT`` with the default callbacks
(throughput logger, finite-loss guard), the progress bar and the CSV logger, i.e. what ``train.py``
runs minus checkpoint writes; once without and once with the ``LedgerCallback``. Runs alternate and the
median of ``--repeats`` is kept. The ledger's own per-step cost (``ExposureLedger.update``) is also timed
in isolation. Prints tokens/s and ratios. Not a test: numbers go into notes and the README.

    python bench/throughput.py --only-priming  # one priming probe call (a cohort of the default experiment)

The probe budget (``docs/design.md``, "Time accounting and the probe budget"):

    python bench/throughput.py --budget RUN_DIR --long-steps 10000   # per-call costs, measured and predicted shares
    python bench/throughput.py --on-off                              # probes on / off, alternating in one process

``--budget`` reads a finished run folder (``probes/timing.parquet``, ``summary.json``, ``.hydra/config.yaml``) and
prints each probe's calls and seconds per call by kind (start, early, periodic, final), the measured
``perf/probe_share`` (and per probe), and the share predicted from per-call costs × the schedule
(:func:`densitylab.probes.schedule.predict_run_share`) for the run's own length and for ``--long-steps`` steps: as
configured, with ``thin_after`` = ``--thin-after`` for every probe, and without thinning. ``--on-off`` composes
``conf/`` as the tests do (:func:`densitylab.config.compose_run_config`) and runs ``--on-off-steps`` steps of the
default experiment with every default probe on, then off (``callbacks.<probe>=null``), ``--repeats`` times
alternating, and prints ``perf/tokens_per_sec`` (probe and validation time out: on and off agree within 10%) and
``perf/wall_tokens_per_sec`` (everything in: on/off ≈ 1 − the probe share).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from densitylab.callbacks import FiniteLossGuard, LedgerCallback, ThroughputLogger  # noqa: E402
from densitylab.data import CapitalizedEntities, DataModule, TextSource, TrainedBPE  # noqa: E402
from densitylab.lit import LitGPT, cosine_with_warmup, warmup_cosine  # noqa: E402
from densitylab.loggers import CSVLogger  # noqa: E402
from densitylab.model import GPT, GPTConfig  # noqa: E402

MODEL = dict(block_size=128, n_layer=4, n_head=4, n_embd=128)


def make_lit(net: dict, lr: float = 1e-3, warmup_steps: int = 10) -> LitGPT:
    """The LitGPT that conf/model/tiny.yaml builds (AdamW, warmup + cosine), for the architecture ``net``; its GPT
    is built by Lightning's configure_model (vocab_size given here)."""
    return LitGPT(
        net=functools.partial(GPT, **net),
        optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.1, betas=(0.9, 0.95)),
        scheduler=functools.partial(warmup_cosine, warmup_steps=warmup_steps, min_lr_ratio=0.1, decay_steps=None),
        compile=False,
        init_seed=0,
    )


def make_datamodule(args, cache: str) -> DataModule:
    if args.data == "random":
        path = Path(cache) / "random.txt"
        g = torch.Generator().manual_seed(0)
        words = [
            "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (int(n),), generator=g))
            for n in torch.randint(2, 9, (200_000,), generator=g)
        ]
        path.write_text("\n\n".join(" ".join(words[i : i + 50]) for i in range(0, len(words), 50)))
        files = str(path)
    else:
        text_dir = Path(os.environ.get("DENSITYLAB_TEXT_DIR") or REPO.parent / "shared" / "data").expanduser()
        if not (text_dir / "tinyshakespeare.txt").is_file():
            sys.exit(
                f"error: {text_dir / 'tinyshakespeare.txt'} not found: set DENSITYLAB_TEXT_DIR to a folder holding "
                "tinyshakespeare.txt, or use --data random"
            )
        files = str(text_dir / "tinyshakespeare.txt")
    source = TextSource(files=files, cache_dir=str(Path(cache) / "hf_datasets"))
    return prepared_datamodule(cache, source, CapitalizedEntities(), args.block, args.batch, None)


def prepared_datamodule(cache: str, source, entities, block_size: int, batch_size: int, canaries) -> DataModule:
    """The real DataModule (byte-level BPE, vocab 4096, seed 0) over ``source``, prepared and set up in ``cache``."""
    dm = DataModule(
        source=source,
        tokenizer=TrainedBPE(vocab_size=4096, min_frequency=2),
        entities=entities,
        block_size=block_size,
        batch_size=batch_size,
        canaries=canaries,
        seed=0,
        cache_dir=cache,
        progress=False,
    )
    dm.prepare_data()
    dm.setup()
    return dm


def make_ledger(dm, device):
    """An ExposureLedger over the training split of ``dm`` (vocabulary 4096), as the LedgerCallback builds it."""
    from densitylab.ledger import ExposureLedger

    return ExposureLedger.from_packed(dm.splits["train"], 4096, len(dm.entity_table), device)


def _precision(args, device) -> str:
    """``--precision`` when given, else bf16-mixed on CUDA and 32-true on CPU."""
    if getattr(args, "precision", None):
        return args.precision
    return "bf16-mixed" if device.type == "cuda" else "32-true"


def plain_loop(args, dm, device) -> float:
    """nanoGPT-style loop; returns tokens/s over the timed steps."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**dict(MODEL, vocab_size=4096, block_size=args.block))).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, 10, args.warmup + args.steps, 0.1))
    bf16 = _precision(args, device) == "bf16-mixed"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    dm.trainer = None  # a previous Lightning run left its trainer here: its global step would skip batches
    t0, timed = None, 0
    for i, batch in enumerate(dm.train_dataloader()):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = batch["input_ids"].to(device), batch["labels"].to(device)
        with amp:
            loss = LitGPT.loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # as a loop that prints its loss does
        timed += i >= args.warmup
        if i + 1 == args.warmup + args.steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    if timed != args.steps:
        raise RuntimeError(f"the data ran out after {timed} timed steps: expected {args.steps}; lower --steps")
    return timed * args.batch * args.block / (time.perf_counter() - t0)


def lightning_loop(args, dm, device, ledger: bool) -> float:
    import lightning as L

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.t1 = time.perf_counter()

    torch.manual_seed(0)
    lit = make_lit(dict(MODEL, vocab_size=4096, block_size=args.block), lr=1e-3, warmup_steps=10)
    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [ThroughputLogger(), FiniteLossGuard(), timer]
        if ledger:
            callbacks.append(LedgerCallback(output_dir=tmp, every_n_steps=100))
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=_precision(args, device),
            max_steps=args.warmup + args.steps,
            gradient_clip_val=1.0,
            log_every_n_steps=10,
            logger=CSVLogger(tmp, name="", version=""),  # densitylab's, as train.py runs it
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=not args.no_progress_bar,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            callbacks=callbacks,
            default_root_dir=tmp,
        )
        dm.trainer = None
        trainer.fit(lit, datamodule=dm)
        if trainer.global_step != args.warmup + args.steps:
            raise RuntimeError(f"Lightning stopped at step {trainer.global_step}: expected {args.warmup + args.steps}")
    return args.steps * args.batch * args.block / (timer.t1 - timer.t0)


def ledger_update_cost(dm, device, n: int = 500) -> float:
    """Seconds per ``ExposureLedger.update`` call on real batches (isolated micro-benchmark)."""

    led = make_ledger(dm, device)
    dm.trainer = None
    batches = [{k: v.to(device) for k, v in b.items()} for _, b in zip(range(20), dm.train_dataloader())]
    t0 = time.perf_counter()
    for i in range(n):
        b = batches[i % len(batches)]
        led.update(b["input_ids"], b["sample_id"], i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def synthetic_datamodule(cache: str) -> DataModule:
    """The default run's data (conf/data/synthetic.yaml: 2,000 people, BPE 4096, T = 128, the default canaries)."""
    from densitylab.data import SyntheticEntities, SyntheticSource

    canaries = {"repetitions": [1, 2, 4, 8, 16, 32], "per_group": 4, "length": 64, "alphabet_size": 256}
    return prepared_datamodule(cache, SyntheticSource(), SyntheticEntities(), 128, 32, canaries)


def probe_call_cost(dm, device, repeats: int = 3) -> dict:
    """Seconds of one density probe call as ``DensityCallback`` makes it on the default run (synthetic data,
    the 320-person panel, 16 ``seen`` windows, 8 rows per control set, records with the person-clustered
    endpoints), after one epoch of ledger counts; split into the forward passes and the records; and of an
    early call (the panel's core only). Also the calls of the default run (900 steps: 0, 1, 4, 16, 64, then
    every 150; the whole panel at 0 and every 150) and their total."""
    from densitylab.callbacks.density import _plan_entities
    from densitylab.ledger import ExposureLedger
    from densitylab.probes.density import density_records, measure_density
    from densitylab.probes.schedule import is_scheduled
    from densitylab.probes.sets import build_probe_sets

    train = dm.splits["train"]
    n_ent = len(dm.entity_table)
    led = ExposureLedger.from_packed(train, dm.vocab_size, n_ent, device)
    w = torch.arange(train.n_windows)
    for s in range(0, len(w), 256):  # one epoch
        led.update(train.gather(w[s : s + 256].numpy())[:, :-1], w[s : s + 256], 1)
    led.sync()
    t0 = time.perf_counter()
    sets, _ = build_probe_sets(dm.splits, dm.vocab_size, eos_id=dm.eos_id, entities=_plan_entities(dm),
                               canaries=dm.canaries, n_seen=16, n_control=8, seed=0)  # fmt: skip
    build_s = time.perf_counter() - t0
    sets = {s.name: s for s in sets}
    core = dict(sets, panel=sets["panel"].core())  # what the early log-spaced calls probe
    model = GPT(GPTConfig(**dict(MODEL, vocab_size=dm.vocab_size, block_size=dm.block_size))).to(device).eval()
    exposure = {
        "distinct_docs": led.entity_distinct_docs().cpu().numpy(),
        "subject_docs": led.entity_subject_docs().cpu().numpy(),
        "mentions": led.entity_mentions().cpu().numpy(),
        "comentions": led.entity_comentions().cpu().numpy(),
    }

    def one(which: dict) -> tuple[float, float]:
        t0 = time.perf_counter()
        metrics = {
            n: measure_density(model, s.input_ids, 32, final_positions=s.final_positions(), probed=s.probed())
            for n, s in which.items()
        }
        t1 = time.perf_counter()
        density_records(0, metrics, which, exposure, led.token_counts.cpu().numpy(), led.sequence_counts.cpu().numpy())
        return t1 - t0, time.perf_counter() - t1

    full = [one(sets) for _ in range(repeats)]
    early = [one(core) for _ in range(repeats)]
    steps = [s for s in range(901) if is_scheduled(s, 150, 4)]
    n_full = sum(1 for s in steps if s % 150 == 0)
    call = float(np.median([a + b for a, b in full]))
    call_core = float(np.median([a + b for a, b in early]))
    return {
        "call_s": call,
        "forward_s": float(np.median([a for a, _ in full])),
        "records_s": float(np.median([b for _, b in full])),
        "core_call_s": call_core,
        "build_sets_s": build_s,
        "rows": {n: int(s.input_ids.shape[0]) for n, s in sets.items()},
        "core_rows": int(sets["panel"].core_rows or 0),
        "calls_default_run": len(steps),
        "default_run_s": call * n_full + call_core * (len(steps) - n_full),
    }


def knowledge_call_cost(dm, device, persons: int = 64, repeats: int = 3) -> dict:
    """Seconds of the knowledge probe on the default run's data and tokenizer with the tiny model, after one epoch
    of ledger counts: scoring ``persons`` × 5 closed-set items alone (each prompt once, the candidates from its
    cached keys and values) against the naive reference (every candidate re-reads the prompt; first 20 items);
    one ``KnowledgeCallback`` call on the panel's core (64 people: scoring, exposure, sources, leak null,
    curve and hallucination rows) and the last-step call on the whole panel (320 people, core rows too); the
    end-of-run analysis (GLM slope, 1000-replicate person bootstrap of the AUROCs), outside every timed call;
    and the default run's total (900 steps: calls at 0, 16, 64, 256 on the core, the whole panel at 900)."""
    import pandas as pd

    from densitylab.callbacks.density import _plan_entities
    from densitylab.callbacks.knowledge import KnowledgeCallback
    from densitylab.ledger import ExposureLedger
    from densitylab.probes import hallucination as H
    from densitylab.probes import knowledge as K
    from densitylab.probes.knowledge import knowledge_prompts, measure_knowledge, score_candidates_naive
    from densitylab.probes.panel import PanelSpec, draw_panel
    from densitylab.probes.sets import exposure_plan

    people = pd.read_parquet(Path(dm.ground_truth_dir) / "people.parquet")
    prompts = knowledge_prompts(people, people["entity_id"].tolist()[:persons])
    model = GPT(GPTConfig(**dict(MODEL, vocab_size=dm.vocab_size, block_size=dm.block_size))).to(device).eval()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        items = measure_knowledge(model, dm.tokenizer, prompts, [dm.eos_id])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for p in prompts[:20]:
        ids = dm.tokenizer.encode(p.text, add_special_tokens=False).ids
        cands = [dm.tokenizer.encode(c, add_special_tokens=False).ids for c in p.candidates]
        score_candidates_naive(model, ids, cands)
    naive_20 = time.perf_counter() - t0
    train = dm.splits["train"]
    led = ExposureLedger.from_packed(train, dm.vocab_size, len(dm.entity_table), device)
    w = torch.arange(train.n_windows)
    for s in range(0, len(w), 256):  # one epoch
        led.update(train.gather(w[s : s + 256].numpy())[:, :-1], w[s : s + 256], 1)
    led.sync()
    cb = KnowledgeCallback(seed=0)
    cb.tokenizer, cb.prefix = dm.tokenizer, [dm.eos_id]
    cb.setup_people(people, draw_panel(exposure_plan(dm.splits, _plan_entities(dm)), PanelSpec()))
    core_s, panel_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cb.measure_with(model, 16, led, final=False)
        core_s.append(time.perf_counter() - t0)
    for _ in range(max(1, repeats - 1)):
        t0 = time.perf_counter()
        records, _ = cb.measure_with(model, 900, led, final=True)
        panel_s.append(time.perf_counter() - t0)
    last = records[records["scope"] == "panel"]
    t0 = time.perf_counter()
    K.knowledge_slope(last)
    H.bootstrap_rows(last, n_boot=1000)
    end_s = time.perf_counter() - t0
    core, panel = float(np.median(core_s)), float(np.median(panel_s))
    return {
        "items": len(prompts),
        "scoring_s": float(np.median(times)),
        "tokens": int(items["prompt_tokens"].sum() + items["candidate_tokens"].sum()),
        "naive_per_item_s": naive_20 / 20,
        "cached_per_item_s": float(np.median(times)) / len(prompts),
        "core_call_s": core,
        "panel_call_s": panel,
        "end_analysis_s": end_s,
        "default_run_s": 4 * core + panel,
    }


def modularity_call_cost(dm, device, windows: int = 32, repeats: int = 2) -> tuple[float, int, int]:
    """Seconds of one modularity probe call (every head and MLP group mean-ablated, every task) on the
    tiny model; returns (seconds, components, tasks)."""
    from densitylab.probes.modularity import ablation_effects
    from densitylab.probes.sets import draw_windows, task_masks, window_set

    held = dm.splits["heldout"]  # as ModularityCallback.prepare draws them
    probe = window_set("heldout", held, draw_windows(held, windows, np.random.default_rng(0)))
    counts = torch.from_numpy(dm.splits["train"].token_counts(minlength=4096))
    tasks = task_masks(held, probe, counts)
    x, y = probe.input_ids, probe.targets
    model = GPT(GPTConfig(**dict(MODEL, vocab_size=4096, block_size=dm.block_size))).to(device).eval()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        comps, E, _ = ablation_effects(model, x, y, tasks, mlp_groups=MODEL["n_head"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(comps), len(tasks)


def modularity_v2_call_cost(dm, device, repeats: int = 3) -> dict:
    """Seconds of the modularity probe's calls as ``ModularityCallback`` makes them on the default run (synthetic
    data, the tiny model, its default settings: 16 held-out windows, 16 attribution windows, 1000 permutations):
    a v1 call (every head and n_head contiguous MLP groups), a v2 call alone (attribution, the heads and the
    attribution groups, the null), the combined call (one sweep; heads shared) and its parts; and the default
    run's total (900 steps: the control and step 900 combined, steps 300 and 600 v1 only; step 0 reuses the
    control's measurement, costing one weights hash)."""
    from types import SimpleNamespace

    from densitylab.callbacks.modularity import ModularityCallback, _weights_hash
    from densitylab.probes.modularity import mlp_attribution, permutation_null
    from densitylab.probes.schedule import is_scheduled

    model = GPT(GPTConfig(**dict(MODEL, vocab_size=dm.vocab_size, block_size=dm.block_size))).to(device).eval()
    cb = ModularityCallback(seed=0)
    cb.prepare(SimpleNamespace(datamodule=dm), SimpleNamespace(model=model))

    def median(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    v1_s = median(lambda: cb._sweep(model, v1=True, v2=False))
    v2_s = median(lambda: cb._sweep(model, v1=False, v2=True))
    both_s = median(lambda: cb._sweep(model, v1=True, v2=True))
    attr_s = median(lambda: mlp_attribution(model, *cb.fit, mode="position"))
    attr_task_s = median(lambda: mlp_attribution(model, *cb.fit, mode="task"))
    _, v2 = cb._sweep(model, v1=False, v2=True)
    sweep_rows = len(v2.components)
    rng = np.random.default_rng(0)
    d, b = rng.normal(size=(sweep_rows, int(cb.targets.ge(0).sum()))), np.ones(int(cb.targets.ge(0).sum()))
    M = np.eye(len(cb.tasks), dtype=bool)[rng.integers(0, len(cb.tasks), len(b))]
    null_s = median(lambda: permutation_null(d, b, M, cb.n_perm, np.random.default_rng(0)))
    hash_s = median(lambda: _weights_hash(model))
    steps = [s for s in range(1, 901) if is_scheduled(s, 300, False)]  # 300, 600, 900
    return {
        "windows": int(cb.probe_set.input_ids.shape[0]),
        "fit_windows": int(cb.fit[0].shape[0]),
        "tasks": len(cb.tasks),
        "v1_components": model.config.n_layer * (model.config.n_head + cb.groups),
        "v2_components": sweep_rows,
        "v1_call_s": v1_s,
        "v2_call_s": v2_s,
        "v1_v2_call_s": both_s,
        "v2_marginal_s": both_s - v1_s,
        "attribution_position_s": attr_s,
        "attribution_task_s": attr_task_s,
        "null_s": null_s,
        "n_perm": cb.n_perm,
        "weights_hash_s": hash_s,
        "calls_default_run": {
            "control": "v1+v2",
            "0": "reused",
            **{str(s): "v1+v2" if s == 900 else "v1" for s in steps},
        },
        "default_run_s": 2 * both_s + (len(steps) - 1) * v1_s + hash_s,
    }


def memorization_call_cost(device, repeats: int = 3) -> dict:
    """Seconds of one memorization probe call: (a) the default canaries (6 repetition groups x 4, S=64)
    on the tiny model (vocab 4096); (b) a capacity-experiment call: 2048 uniform sequences (S=64,
    A=256) on the capacity_200k model (213K parameters)."""
    from densitylab.data.uniform import make_uniform_sequences
    from densitylab.probes.memorization import measure_memorization

    out = {}
    cases = {
        "canaries_tiny": (dict(MODEL, vocab_size=4096, block_size=128), make_uniform_sequences(24, 64, 256, 0), 256),
        "capacity_200k_2048seq": (
            dict(vocab_size=256, block_size=63, n_layer=3, n_head=4, n_embd=72),
            make_uniform_sequences(2048, 64, 256, 0),
            512,
        ),
    }
    for name, (cfg, seqs, bs) in cases.items():
        model = GPT(GPTConfig(**cfg)).to(device).eval()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            measure_memorization(model, seqs, 256, batch_size=bs)
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def priming_call_cost(device, repeats: int = 3) -> dict:
    """Seconds of the priming probe's work for one cohort of ``experiment=priming`` (40 facts + 20 controls, 5
    relations x 12 thematic prompts, prompts of ~9 tokens, one-token keywords) on the tiny model (vocab 2256):
    the keyword choice (next-token distributions of the 60 own prompts), one measurement (60 own + 60 x 12
    thematic probabilities; the thematic ones share 60 distinct sequences) and the density at the names."""
    from densitylab.probes import priming as P

    g = torch.Generator().manual_seed(0)
    model = GPT(GPTConfig(**MODEL, vocab_size=2256)).to(device).eval()

    def prompt() -> list[int]:
        return torch.randint(1, 2256, (int(torch.randint(7, 11, (1,), generator=g)),), generator=g).tolist()

    own = [prompt() for _ in range(60)]
    thematic = {a: [prompt() for _ in range(12)] for a in range(5)}
    keywords = [[int(t)] for t in torch.randint(1, 2256, (60,), generator=g)]
    pairs = [(o, kw) for o, kw in zip(own, keywords)]
    pairs += [(t, kw) for i, kw in enumerate(keywords) for t in thematic[i % 5]]
    out = {"choose_s": [], "measure_s": [], "density_s": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        P.next_token_logprobs(model, own)
        t1 = time.perf_counter()
        P.continuation_logprobs(model, pairs)
        t2 = time.perf_counter()
        P.name_density(model, own, [3] * len(own))
        t3 = time.perf_counter()
        out["choose_s"].append(t1 - t0)
        out["measure_s"].append(t2 - t1)
        out["density_s"].append(t3 - t2)
    res = {k: float(np.median(v)) for k, v in out.items()}
    res["pairs"] = len(pairs)
    return res


def probe_checkpoint_cost(dm, device, repeats: int = 5) -> dict:
    """One probe checkpoint of the default run (checkpoints.keep=probe_steps): the tiny model's weights and
    hyper-parameters plus the ledger state over the default synthetic data, written through AtomicCheckpointIO as
    ProbeCheckpoint writes it; against a full checkpoint (the same plus AdamW's state after one step). Median
    seconds of ``repeats`` writes and the file sizes in bytes."""
    import statistics
    import tempfile as _tempfile

    from densitylab.checkpoint import AtomicCheckpointIO

    lit = make_lit(MODEL | {"vocab_size": 4096})
    lit.configure_model()
    lit.to(device)
    ledger = make_ledger(dm, device)
    opt = torch.optim.AdamW(lit.parameters(), lr=1e-3)
    x = torch.randint(0, 4096, (2, MODEL["block_size"]), device=device)
    lit.loss_fn(lit(x[:, :-1]), x[:, 1:]).backward()
    opt.step()
    light = {
        "state_dict": lit.state_dict(),
        "hyper_parameters": dict(lit.hparams),
        "global_step": 1,
        "callbacks": {"LedgerCallback": ledger.state_dict()},
        "densitylab": {"kind": "probe", "probes": {}},
    }
    full = {**light, "optimizer_states": [opt.state_dict()]}
    io_ = AtomicCheckpointIO()
    times = []
    with _tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            t0 = time.perf_counter()
            io_.save_checkpoint(light, Path(d) / "probe.ckpt")
            times.append(time.perf_counter() - t0)
        io_.save_checkpoint(full, Path(d) / "full.ckpt")
        light_b, full_b = (Path(d) / "probe.ckpt").stat().st_size, (Path(d) / "full.ckpt").stat().st_size
    return {"probe_checkpoint_write_s": statistics.median(times), "probe_checkpoint_bytes": light_b,
            "full_checkpoint_bytes": full_b, "ratio": light_b / full_b}  # fmt: skip


PROBES = ("density", "knowledge", "modularity", "memorization", "priming", "probe_checkpoint")


def budget(run_dir: Path, long_steps: int, thin_after: int | None) -> dict:
    """The probe budget of a finished run folder: per-call costs by kind from ``probes/timing.parquet``, the measured
    shares from ``summary.json`` and the shares predicted from costs × schedule for the run's length and for
    ``long_steps`` (as configured, with ``thin_after`` for every periodic probe, without thinning)."""
    import pandas as pd
    from omegaconf import OmegaConf

    from densitylab.probes.schedule import call_kind, predict_run_share

    missing = [
        p for p in ("probes/timing.parquet", "summary.json", ".hydra/config.yaml") if not (run_dir / p).is_file()
    ]
    if missing:
        sys.exit(f"error: --budget {run_dir}: {', '.join(missing)} not found: expected a finished train.py run folder")
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    timing = pd.read_parquet(run_dir / "probes" / "timing.parquet")
    max_steps = int(summary["global_step"])
    calls = timing[timing["kind"] != "setup"].copy()
    probes, rows = {}, {}
    for name, t in calls.groupby("probe", sort=False):
        node = (cfg.callbacks.get(name) or {}) if name in cfg.callbacks else {}
        every = int(node.get("every_n_steps") or 0)
        thin = node.get("thin_after")
        t = t.assign(kind=[("final" if k == "final" else call_kind(s, max_steps, every, thin)) for s, k in
                           zip(t["step"], t["kind"])])  # fmt: skip
        per_kind = t.groupby("kind")["seconds"].agg(["count", "mean", "sum"])
        rows[name] = per_kind
        probes[name] = {
            "seconds": per_kind["mean"].to_dict(),
            "every_n_steps": every,
            "log_spaced": node.get("log_spaced", True) if name != "probe_checkpoint" else False,
            "thin_after": thin,
            "probe_at_start": bool((t["step"] == 0).any()),
            "min_step": int(node.get("min_step") or 0),
        }
    interval = cfg.trainer.get("val_check_interval") or 0
    step_s = summary["perf/train_seconds"] / max_steps
    if isinstance(interval, int) or (isinstance(interval, float) and interval > 1 and interval.is_integer()):
        val_every = int(interval)  # every N optimizer steps
        n_val = max_steps // val_every if val_every else 0
        val_s = summary["perf/val_seconds"] / n_val if n_val else 0.0
    else:  # a fraction of an epoch: validation's seconds per training step, scaled with the run's length
        val_every = 1 if summary["perf/val_seconds"] > 0 else 0
        val_s = summary["perf/val_seconds"] / max_steps
    other_s = summary["perf/other_seconds"]

    def predict(steps: int, thin: str | int | None) -> dict:
        ps = {n: dict(p, thin_after=(p["thin_after"] if thin == "config" else thin)) for n, p in probes.items()}
        return predict_run_share(ps, steps, step_s, val_s, val_every, other_s)

    return {
        "run_dir": str(run_dir),
        "max_steps": max_steps,
        "per_kind": rows,
        "setup_seconds": timing[timing["kind"] == "setup"].groupby("probe")["seconds"].sum().to_dict(),
        "measured": {k: v for k, v in summary.items() if k.startswith("perf/") and ("share" in k or "seconds" in k)},
        "predicted_own": predict(max_steps, "config"),
        "predicted_long": {
            "as configured": predict(long_steps, "config"),
            f"thin_after={thin_after}": predict(long_steps, thin_after),
            "no thinning": predict(long_steps, None),
        },
        "long_steps": long_steps,
        "step_seconds": step_s,
        "val_seconds": val_s,
        "other_seconds": other_s,
    }


def print_budget(b: dict) -> None:
    m = b["measured"]
    print(f"run {b['run_dir']}: {b['max_steps']} steps")
    print(
        f"loop {m['perf/loop_seconds']:.1f} s = train {m['perf/train_seconds']:.1f} + probes "
        f"{m['perf/probe_seconds']:.1f} + val {m['perf/val_seconds']:.1f} + other {m['perf/other_seconds']:.1f} "
        f"(end {m['perf/end_seconds']:.1f}); other = {100 * m['perf/other_seconds'] / m['perf/loop_seconds']:.2f}% "
        f"of the loop; train {1e3 * b['step_seconds']:.0f} ms/step, one validation {b['val_seconds']:.2f} s"
    )  # fmt: skip
    print(f"{'probe':<17}{'kind':<10}{'calls':>6}{'s/call':>9}{'total s':>9}")
    for name, t in b["per_kind"].items():
        for kind, r in t.iterrows():
            print(f"{name:<17}{kind:<10}{int(r['count']):>6}{r['mean']:>9.3f}{r['sum']:>9.2f}")
    setup = ", ".join(f"{k} {v:.2f} s" for k, v in b["setup_seconds"].items())
    print(f"set-up at fit start (outside the loop): {setup}")
    shares = ", ".join(
        f"{k.rsplit('/', 1)[1]} {100 * v:.2f}%" for k, v in m.items() if k.startswith("perf/probe_share/")
    )
    own = b["predicted_own"]
    print(f"measured  perf/probe_share {100 * m['perf/probe_share']:.2f}% ({shares})")
    print(f"predicted for this run ({b['max_steps']} steps) from per-call costs x schedule: {100 * own['share']:.2f}%")
    for label, p in b["predicted_long"].items():
        per = ", ".join(f"{k[len('share/') :]} {100 * v:.2f}%" for k, v in p.items() if k.startswith("share/"))
        print(f"predicted for {b['long_steps']} steps, {label}: {100 * p['share']:.2f}% ({per}; probes "
              f"{p['probe_seconds']:.0f} s of a {p['loop_seconds']:.0f} s loop)")  # fmt: skip


def on_off(steps: int, repeats: int) -> dict:
    """``steps`` steps of the default experiment with every default probe on, then off, ``repeats`` times alternating
    in this process (``densitylab.run.train`` on a config composed as the tests compose it); the summary numbers."""
    from densitylab.config import clear_hydra_config, compose_run_config
    from densitylab.run import train

    probes_off = [f"callbacks.{p}=null" for p in ("density", "knowledge", "modularity", "memorization")]
    cache = os.environ.get("DENSITYLAB_CACHE_DIR") or str(REPO / ".cache")  # the default run's data cache
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for mode in ("on", "off"):
                overrides = [f"trainer.max_steps={steps}", "logger=csv", "trainer.enable_progress_bar=false",
                             "trainer.enable_model_summary=false", *(probes_off if mode == "off" else [])]  # fmt: skip
                out = Path(tmp) / f"{mode}{i}"
                cfg = compose_run_config(overrides, output_dir=out, cache_dir=cache)
                try:
                    summary = train(cfg)
                finally:
                    clear_hydra_config()
                runs[mode].append({k: v for k, v in summary.items() if k.startswith("perf/")})
                print(f"{mode:>3} #{i}: perf/tokens_per_sec {summary['perf/tokens_per_sec']:8.0f}  "
                      f"perf/wall_tokens_per_sec {summary['perf/wall_tokens_per_sec']:8.0f}  "
                      f"perf/probe_share {summary['perf/probe_share']:.3f}", flush=True)  # fmt: skip
    med = {
        mode: {
            k: float(np.median([r[k] for r in rs]))
            for k in ("perf/tokens_per_sec", "perf/wall_tokens_per_sec", "perf/probe_share")
        }  # fmt: skip
        for mode, rs in runs.items()
    }
    tps = med["on"]["perf/tokens_per_sec"] / med["off"]["perf/tokens_per_sec"]
    wall = med["on"]["perf/wall_tokens_per_sec"] / med["off"]["perf/wall_tokens_per_sec"]
    verdict = "within" if abs(tps - 1) <= 0.10 else "NOT within"
    print(f"median of {repeats}: perf/tokens_per_sec on/off = {tps:.3f} ({verdict}"
          f" 10%); perf/wall_tokens_per_sec on/off = {wall:.3f} against 1 - probe share = "
          f"{1 - med['on']['perf/probe_share']:.3f}")  # fmt: skip
    return {"steps": steps, "repeats": repeats, "runs": runs, "median": med, "tokens_per_sec_ratio": tps,
            "wall_tokens_per_sec_ratio": wall}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="timed steps")
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed"], default=None,
                    help="both loops' precision (default: 32-true on CPU, bf16-mixed on CUDA); bf16-mixed on CPU is "
                    "torch.autocast('cpu', bfloat16), as trainer.precision=bf16-mixed")  # fmt: skip
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="alternate the three loops this many times; median of each")
    ap.add_argument("--data", choices=["shakespeare", "random"], default="shakespeare")
    ap.add_argument("--no-progress-bar", action="store_true")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default mmap thresholds")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--only-density", action="store_true", help="time the density probe call only")
    ap.add_argument("--only-knowledge", action="store_true", help="time closed-set knowledge scoring only")
    ap.add_argument("--only-modularity", action="store_true", help="time the modularity probe's calls (v1, v2) only")
    ap.add_argument("--only-priming", action="store_true", help="time one priming probe call (a cohort) only")
    ap.add_argument("--only-probe-checkpoint", action="store_true", help="time one probe checkpoint write only")
    ap.add_argument("--budget", metavar="RUN_DIR", help="the probe budget of a finished run folder")
    ap.add_argument("--long-steps", type=int, default=10_000, help="--budget: predict the share for this many steps")
    ap.add_argument("--thin-after", type=int, default=2000, help="--budget: also predict with this thin_after")
    ap.add_argument("--on-off", action="store_true", help="alternate short runs with probes on and off")
    ap.add_argument("--on-off-steps", type=int, default=60, help="--on-off: optimizer steps per run")
    args = ap.parse_args()
    if args.budget:
        if args.long_steps <= 0:
            sys.exit(f"error: --long-steps {args.long_steps}: expected a positive number of steps")
        result = budget(Path(args.budget), args.long_steps, args.thin_after)
        print_budget(result)
        if args.json:
            result["per_kind"] = {k: v.reset_index().to_dict("records") for k, v in result["per_kind"].items()}
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    if args.on_off:
        result = on_off(args.on_off_steps, args.repeats)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    if not args.no_malloc_tuning:  # as train.py does (malloc_tuning=true): applies to every loop below
        from densitylab.system import tune_malloc

        tune_malloc()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.only_priming:
        print(json.dumps(priming_call_cost(device), indent=2))
        return
    if args.only_probe_checkpoint:
        with tempfile.TemporaryDirectory() as cache:
            print(json.dumps(probe_checkpoint_cost(synthetic_datamodule(cache), device), indent=2))
        return
    if args.only_knowledge:
        with tempfile.TemporaryDirectory() as cache:
            print(json.dumps(knowledge_call_cost(synthetic_datamodule(cache), device), indent=2))
        return
    if args.only_modularity:
        with tempfile.TemporaryDirectory() as cache:
            print(json.dumps(modularity_v2_call_cost(synthetic_datamodule(cache), device), indent=2))
        return
    if args.only_density:
        with tempfile.TemporaryDirectory() as cache:
            probe = probe_call_cost(synthetic_datamodule(cache), device)
        print(json.dumps(probe, indent=2))
        return
    with tempfile.TemporaryDirectory() as cache:
        dm = make_datamodule(args, cache)
        runs = {"plain": [], "lightning": [], "lightning+ledger": []}
        for _ in range(args.repeats):
            runs["plain"].append(plain_loop(args, dm, device))
            runs["lightning"].append(lightning_loop(args, dm, device, ledger=False))
            runs["lightning+ledger"].append(lightning_loop(args, dm, device, ledger=True))
        update_s = ledger_update_cost(dm, device)
        probe = probe_call_cost(synthetic_datamodule(cache), device)
        probe_s = probe["call_s"]
        mod_s, n_comp, n_task = modularity_call_cost(dm, device)
        mem = memorization_call_cost(device)
    best = {k: float(np.median(v)) for k, v in runs.items()}  # median: the 2-core machine has outliers both ways
    step_s = args.batch * args.block / best["lightning"]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "model": MODEL | {"vocab_size": 4096},
        "batch": args.batch,
        "malloc_tuning": not args.no_malloc_tuning,
        "timed_steps": args.steps,
        "precision": _precision(args, device),
        "data": args.data,
        "tokens_per_sec": best,
        "ratio_lightning_over_plain": best["lightning"] / best["plain"],
        "ledger_slowdown": 1 - best["lightning+ledger"] / best["lightning"],
        "ledger_update_ms": update_s * 1e3,
        "ledger_update_fraction_of_step": update_s / step_s,
        "density_probe_call_s": probe_s,
        "density_probe_call_in_steps": probe_s / step_s,
        "density_probe": probe,
        "modularity_probe_call_s": mod_s,
        "modularity_components": n_comp,
        "modularity_tasks": n_task,
        "memorization_probe_call_s": mem,
        "all": runs,
    }
    print(f"plain PyTorch loop  : {best['plain']:10.0f} tokens/s")
    print(
        f"Lightning step      : {best['lightning']:10.0f} tokens/s   ratio to plain "
        f"{result['ratio_lightning_over_plain']:.3f}"
    )
    print(
        f"Lightning + ledger  : {best['lightning+ledger']:10.0f} tokens/s   slowdown "
        f"{100 * result['ledger_slowdown']:+.2f}%"
    )
    print(
        f"ledger.update alone : {update_s * 1e3:.3f} ms/step = {100 * result['ledger_update_fraction_of_step']:.3f}% "
        f"of a {step_s * 1e3:.0f} ms step"
    )
    print(
        f"density probe call  : {probe_s:.2f} s (forward {probe['forward_s']:.2f} s, "
        f"records {probe['records_s']:.2f} s) "
        f"= {probe_s / step_s:.1f} training steps; core-only call {probe['core_call_s']:.2f} s; rows {probe['rows']}; "
        f"default run: {probe['calls_default_run']} calls = {probe['default_run_s']:.1f} s (allotment 9 s)"
    )
    print(f"modularity call     : {mod_s:.2f} s for {n_comp} components x {n_task} tasks on 32 held-out windows")
    print(
        f"memorization call   : {mem['canaries_tiny'] * 1e3:.0f} ms for 24 canaries on the tiny model; "
        f"{mem['capacity_200k_2048seq']:.2f} s for 2048 sequences on capacity_200k"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
