"""``densitylab export RUN_DIR|CKPT OUT_DIR``: a densitylab checkpoint as a Hugging Face ``transformers`` GPT-2 folder.

The folder loads with ``transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR)`` and
``transformers.AutoTokenizer.from_pretrained(OUT_DIR)``, and with TransformerLens 4
(``TransformerBridge.boot_transformers(OUT_DIR)``), with no network access. It holds:

- ``config.json``: a :class:`transformers.GPT2Config` (:func:`hf_config`);
- ``model.safetensors``: the weights in float32, GPT-2 layout (:func:`to_hf_state_dict`);
- ``generation_config.json``: ``bos_token_id = eos_token_id = pad_token_id`` = the id of ``<|endoftext|>``;
- ``tokenizer.json``: the run's own tokenizer, copied byte for byte; ``tokenizer_config.json`` and
  ``special_tokens_map.json``: ``<|endoftext|>`` as bos/eos/unk/pad, ``model_max_length = block_size``;
- ``densitylab_export.json``: where it came from (checkpoint, global step, GPTConfig), the measured largest
  logit difference between the exported model and densitylab's on a test batch, and which ``transformers`` module
  computes each densitylab / TransformerLens hook point.

The conversion is exact up to float32 rounding (the logits agree to ~1e-6): densitylab's GPT is GPT-2's
architecture (pre-LayerNorm blocks, LayerNorm eps 1e-5, learned positions, attention scaled by 1/sqrt(d_head),
tied ``lm_head``). ``nn.Linear`` weights (out, in) become GPT-2's ``Conv1D`` weights (in, out); a ``bias=False``
model gets zero biases (GPT-2 always has them, and a zero bias adds nothing); ``gelu`` (tanh approximation) is
GPT-2's ``gelu_new``, ``relu2`` is transformers' ``relu2``. A ``swiglu`` model is refused: GPT-2 has no gated MLP.

Nothing is half-written: the folder is written as a hidden sibling ``.OUT_DIR.export-*`` and renamed into place
once complete and verified; with ``--force`` an existing ``OUT_DIR`` is replaced only then. Every bad input is one
line ``error: ...`` on stderr and exit status 2 (:class:`~densitylab.errors.ConfigError` inside).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from densitylab.errors import ConfigError, DensitylabError

FORMATS = ("hf",)
EOS = "<|endoftext|>"
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which densitylab.model uses
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new", "relu2": "relu2"}  # densitylab -> transformers ACT2FN
VERIFY_TOL = 1e-3  # largest |logit difference| the export's self-check accepts (float32 rounding is ~1e-6)
INSTALL_HINT = "pip install 'densitylab[hf]'"
EXPORT_RECORD = "densitylab_export.json"

# densitylab / TransformerLens hook name -> where transformers' GPT2LMHeadModel computes that activation
HOOKS = {
    "blocks.{i}.hook_resid_pre": "input of transformer.h.{i} (hidden_states[{i}] of output_hidden_states=True)",
    "blocks.{i}.attn.hook_z": "input of transformer.h.{i}.attn.c_proj, viewed (B, T, n_head, d_head)",
    "blocks.{i}.hook_attn_out": "output of transformer.h.{i}.attn.c_proj (after resid_dropout)",
    "blocks.{i}.hook_resid_mid": "input of transformer.h.{i}.ln_2",
    "blocks.{i}.mlp.hook_pre": "output of transformer.h.{i}.mlp.c_fc",
    "blocks.{i}.mlp.hook_post": "output of transformer.h.{i}.mlp.act",
    "blocks.{i}.hook_mlp_out": "output of transformer.h.{i}.mlp (after its dropout)",
    "blocks.{i}.hook_resid_post": "output of transformer.h.{i} (hidden_states[{i}+1], except the last block's: "
    "transformers' hidden_states[n_layer] is after ln_f)",
}


# ----------------------------------------------------------------------------- lazy imports
def _transformers():
    """The ``transformers`` module, or a ConfigError naming the extra that installs it."""
    try:
        import safetensors  # noqa: F401
        import transformers
    except ImportError as e:
        raise ConfigError(
            f"--format hf needs transformers and safetensors ({e.name or e} is not installed): {INSTALL_HINT}"
        ) from None
    return transformers


# ----------------------------------------------------------------------------- the conversion
def _net(net_config: Any):
    """``net_config`` (a GPTConfig or a mapping of its fields) as a :class:`~densitylab.model.GPTConfig`."""
    from densitylab.model import GPTConfig

    if isinstance(net_config, GPTConfig):
        return net_config
    if not isinstance(net_config, Mapping):
        raise ConfigError(f"model config {net_config!r}: expected a GPTConfig or a mapping of its fields")
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(net_config) - names)
    if unknown:
        raise ConfigError(f"model config has unknown fields {unknown}: expected GPTConfig fields {sorted(names)}")
    try:
        return GPTConfig(**dict(net_config))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model config {dict(net_config)}: {str(e).splitlines()[0]}") from None


def _check_exportable(cfg) -> None:
    if cfg.activation not in HF_ACTIVATIONS:
        raise ConfigError(
            f"model.net.activation={cfg.activation!r} cannot be exported to GPT-2: GPT-2 has no gated MLP "
            f"(expected one of {tuple(HF_ACTIVATIONS)})"
        )


def to_hf_state_dict(state_dict: Mapping[str, Any], net_config: Any) -> dict:
    """Map a densitylab GPT state dict onto ``transformers.GPT2LMHeadModel``'s parameter names and layouts.

    Args:
        state_dict: densitylab parameter name -> tensor, as ``GPT.state_dict()`` or a checkpoint's ``state_dict``
            (a leading ``model.`` and torch.compile's ``_orig_mod.`` are stripped). With L = ``n_layer``, d =
            ``n_embd``, d_mlp = ``mlp_ratio * n_embd``, V = ``vocab_size``, T = ``block_size``:
            ``transformer.wte.weight`` (V, d), ``transformer.wpe.weight`` (T, d), per block ``ln_1`` / ``ln_2``
            weight (d,) [and bias (d,)], ``attn.c_attn.weight`` (3d, d), ``attn.c_proj.weight`` (d, d),
            ``mlp.c_fc.weight`` (d_mlp, d), ``mlp.c_proj.weight`` (d, d_mlp) [biases (out,)], ``transformer.ln_f``,
            and optionally ``lm_head.weight`` (V, d), which must equal ``wte`` (tied).
        net_config: the model's :class:`~densitylab.model.GPTConfig`, or a mapping of its fields (a checkpoint's
            ``hyper_parameters["net"]``).
    Returns:
        A new dict of float32 CPU tensors with GPT-2's names: ``transformer.wte.weight`` (V, d),
        ``transformer.wpe.weight`` (T, d), ``transformer.h.{i}.ln_{1,2}.{weight,bias}`` (d,),
        ``transformer.h.{i}.attn.c_attn.weight`` (d, 3d) and ``.bias`` (3d,), ``attn.c_proj.weight`` (d, d),
        ``mlp.c_fc.weight`` (d, d_mlp) and ``.bias`` (d_mlp,), ``mlp.c_proj.weight`` (d_mlp, d),
        ``transformer.ln_f.{weight,bias}`` (d,), ``lm_head.weight`` (V, d) (the same values as ``wte``). Linear
        weights are transposed to ``Conv1D``'s (in, out); with ``bias=False`` every bias is zeros (exact).
    Raises:
        ConfigError: for a ``swiglu`` model (GPT-2 has no gated MLP), an invalid config, a missing or unexpected
            parameter, a parameter of the wrong shape, or an ``lm_head.weight`` that differs from ``wte``.
    """
    import torch

    cfg = _net(net_config)
    _check_exportable(cfg)
    sd = {}
    for k, v in state_dict.items():
        name = k[len("model.") :] if k.startswith("model.") else k
        name = name.replace("_orig_mod.", "")
        sd[name] = v
    d, d_mlp, V, T = cfg.n_embd, cfg.d_mlp, cfg.vocab_size, cfg.block_size
    expected: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, d), "transformer.wpe.weight": (T, d)}
    linears = {"attn.c_attn": (3 * d, d), "attn.c_proj": (d, d), "mlp.c_fc": (d_mlp, d), "mlp.c_proj": (d, d_mlp)}
    norms = [f"transformer.h.{i}.{n}" for i in range(cfg.n_layer) for n in ("ln_1", "ln_2")] + ["transformer.ln_f"]
    for i in range(cfg.n_layer):
        for mod, (out, inp) in linears.items():
            expected[f"transformer.h.{i}.{mod}.weight"] = (out, inp)
            if cfg.bias:
                expected[f"transformer.h.{i}.{mod}.bias"] = (out,)
    for n in norms:
        expected[f"{n}.weight"] = (d,)
        if cfg.bias:
            expected[f"{n}.bias"] = (d,)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected) - {"lm_head.weight"})
    if missing or unexpected:
        parts = [f"missing {missing[:4]}"] if missing else []
        parts += [f"unexpected {unexpected[:4]}"] if unexpected else []
        raise ConfigError(
            f"state_dict does not match model config {dataclasses.asdict(cfg)} ({'; '.join(parts)}): expected the "
            "parameters of densitylab.model.GPT"
        )
    for name, shape in expected.items():
        if tuple(sd[name].shape) != shape:
            raise ConfigError(
                f"state_dict[{name!r}] has shape {tuple(sd[name].shape)}: expected {shape} for model config "
                f"{dataclasses.asdict(cfg)}"
            )

    def t(name: str) -> torch.Tensor:
        return sd[name].detach().to(device="cpu", dtype=torch.float32)

    wte = t("transformer.wte.weight")
    if "lm_head.weight" in sd and not torch.equal(t("lm_head.weight"), wte):
        raise ConfigError("state_dict['lm_head.weight'] differs from transformer.wte.weight: expected tied weights")
    out = {"transformer.wte.weight": wte.clone(), "transformer.wpe.weight": t("transformer.wpe.weight").clone()}
    for i in range(cfg.n_layer):
        for mod, (n_out, _) in linears.items():
            key = f"transformer.h.{i}.{mod}"
            out[f"{key}.weight"] = t(f"{key}.weight").t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
            out[f"{key}.bias"] = t(f"{key}.bias").clone() if cfg.bias else torch.zeros(n_out)
    for n in norms:
        out[f"{n}.weight"] = t(f"{n}.weight").clone()
        out[f"{n}.bias"] = t(f"{n}.bias").clone() if cfg.bias else torch.zeros(d)
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied, as in GPT2LMHeadModel
    return out


def hf_config(net_config: Any, eos_id: int):
    """The :class:`transformers.GPT2Config` of a densitylab model.

    Args:
        net_config: a :class:`~densitylab.model.GPTConfig` or a mapping of its fields.
        eos_id: the token id of ``<|endoftext|>`` in the model's tokenizer (0 for a densitylab BPE), used as
            ``bos_token_id``, ``eos_token_id`` and ``pad_token_id``.
    Returns:
        ``GPT2Config`` with ``vocab_size``, ``n_positions = block_size``, ``n_embd``, ``n_layer``, ``n_head``,
        ``n_inner = mlp_ratio * n_embd``, ``activation_function`` (``relu`` / ``gelu_new`` / ``relu2``),
        ``resid_pdrop = embd_pdrop = attn_pdrop = dropout``, ``layer_norm_epsilon = 1e-5``, attention scaled by
        1/sqrt(d_head) only (``scale_attn_by_inverse_layer_idx=False``, ``reorder_and_upcast_attn=False``) and
        ``tie_word_embeddings=True``.
    Raises:
        ConfigError: for a ``swiglu`` model, an invalid config, an ``eos_id`` outside ``[0, vocab_size)``, or
            when transformers is not installed (the message says ``pip install 'densitylab[hf]'``).
    """
    cfg = _net(net_config)
    _check_exportable(cfg)
    if isinstance(eos_id, bool) or not isinstance(eos_id, int) or not 0 <= eos_id < cfg.vocab_size:
        raise ConfigError(f"eos_id={eos_id!r}: expected a token id in [0, {cfg.vocab_size})")
    transformers = _transformers()
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        activation_function=HF_ACTIVATIONS[cfg.activation],
        resid_pdrop=float(cfg.dropout),
        embd_pdrop=float(cfg.dropout),
        attn_pdrop=float(cfg.dropout),
        layer_norm_epsilon=LAYER_NORM_EPS,
        initializer_range=0.02,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        use_cache=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )


# ----------------------------------------------------------------------------- finding and reading checkpoints
def _step_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.glob("*.ckpt") if f.is_file() and not f.name.startswith("."))


def resolve_source(source: str | os.PathLike, step: int | None = None) -> tuple[Path, Path]:
    """The checkpoint file to export and the run folder it belongs to.

    Args:
        source: a run folder (its ``checkpoints/`` holds the checkpoints) or a checkpoint file (``.ckpt``),
            possibly a probe checkpoint ``RUN/checkpoints/probe/step*.ckpt``.
        step: for a run folder, the global step to export: the checkpoint of ``checkpoints/`` or
            ``checkpoints/probe/`` saved at that step; None = the newest of ``checkpoints/`` by global step
            (:func:`densitylab.runfolder.newest_checkpoint`, so never a stale ``last.ckpt``), or the newest probe
            checkpoint when there is no other. For a file, ``step`` must be the file's own step.
    Returns:
        ``(checkpoint, run_dir)``; ``run_dir`` is the parent of ``checkpoints/`` (for a probe checkpoint, of
        ``checkpoints/probe/``), or the checkpoint's own folder for a file outside a run folder.
    Raises:
        ConfigError: one line when ``source`` does not exist, holds no readable checkpoint, or has none at ``step``.
    """
    from densitylab.runfolder import checkpoint_step, newest_checkpoint

    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ConfigError(f"--step={step!r}: expected an integer >= 0 (a global step)")
    p = Path(source).expanduser()
    if not p.exists():
        raise ConfigError(f"{str(source)!r} does not exist: expected a run folder or a checkpoint file (.ckpt)")
    if p.is_file():
        run_dir = p.parent
        if run_dir.name == "probe" and run_dir.parent.name == "checkpoints":
            run_dir = run_dir.parent.parent
        elif run_dir.name == "checkpoints":
            run_dir = run_dir.parent
        if step is not None:
            found = checkpoint_step(p)
            if found != step:
                raise ConfigError(
                    f"--step {step}: {str(source)!r} is the checkpoint of step {found}: expected a run folder with "
                    f"--step, or the checkpoint file of step {step}"
                )
        return p, run_dir
    if not p.is_dir():
        raise ConfigError(f"{str(source)!r} is not a file or folder: expected a run folder or a checkpoint file")
    folder, probe = p / "checkpoints", p / "checkpoints" / "probe"
    if not folder.is_dir() and p.name == "checkpoints" and _step_files(p):
        raise ConfigError(f"{str(source)!r} is a checkpoints/ folder: expected its run folder {str(p.parent)!r}")
    if step is None:
        newest = newest_checkpoint(p)
        if newest is None:
            probes = [(s, f) for f in _step_files(probe) if (s := checkpoint_step(f)) is not None]
            newest = max(probes) if probes else None
        if newest is None:
            what = "no readable checkpoint" if _step_files(folder) or _step_files(probe) else "no checkpoint"
            raise ConfigError(
                f"{str(source)!r} holds {what} ({folder}/*.ckpt): expected the run folder of a run that saved "
                "one, or a checkpoint file"
            )
        return newest[1], p
    candidates = []
    for f in [*_step_files(folder), *_step_files(probe)]:
        if checkpoint_step(f) == step:
            candidates.append(f)
    if not candidates:
        have = sorted({s for f in [*_step_files(folder), *_step_files(probe)] if (s := checkpoint_step(f)) is not None})
        shown = ", ".join(map(str, have[:12])) + (" ..." if len(have) > 12 else "")
        raise ConfigError(
            f"--step {step}: {str(source)!r} has no checkpoint of step {step}: expected one of the saved steps "
            f"({shown or 'none'})"
        )
    candidates.sort(key=lambda f: (f.parent != folder, f.name.startswith("last"), f.name))  # step file first
    return candidates[0], p


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, Any, int | None]:
    """Read a densitylab checkpoint with ``torch.load(map_location="cpu", weights_only=True, mmap=True)``.

    Args:
        path: a Lightning checkpoint written by ``train.py`` (or a probe checkpoint).
    Returns:
        ``(state_dict, net_config, global_step)``: the checkpoint's ``state_dict`` (name -> tensor, names with their
        ``model.`` prefix), ``hyper_parameters["net"]`` as a :class:`~densitylab.model.GPTConfig`, and its
        ``global_step`` (optimizer steps completed; None when absent).
    Raises:
        ConfigError: one line for an empty, truncated or corrupt file, a file that holds Python objects (not a
            safe checkpoint), or a torch file that is not a densitylab checkpoint.
    """
    from densitylab.preflight import read_torch_checkpoint

    ckpt = read_torch_checkpoint(path, f"checkpoint {str(path)!r}")
    hp = ckpt["hyper_parameters"]
    step = ckpt.get("global_step")
    return dict(ckpt["state_dict"]), _net(hp["net"]), int(step) if isinstance(step, int) else None


def _tokenizer(path: Path, vocab_size: int):
    """``(tokenizers.Tokenizer, eos_id)`` of ``path``, checked against the model's vocabulary."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ConfigError(
            f"tokenizer {str(path)!r} does not exist: expected the run folder's tokenizer.json (or --tokenizer PATH)"
        )
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"tokenizer {str(path)!r} is not a valid tokenizer.json ({reason})") from None
    eos = tok.token_to_id(EOS)
    if eos is None:
        raise ConfigError(f"tokenizer {str(path)!r} has no {EOS} token: expected a densitylab (GPT-2 style) tokenizer")
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise ConfigError(
            f"tokenizer {str(path)!r} has {n} tokens but the model only {vocab_size}: expected the tokenizer the "
            "model was trained with"
        )
    return tok, eos


