"""Saving results: JSON (tensors as nested lists) or safetensors (settings in the header).

Never pickle. ``save_result`` picks the format from the suffix (``.json`` or
``.safetensors``); ``load_result`` reads either back into ``(tensors, meta)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SCHEMA_VERSION = 1


def to_jsonable(x: Any) -> Any:
    """Convert tensors, numpy values, tuples and dataclass-ish objects into JSON values.

    Non-finite floats become ``None`` (JSON has no NaN).
    """
    if isinstance(x, Tensor):
        return to_jsonable(x.detach().cpu().tolist())
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return to_jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, torch.dtype):
        return str(x)
    return str(x)


def _dist_version(name: str) -> str:
    """Installed distribution version (``"unknown"`` when not installed as a distribution)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of mechattr and its main dependencies (for provenance)."""
    import mechattr
    from mechattr.runtime.tl import TL_VERSION

    return {
        "mechattr": mechattr.__version__,
        "torch": torch.__version__,
        "transformer_lens": TL_VERSION,
    }


def save_result(path: str | Path, tensors: dict[str, Tensor | None], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` + ``meta`` to ``path`` (``.json`` or ``.safetensors``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    present = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
    meta = {"schema_version": SCHEMA_VERSION, **to_jsonable(meta)}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(present, str(path), metadata={"meta": json.dumps(meta)})
    else:
        payload = {
            "meta": meta,
            "tensors": {
                k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape), "data": to_jsonable(v)}
                for k, v in present.items()
            },
        }
        path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return path


def load_result(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read back what :func:`save_result` wrote."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        return tensors, meta
    payload = json.loads(path.read_text())
    tensors = {}
    for k, v in payload.get("tensors", {}).items():
        data = [float("nan") if x is None else x for x in _flatten(v["data"])]
        dtype = getattr(torch, v["dtype"])
        tensors[k] = torch.tensor(data, dtype=dtype).reshape(v["shape"])
    return tensors, payload.get("meta", {})


def _flatten(x: Any) -> list:
    if isinstance(x, list):
        out: list = []
        for y in x:
            out += _flatten(y)
        return out
    return [x]
