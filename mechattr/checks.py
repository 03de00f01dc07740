"""Checks every engine shares before using a target: that it fits the batch, and that its
values are finite. (Kept apart from :mod:`mechattr.targets` so that module holds target
definitions only.)"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_target_rows(target: Any, n_examples: int) -> None:
    """The one check that a target fits the batch it is applied to: every per-example tensor
    it carries (positions, token ids, answers) has 1 or ``n_examples`` rows.

    A target built for 16 examples applied to a 4-example batch would otherwise read the
    first 4 answers without a word; this raises ``ValueError`` naming the sizes instead.
    Plain callables are not inspected (they see whole batches)."""
    terms = getattr(target, "terms", None)
    if isinstance(terms, (list, tuple)):  # a linear combination of targets
        for _, t in terms:
            check_target_rows(t, n_examples)
        return
    if not hasattr(target, "_per_example"):  # a plain callable
        return
    for attr in ("pos", *target._per_example):
        v = getattr(target, attr, None)
        if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] not in (1, n_examples):
            raise ValueError(
                f"the target's {attr} has {v.shape[0]} rows but the batch has {n_examples} examples; "
                f"build the target for this batch (or slice it: target.take(torch.arange(start, stop)))"
            )


def check_finite(values: Tensor, what: str = "target") -> Tensor:
    """Raise ``ValueError`` if ``values`` holds NaN or inf."""
    if not torch.isfinite(values).all():
        idx = (~torch.isfinite(values)).nonzero()
        bad = idx.flatten().tolist() if values.ndim <= 1 else [tuple(i) for i in idx.tolist()]
        where = "rows" if values.ndim <= 1 else "indices"
        raise ValueError(f"{what} is NaN or infinite at {where} {bad[:10]}; check the model, inputs and target")
    return values