# ----------------------------------------------------------------------------- the output folder
def _check_out_dir(out: Path, force: bool, protected: list[Path]) -> None:
    """Refuse an OUT_DIR that is a file, not writable, non-empty without ``force``, or holds a run / the source."""
    shown = f"OUT_DIR={str(out)!r}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{shown} is a file: expected a folder path (new, empty, or an earlier export with --force)")
    resolved = out.resolve()
    for p in protected:
        try:
            p.resolve().relative_to(resolved)
        except ValueError:
            continue
        raise ConfigError(f"{shown} holds the checkpoint being exported ({p}): expected a folder outside the run")
    parent = resolved
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{shown} is under a regular file ({parent}): expected a folder path")
    where = resolved.parent if resolved.exists() else parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown} is not writable ({where} is not writable): expected a folder you can write to")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{shown} is not empty: expected a new or empty folder (or --force to replace it)")
        if not (out / "densitylab_export.json").is_file():
            raise ConfigError(
                f"{shown} is not an earlier export (no densitylab_export.json): --force replaces only a folder "
                "densitylab export wrote; expected another OUT_DIR"
            )


def _write_tokenizer_files(folder: Path, tokenizer_json: Path, block_size: int) -> None:
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": int(block_size),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _verify(folder: Path, model, cfg) -> float:
    """Load ``folder`` with transformers and return the largest |logit difference| to ``model`` on a test batch."""
    import torch

    transformers = _transformers()
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder), local_files_only=True).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=g)
    with torch.no_grad():
        ref = model(ids)
        got = hf(ids).logits
    return float((ref - got).abs().max())


