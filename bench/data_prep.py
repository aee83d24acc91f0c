"""Data-preparation speed and memory: the bare tokenizer vs densitylab's whole preparation, on a generated corpus.

    python bench/data_prep.py --mb 40                  # ~40 MB generated text, one document per line
    python bench/data_prep.py --mb 40 --vocab 512 --json out.json
    python bench/data_prep.py --mb 40 --text tinyshakespeare.txt   # a real text, repeated to 40 MB

The corpus is generated (no download, deterministic in ``--seed``): sentences of made-up lower-case words with
capitalized names inside them, one sentence group per line, written once to ``--workdir``; or ``--text FILE``
repeated (whole copies) to about ``--mb``, one document per non-blank line. Two figures, each measured in a
fresh child process so that its peak RSS is its own:

- **bare tokenizer**: ``Tokenizer.encode_batch`` over the documents, 50,000 at a time, each batch's ids into a
  numpy array of the vocabulary's smallest dtype, then one array of all ids; the tokenizer is trained first (on a
  10 MB sample) and not timed.
- **preparation**: :meth:`densitylab.data.prepare.DataRecipe.build` with ``data=text data.source.sample_by=line``
  and the capitalized extractor (what ``data=text`` runs), timed per stage (read, entities, tokenizer training,
  canaries, tokenize + pack, artifacts); its tokens/s counts everything after tokenizer training.

Prints tokens, seconds, tokens/s, the ratio preparation / bare, peak RSS of each child and the RSS bound of
issue 20 (1 GB + 4 × the token array, in the smallest dtype that holds the vocabulary). Not a test: numbers go
into notes and the README.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import numpy as np

_SYLLABLES = "ka lo mi ne ru sa ti vo be da fe gi ho ju pa qui ze xo wy ul an or el is th er".split()


def generate_corpus(n_bytes: int, seed: int = 0) -> str:
    """A deterministic English-like text of at least ``n_bytes`` characters, one document per line.

    Words: 6000 made-up lower-case words (1–4 syllables) drawn Zipf(1); 6% of the words are one of 800 capitalized
    names (Zipf(1.1)); each line is one sentence of 6–29 words starting with a capital and ending with ". " or
    ", and ". Returns the text (ASCII, ``\\n``-separated, trailing newline).
    """
    rng = np.random.default_rng(seed)

    def words(n: int, max_syl: int) -> np.ndarray:
        out: set[str] = set()
        while len(out) < n:
            out.add("".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, max_syl + 1)))))
        return rng.permutation(sorted(out))

    vocab, names = words(6000, 4), np.array([w.capitalize() for w in words(800, 3)])
    pw = 1 / np.arange(1, len(vocab) + 1)
    pn = 1 / np.arange(1, len(names) + 1) ** 1.1
    pw, pn = pw / pw.sum(), pn / pn.sum()
    lines: list[str] = []
    size = 0
    while size < n_bytes:
        lens = rng.integers(6, 30, size=20_000)
        total = int(lens.sum())
        w = vocab[rng.choice(len(vocab), size=total, p=pw)]
        w = np.where(rng.random(total) < 0.06, names[rng.choice(len(names), size=total, p=pn)], w)
        ends = rng.random(len(lens)) < 0.5
        for s, end in zip(np.split(w, np.cumsum(lens)[:-1]), ends):
            t = " ".join(s)
            t = t[0].upper() + t[1:] + (". " if end else ", and ")
            lines.append(t)
            size += len(t) + 1
            if size >= n_bytes:
                break
    return "\n".join(lines) + "\n"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _bare(path: Path, vocab: int) -> dict:
    from densitylab.data.packing import token_dtype
    from densitylab.data.tokenizer import train_bpe

    docs = [ln for ln in path.read_text().split("\n") if ln.strip()]
    sample = docs[:: max(1, -(-sum(map(len, docs)) // 10_000_000))]
    tok = train_bpe(sample, vocab_size=vocab)
    dtype = token_dtype(tok.get_vocab_size())
    t = time.perf_counter()
    parts = []
    for a in range(0, len(docs), 50_000):  # ~2.5 MB of text per call: the id lists of one batch at a time
        ids = [e.ids for e in tok.encode_batch(docs[a : a + 50_000], add_special_tokens=False)]
        parts.append(np.fromiter(chain.from_iterable(ids), dtype=dtype, count=sum(map(len, ids))))
    arr = np.concatenate(parts)
    sec = time.perf_counter() - t
    tokens = int(arr.size) + len(docs)  # counted as preparation counts them: one <|endoftext|> per document
    return {
        "tokens": tokens,
        "array_bytes": int(arr.nbytes),
        "seconds": sec,
        "tokens_per_sec": tokens / sec,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _pipeline(path: Path, vocab: int, cache: Path) -> dict:
    from contextlib import ExitStack
    from unittest import mock

    from densitylab.data import prepare as prep
    from densitylab.data.entities import CapitalizedEntities
    from densitylab.data.sources import TextSource
    from densitylab.data.tokenizer import TrainedBPE

    stages: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    source, ents, spec = TextSource(str(path), sample_by="line"), CapitalizedEntities(), TrainedBPE(vocab, 2)
    recipe = prep.DataRecipe(
        source, spec, ents, 128, {"repetitions": [1, 2], "per_group": 4, "length": 64, "alphabet_size": 256}, 0
    )
    patches = [
        (TextSource, "load", "read"),
        (CapitalizedEntities, "extract", "entities"),
        (TrainedBPE, "build", "tokenizer_training"),
        (prep.DataRecipe, "_pack", "tokenize + pack + write"),
        (prep.DataRecipe, "_write_artifacts", "artifacts"),
    ]
    with ExitStack() as stack:  # the classes' methods, timed (the dataclasses are frozen)
        for cls, name, stage in patches:
            stack.enter_context(mock.patch.object(cls, name, timed(stage, getattr(cls, name))))
        t = time.perf_counter()
        recipe.build(cache / "data" / "bench", cache)
        total = time.perf_counter() - t
    meta = json.loads((cache / "data" / "bench" / "meta.json").read_text())
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    after = total - stages.get("tokenizer_training", 0.0)
    return {
        "tokens": tokens,
        "seconds_total": total,
        "seconds_after_tokenizer_training": after,
        "tokens_per_sec": tokens / after,
        "stages": stages,
        "entities": meta["entities"],
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=40.0, help="generated corpus size in MB (10^6 characters)")
    ap.add_argument("--vocab", type=int, default=512, help="BPE vocabulary size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--text", default=None, help="a real text file repeated (whole copies) to --mb instead of the generated corpus"
    )
    ap.add_argument("--workdir", default=None, help="folder for the corpus and the data cache (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--child", choices=["bare", "pipeline"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="densitylab-bench-"))
    if a.child is None and a.workdir is None:
        try:
            _run(a, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    _run(a, work)


def _run(a: argparse.Namespace, work: Path) -> None:
    corpus = work / (f"corpus-{a.mb:g}mb-s{a.seed}.txt" if a.text is None else f"{Path(a.text).stem}-{a.mb:g}mb.txt")
    if a.child == "bare":
        print(json.dumps(_bare(corpus, a.vocab)))
        return
    if a.child == "pipeline":
        with tempfile.TemporaryDirectory(dir=work) as cache:
            print(json.dumps(_pipeline(corpus, a.vocab, Path(cache))))
        return
    work.mkdir(parents=True, exist_ok=True)
    if not corpus.is_file():
        if a.text is None:
            corpus.write_text(generate_corpus(int(a.mb * 1e6), a.seed))
        else:
            one = Path(a.text).read_text()
            corpus.write_text(one * max(1, round(a.mb * 1e6 / len(one))))
    out = {"corpus_mb": corpus.stat().st_size / 1e6, "vocab": a.vocab}
    for child in ("bare", "pipeline"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            child,
            "--mb",
            str(a.mb),
            "--vocab",
            str(a.vocab),
            "--seed",
            str(a.seed),
            "--workdir",
            str(work),
            *(["--text", a.text] if a.text else []),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"bench/data_prep.py: the {child} child failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
        out[child] = json.loads(res.stdout.strip().splitlines()[-1])
    bare, pipe = out["bare"], out["pipeline"]
    out["ratio"] = pipe["tokens_per_sec"] / bare["tokens_per_sec"]
    out["rss_bound_mb"] = 1024 + 4 * bare["array_bytes"] / 2**20
    print(f"corpus {out['corpus_mb']:.1f} MB, vocab {a.vocab}")
    print(
        f"bare tokenizer: {bare['tokens']:,} tokens in {bare['seconds']:.2f} s = "
        f"{bare['tokens_per_sec'] / 1e6:.2f} M tokens/s, peak RSS {bare['peak_rss_mb']:.0f} MB"
    )
    print(
        f"preparation:    {pipe['tokens']:,} tokens in {pipe['seconds_after_tokenizer_training']:.2f} s after "
        f"tokenizer training = {pipe['tokens_per_sec'] / 1e6:.2f} M tokens/s, peak RSS {pipe['peak_rss_mb']:.0f} MB "
        f"(bound 1 GB + 4x token array = {out['rss_bound_mb']:.0f} MB)"
    )
    print("  stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in pipe["stages"].items()))
    print(f"ratio preparation / bare: {out['ratio']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
