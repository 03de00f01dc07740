"""Loading models offline: organisms, local HF directories, the local HF cache.

Nothing here downloads. A HookedTransformer is built where TransformerLens can build one
(TransformerLens 3) and its log-probs match the HF model's; a TransformerBridge in
compatibility mode otherwise (with a warning saying why), or on request, or on
TransformerLens 4. Loading never depends on the directory's name (see :func:`_neutral_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mechattr.runtime import tl
from mechattr.runtime.device import default_device, model_dtype
from mechattr.runtime.tl import HAS_HOOKED, is_hooked, require_hooked

ORGANISM_PREFIX = "organism:"


class ModelNotFoundError(FileNotFoundError):
    """The requested weights are not on this machine (and we never download)."""


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(table)} or a torch.dtype")
    return table[dtype]


def _local_hf_dir(name: str) -> Path:
    """Find a HF repo id in the local cache without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id=name, local_files_only=True)
    except Exception as err:
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory, a shipped organism, or a model in the "
            f"local Hugging Face cache, and mechattr never downloads. Either pass a directory "
            f"holding HF weights (config.json + weights + tokenizer), use a shipped organism "
            f"('organism:<name>', see mechattr.organisms.names()), or download the model on a "
            f"machine with network access into the HF cache first. ({type(err).__name__})"
        ) from None
    return Path(path)


class LoadError(RuntimeError):
    """Neither a HookedTransformer nor a TransformerBridge could be built for a directory."""


def _hf_config(path: Path) -> dict:
    import json

    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"{path / 'config.json'} is not readable JSON: {err}") from None


def _fixed_config(cfg: dict) -> dict:
    """config.json with the gaps TransformerLens trips on filled from their equivalents.

    ``n_ctx`` (read by TransformerLens for GPT-2; transformers 5 no longer writes it) is
    taken from ``n_positions`` or ``max_position_embeddings``.
    """
    cfg = dict(cfg)
    if "n_ctx" not in cfg:
        for key in ("n_positions", "max_position_embeddings"):
            if isinstance(cfg.get(key), int):
                cfg["n_ctx"] = cfg[key]
                break
    return cfg


@contextlib.contextmanager
def _neutral_dir(path: Path) -> Iterator[Path]:
    """A temporary copy of ``path`` under a name that means nothing to TransformerLens.

    TransformerLens 3's ``get_pretrained_model_config(path)`` picks the architecture from
    substrings of the path ("llama" -> Llama, "gemma" -> Gemma's hard-coded sizes) before it
    reads ``config.json``; a GPT-2 saved under ``~/llama-exps/`` would load as a Llama. So we
    load through ``<tmp>/mechattr-load-*/model``: every file a symlink to the original except
    ``config.json``, written with :func:`_fixed_config`. The caller also checks that the
    architecture TransformerLens chose is the one ``config.json`` names.
    """
    tmp = Path(tempfile.mkdtemp(prefix="mechattr-load-"))
    try:
        link = tmp / "model"
        link.mkdir()
        for f in path.iterdir():
            if f.name != "config.json":
                (link / f.name).symlink_to(f.resolve())
        (link / "config.json").write_text(json.dumps(_fixed_config(_hf_config(path)), indent=2))
        yield link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_logits(model: Any, hf: Any, d_vocab: int) -> None:
    """Raise if the HookedTransformer's log-probs differ from the HF model's on a probe batch.

    Folding and centring change logits only by a per-position constant, so log-softmax
    must agree (to 1e-3 in float32, 5e-2 in half precision).
    """
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, min(d_vocab, int(hf.config.vocab_size)), (1, 6), generator=g)
    dev = next(hf.parameters()).device
    with torch.no_grad():
        ref = hf(toks.to(dev)).logits.float().log_softmax(-1).cpu()
        out = model(toks.to(model.cfg.device)).float().log_softmax(-1).cpu()
    tol = 1e-3 if next(hf.parameters()).dtype == torch.float32 else 5e-2
    err = (out[..., : ref.shape[-1]] - ref).abs().max().item()
    if not err <= tol:
        raise LoadError(f"HookedTransformer log-probs differ from the HF model's by {err:.3g} (> {tol})")