def _publish_permissions(folder: Path) -> None:
    """Give ``folder`` (made by ``mkdtemp``, mode 0700) and its files the modes of a folder made by hand (0777 /
    0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)
    os.chmod(folder, 0o777 & ~umask)


def _replace(tmp: Path, out: Path) -> None:
    """Move the complete folder ``tmp`` to ``out``; an existing ``out`` is removed only once ``tmp`` is in place."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_hf(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    step: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    verify: bool = True,
) -> Path:
    """Export a densitylab checkpoint as a ``transformers`` GPT-2 folder (module docstring: what it holds).

    Args:
        source: a run folder or a checkpoint file (see :func:`resolve_source`).
        out_dir: the folder to create. It must be absent or empty, or, with ``force``, an earlier export (any
            folder of files but a run folder or one holding the source), replaced once the new one is complete.
        force: replace a non-empty ``out_dir``.
        step: export the checkpoint of this global step (run folder: step or probe checkpoint).
        tokenizer: the ``tokenizer.json`` to ship; default ``<run folder>/tokenizer.json``.
        verify: load the written folder with ``GPT2LMHeadModel.from_pretrained`` and compare its logits with
            densitylab's on two random sequences of ``block_size`` tokens before it is moved into place (the
            largest difference is recorded in ``densitylab_export.json`` as ``verified_max_abs_logit_diff``).
    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    Raises:
        ConfigError: one line for a source without a (readable) checkpoint, a corrupt or non-densitylab checkpoint,
            a ``swiglu`` model, a missing or mismatched tokenizer, an ``out_dir`` that is a file, not writable,
            non-empty without ``force``, or that holds the run; or when transformers is not installed. Nothing is
            left behind then (``out_dir`` is as it was).
        RuntimeError: if the self-check finds logits that differ by more than 1e-3 (a conversion bug).
    """
    import torch

    from densitylab import __version__
    from densitylab.model import GPT

    out = Path(out_dir).expanduser()
    _transformers()
    ckpt, run_dir = resolve_source(source, step)
    _check_out_dir(out, force, [ckpt, run_dir / "checkpoints"])
    state_dict, cfg, global_step = read_checkpoint(ckpt)
    _check_exportable(cfg)
    tok_path = Path(tokenizer).expanduser() if tokenizer is not None else run_dir / "tokenizer.json"
    _, eos_id = _tokenizer(tok_path, cfg.vocab_size)
    hf_sd = to_hf_state_dict(state_dict, cfg)
    config = hf_config(cfg, eos_id)
    transformers = _transformers()

    model = GPT(cfg).eval()
    own = {k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    own.setdefault("lm_head.weight", own["transformer.wte.weight"])
    model.load_state_dict(own)

    target = out.absolute()
    created = []  # folders made for out_dir's parent, innermost first (removed again on failure)
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp, done = None, False
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # one line of output, not tqdm bars
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
        with torch.device("cpu"):
            hf = transformers.GPT2LMHeadModel(config)
        hf.load_state_dict(hf_sd, strict=True)
        hf.eval().save_pretrained(str(tmp), safe_serialization=True)
        generation = transformers.GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
        generation.save_pretrained(str(tmp))
        _write_tokenizer_files(tmp, tok_path, cfg.block_size)
        diff = _verify(tmp, model, cfg) if verify else None
        if diff is not None and not diff <= VERIFY_TOL:
            raise RuntimeError(
                f"export self-check failed: the transformers model's logits differ from densitylab's by {diff:.3g} "
                f"(> {VERIFY_TOL}): a conversion bug, please report it"
            )
        record = {
            "format": "hf",
            "densitylab_version": __version__,
            "transformers_version": transformers.__version__,
            "source": str(ckpt.resolve()),
            "run_dir": str(run_dir.resolve()),
            "global_step": global_step,
            "tokenizer": str(tok_path.resolve()),
            "net": dataclasses.asdict(cfg),
            "hf_activation_function": HF_ACTIVATIONS[cfg.activation],
            "zero_biases": not cfg.bias,
            "eos_token_id": eos_id,
            "verified_max_abs_logit_diff": diff,
            "hooks": {
                "note": "densitylab's hook names are TransformerLens names: TransformerBridge.boot_transformers on "
                "this folder gives the same values at them (raw, or enable_compatibility_mode(no_processing=True))",
                "transformers": HOOKS,
            },
        }
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _publish_permissions(tmp)
        _replace(tmp, target)
        done = True
    except OSError as e:
        raise ConfigError(
            f"OUT_DIR={str(out_dir)!r} cannot be written ({e.strerror or type(e).__name__}: "
            f"{e.filename or out}): expected a folder you can write to"
        ) from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
        if not done:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for p in created:
                try:
                    p.rmdir()
                except OSError:
                    break
    return out


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``densitylab export``'s arguments to ``parser``: ``SOURCE`` (run folder or checkpoint), ``OUT_DIR``,
    ``--format`` (``hf``), ``--force``, ``--step N`` and ``--tokenizer PATH``."""
    parser.add_argument("source", metavar="RUN_DIR|CKPT", help="a run folder (its newest checkpoint) or a .ckpt file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (must be new or empty)")
    parser.add_argument(
        "--format", default="hf", help="output format: hf (a transformers GPT2LMHeadModel folder; the default)"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR (an earlier export)")
    parser.add_argument(
        "--step",
        default=None,
        help="with RUN_DIR: export the checkpoint of this global step (checkpoints/ or checkpoints/probe/)",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="the tokenizer.json to ship (default: the run folder's tokenizer.json)"
    )


def _parse_step(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"--step={value!r}: expected an integer >= 0 (a global step)") from None


def run(args: argparse.Namespace) -> int:
    """Run the export ``args`` describe (from a parser set up by :func:`add_arguments`).

    Prints ``exported <checkpoint> (step N) to OUT_DIR ...`` on stdout and returns 0; for a bad input prints one
    line ``error: ...`` on stderr and returns 2 (:class:`~densitylab.errors.DensitylabError`, never a traceback).
    """
    try:
        fmt = getattr(args, "format", "hf")
        if fmt not in FORMATS:
            raise ConfigError(f"--format={fmt!r}: expected one of {FORMATS}")
        step = _parse_step(getattr(args, "step", None))
        out = export_hf(
            args.source,
            args.out_dir,
            force=bool(getattr(args, "force", False)),
            step=step,
            tokenizer=getattr(args, "tokenizer", None),
        )
    except DensitylabError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    record = json.loads((out / EXPORT_RECORD).read_text())
    diff = record.get("verified_max_abs_logit_diff")
    check = f"; max |logit diff| {diff:.2g}" if diff is not None else ""
    print(
        f"exported {record['source']} (step {record['global_step']}) to {out} "
        f"(transformers GPT2LMHeadModel + tokenizer{check})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m densitylab.export RUN_DIR|CKPT OUT_DIR [--format hf] [--force] [--step N]``: exit status 0, or
    2 with one ``error:`` line for a bad input (argparse's own usage errors also exit 2)."""
    parser = argparse.ArgumentParser(
        prog="densitylab export",
        description="Export a densitylab checkpoint as a Hugging Face transformers GPT-2 folder "
        "(GPT2LMHeadModel.from_pretrained / AutoTokenizer.from_pretrained / TransformerLens TransformerBridge).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
