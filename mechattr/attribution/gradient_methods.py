"""Gradient token-attribution methods, each a few lines over the path engine at ``hook_embed``.

All return ``[batch, pos, d_model]`` attributions; :func:`attribute_tokens` reduces them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.baselines import example_generators
from mechattr.attribution.paths import schedule
from mechattr.attribution.tokens import Ctx, MethodOutput, register


def _zero_baseline(ctx: Ctx) -> Tensor:
    return ctx.baseline(1, spec="zero")  # saliency, grad×input: at the input, against 0 (not the default baseline)


def _path_out(r: Any, **extras: Any) -> MethodOutput:
    return MethodOutput(r.attributions, r.convergence_delta, r.f_input, r.f_baseline, extras)


@register("saliency", reduction="l2", cite="Simonyan et al. 2014")
def saliency(ctx: Ctx) -> MethodOutput:
    """Saliency: ``∂F/∂e_t`` at the input (Simonyan et al. 2014), reduced by its
    L2 norm over ``d_model`` by default (``reduction="sum"`` gives the signed sum)."""
    r = ctx.integrate([1.0], [1.0], _zero_baseline(ctx), baseline_value=False)
    return MethodOutput(r.grads, None, r.f_input, None)


@register("input_x_gradient", cite="Shrikumar et al. 2016")
def input_x_gradient(ctx: Ctx) -> MethodOutput:
    """Gradient × input: ``e_t ⊙ ∂F/∂e_t`` (Shrikumar et al. 2016)."""
    r = ctx.integrate([1.0], [1.0], _zero_baseline(ctx), baseline_value=False)
    return MethodOutput(r.attributions, None, r.f_input, None)


@register("ig", default_steps=64, cite="Sundararajan et al. 2017")
def ig(ctx: Ctx, quadrature: str = "gausslegendre") -> MethodOutput:
    """Integrated gradients: ``(x − x') ⊙ ∫₀¹ ∂F(x' + α(x − x'))/∂x dα`` (Sundararajan et al.
    2017, eq. 1), by ``quadrature`` with ``n_steps`` nodes (default 64)."""
    a, w = schedule(ctx.steps(64), quadrature)
    return _path_out(ctx.integrate(a, w, ctx.baseline(1)))


@register("ig_clipped", default_steps=64, cite="the AIEG paper, appendix A.2 (IGCG)")
def ig_clipped(ctx: Ctx, theta: float | tuple[float, float] = 1e6, quadrature: str = "gausslegendre") -> MethodOutput:
    """IG with clipped gradients (IGCG, the AIEG paper's appendix A.2): each step's ``∂F/∂e`` capped to
    ``[−θ, θ]`` (or ``[θ⁻, θ⁺]``), θ = 1e6 as in the paper's experiments."""
    a, w = schedule(ctx.steps(64), quadrature)
    return _path_out(ctx.integrate(a, w, ctx.baseline(1), grad_clip=theta))


@register("expected_gradients", default_steps=64, cite="Erion et al. 2021; Lundberg & Lee 2017 (GradientSHAP)")
def expected_gradients(ctx: Ctx, n_samples: int | None = None) -> MethodOutput:
    """Expected gradients / GradientSHAP: ``E_{x'~D, α~U(0,1)}[(x − x') ⊙ ∂F(x' + α(x − x'))/∂x]``.

    ``n_samples`` (default ``n_steps``, 64) pairs ``(x'_r, α_r)``; ``D`` is the ``baseline``
    spec, default ``"uniform"`` (a random real token per position). Draws are seeded per
    example by ``seed``. ``convergence_delta`` is against ``mean_r F(x'_r)``.
    """
    n = n_samples if n_samples is not None else ctx.steps(64)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_samples must be an int ≥ 1, got {n!r}")
    spec = "uniform" if ctx.baseline_spec is None else ctx.baseline_spec
    b = ctx.baseline(n, spec=spec)
    if b.shape[0] == 1 and n > 1:  # one fixed baseline: the samples differ in α only
        b = b.expand(n, *b.shape[1:])
    R = b.shape[0]
    gens = example_generators(ctx.tokens, ctx.real, ctx.seed, salt="alpha")
    alphas = torch.stack([torch.rand(R, generator=g, dtype=torch.float64) for g in gens], -1)[:, None]
    return _path_out(ctx.integrate(alphas, torch.ones_like(alphas), b))


@register("rpi", default_steps=32, cite="Shapiro et al. 2024, §5 (Randomized Path Integration)")
def rpi(ctx: Ctx, n_baselines: int = 4, psi: Any = "comprehensiveness", k: float = 0.2, quadrature: str = "gausslegendre") -> MethodOutput:
    """Randomized Path Integration (Shapiro et al. 2024, §5): R baselines ``b_r ~ N(μ, σ²I)`` (``baseline``
    default ``"gaussian"``: μ, σ from the token embeddings; or any spec/sampler), an IG map ``m_r`` per
    baseline (``n_steps`` each, default 32), and per example ``argmax_r ψ(m_r)``.

    ``psi``: ``"comprehensiveness"`` (F(x) − F(x without the top-k tokens)), ``"sufficiency"``
    (−(F(x) − F(only the top-k tokens))), or ``fn(ctx, maps [R, batch, pos]) -> [R, batch]``
    (higher is better); removal = zero embedding, top ``k`` = fraction of attributable tokens
    (the AIEG paper, appendix A.4). Extras: ``maps [R, batch, pos]``, ``psi [R, batch]``, ``chosen [batch]``.
    A deterministic ``baseline`` (zero, a token id, a tensor) gives R = 1: one map, plain IG.
    """
    from mechattr.attribution.other_methods import removal_psi

    if isinstance(n_baselines, bool) or not isinstance(n_baselines, int) or n_baselines < 1:
        raise ValueError(f"n_baselines must be an int ≥ 1, got {n_baselines!r}")
    spec = "gaussian" if ctx.baseline_spec is None else ctx.baseline_spec
    b = ctx.baseline(n_baselines, spec=spec)
    a, w = schedule(ctx.steps(32), quadrature)
    r = ctx.integrate(a, w, b)
    maps = (r.attributions_per_baseline * (~ctx.exclude)[None, ..., None]).sum(-1)
    if callable(psi):
        score = torch.as_tensor(psi(ctx, maps)).float()
        if score.shape != maps.shape[:2]:
            raise ValueError(f"psi must return [R={maps.shape[0]}, batch={maps.shape[1]}]; got {tuple(score.shape)}")
    else:
        score = removal_psi(ctx, maps, psi, k)
    chosen = score.argmax(0)
    cols = torch.arange(maps.shape[1], device=maps.device)
    attr = r.attributions_per_baseline[chosen, cols]
    f_b = r.f_baseline_per[chosen, cols]
    delta = attr.flatten(1).sum(-1) - (r.f_input - f_b)
    return MethodOutput(attr, delta, r.f_input, f_b, {"maps": maps, "psi": score, "chosen": chosen, "f_baselines": r.f_baseline_per})


def _ps_density(density: Any, a: Tensor) -> tuple[Tensor, Tensor]:
    """``(cdf(α), pdf(α))`` of the baseline-sampling density on [0, 1]."""
    if density == "uniform":
        return a.clone(), torch.ones_like(a)
    if isinstance(density, (tuple, list)) and len(density) == 3 and density[0] == "beta":
        from scipy import special, stats

        p, q = float(density[1]), float(density[2])
        if p <= 0 or q <= 0:
            raise ValueError(f"beta density needs a, b > 0; got {density!r}")
        x = a.numpy()
        return torch.tensor(special.betainc(p, q, x)), torch.tensor(stats.beta.pdf(x, p, q))
    raise ValueError(f"unknown density {density!r}; allowed: 'uniform' or ('beta', a, b)")


@register("ps_ig", default_steps=64, cite="Kamalov et al. (PS-IG)")
def ps_ig(ctx: Ctx, density: Any = "uniform", quadrature: str = "gausslegendre") -> MethodOutput:
    """Path-sampled IG (Kamalov et al.): ``E_{β~p}[IG(x; x'_β)]`` with baselines ``x'_β = x' + β(x − x')``
    sampled along the path, computed as the equivalent path-weighted IG
    ``(x − x') ⊙ ∫₀¹ P(β ≤ α) ∂F(x' + α(x − x'))/∂x dα`` (weight = the CDF of ``p``).

    ``density``: ``"uniform"`` (CDF α) or ``("beta", a, b)``. Completeness: ``Σ scores =
    F(x) − E_β F(x'_β)``; ``convergence_delta`` is against that expectation (quadrature).
    """
    a, w = schedule(ctx.steps(64), quadrature)
    cdf, pdf = _ps_density(density, a)
    r = ctx.integrate(a, w * cdf, ctx.baseline(1))
    e_fb = (r.f_path[0] * (w * pdf).to(r.f_path)[:, None]).sum(0)
    delta = r.attributions.flatten(1).sum(-1) - (r.f_input - e_fb)
    return MethodOutput(r.attributions, delta, r.f_input, e_fb)


@register("aieg", per_dim=False, default_steps=64, cite="the AIEG paper, eqs. 9-13, appendix A.3")
def aieg(ctx: Ctx) -> MethodOutput:
    """AIEG (the AIEG paper, eqs. 9–13, appendix A.3): ``NetAttention_t · PosNorm(IG_EF)_t``.

    ``IG_EF = Σ_d (x − x') ⊙ (1/N) Σ_{k=1..N} EF_k ∂F(x' + α_k(x − x'))/∂x`` with ``α_k = k/N``
    and the emphasis factor ``EF_k = |F(α_k) − F(α_{k−1})| / (|F(α_k)| + |F(α_{k−1})|)``
    (eq. 12, ε = 1/N; 0 where both vanish). ``PosNorm(a) = a / Σ_{a_T>0} a_T`` over the
    attributable tokens (eq. 13). ``NetAttention_t`` = attention weight from the target
    position to token t, averaged over layers and heads (eq. 9). Extras: ``ef [N, batch]``,
    ``ig_ef``, ``net_attention`` ``[batch, pos]``. Not complete, so no convergence delta.
    """
    from mechattr.attribution.other_methods import net_attention

    N = ctx.steps(64)
    b = ctx.baseline(1)
    grid = torch.arange(N + 1, dtype=torch.float64) / N
    f = ctx.integrate(grid, torch.ones_like(grid), b, with_grad=False).f_path[0]  # [N+1, batch]
    num, den = (f[1:] - f[:-1]).abs(), f[1:].abs() + f[:-1].abs()
    ef = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    r = ctx.integrate(grid[1:], ef.double().cpu() / N, b)
    ig_ef = (r.attributions * (~ctx.exclude)[..., None]).sum(-1)
    pos = ig_ef.clamp_min(0).sum(-1, keepdim=True)
    normed = torch.where(pos > 0, ig_ef / pos.clamp_min(1e-30), torch.zeros_like(ig_ef))
    att = net_attention(ctx)
    return MethodOutput(att * normed, None, r.f_input, r.f_baseline, {"ef": ef, "ig_ef": ig_ef, "net_attention": att})
