"""Training throughput: a plain PyTorch loop against the Lightning training step, same model and data.

    python bench/throughput.py                 # tiny model: 4 layers, 4 heads, d=128, T=128, B=32, V=4096, fp32
    python bench/throughput.py --steps 60 --json out.json

Both loops run the same GPT, AdamW (decay on >= 2-D params), gradient clipping at 1.0, the same
packed-window DataLoader (``WindowDataset`` over a random token stream), fp32 on CPU (bf16-mixed on
CUDA). The Lightning side uses the real ``LitGPT`` with the default callbacks (throughput logger,
finite-loss guard), the progress bar and the CSV logger, i.e. what ``train.py`` runs, minus
checkpoint writes. Prints tokens/s for each and their ratio (Lightning / plain). Not a test: numbers
go into notes and the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from densitylab.data.datamodule import WindowDataset, collate_batch  # noqa: E402
from densitylab.data.packing import pack_documents  # noqa: E402
from densitylab.lit import LitGPT, cosine_with_warmup  # noqa: E402

MODEL = dict(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128)


def make_loader(batch: int, block: int, vocab: int, n_windows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(1, vocab, (n_windows * block + 1,), generator=g).tolist()
    packed = pack_documents([stream], eos_id=0, block_size=block)
    return torch.utils.data.DataLoader(WindowDataset(packed), batch_size=batch, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed), collate_fn=collate_batch)


def plain_loop(args, device) -> float:
    """nanoGPT-style loop; returns tokens/s over the timed steps."""
    torch.manual_seed(0)
    lit = LitGPT(model=dict(MODEL, block_size=args.block), lr=1e-3, warmup_steps=10)
    model = lit.model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, 10, args.warmup + args.steps, 0.1))
    loader = make_loader(args.batch, args.block, MODEL["vocab_size"], (args.warmup + args.steps) * args.batch)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0 = None
    for i, batch in enumerate(loader):
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
        if i + 1 == args.warmup + args.steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch * args.block / (time.perf_counter() - t0)


class _Timer:
    def __init__(self, warmup: int, steps: int, cuda: bool) -> None:
        import lightning as L

        class T(L.Callback):
            def on_train_batch_start(s, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    if cuda:
                        torch.cuda.synchronize()
                    s.t0 = time.perf_counter()

            def on_train_end(s, trainer, pl_module):
                if cuda:
                    torch.cuda.synchronize()
                s.t1 = time.perf_counter()

        self.cb = T()


def lightning_loop(args, device) -> float:
    import lightning as L

    from densitylab.callbacks import FiniteLossGuard, ThroughputLogger

    torch.manual_seed(0)
    lit = LitGPT(model=dict(MODEL, block_size=args.block), lr=1e-3, warmup_steps=10)
    loader = make_loader(args.batch, args.block, MODEL["vocab_size"], (args.warmup + args.steps) * args.batch)
    timer = _Timer(args.warmup, args.steps, device.type == "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device.type if device.type == "cuda" else "cpu", devices=1,
            precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_steps=args.warmup + args.steps, gradient_clip_val=1.0, log_every_n_steps=10,
            logger=L.pytorch.loggers.CSVLogger(tmp, name="", version=""), enable_checkpointing=False,
            enable_model_summary=False, enable_progress_bar=not args.no_progress_bar, limit_val_batches=0,
            callbacks=[ThroughputLogger(), FiniteLossGuard(), timer.cb], default_root_dir=tmp,
        )
        trainer.fit(lit, train_dataloaders=loader)
    return args.steps * args.batch * args.block / (timer.cb.t1 - timer.cb.t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="alternate plain/Lightning this many times; best of each")
    ap.add_argument("--no-progress-bar", action="store_true")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plain, light = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(args, device))
        light.append(lightning_loop(args, device))
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "model": MODEL | {"block_size": args.block}, "batch": args.batch, "timed_steps": args.steps,
        "plain_tokens_per_sec": max(plain), "lightning_tokens_per_sec": max(light),
        "ratio": max(light) / max(plain), "all_plain": plain, "all_lightning": light,
    }
    print(f"plain PyTorch loop : {result['plain_tokens_per_sec']:10.0f} tokens/s")
    print(f"Lightning step     : {result['lightning_tokens_per_sec']:10.0f} tokens/s")
    print(f"ratio (Lightning / plain): {result['ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
