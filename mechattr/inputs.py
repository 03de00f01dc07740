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

from mechattr.checks import check_tokens_arg
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


def unknown_words(tokenizer: Any, texts: list[str]) -> list[str]:
    """Words of ``texts`` the tokenizer cannot represent (sorted, unique).

    Word-level vocabularies: every whitespace/pre-tokenizer word not in the vocabulary
    (their unknown token may even be BOS, as for the organisms). Other tokenizers with an
    unknown token of its own: the text spans encoded as that token. Byte-level BPE has none.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordLevel":
        vocab = tokenizer.get_vocab()
        pre = backend.pre_tokenizer
        words = [w for t in texts for w, _ in (pre.pre_tokenize_str(t) if pre is not None else [(x, None) for x in t.split()])]
        return sorted({w for w in words if w not in vocab})
    unk = getattr(tokenizer, "unk_token_id", None)
    specials = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    if unk is None or unk in specials:
        return []
    out = set()
    for t in texts:
        enc = tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)
        out |= {t[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk}
    return sorted(out)


def to_tokens(model: Any, texts: str | list[str], *, unknown_token_id: int | None = None, **kw: Any) -> Tensor:
    """``model.to_tokens(texts, **kw)`` that refuses words the tokenizer does not know.

    An unknown word is a ``ValueError`` listing them, unless ``unknown_token_id`` opts in:
    then each unknown word becomes that token (word-level vocabularies: the word is replaced
    before tokenizing; other tokenizers: their unknown-token id is replaced after).
    """
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("the model has no tokenizer; pass token ids instead of strings")
    batch = [texts] if isinstance(texts, str) else list(texts)
    unknown = unknown_words(tok, batch)
    if unknown and unknown_token_id is None:
        shown = ", ".join(repr(w) for w in unknown[:20]) + (" …" if len(unknown) > 20 else "")
        raise ValueError(
            f"{len(unknown)} word(s) not in the model's vocabulary: {shown}; fix the text, or pass "
            f"unknown_token_id=<id> (to prepare_tokens / to_tokens) to map them to that token"
        )
    backend = getattr(tok, "backend_tokenizer", None)
    word_level = backend is not None and type(backend.model).__name__ == "WordLevel"
    if unknown and word_level:
        vocab_size = len(tok.get_vocab())
        if not 0 <= int(unknown_token_id) < vocab_size:  # type: ignore[arg-type]
            raise ValueError(f"unknown_token_id {unknown_token_id} outside the vocabulary 0..{vocab_size - 1}")
        word = tok.convert_ids_to_tokens(int(unknown_token_id))  # type: ignore[arg-type]
        bad = set(unknown)
        pre = backend.pre_tokenizer
        batch = [" ".join(word if w in bad else w for w, _ in pre.pre_tokenize_str(t)) for t in batch]
    tokens = model.to_tokens(batch if not isinstance(texts, str) else batch[0], **kw)
    if unknown and not word_level:
        tokens = torch.where(tokens == tok.unk_token_id, torch.full_like(tokens, int(unknown_token_id)), tokens)  # type: ignore[arg-type]
    return tokens


def _tokenize(model: Any, texts: list[str], padding_side: str | None, prepend_bos: bool | None, unknown_token_id: int | None = None) -> tuple[Tensor, Tensor | None]:
    kw: dict[str, Any] = {}
    if padding_side is not None:
        kw["padding_side"] = padding_side
    if prepend_bos is not None:
        kw["prepend_bos"] = prepend_bos
    tokens = to_tokens(model, texts, unknown_token_id=unknown_token_id, **kw)
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
    unknown_token_id: int | None = None,
) -> Batch:
    """Validate and move inputs to the model's device.

    ``tokens``: an int tensor ``[batch, pos]`` or ``[pos]``, a string, or a list of strings
    (tokenized with the model's tokenizer; padded batches get an attention mask).
    ``attention_mask``: optional ``[batch, pos]`` of 0/1 (or bool), with left or right padding.
    Words the tokenizer does not know are a ``ValueError`` listing them unless
    ``unknown_token_id`` maps them to that token (:func:`to_tokens`).
    """
    if isinstance(tokens, Batch):
        return tokens
    check_tokens_arg(tokens, name)  # a target, a model or None in the tokens' place
    if isinstance(tokens, str):
        tokens = [tokens]
    if isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens):
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tokens, auto_mask = _tokenize(model, list(tokens), padding_side, prepend_bos, unknown_token_id)
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
