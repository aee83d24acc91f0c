"""Tests of ``densitylab export`` (densitylab.export): a checkpoint as a transformers GPT-2 folder.

Tiny models are built here with every parameter randomised (GPT's own init leaves biases at 0 and LayerNorm gains at
1, which would hide a bias or LayerNorm mapping bug), saved as fake Lightning checkpoints next to a real byte-level
BPE ``tokenizer.json``, exported, and compared with transformers' GPT2LMHeadModel, AutoTokenizer and TransformerLens
4's TransformerBridge. The end-to-end test exports a real ``train.py experiment=smoke`` run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densitylab import export
from densitylab.errors import ConfigError
from densitylab.model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=320, block_size=16, n_layer=2, n_head=2, n_embd=32, mlp_ratio=4)
TEXTS = [
    "Alice Smith was born in Paris. She works as a baker in Lyon.",
    "Bob Jones was born in Rome and studied music at the conservatory.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Numbers like 1234 and 56.78 appear; so do symbols: #, @, % and é, ü, 漢字.",
] * 8
STRINGS = [
    "Alice Smith was born in Paris.",
    " leading space and  double  spaces\nand a newline",
    "first document<|endoftext|>second document",
    "unicode: é ü 漢字 🙂",
    "",
]
HOOKS = ("mlp.hook_post", "attn.hook_z", "hook_resid_post")


# ----------------------------------------------------------------------------- building runs
@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    """A real byte-level BPE tokenizer.json (densitylab's trainer; ``<|endoftext|>`` is id 0), 300 tokens."""
    from densitylab.data.tokenizer import train_bpe

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(TEXTS, vocab_size=300, min_frequency=2).save(str(path))
    return path


def randomized_gpt(seed: int = 0, **overrides) -> GPT:
    """A tiny GPT (eval mode) whose weights, biases and LayerNorm gains are all random and O(1)-effective."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:  # matrices and embeddings (wte is tied to lm_head)
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model.eval()


def fake_checkpoint(model: GPT, step: int = 7) -> dict:
    """What Lightning saves for LitGPT, minus the optimizer state (enough for export)."""
    return {
        "state_dict": {"model." + k: v.clone() for k, v in model.state_dict().items()},
        "hyper_parameters": {"net": dataclasses.asdict(model.config), "compile": False},
        "global_step": step,
        "epoch": 0,
        "pytorch-lightning_version": "2.5.0",
    }


def make_run(root: Path, tokenizer_json: Path, model: GPT | None = None, step: int = 7, name: str = "last") -> Path:
    """``root/checkpoints/{name}.ckpt`` + ``root/tokenizer.json`` + ``root/.hydra/``: a run folder."""
    model = model if model is not None else randomized_gpt()
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / ".hydra").mkdir(exist_ok=True)
    (root / ".hydra" / "config.yaml").write_text("model: {}\n")
    (root / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    torch.save(fake_checkpoint(model, step), root / "checkpoints" / f"{name}.ckpt")
    return root


def ids_for(seed: int = 1, b: int = 3, t: int = TINY["block_size"]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (b, t), generator=g)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), to show a failed export changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    """Names in ``path``'s parent that start like ``path`` (temporary export folders included)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.lstrip(".").startswith(path.name))


def assert_close(got: torch.Tensor, ref: torch.Tensor, what: object = "") -> None:
    """float32 agreement: max |got - ref| < 1e-5, relative to the activation's scale once it exceeds 1 (relu2's
    squares reach ~20 here, where eager vs SDPA rounding alone is ~1e-5)."""
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    diff, scale = (got - ref).abs().max().item(), max(1.0, ref.abs().max().item())
    assert diff < 1e-5 * scale, (what, diff, scale)


def error_line(capsys) -> str:
    """The one ``error:`` line a refused export printed (and nothing on stdout)."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == ""
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def no_network(monkeypatch):
    """Offline: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set and every socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError(f"network access attempted in an offline test: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- the conversion
def test_to_hf_state_dict_transposes_linears_and_fills_zero_biases():
    model = randomized_gpt(bias=False)
    cfg = model.config
    sd = export.to_hf_state_dict({"model." + k: v for k, v in model.state_dict().items()}, dataclasses.asdict(cfg))
    d, d_mlp = cfg.n_embd, cfg.d_mlp
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (d, 3 * d)
    assert sd["transformer.h.1.mlp.c_fc.weight"].shape == (d, d_mlp)
    assert sd["transformer.h.1.mlp.c_proj.weight"].shape == (d_mlp, d)
    assert torch.equal(sd["transformer.h.1.mlp.c_fc.weight"], model.transformer.h[1].mlp.c_fc.weight.t())
    assert torch.equal(sd["transformer.h.0.attn.c_proj.weight"], model.transformer.h[0].attn.c_proj.weight.t())
    for name in ("transformer.h.0.attn.c_attn.bias", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.bias"):
        assert sd[name].abs().sum() == 0
    assert sd["transformer.h.0.attn.c_attn.bias"].shape == (3 * d,)
    assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_to_hf_state_dict_refuses_wrong_shapes_missing_keys_and_swiglu():
    model = randomized_gpt()
    sd = dict(model.state_dict())
    with pytest.raises(ConfigError, match=r"shape \(32, 96\): expected \(96, 32\)"):
        export.to_hf_state_dict({**sd, "transformer.h.0.attn.c_attn.weight": torch.zeros(32, 96)}, model.config)
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ConfigError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'\]"):
        export.to_hf_state_dict(sd, model.config)
    swiglu = randomized_gpt(activation="swiglu")
    with pytest.raises(ConfigError, match="no gated MLP"):
        export.to_hf_state_dict(swiglu.state_dict(), swiglu.config)


def test_hf_config_fields():
    cfg = GPTConfig(**TINY, activation="gelu", dropout=0.1)
    c = export.hf_config(cfg, eos_id=0)
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head, c.n_inner) == (320, 16, 32, 2, 2, 128)
    assert c.activation_function == "gelu_new" and c.layer_norm_epsilon == 1e-5
    assert c.resid_pdrop == c.embd_pdrop == c.attn_pdrop == 0.1
    assert c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn
    assert c.tie_word_embeddings and c.bos_token_id == c.eos_token_id == c.pad_token_id == 0
    assert export.hf_config(dataclasses.asdict(GPTConfig(**TINY, activation="relu2")), 3).activation_function == "relu2"
    with pytest.raises(ConfigError, match="eos_id=320"):
        export.hf_config(cfg, 320)


def test_densitylab_layernorm_and_gelu_are_gpt2s():
    """The facts the conversion rests on: LayerNorm eps 1e-5, gelu = transformers' gelu_new, relu2 = its relu2."""
    import torch.nn.functional as F
    from transformers.activations import ACT2FN

    model = GPT(GPTConfig(**TINY))
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    x = torch.linspace(-6, 6, 1001)
    assert (ACT2FN["gelu_new"](x) - F.gelu(x, approximate="tanh")).abs().max() < 1e-6
    assert torch.equal(ACT2FN["relu2"](x), F.relu(x).square())


# ----------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "relu2"])
def test_exported_model_matches_densitylab(tmp_path, tokenizer_json, activation, bias, no_network):
    from transformers import GPT2LMHeadModel

    model = randomized_gpt(activation=activation, bias=bias)
    run = make_run(tmp_path / "run", tokenizer_json, model)
    out = tmp_path / "hf"
    assert export.main([str(run), str(out)]) == 0

    ids = ids_for()
    with torch.no_grad():
        ref = model(ids)
    assert ref.std() > 0.5  # a test batch with real signal, not near-zero logits
    for attn in ("sdpa", "eager"):
        hf, info = GPT2LMHeadModel.from_pretrained(out, attn_implementation=attn, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
        with torch.no_grad():
            got = hf.eval()(ids).logits
        assert (got - ref).abs().max() < 1e-5, (attn, (got - ref).abs().max())

    prompt = ids[:1, :5]
    gen = hf.generate(prompt, max_new_tokens=4, do_sample=False)  # greedy, with transformers' KV cache
    seq = prompt
    for _ in range(4):  # densitylab's greedy continuation, recomputed from scratch each step
        with torch.no_grad():
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
    assert gen[0, 5] == model(prompt)[0, -1].argmax()
    assert torch.equal(gen, seq)


def test_exported_tokenizer_is_the_runs(tmp_path, tokenizer_json, no_network):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    run = make_run(tmp_path / "run", tokenizer_json)
    out = tmp_path / "hf"
    assert export.main([str(run), str(out)]) == 0
    assert (out / "tokenizer.json").read_bytes() == tokenizer_json.read_bytes()

    tok = AutoTokenizer.from_pretrained(out)
    raw = Tokenizer.from_file(str(run / "tokenizer.json"))
    eos = "<|endoftext|>"
    assert tok.eos_token == tok.bos_token == tok.unk_token == tok.pad_token == eos
    assert tok.eos_token_id == tok.pad_token_id == raw.token_to_id(eos) == 0
    assert tok.model_max_length == TINY["block_size"]
    for text in STRINGS:
        ids = tok.encode(text)
        assert ids == raw.encode(text).ids, text  # no special tokens added
        assert tok.decode(ids) == text
    assert tok.encode("a<|endoftext|>b").count(0) == 1
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bos_token_id"] == gen["eos_token_id"] == gen["pad_token_id"] == 0


def test_export_record_and_folder(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json, randomized_gpt(activation="relu2"), step=7)
    out = tmp_path / "hf"
    assert export.main([str(run), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("exported ") and f"to {out}" in line and "(step 7)" in line
    record = json.loads((out / "densitylab_export.json").read_text())
    assert record["source"] == str((run / "checkpoints" / "last.ckpt").resolve())
    assert record["global_step"] == 7
    assert record["net"] == dataclasses.asdict(GPTConfig(**TINY, activation="relu2"))
    assert record["hf_activation_function"] == "relu2"
    assert 0 <= record["verified_max_abs_logit_diff"] < 1e-5
    assert "blocks.{i}.mlp.hook_post" in record["hooks"]["transformers"]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "densitylab_export.json"} <= names  # fmt: skip
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert siblings(out) == ["hf"]  # no temporary folder left


def test_run_folder_picks_the_newest_step_and_probe_checkpoints_export(tmp_path, tokenizer_json):
    run = make_run(tmp_path / "run", tokenizer_json, randomized_gpt(seed=1), step=5, name="last")
    torch.save(fake_checkpoint(randomized_gpt(seed=2), 9), run / "checkpoints" / "step000009.ckpt")
    probe = run / "checkpoints" / "probe"
    probe.mkdir()
    probe_model = randomized_gpt(seed=3)
    torch.save({**fake_checkpoint(probe_model, 3), "densitylab": {"kind": "probe"}}, probe / "step000003.ckpt")

    def exported(*argv: str) -> dict:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert export.main([*argv, str(out)]) == 0
        return json.loads((out / "densitylab_export.json").read_text())

    assert exported(str(run))["global_step"] == 9  # a stale last.ckpt (step 5) loses to step 9
    assert exported(str(run), "--step", "5")["source"].endswith("last.ckpt")
    rec = exported(str(run), "--step", "3")
    assert rec["source"] == str((probe / "step000003.ckpt").resolve())
    rec = exported(str(probe / "step000003.ckpt"))  # a probe checkpoint file: the tokenizer of its run folder
    assert rec["run_dir"] == str(run.resolve()) and rec["global_step"] == 3

    only_probes = tmp_path / "probes_only"
    make_run(only_probes, tokenizer_json, name="x")
    (only_probes / "checkpoints" / "x.ckpt").unlink()
    (only_probes / "checkpoints" / "probe").mkdir()
    torch.save(fake_checkpoint(probe_model, 4), only_probes / "checkpoints" / "probe" / "step000004.ckpt")
    assert exported(str(only_probes))["global_step"] == 4


def test_add_arguments_and_run_work_in_another_parser(tmp_path, tokenizer_json, capsys):
    """How ``densitylab.cli`` calls it: a subcommand parser set up by add_arguments, then run(args)."""
    run = make_run(tmp_path / "run", tokenizer_json)
    parser = argparse.ArgumentParser(prog="densitylab")
    sub = parser.add_subparsers(dest="command", required=True)
    export.add_arguments(sub.add_parser("export"))
    args = parser.parse_args(["export", str(run), str(tmp_path / "hf"), "--format", "hf", "--step", "7"])
    assert export.run(args) == 0
    assert capsys.readouterr().out.startswith("exported ")
    assert export.run(parser.parse_args(["export", str(run), str(tmp_path / "hf")])) == 2
    assert "is not empty" in error_line(capsys)


# ----------------------------------------------------------------------------- bad inputs
def test_refuses_a_folder_without_checkpoint(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json)
    (run / "checkpoints" / "last.ckpt").unlink()
    out = tmp_path / "hf"
    assert export.main([str(run), str(out)]) == 2
    line = error_line(capsys)
    assert str(run) in line and "holds no checkpoint" in line and "expected" in line
    assert not out.exists()
    assert export.main([str(tmp_path / "nowhere"), str(out)]) == 2
    assert "does not exist" in error_line(capsys) and not out.exists()


def test_refuses_a_truncated_checkpoint(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    out = tmp_path / "hf"
    assert export.main([str(ckpt), str(out)]) == 2
    line = error_line(capsys)
    assert str(ckpt) in line and "truncated or corrupt" in line
    assert export.main([str(run), str(out)]) == 2  # the run folder: no readable checkpoint left
    assert "no readable checkpoint" in error_line(capsys)
    assert not out.exists() and siblings(out) == []


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"state_dict": {}, "x": Path("/")}, "not a safe checkpoint"),
        ({"weights": torch.zeros(2)}, "not a Lightning checkpoint"),
        ({"state_dict": {}, "hyper_parameters": {}}, "not a densitylab one"),
    ],
    ids=["python-object", "not-lightning", "no-net"],
)
def test_refuses_checkpoints_that_are_not_densitylab_ones(tmp_path, capsys, payload, expected):
    ckpt = tmp_path / "bad.ckpt"
    torch.save(payload, ckpt)
    assert export.main([str(ckpt), str(tmp_path / "hf")]) == 2
    assert expected in error_line(capsys)
    assert not (tmp_path / "hf").exists()


def test_refuses_an_unwritable_out_dir(tmp_path, tokenizer_json, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 0o500 does not stop root (the next test covers the check)")
    run = make_run(tmp_path / "run", tokenizer_json)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert export.main([str(run), str(locked / "hf")]) == 2
        line = error_line(capsys)
        assert str(locked / "hf") in line and "not writable" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_refuses_an_unwritable_out_dir_as_root_too(tmp_path, tokenizer_json, capsys, monkeypatch):
    """The same check where chmod does not bite (root): the folder reported not writable by os.access."""
    run = make_run(tmp_path / "run", tokenizer_json)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert export.main([str(run), str(locked / "hf")]) == 2
    line = error_line(capsys)
    assert str(locked / "hf") in line and f"{locked} is not writable" in line
    assert list(locked.iterdir()) == []


def test_refuses_an_out_dir_under_a_file(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert export.main([str(run), str(blocker / "hf")]) == 2
    assert "under a regular file" in error_line(capsys)
    assert export.main([str(run), str(blocker)]) == 2
    assert "is a file" in error_line(capsys) and blocker.read_text() == "x"


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "force-over-old-export"])
def test_a_failed_write_leaves_nothing_behind(tmp_path, tokenizer_json, capsys, monkeypatch, existing):
    """A write that fails half-way (disk full, permission; works as root too): one line, OUT as it was."""
    run = make_run(tmp_path / "run", tokenizer_json)
    out = tmp_path / "deep" / "er" / "hf"
    if existing:
        assert export.main([str(run), str(out)]) == 0
        capsys.readouterr()
    before = snapshot(out) if existing else None

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(export, "_write_tokenizer_files", disk_full)
    argv = [str(run), str(out), "--force"] if existing else [str(run), str(out)]
    assert export.main(argv) == 2
    line = error_line(capsys)
    assert "cannot be written" in line and "No space left on device" in line
    if existing:
        assert snapshot(out) == before and siblings(out) == ["hf"]
    else:
        assert not (tmp_path / "deep").exists()  # the parents it made are gone too


def test_refuses_a_non_empty_out_dir_unless_forced(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export.main([str(run), str(out)]) == 2
    line = error_line(capsys)
    assert str(out) in line and "not empty" in line and "--force" in line
    assert snapshot(out) == {"notes.txt": b"keep me"}

    assert export.main([str(run), str(out), "--force"]) == 2  # --force replaces only an earlier export
    assert "is not an earlier export" in error_line(capsys)
    assert snapshot(out) == {"notes.txt": b"keep me"}
    (out / "notes.txt").unlink()
    assert export.main([str(run), str(out)]) == 0
    (out / "notes.txt").write_text("added to the export")
    assert export.main([str(run), str(out), "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert siblings(out) == ["hf"]  # the old folder and the temporary one are gone
    (tmp_path / "empty").mkdir()
    assert export.main([str(run), str(tmp_path / "empty")]) == 0  # an empty folder is fine without --force


def test_force_never_replaces_a_run_folder(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json)
    other = make_run(tmp_path / "other", tokenizer_json)
    before = snapshot(other)
    assert export.main([str(run), str(other), "--force"]) == 2
    assert "is not an earlier export (no densitylab_export.json)" in error_line(capsys)
    assert snapshot(other) == before
    probes = other / "probes"  # a run's subfolder, or a multirun folder holding runs: never replaced either
    probes.mkdir()
    (probes / "density.parquet").write_bytes(b"table")
    assert export.main([str(run), str(probes), "--force"]) == 2
    assert "is not an earlier export" in error_line(capsys)
    assert export.main([str(run), str(tmp_path), "--force"]) == 2
    error_line(capsys)
    assert (probes / "density.parquet").read_bytes() == b"table" and snapshot(other) != {}
    assert export.main([str(run / "checkpoints" / "last.ckpt"), str(run), "--force"]) == 2
    assert "holds the checkpoint being exported" in error_line(capsys)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_refuses_a_swiglu_model(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json, randomized_gpt(activation="swiglu"))
    out = tmp_path / "hf"
    assert export.main([str(run), str(out)]) == 2
    line = error_line(capsys)
    assert "'swiglu'" in line and "GPT-2 has no gated MLP" in line and "relu" in line
    assert not out.exists()


def test_refuses_an_unknown_format_a_missing_step_and_a_missing_tokenizer(tmp_path, tokenizer_json, capsys):
    run = make_run(tmp_path / "run", tokenizer_json)
    out = tmp_path / "hf"
    assert export.main([str(run), str(out), "--format", "gguf"]) == 2
    line = error_line(capsys)
    assert "--format='gguf'" in line and "('hf',)" in line
    assert export.main([str(run), str(out), "--step", "99"]) == 2
    line = error_line(capsys)
    assert "no checkpoint of step 99" in line and "(7)" in line
    assert export.main([str(run), str(out), "--step", "x"]) == 2
    assert "--step='x'" in error_line(capsys)
    (run / "tokenizer.json").write_text("{not json")
    assert export.main([str(run), str(out)]) == 2
    assert "is not a valid tokenizer.json" in error_line(capsys)
    (run / "tokenizer.json").unlink()
    assert export.main([str(run), str(out)]) == 2
    line = error_line(capsys)
    assert str(run / "tokenizer.json") in line and "does not exist" in line
    assert not out.exists() and siblings(out) == []


def test_missing_transformers_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'", name="transformers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ConfigError, match=r"pip install 'densitylab\[hf\]'"):
        export.hf_config(GPTConfig(**TINY), 0)


# ----------------------------------------------------------------------------- TransformerLens 4
@pytest.mark.parametrize(
    "activation, bias", [("relu", True), ("gelu", True), ("relu2", False)], ids=["relu", "gelu", "relu2-nobias"]
)
def test_transformer_lens_bridge_sees_densitylab_activations(tmp_path, tokenizer_json, no_network, activation, bias):
    """TransformerBridge.boot_transformers on the exported folder (offline): the raw bridge and compatibility mode
    without weight processing give densitylab's activations at its hook names; compatibility mode with
    HookedTransformer's processing (fold_ln, centering, folded value biases) gives them in its own coordinates:
    centred residual stream and logits, hook_z less the folded value bias, the same MLP activations."""
    from transformer_lens.model_bridge import TransformerBridge

    model = randomized_gpt(activation=activation, bias=bias)
    run = make_run(tmp_path / "run", tokenizer_json, model)
    out = tmp_path / "hf"
    assert export.main([str(run), str(out)]) == 0
    ids = ids_for(b=2)
    ref_logits, ref = model.run_with_cache(ids)
    L, H, dh = model.config.n_layer, model.config.n_head, model.config.d_head

    def boot(compat: dict | None):
        bridge = TransformerBridge.boot_transformers(str(out), device="cpu")
        if compat is not None:
            bridge.enable_compatibility_mode(disable_warnings=True, **compat)
        with torch.no_grad():
            return bridge.run_with_cache(ids)

    for compat in (None, {"no_processing": True}):  # the raw bridge; compatibility mode without processing
        logits, cache = boot(compat)
        assert (logits - ref_logits).abs().max() < 1e-5
        for i in range(L):
            for hook in HOOKS:
                name = f"blocks.{i}.{hook}"
                assert cache[name].shape == ref[name].shape, name
                assert_close(cache[name], ref[name], (compat, name))

    logits, cache = boot({})  # compatibility mode with HookedTransformer's default processing
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    assert (logits - centred(ref_logits)).abs().max() < 1e-5
    for i in range(L):
        block = model.transformer.h[i]
        d = model.config.n_embd
        w_v = block.attn.c_attn.weight[2 * d :]  # (d, d), Linear (out, in)
        b_v = torch.zeros(d) if not bias else block.attn.c_attn.bias[2 * d :] + w_v @ block.ln_1.bias
        assert (cache[f"blocks.{i}.mlp.hook_post"] - ref[f"blocks.{i}.mlp.hook_post"]).abs().max() < 1e-5
        assert (
            cache[f"blocks.{i}.attn.hook_z"] - (ref[f"blocks.{i}.attn.hook_z"] - b_v.view(H, dh))
        ).abs().max() < 1e-5
        assert (cache[f"blocks.{i}.hook_resid_post"] - centred(ref[f"blocks.{i}.hook_resid_post"])).abs().max() < 1e-5


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_export_of_a_trained_smoke_run(smoke_run, tmp_path, no_network):
    """``python -m densitylab.export RUN OUT`` on a real ``train.py experiment=smoke`` run folder: the transformers
    model's logits equal those of the Lightning checkpoint loaded into densitylab's GPT."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "densitylab.export", str(smoke_run), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("exported ") and str(out) in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr  # no progress bars, no warnings

    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["hyper_parameters"]["net"])).eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    tok = AutoTokenizer.from_pretrained(out)
    text = "Alice was born in the city of"
    ids = torch.tensor([tok.encode(text)])
    full = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), generator=torch.Generator())
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        for batch in (ids, full):
            assert (hf(batch).logits - model(batch)).abs().max() < 1e-5
        gen = hf.generate(ids, max_new_tokens=3, do_sample=False)
        assert gen[0, ids.shape[1]] == model(ids)[0, -1].argmax()
    record = json.loads((out / "densitylab_export.json").read_text())
    assert record["global_step"] == ckpt["global_step"] == 80
