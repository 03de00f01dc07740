"""Baselines for token attribution: points of embedding space that stand for "no token".

A baseline is a tensor ``[R, batch, pos, d_model]`` at ``hook_embed`` (R = 1 for a single
baseline). Built from a spec (:func:`embedding_baseline`): ``None`` (the model's default,
:func:`default_spec`: ``"zero"`` where positional embeddings are added to the residual,
``"mean"`` on rotary/ALiBi models, whose first norm is singular at the zero embedding),
``"zero"`` (zero embedding), ``"pad"``/``"mask"`` (the tokenizer's pad/mask token), an int
token id, ``"mean"`` (mean token embedding), ``"uniform"`` (a uniformly random token per
position), ``"gaussian"`` (``N(μ, σ²I)`` with ``μ`` the mean token embedding and ``σ`` the
std of its entries — RPI, Shapiro et al. 2024, §6), an int tensor of baseline token ids, a float
tensor, or a sampler ``fn(n, embeds [batch, pos, d_model], generator) -> [n, batch, pos,
d_model]``. A token's embedding is its ``hook_embed`` value on this model
(:func:`mechattr.runtime.embedding.embed_tokens`: Gemma's √d_model scale and Bloom's
embedding LayerNorm included), never a raw ``W_E`` row. Excluded positions (padding,
BOS, chosen special tokens) keep their real embedding, so they get zero attribution and
completeness holds against that baseline.

Random baselines are drawn per example from a generator seeded by ``(seed, the example's
real tokens)`` and laid over its real positions only, so an example gets the same draws
alone and inside any padded batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechattr.runtime.arch import arch
from mechattr.runtime.embedding import embed_tokens, vocab_embeddings

NAMED = ("zero", "pad", "mask", "mean", "uniform", "gaussian")
RANDOM = ("uniform", "gaussian")


def example_generators(tokens: Int[Tensor, "batch pos"], keep: Bool[Tensor, "batch pos"], seed: int | None, salt: str = "baseline") -> list[torch.Generator]:
    """One CPU generator per example, seeded by ``seed``, ``salt`` (independent streams for
    independent draws) and the example's real tokens."""
    gens = []
    for row, k in zip(tokens.cpu(), keep.cpu()):
        h = hashlib.sha256(f"{seed or 0}:{salt}:".encode() + row[k].numpy().tobytes()).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1)))
    return gens


def _scatter_real(draws: list[Tensor], real: Bool[Tensor, "batch pos"], like: Tensor) -> Tensor:
    """Place per-example draws ``[R, n_real_i, ...]`` on each example's real positions."""
    R = draws[0].shape[0]
    out = torch.zeros((R, *real.shape, *draws[0].shape[2:]), dtype=draws[0].dtype)
    for i, d in enumerate(draws):
        out[:, i, real[i].cpu()] = d
    return out.to(like.device)


def _token_id(model: Any, spec: str) -> int:
    tok = getattr(model, "tokenizer", None)
    tid = getattr(tok, f"{spec}_token_id", None) if tok is not None else None
    if tid is None:
        raise ValueError(f"baseline {spec!r}: the model's tokenizer defines no {spec} token; pass a token id (int) or another baseline {list(NAMED)}")
    return int(tid)


def default_spec(model: Any) -> str:
    """The baseline used when none is given: :attr:`mechattr.runtime.arch.Arch.default_token_baseline`
    (the zero embedding with additive positional embeddings, else the mean token embedding)."""
    return arch(model).default_token_baseline


