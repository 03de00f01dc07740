"""One device policy: the model's device and dtype; CUDA when available for new models."""

from __future__ import annotations

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters (first parameter)."""
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32  # pragma: no cover


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
