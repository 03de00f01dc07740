"""Path methods whose paths are not one straight line: DIG, UDIG (anchors in the vocabulary) and SIG.

All run on the path engine at ``hook_embed``: SIG is IG with one baseline per token (only
that token moves); DIG/UDIG evaluate gradients at arbitrary path points (the engine with
``α = 0`` at each point, batched over points and examples, chunked by ``batch_size``).
Each returns ``[batch, pos, d_model]``; :func:`attribute_tokens` reduces it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.paths import schedule
from mechattr.attribution.tokens import Ctx, MethodOutput, register
from mechattr.runtime.embedding import vocab_embeddings

STRATEGIES = ("greedy", "maxcount")


def gradients_at(ctx: Ctx, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂F/∂e [P, batch, pos, d_model], F [P, batch], F(x) [batch])`` at embedding points
    ``[P, batch, pos, d_model]``: the path engine with each point as a baseline and ``α = 0``."""
    r = ctx.integrate([0.0], [1.0], points.to(ctx.embeds.dtype))
    return r.grads_per_baseline, r.f_path[:, 0], r.f_input


# ------------------------------------------------------------------------------ monotone paths
def monotone_dims(a: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``[..., d]`` bool: ``a`` lies between ``lo`` and ``hi`` in each dimension (either order)."""
    return (a >= torch.minimum(lo, hi)) & (a <= torch.maximum(lo, hi))


def monotone_path(
    E: Tensor, words: Tensor, x: Tensor, b: Tensor, n_steps: int, *, strategy: str = "greedy",
    n_neighbors: int = 50, uniform: bool = False, base_words: Tensor | None = None,
) -> Tensor:
    """A monotone path from ``b`` to ``x`` through vocabulary anchors: ``[n_steps, T, d]``,
    ``path[0] = b``, ``path[-1] = x``, and ``path[k]`` between ``b`` and ``path[k+1]`` in
    every dimension (so each dimension moves monotonically from ``b`` to ``x``).

    Built from ``x`` backwards (Sanyal & Ren 2021, §3): at each of ``n_steps − 2`` steps,
    candidate anchors ``a`` are the ``n_neighbors`` vocabulary embeddings (``E [V, d]``) nearest
    to the previous anchor word (DIG; first the input word ``words [T]``) or, with
    ``uniform=True``, nearest to the next of ``n_steps − 2`` evenly spaced points on the
    straight line (UDIG, Roy et al. 2024); words already on the path and the baseline's word
    (``base_words``, −1 for none) are skipped. Each candidate is monotonized against the
    current point ``c``: dimensions outside ``[b, c]`` move to ``c − (c − b)/n_steps``.
    ``strategy="greedy"`` takes the anchor closest to its monotonized point, ``"maxcount"`` the
    one with most monotone dimensions; the next point is the chosen anchor monotonized.
    With no candidate left the path jumps to ``b``. (The reference code scores anchors
    against the previous anchor's raw embedding but monotonizes against the path point; here
    both use the path point, so the score is the distance the point actually moves off the word.)
    """
    T, _ = x.shape
    E = E.float()
    x, b = x.float(), b.float()
    ar = torch.arange(T, device=x.device)
    used = torch.zeros(T, E.shape[0], dtype=torch.bool, device=x.device)
    used[ar, words] = True
    if base_words is not None:
        has = base_words >= 0
        used[ar[has], base_words[has]] = True
    m = n_steps - 2
    points, c, w = [x], x, words.clone()
    K = min(int(n_neighbors), E.shape[0])
    for k in range(m):
        if uniform:
            u = b + (m - k) / (m + 1) * (x - b)
            cand = torch.cdist(u, E).topk(K, largest=False).indices
        else:
            d = torch.cdist(E[w], E)
            d[ar, w] = float("inf")
            cand = d.topk(K, largest=False).indices
        valid = ~used.gather(1, cand)
        A = E[cand]  # [T, K, d]
        mono = monotone_dims(A, c[:, None], b[:, None])
        M = torch.where(mono, A, (c - (c - b) / n_steps)[:, None])
        score = (A - M).norm(dim=-1) if strategy == "greedy" else -mono.sum(-1).float()
        j = score.masked_fill(~valid, float("inf")).argmin(-1)
        none = ~valid.any(-1)
        c = torch.where(none[:, None], b, M[ar, j])
        w = torch.where(none, w, cand[ar, j])
        used[ar[~none], w[~none]] = True
        points.append(c)
    points.append(b)
    return torch.stack(points[::-1])


def _word_path_method(ctx: Ctx, uniform: bool, strategy: str, n_neighbors: int, default_steps: int) -> MethodOutput:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be an int ≥ 1, got {n_neighbors!r}")
    n = ctx.steps(default_steps)
    if n < 2:
        raise ValueError(f"n_steps must be ≥ 2 for a path with both ends (baseline and input), got {n}")
    b = ctx.baseline(1)
    if b.shape[0] != 1:
        raise ValueError(f"{'udig' if uniform else 'dig'} needs one baseline; the spec {ctx.baseline_spec!r} gave {b.shape[0]}")
    x, b = ctx.embeds, b[0]
    E = vocab_embeddings(ctx.model).to(x.device)
    move = ~ctx.exclude & ctx.real
    xs, bs = x[move].float(), b[move].float()
    dist, near = torch.cdist(bs, E.float()).min(-1) if len(bs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    base_words = torch.where(dist == 0, near, torch.full_like(near, -1))
    path = x.float()[None].repeat(n, 1, 1, 1)
    if len(xs):
        path[:, move] = monotone_path(E, ctx.tokens[move], xs, bs, n, strategy=strategy, n_neighbors=n_neighbors, uniform=uniform, base_words=base_words)
    g, f_pts, f_x = gradients_at(ctx, path[:-1])
    attr = (g.float() * (path[1:] - path[:-1])).sum(0)
    f_b = f_pts[0]
    delta = attr.flatten(1).sum(-1) - (f_x - f_b)
    return MethodOutput(attr, delta, f_x, f_b, {})


@register("dig", default_steps=30, cite="Sanyal & Ren 2021 (Discretized Integrated Gradients)")
def dig(ctx: Ctx, strategy: str = "greedy", n_neighbors: int = 50) -> MethodOutput:
    """Discretized IG (Sanyal & Ren 2021, "Discretized Integrated Gradients for Explaining
    Language Models", eq. 3): ``Σ_k ∂F/∂e |_{p_k} ⊙ (p_{k+1} − p_k)`` along a monotone path of
    ``n_steps`` points (default 30, as Inseq) from the baseline to the input whose interior
    points are vocabulary words monotonized (:func:`monotone_path`: anchors among the
    ``n_neighbors`` nearest words of the previous anchor, ``strategy`` ``"greedy"`` or
    ``"maxcount"``). Every token moves at once. Needs one baseline (default the model's).
    ``convergence_delta`` = the Riemann sum's completeness error along that path (coarse
    paths give large errors; the paper reports them too).
    """
    return _word_path_method(ctx, False, strategy, n_neighbors, 30)


@register("udig", default_steps=30, cite="Roy et al. 2024 (Uniform Discretized Integrated Gradients)")
def udig(ctx: Ctx, strategy: str = "greedy", n_neighbors: int = 30) -> MethodOutput:
    """Uniform DIG (Roy et al. 2024, "Uniform Discretized Integrated Gradients: an effective
    attribution based method for explaining large language models"). The course notes define
    it only as "a nonlinear path that stays closer to actual word embeddings"; the paper and
    its code: DIG whose anchor candidates are the ``n_neighbors`` (default 30) words nearest to
    ``n_steps − 2`` points spaced uniformly on the straight baseline→input line, so the path
    follows IG's line through real words (:func:`monotone_path` with ``uniform=True``), then
    ``Σ_k ∂F/∂e |_{p_k} ⊙ (p_{k+1} − p_k)``. The paper's optional midpoint upscaling is left
    out (use more ``n_steps``). ``convergence_delta`` as for ``dig``.
    """
    return _word_path_method(ctx, True, strategy, n_neighbors, 30)


def _sig_spec(ctx: Ctx) -> Any:
    if ctx.baseline_spec is not None:
        return ctx.baseline_spec
    tok = getattr(ctx.model, "tokenizer", None)
    return "mask" if getattr(tok, "mask_token_id", None) is not None else None


@register("sig", default_steps=32, cite="Enguehard 2023 (Sequential Integrated Gradients)")
def sig(ctx: Ctx, quadrature: str = "gausslegendre") -> MethodOutput:
    """Sequential IG (Enguehard 2023, "Sequential Integrated Gradients: a simple but effective
    method for explaining language models", eq. 2): for each token ``t`` an IG in which only
    ``e_t`` moves, from the baseline to its embedding, every other token fixed at its input
    value: ``(x_t − x'_t) ⊙ ∫₀¹ ∂F(x_{−t}, x'_t + α(x_t − x'_t))/∂x_t dα`` (``n_steps`` nodes of
    ``quadrature``, default 32 gauss-legendre).

    Baseline: ``baseline`` if given, else the tokenizer's mask token (the paper's), else the
    model's default. Completeness holds per token: ``Σ_d score_t = F(x) − F(x with t at the
    baseline)``; extras ``token_delta [batch, pos]`` (its error) and ``f_masked [batch, pos]``;
    ``convergence_delta`` is their sum over tokens and ``f_baseline = F(x) − Σ_t (F(x) −
    F(x_{t→x'}))``, so ``convergence_delta = Σ scores − (F(x) − f_baseline)`` as for IG.
    Cost: ``n_steps`` rows per token per example, in chunks of ``batch_size``.
    """
    b = ctx.baseline(1, spec=_sig_spec(ctx))
    if b.shape[0] != 1:
        raise ValueError(f"sig needs one baseline; the spec {ctx.baseline_spec!r} gave {b.shape[0]}")
    x, b = ctx.embeds, b[0]
    moving = (~ctx.exclude & ctx.real).any(0).nonzero().flatten()  # positions some row attributes
    B, P, D = x.shape
    if len(moving) == 0:
        return MethodOutput(torch.zeros_like(x, dtype=torch.float32), torch.zeros(B), None, None, {})
    R = len(moving)
    bases = x[None].repeat(R, 1, 1, 1)
    r_idx = torch.arange(R, device=x.device)
    bases[r_idx, :, moving] = b[:, moving].transpose(0, 1)
    a, w = schedule(ctx.steps(32), quadrature)
    r = ctx.integrate(a, w, bases)
    attr = torch.zeros(B, P, D, device=x.device)
    attr[:, moving] = r.attributions_per_baseline[r_idx, :, moving].transpose(0, 1).float()
    f_x = r.f_input
    f_masked = f_x[:, None].repeat(1, P)
    f_masked[:, moving] = r.f_baseline_per.transpose(0, 1)
    gap = f_x[:, None] - f_masked
    token_delta = attr.sum(-1) - gap
    return MethodOutput(attr, token_delta.sum(-1), f_x, f_x - gap.sum(-1), {"token_delta": token_delta, "f_masked": f_masked})