def embedding_baseline(
    model: Any,
    spec: Any,
    embeds: Float[Tensor, "batch pos d_model"],
    tokens: Int[Tensor, "batch pos"],
    real: Bool[Tensor, "batch pos"],
    exclude: Bool[Tensor, "batch pos"],
    *,
    n: int = 1,
    seed: int | None = None,
) -> Float[Tensor, "R batch pos d_model"]:
    """Baseline embeddings ``[R, batch, pos, d_model]`` for ``spec`` (see module doc).

    ``n`` baselines are drawn for random specs and samplers (R = n); deterministic specs give
    R = 1. ``real`` marks non-pad positions; ``exclude`` positions keep ``embeds``.
    """
    V = int(model.cfg.d_vocab)
    x = embeds
    if spec is None:
        spec = default_spec(model)
    if isinstance(spec, str) and spec == "zero":
        b = torch.zeros_like(x)[None]
    elif isinstance(spec, str):
        if spec not in NAMED:
            raise ValueError(f"unknown baseline {spec!r}; allowed: {list(NAMED)}, a token id, a tensor or a sampler")
        if spec in ("pad", "mask"):
            b = embed_tokens(model, torch.tensor(_token_id(model, spec))).to(x.device, x.dtype).expand_as(x)[None]
        elif spec == "mean":
            b = vocab_embeddings(model).mean(0).to(x.device, x.dtype).expand_as(x)[None]
        else:
            E = vocab_embeddings(model).detach().cpu()
            gens = example_generators(tokens, real, seed)
            draws = []
            for i, g in enumerate(gens):
                k = int(real[i].sum())
                if spec == "uniform":
                    ids = torch.randint(0, V, (n, k), generator=g)
                    draws.append(E[ids])
                else:
                    mu, sigma = E.mean(0), E.std()
                    draws.append(mu + sigma * torch.randn(n, k, E.shape[1], generator=g, dtype=mu.dtype))
            b = _scatter_real(draws, real, x).to(x.dtype)
    elif isinstance(spec, int) and not isinstance(spec, bool):
        if not 0 <= spec < V:
            raise ValueError(f"baseline token id {spec} outside the vocabulary 0..{V - 1}")
        b = embed_tokens(model, torch.tensor(spec)).to(x.device, x.dtype).expand_as(x)[None]
    elif isinstance(spec, Tensor) and not spec.is_floating_point():
        if spec.shape != tokens.shape:
            raise ValueError(f"baseline token ids must have the tokens' shape {tuple(tokens.shape)}; got {tuple(spec.shape)}")
        if spec.min() < 0 or spec.max() >= V:
            raise ValueError(f"baseline token ids outside the vocabulary 0..{V - 1}")
        b = embed_tokens(model, spec).to(x.device, x.dtype)[None]
    elif isinstance(spec, Tensor):
        b = _float_baseline(spec, x)
    elif callable(spec):
        gen = torch.Generator().manual_seed(seed or 0)
        b = torch.as_tensor(spec(n, x.detach(), gen))
        if b.ndim == x.ndim:
            b = b[None]
        if tuple(b.shape[1:]) != tuple(x.shape):
            raise ValueError(f"baseline sampler must return [n, *{tuple(x.shape)}]; got {tuple(b.shape)}")
        b = b.to(x.device, x.dtype)
    else:
        raise ValueError(f"cannot use {type(spec).__name__} as a baseline; allowed: {list(NAMED)}, a token id, a tensor or a sampler")
    if not torch.isfinite(b).all():
        raise ValueError("baseline holds NaN or inf")
    b = b.detach().expand(b.shape[0], *x.shape).clone()
    return torch.where(exclude[None, :, :, None].to(b.device), x[None].to(b.dtype), b)


def _float_baseline(spec: Tensor, x: Tensor) -> Tensor:
    b = spec.to(x.device, x.dtype)
    if b.ndim == x.ndim + 1:
        if tuple(b.shape[1:]) != tuple(x.shape):
            raise ValueError(f"baseline [R, batch, pos, d_model] must match {tuple(x.shape)}; got {tuple(b.shape)}")
        return b
    try:
        return torch.broadcast_to(b, x.shape)[None]
    except RuntimeError:
        raise ValueError(f"baseline shape {tuple(b.shape)} does not broadcast to the embeddings' shape {tuple(x.shape)} (or [R, *that])") from None


def describe(spec: Any) -> Any:
    """A JSON-able description of a baseline spec (for provenance)."""
    if spec is None or isinstance(spec, (str, int)):
        return spec if spec is not None else "zero"
    if isinstance(spec, Tensor):
        return f"tensor{list(spec.shape)}"
    if isinstance(spec, Callable):
        return f"sampler:{getattr(spec, '__name__', type(spec).__name__)}"
    return str(spec)
