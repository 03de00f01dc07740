"""Input handling: token tensors or strings → validated ``(tokens, attention_mask)``.

Every public function passes its inputs through :func:`prepare_tokens`, which raises a
clear ``ValueError`` on bad input (wrong dtype/shape, empty batch, longer than ``n_ctx``,
ids outside the vocabulary, a mask of the wrong shape) instead of computing a wrong number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechattr.runtime.device import model_device


@dataclass
class Batch:
    """Validated inputs on the model's device.

    ``attention_mask`` is ``None`` when there is no padding (all ones); otherwise a
    ``[batch, pos]`` long tensor with 1 at real tokens and 0 at padding.
    """

    tokens: Tensor
    attention_mask: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    def mask_or_ones(self) -> Tensor:
        if self.attention_mask is None:
            return torch.ones_like(self.tokens)
        return self.attention_mask


def _tokenize(model: Any, texts: list[str], padding_side: str | None, prepend_bos: bool | None) -> tuple[Tensor, Tensor | None]:
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the model has no tokenizer; pass token ids instead of strings")
    kw: dict[str, Any] = {}
    if padding_side is not None:
        kw["padding_side"] = padding_side
    if prepend_bos is not None:
        kw["prepend_bos"] = prepend_bos
    tokens = model.to_tokens(texts, **kw)
    mask = None
    if len(texts) > 1:
        from mechattr.runtime.tl import get_attention_mask

        pb = prepend_bos if prepend_bos is not None else model.cfg.default_prepend_bos
        side = padding_side or getattr(model.cfg, "default_padding_side", None) or model.tokenizer.padding_side
        mask = get_attention_mask(model.tokenizer, tokens, pb, padding_side=side).long()
        if bool(mask.all()):
            mask = None
    return tokens, mask


def prepare_tokens(
    model: Any,
    tokens: Any,
    attention_mask: Any = None,
    *,
    padding_side: str | None = None,
    prepend_bos: bool | None = None,
    name: str = "tokens",
) -> Batch:
    """Validate and move inputs to the model's device.

    ``tokens``: an int tensor ``[batch, pos]`` or ``[pos]``, a string, or a list of strings
    (tokenized with the model's tokenizer; padded batches get an attention mask).
    ``attention_mask``: optional ``[batch, pos]`` of 0/1 (or bool), with left or right padding.
    """
    if isinstance(tokens, Batch):
        return tokens
    if isinstance(tokens, str):
        tokens = [tokens]
    if isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens):
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tokens, auto_mask = _tokenize(model, list(tokens), padding_side, prepend_bos)
        if attention_mask is None:
            attention_mask = auto_mask
    if isinstance(tokens, (list, tuple)):
        if len(tokens) == 0:
            raise ValueError(f"{name} is empty: pass at least one sequence")
        try:
            tokens = torch.tensor(tokens)
        except Exception as err:
            raise ValueError(f"{name}: cannot build a token tensor from {type(tokens).__name__} ({err})") from None
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a tensor of token ids, a string or a list of strings; got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be [batch, pos] (or [pos]), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tokens.shape)}): need at least one sequence of at least one token")
    n_ctx = model.cfg.n_ctx
    if tokens.shape[1] > n_ctx:
        raise ValueError(f"{name} has {tokens.shape[1]} positions but the model's context is n_ctx={n_ctx}")
    vocab = model.cfg.d_vocab
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"{name} holds token ids outside the vocabulary 0..{vocab - 1} (min {lo}, max {hi})")
    dev = model_device(model)
    tokens = tokens.long().to(dev)
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match {name} shape {tuple(tokens.shape)}")
        if mask.is_floating_point():
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("attention_mask must hold only 0 and 1")
        mask = mask.long().to(dev)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1")
        if bool((mask.sum(-1) == 0).any()):
            raise ValueError("attention_mask has a row with no real token")
        if bool(mask.all()):
            mask = None
    return Batch(tokens, mask)


def prepare_pair(model: Any, clean: Any, corrupted: Any, attention_mask: Any = None, **kw: Any) -> tuple[Batch, Batch]:
    """Validate a clean/corrupted pair: both valid and of the same shape."""
    c = prepare_tokens(model, clean, attention_mask, name="clean", **kw)
    x = prepare_tokens(model, corrupted, attention_mask, name="corrupted", **kw)
    if c.shape != x.shape:
        raise ValueError(
            f"clean and corrupted must have the same shape [batch, pos]; got {c.shape} and {x.shape}"
        )
    return c, x
