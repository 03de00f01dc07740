"""Checks every entry point shares: that each argument is of the kind expected (a model, token
input, token ids, a target — :func:`check_model_arg`, :func:`check_tokens_arg`,
:func:`check_token_ids`, :func:`check_target_arg`), that a target fits the batch, and that
its values are finite. (Kept apart from :mod:`mechattr.targets` so that module holds target
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
    Plain callables are not inspected (they see whole batches). A value that is no target
    at all (a string, a tensor, a model) is a ``TypeError`` (:func:`check_target_arg`)."""
    check_target_arg(target)
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


# --------------------------------------------------------------------------- argument kinds
# One helper per kind of argument, called by the gateways every public entry point goes
# through (runtime.arch.check_model and model.model_guard for models, inputs.prepare_tokens
# for token inputs, check_target_rows for targets, targets.* for token ids), so a value of
# the wrong kind is named at once instead of failing deep inside (`'str' object has no
# attribute 'modules'`, `new(): invalid data type 'str'`).
def _show(value: Any) -> str:
    """A short description of ``value`` for an error message."""
    if isinstance(value, str):
        return f"the string {value if len(value) <= 60 else value[:57] + '...'!r}"
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, torch.nn.Module):
        return f"a model ({type(value).__name__})"
    if hasattr(value, "_per_example") or hasattr(value, "terms"):
        return f"a target ({value!r})"
    return f"{type(value).__name__} {value!r}"[:120]


def check_model_arg(model: Any) -> None:
    """``TypeError`` unless ``model`` is a ``torch.nn.Module`` (a loaded model), naming what it got:
    a model name or path (load it first), token ids or a target (arguments out of order)."""
    if isinstance(model, torch.nn.Module):
        return
    if isinstance(model, (str, bytes)) or type(model).__name__.endswith("Path"):
        raise TypeError(
            f"got {_show(str(model))} where a model is expected; load it first: "
            f"model = mechattr.load_model({str(model)!r}) (a local directory, a cached HF name or organism:<name>)"
        )
    raise TypeError(
        f"got {_show(model)} where a model is expected (a HookedTransformer or TransformerBridge, e.g. from "
        f"mechattr.load_model); the model is the first argument"
    )


def check_tokens_arg(tokens: Any, name: str = "tokens") -> None:
    """``TypeError`` when ``tokens`` is clearly not token input: a target (arguments out of
    order, e.g. the target where ``corrupted`` goes), a model, or ``None``.

    Token input is token ids (tensor or nested list) or text; text is tokenized by
    :func:`mechattr.inputs.prepare_tokens`."""
    if tokens is None:
        raise TypeError(f"{name} is None; expected token ids [batch, pos] (a tensor) or text")
    if isinstance(tokens, torch.nn.Module):
        raise TypeError(f"{name} is {_show(tokens)}, not token ids; the model is the first argument")
    if callable(tokens) and not isinstance(tokens, Tensor):
        raise TypeError(
            f"{name} is {_show(tokens)}, not token ids [batch, pos]: the target is passed where {name} goes "
            f"(a missing or swapped argument?); e.g. activation_patch(model, clean, corrupted, target)"
        )


def check_token_ids(token_ids: Any, name: str = "token_ids") -> None:
    """``TypeError`` when ``token_ids`` is text (or holds text): token ids are ints; a word is
    converted with ``model.to_single_token(word)``."""
    items = token_ids if isinstance(token_ids, (list, tuple)) else [token_ids]
    words = [t for t in items if isinstance(t, (str, bytes))]
    if words:
        w = words[0] if isinstance(token_ids, (list, tuple)) else token_ids
        raise TypeError(
            f"{name}: got {_show(w)} where token ids (ints) are expected; convert a token first: "
            f"model.to_single_token({w!r}) (or model.to_tokens(text, prepend_bos=False) for several)"
        )


def check_target_arg(target: Any) -> None:
    """``TypeError`` unless ``target`` is a callable ``logits [batch, pos, vocab] -> [batch]``
    (e.g. from :mod:`mechattr.targets`): names a string, a tensor (token ids in the target's
    place?) or a model."""
    if isinstance(target, (str, bytes)):
        raise TypeError(
            f"got {_show(target)} where a target is expected; build one from token ids, e.g. "
            f"mechattr.targets.logit(model.to_single_token({target!r}))"
        )
    if isinstance(target, torch.nn.Module) or not callable(target):
        raise TypeError(
            f"got {_show(target)} where a target is expected (a callable logits -> [batch], e.g. "
            f"mechattr.targets.logit(ids)); token ids in the target's place? check the argument order"
        )
