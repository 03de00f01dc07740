"""Perturbation and attention token-attribution methods, and the removal metric ψ for RPI.

Occlusion and ψ evaluate many edited copies of the embeddings stacked along the batch
(:func:`mechattr.attribution.paths.evaluate_at_hook`); attention methods read patterns.
All return one score per token ``[batch, pos]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.paths import evaluate_at_hook, same_rows
from mechattr.attribution.tokens import Ctx, MethodOutput, register


def _evaluate_edits(ctx: Ctx, replace: Tensor, base: Tensor) -> Tensor:
    """F with positions ``replace [V, batch, pos]`` set to ``base [batch, pos, d]``: ``[V, batch]``."""
    base = base.to(ctx.embeds.dtype)

    def make(x: Tensor, v: Tensor, e: Tensor) -> Tensor:
        return torch.where(replace[v, e][..., None], base[e], x)

    return evaluate_at_hook(ctx.model, ctx.batch, ctx.target, "hook_embed", make, replace.shape[0], batch_size=ctx.batch_size)


def _windows(ctx: Ctx, window: int, stride: int) -> Tensor:
    """``[V, batch, pos]`` windows of ``window`` consecutive real tokens (stride ``stride``),
    counted from each row's first real token; a last window is aligned to the row's end."""
    real = ctx.real.cpu()
    rows = []
    for i in range(real.shape[0]):
        idx = real[i].nonzero().flatten()
        n = idx.numel()
        starts = list(range(0, max(n - window, 0) + 1, stride))
        if starts[-1] + window < n:
            starts.append(n - window)
        rows.append([idx[s : s + window] for s in starts])
    V = max(len(r) for r in rows)
    out = torch.zeros(V, *real.shape, dtype=torch.bool)
    for i, wins in enumerate(rows):
        for v, pos in enumerate(wins):
            out[v, i, pos] = True
    return out.to(ctx.tokens.device)


@register("occlusion", per_dim=False, cite="Zeiler & Fergus 2014")
def occlusion(ctx: Ctx, window: int = 1, stride: int = 1) -> MethodOutput:
    """Occlusion: ``F(x) − F(x with a window of tokens replaced by the baseline embedding)``.

    Windows of ``window`` real tokens every ``stride``; a token's score is the mean drop over
    the windows covering it (as Captum's ``Occlusion``). Excluded tokens are never replaced.
    With ``segments``, each span is one window and keeps its own drop. All windows run in
    one stacked batch. Baseline: the ``baseline`` spec (default zero embedding).
    """
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {v!r}")
    base = ctx.baseline(1)
    if base.shape[0] != 1:
        raise ValueError("occlusion takes a single baseline (not a distribution)")
    wins = ctx.segments if ctx.segments is not None else _windows(ctx, window, stride)
    wins = wins & ~ctx.exclude[None]
    f = _evaluate_edits(ctx, torch.cat([torch.zeros_like(wins[:1]), wins]), base[0])
    drops = f[0][None] - f[1:]  # [V, batch]
    cover = wins.float().sum(0)
    scores = (drops[..., None] * wins.float()).sum(0) / cover.clamp_min(1)
    return MethodOutput(scores, None, f[0], None, {"window_drops": drops}, windows=drops.T if ctx.segments is not None else None)


def patterns(ctx: Ctx) -> Tensor:
    """Attention patterns of the clean run, ``[batch, n_layers, n_heads, q, k]``."""
    n_layers = ctx.model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    store: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(act: Tensor, hook: Any) -> None:
            store[name] = act.detach().float()

        return keep

    mask = ctx.batch.attention_mask
    one = same_rows(ctx.tokens, mask)  # identical rows (a generation's steps): one forward serves all
    toks = ctx.tokens[:1] if one else ctx.tokens
    kw = {} if mask is None else {"attention_mask": mask[:1] if one else mask}
    with torch.no_grad(), ctx.model.hooks(fwd_hooks=[(n, keeper(n)) for n in names]):
        ctx.model(toks, **kw)
    out = torch.stack([store[n] for n in names], 1)
    return out.expand(ctx.tokens.shape[0], *out.shape[1:]) if one else out


def net_attention(ctx: Ctx) -> Tensor:
    """``NetAttention [batch, pos]``: attention from the target position to each token,
    averaged over layers and heads (the AIEG paper, eq. 9)."""
    p = patterns(ctx)
    rows = torch.arange(p.shape[0], device=p.device)
    return p[rows, :, :, ctx.target_pos.to(p.device), :].mean((1, 2))


@register("attention", per_dim=False, cite="the AIEG paper (attention-only baseline)")
def attention(ctx: Ctx) -> MethodOutput:
    """Attention-only baseline of the AIEG paper: layer- and head-averaged attention weight from
    the target position to each token (eq. 9)."""
    return MethodOutput(net_attention(ctx))


def _per_row_graph(ctx: Ctx, fn: Any) -> Tensor:
    """Run ``fn(tokens [1, n_real], target_index) -> [n_real]`` on each row's real tokens."""
    out = torch.zeros(ctx.tokens.shape, dtype=torch.float32, device=ctx.tokens.device)
    for i in range(ctx.tokens.shape[0]):
        idx = ctx.real[i].nonzero().flatten()
        t = int((idx == ctx.target_pos[i]).nonzero().flatten()[0]) if (idx == ctx.target_pos[i]).any() else idx.numel() - 1
        out[i, idx] = torch.as_tensor(fn(ctx.tokens[i, idx][None], t)).float().reshape(-1).to(out.device)
    return out


def _rollout_rows(ctx: Ctx) -> Tensor:
    """Rollout row ``target_pos`` per example; rows with the same real tokens share one rollout matrix."""
    from mechattr import graph

    cache: dict[tuple[int, ...], Tensor] = {}

    def row(toks: Tensor, t: int) -> Tensor:
        key = tuple(int(v) for v in toks[0])
        if key not in cache:
            cache[key] = graph.attention_rollout(ctx.model, toks)[0]
        return cache[key][t]

    return _per_row_graph(ctx, row)


@register("rollout", per_dim=False, cite="Abnar & Zuidema 2020")
def rollout(ctx: Ctx) -> MethodOutput:
    """Attention rollout (Abnar & Zuidema 2020): row ``target_pos`` of
    ``mechattr.graph.attention_rollout`` (computed on each row's real tokens)."""
    return MethodOutput(_rollout_rows(ctx))


@register("flow", per_dim=False, cite="Abnar & Zuidema 2020")
def flow(ctx: Ctx) -> MethodOutput:
    """Attention flow (Abnar & Zuidema 2020): max-flow from each token to the target position,
    ``mechattr.graph.attention_flow`` (on each row's real tokens)."""
    from mechattr import graph

    return MethodOutput(_per_row_graph(ctx, lambda toks, t: graph.attention_flow(ctx.model, toks, output_pos=t)[0]))


def top_k_mask(maps: Tensor, allowed: Tensor, k: float) -> Tensor:
    """``[R, batch, pos]`` mask of each map's top ``ceil(k · n_allowed)`` allowed tokens."""
    n_allowed = allowed.sum(-1)  # [batch]
    kk = torch.ceil(k * n_allowed.float()).long().clamp_min(1)
    masked = maps.masked_fill(~allowed[None], float("-inf"))
    rank = masked.argsort(-1, descending=True).argsort(-1)
    return (rank < kk[None, :, None]) & allowed[None]


def removal_psi(ctx: Ctx, maps: Tensor, psi: str, k: float) -> Tensor:
    """ψ for RPI, higher is better (DeYoung et al. 2020; the AIEG paper, appendix A.4), removal = zero embedding.

    ``comprehensiveness``: ``F(x) − F(x with the top-k removed)``; ``sufficiency``:
    ``−(F(x) − F(x with all but the top-k removed))``. ``[R, batch]``.
    """
    if psi not in ("comprehensiveness", "sufficiency"):
        raise ValueError(f"unknown psi {psi!r}; allowed: 'comprehensiveness', 'sufficiency' or a callable")
    if not (isinstance(k, (int, float)) and 0 < k <= 1 and math.isfinite(k)):
        raise ValueError(f"k must be a fraction in (0, 1], got {k!r}")
    allowed = ctx.real & ~ctx.exclude
    top = top_k_mask(maps, allowed, k)
    remove = top if psi == "comprehensiveness" else (allowed[None] & ~top)
    f = _evaluate_edits(ctx, torch.cat([torch.zeros_like(remove[:1]), remove]), torch.zeros_like(ctx.embeds))
    drop = f[0][None] - f[1:]
    return drop if psi == "comprehensiveness" else -drop
