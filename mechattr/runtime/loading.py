"""Loading models offline: organisms, local HF directories, the local HF cache.

Nothing here downloads. A HookedTransformer is built where TransformerLens can build one
(TransformerLens 3); a TransformerBridge in compatibility mode otherwise, or on request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mechattr.runtime.device import default_device, model_dtype
from mechattr.runtime.tl import HAS_HOOKED, TransformerBridge, is_hooked, require_hooked

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


def _hooked_from_dir(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    HookedTransformer = require_hooked("load_model(dir, bridge=False)")
    import transformer_lens.loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:
        tok = None
    cfg = loading.get_pretrained_model_config(
        str(path), fold_ln=True, device=device, dtype=dtype, local_files_only=True
    )
    state = loading.get_pretrained_state_dict(str(path), cfg, hf, dtype=dtype)
    model = HookedTransformer(cfg, tok, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    model.to(device)
    return model.eval()


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
    in compatibility mode (same numerics). ``device`` defaults to CUDA when available.
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
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = _local_hf_dir(name)
    if bridge or not HAS_HOOKED:
        return _bridge_from_dir(path, dev, dt)
    return _hooked_from_dir(path, dev, dt)


def _bridge_from_dir(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    if TransformerBridge is None:  # pragma: no cover
        raise RuntimeError("this TransformerLens has no TransformerBridge; install transformer-lens>=3")
    b = TransformerBridge.boot_transformers(str(path), device=device, dtype=dtype)
    b.enable_compatibility_mode(disable_warnings=True)
    return b.eval()