def _hooked_from_dir(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A HookedTransformer (LayerNorm folded, weights centred) for an HF directory, checked
    against the HF model's own log-probs."""
    HookedTransformer = require_hooked("load_model(dir, bridge=False)")
    import transformer_lens.loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    want = (_hf_config(path).get("architectures") or [""])[0]
    with _neutral_dir(path) as src:
        hf = AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True, dtype=dtype)
        try:
            tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        except Exception:
            tok = None
        cfg = loading.get_pretrained_model_config(
            str(src), fold_ln=True, device=device, dtype=dtype, local_files_only=True
        )
        if want and cfg.original_architecture != want:
            raise LoadError(f"TransformerLens built a {cfg.original_architecture} config for a {want} checkpoint")
        state = loading.get_pretrained_state_dict(str(src), cfg, hf, dtype=dtype)
        model = HookedTransformer(cfg, tok, move_to_device=False)  # may read tokenizer_name = src
        model.load_and_process_state_dict(
            state, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
        )
    pos = getattr(model, "pos_embed", None)
    if model.cfg.positional_embedding_type not in ("standard", "shortformer") and pos is not None:
        with torch.no_grad():  # unused (rotary/ALiBi); TransformerLens leaves it torch.empty (NaN garbage)
            pos.W_pos.zero_()
    model.to(device)
    model.eval()
    _check_logits(model, hf, model.cfg.d_vocab)
    return model


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    bridge: bool = False,
) -> Any:
    """Load a model for mechattr, offline.

    ``name_or_path`` is one of: ``"organism:<name>"`` (a shipped model organism); a local
    directory of HF weights (``config.json``, weights, tokenizer); or a HF repo id already in
    the local HF cache (e.g. ``"gpt2"``). Nothing is downloaded: missing weights raise
    :class:`ModelNotFoundError` at once with what to do.

    Returns a ``HookedTransformer`` (LayerNorm folded, weights centred, as
    ``HookedTransformer.from_pretrained``) or, with ``bridge=True``, a ``TransformerBridge``
    in compatibility mode (same numerics). Where TransformerLens cannot build a
    HookedTransformer for the architecture (or builds one whose log-probs differ from the HF
    model's), it warns and returns the TransformerBridge; if that fails too, :class:`LoadError`
    names both failures. On TransformerLens 4 it is always the bridge. The directory's name
    plays no part. ``device`` defaults to CUDA when available.
    """
    dev = torch.device(device) if device is not None else default_device()
    dt = _resolve_dtype(dtype)
    name = str(name_or_path)
    if name.startswith(ORGANISM_PREFIX):
        from mechattr import organisms

        m = organisms.load(name[len(ORGANISM_PREFIX):], device=dev, bridge=True if bridge else None)
        if dt == model_dtype(m):
            return m
        return m.to(dt, print_details=False) if is_hooked(m) else m.to(dt)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} exists but holds no config.json; expected a directory saved with "
                f"save_pretrained() (config.json, weights, tokenizer files)"
            )
    else:  # local_files_only everywhere: no process-wide HF_HUB_OFFLINE needed (nor left set)
        path = _local_hf_dir(name)
    if bridge or not HAS_HOOKED:
        return _bridge_from_dir(path, dev, dt)
    try:
        return _hooked_from_dir(path, dev, dt)
    except Exception as hooked_err:
        why = f"{type(hooked_err).__name__}: {hooked_err}"
        try:
            model = _bridge_from_dir(path, dev, dt)
        except Exception as bridge_err:
            raise LoadError(
                f"cannot load {path}: TransformerLens could build neither a HookedTransformer ({why}) "
                f"nor a TransformerBridge ({type(bridge_err).__name__}: {bridge_err})"
            ) from bridge_err
        warnings.warn(
            f"TransformerLens cannot build a HookedTransformer for {path} ({why}); "
            f"returning a TransformerBridge in compatibility mode instead",
            stacklevel=2,
        )
        return model


def _bridge_from_dir(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A TransformerBridge in compatibility mode, loaded through :func:`_neutral_dir`."""
    TransformerBridge = tl.TransformerBridge  # TransformerLens imported here, when a model is loaded
    if TransformerBridge is None:  # pragma: no cover
        raise RuntimeError("this TransformerLens has no TransformerBridge; install transformer-lens>=3")
    with _neutral_dir(path) as src:
        b = TransformerBridge.boot_transformers(str(src), device=device, dtype=dtype)
    b.enable_compatibility_mode(disable_warnings=True)
    return b.eval()


def native_bridge(config: dict, state: dict, *, tokenizer: Any = None, device: Any = None) -> Any:
    """A TransformerBridge (compatibility mode, no weight processing) around TransformerLens's
    native model built offline from HookedTransformer-style ``config`` and TransformerLens
    ``state`` (parameter names as a HookedTransformer's): the same logits as the
    HookedTransformer of that config and state. Needs TransformerLens 4 (its checkpoint
    converter); the global random state is left untouched."""
    TransformerBridge = tl.TransformerBridge
    if TransformerBridge is None or not hasattr(TransformerBridge, "boot_native"):  # pragma: no cover
        raise RuntimeError("this TransformerLens cannot build a native TransformerBridge; install transformer-lens>=4")
    try:
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    except ImportError:  # TransformerLens 3.9 ships boot_native but not the converter
        raise RuntimeError(
            "a native TransformerBridge from TransformerLens weights needs transformer-lens>=4 "
            "(transformer_lens.utilities.tl_checkpoint_conversion); on 3.x use the HookedTransformer"
        ) from None
    from transformer_lens.config import TransformerBridgeConfig

    cfg = TransformerBridgeConfig.from_dict({**config, "init_weights": False})
    with torch.random.fork_rng(devices=[]):
        b = TransformerBridge.boot_native(cfg, tokenizer=tokenizer)
    result = b.load_state_dict(convert_tl_checkpoint(state, cfg), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    b.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return b.to(device if device is not None else default_device()).eval()
