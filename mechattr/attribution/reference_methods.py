"""Reference-based token attribution: DeepLIFT (rescale rule) and GradientSHAP as Captum defines it.

Both return ``[batch, pos, d_model]`` at ``hook_embed``; :func:`attribute_tokens` reduces them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.baselines import example_generators
from mechattr.attribution.paths import default_batch_size
from mechattr.attribution.tokens import Ctx, MethodOutput, register
from mechattr.runtime.chunks import row_chunks
from mechattr.runtime.deeplift import RescaleSite, rescale_sites
from mechattr.runtime.hooks import hooked
from mechattr.targets import Target, check_finite, run_target


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int ≥ 1, got {v!r}")
    return v


def _rescale_hook(site: RescaleSite, live: dict, ref: dict, eps: float) -> Callable:
    """``hook_post`` → same value, but ``∂σ/∂pre = Δσ/Δpre`` (the secant against the reference
    run) where ``|Δpre| ≥ eps``; the activation's own derivative elsewhere. Gated MLPs
    (``post = σ(pre) · lin``): the secant on σ, the gradient on the product
    (``∂post/∂lin = σ(pre)``, ``∂post/∂σ = lin`` at the input)."""

    def hook(post: Tensor, hook: Any) -> Tensor:
        pre = live[site.pre]
        d_pre = pre.detach() - ref[site.pre]
        small = d_pre.abs() < eps
        safe = torch.where(small, torch.ones_like(d_pre), d_pre)
        if site.linear is None:
            m = (post.detach() - ref[site.post]) / safe
            moved = (pre - pre.detach()) * m
        else:
            lin = live[site.linear]
            with torch.no_grad():
                a = site.act(pre.detach())
                m = (a - site.act(ref[site.pre])) / safe
            moved = (pre - pre.detach()) * m * lin.detach() + (lin - lin.detach()) * a
        return torch.where(small, post, post.detach() + moved)

    return hook


@register("deeplift", cite="Shrikumar et al. 2017 (DeepLIFT, rescale rule)",
          delta_advice=("DeepLIFT's summation-to-delta is exact only where every nonlinearity has a rescale rule; "
                        "LayerNorm, softmax and attention products take the plain gradient (as in Captum), so this "
                        "error is the method's, not a step count: more n_steps will not change it"))
def deeplift(ctx: Ctx, eps: float = 1e-6) -> MethodOutput:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017, "Learning Important Features Through
    Propagating Activation Differences", §3.3–3.5): ``(x − x') ⊙ m``, ``m`` the multipliers of
    the target w.r.t. the token embeddings, propagated by the chain rule for multipliers.

    Rule set: each MLP's elementwise activation ``post = σ(pre)`` (``blocks.L.mlp.hook_pre →
    hook_post``, :func:`mechattr.runtime.deeplift.rescale_sites`) gets the rescale multiplier
    ``Δpost/Δpre`` against the baseline run (the secant; the derivative where ``|Δpre| < eps``).
    Every other operation — LayerNorm, the attention softmax, the query·key and pattern·value
    products, the gate·linear product of gated MLPs (whose σ gets the rule), the target's
    log-softmax — gets the gradient at the input, as Captum does for operations it has no rule
    for (and as DeepLIFT does for linear maps, where it is exact). SoLU and MoE MLPs have no
    elementwise activation at hooks: gradient there.

    Summation-to-delta ``Σ scores = F(x) − F(x')`` holds exactly when every nonlinearity has
    the rule (e.g. one position, no LayerNorm, no gated MLP, a logit target);
    ``convergence_delta [batch]`` reports its error otherwise. One baseline (``baseline``,
    default the model's; a random spec gives one seeded draw; a float tensor ``[R, …]`` with
    R > 1 is refused — use ``gradient_shap`` for a distribution). Cost: one forward on the baseline and one forward+backward per row,
    in chunks of ``batch_size`` examples. Extras: ``rescale_layers`` (layers with the rule).
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number ≥ 0, got {eps!r}")
    b = ctx.baseline(1)
    if b.shape[0] != 1:
        raise ValueError(f"deeplift needs one baseline; the spec {ctx.baseline_spec!r} gave {b.shape[0]} (use a deterministic baseline, or gradient_shap for a distribution)")
    model, x, tgt = ctx.model, ctx.embeds, ctx.target
    b = b[0]
    sites, _ = rescale_sites(model)
    n, P = x.shape[:2]
    mask = ctx.batch.attention_mask
    plain = not isinstance(tgt, Target)
    size = n if plain else (ctx.batch_size or default_batch_size(model, P))
    grads = torch.zeros_like(x, dtype=torch.float32)
    f_in = torch.zeros(n, device=x.device)
    f_b = torch.zeros(n, device=x.device)
    for sl in row_chunks(n, size):
        e = torch.arange(n, device=x.device)[sl]
        t = tgt if plain else tgt.take(e)
        toks, m = ctx.tokens[e], (None if mask is None else mask[e])
        ref: dict[str, Tensor] = {}
        live: dict[str, Tensor] = {}

        def keep(name: str, store: dict, detach: bool) -> Callable:
            def fn(act: Tensor, hook: Any) -> None:
                store[name] = act.detach() if detach else act

            return fn

        cached = [(s.pre, keep(s.pre, ref, True)) for s in sites] + [(s.post, keep(s.post, ref, True)) for s in sites]
        with torch.no_grad(), hooked(model, [("hook_embed", lambda a, hook, v=b[e]: v), *cached]):
            f_b[sl] = check_finite(run_target(model, toks, t, attention_mask=m).float(), "target at the baseline")
        emb = x[e].detach().clone().requires_grad_(True)
        rules = [(s.pre, keep(s.pre, live, False)) for s in sites]
        rules += [(s.linear, keep(s.linear, live, False)) for s in sites if s.linear is not None]
        rules += [(s.post, _rescale_hook(s, live, ref, float(eps))) for s in sites]
        with torch.enable_grad(), hooked(model, [("hook_embed", lambda a, hook, v=emb: v), *rules]):
            f = check_finite(run_target(model, toks, t, attention_mask=m).float(), "target at the input")
            (g,) = torch.autograd.grad(f.sum(), emb)
        grads[sl] = g.float()
        f_in[sl] = f.detach()
    attr = (x.float() - b.float()) * grads
    delta = attr.flatten(1).sum(-1) - (f_in - f_b)
    layers = torch.tensor([s.layer for s in sites], dtype=torch.long)
    return MethodOutput(attr, delta, f_in, f_b, {"rescale_layers": layers})


def _draws(ctx: Ctx, n: int, n_ref: int, stdevs: float, draws: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(alpha [n, batch], index [n, batch], noise [n, batch, pos, d_model] | None)``: given, or
    drawn per example from generators seeded by ``seed`` and the example's tokens."""
    B, P, D = ctx.embeds.shape
    if draws is not None:
        if not isinstance(draws, dict) or not {"alpha", "index"} <= set(draws) or set(draws) - {"alpha", "index", "noise"}:
            raise ValueError(f"draws must be a dict with keys 'alpha' [n_samples, batch], 'index' [n_samples, batch] and optionally 'noise' [n_samples, batch, pos, d_model]; got {draws!r:.200}")
        a = torch.as_tensor(draws["alpha"], dtype=torch.float64)
        idx = torch.as_tensor(draws["index"])
        noise = draws.get("noise")
        if a.shape != (n, B) or idx.shape != (n, B):
            raise ValueError(f"draws['alpha'] and draws['index'] must be [n_samples={n}, batch={B}]; got {tuple(a.shape)} and {tuple(idx.shape)}")
        if idx.is_floating_point() or idx.min() < 0 or idx.max() >= n_ref:
            raise ValueError(f"draws['index'] must be ints in 0..{n_ref - 1} (the baseline distribution's size)")
        if not ((a >= 0) & (a <= 1)).all():
            raise ValueError("draws['alpha'] must lie in [0, 1]")
        if noise is None and stdevs > 0:
            raise ValueError(f"stdevs={stdevs} asks for input noise but draws has no 'noise' [n_samples, batch, pos, d_model]; pass it or set stdevs=0")
        if noise is not None:
            noise = torch.as_tensor(noise).float()
            if noise.shape != (n, B, P, D):
                raise ValueError(f"draws['noise'] must be [n_samples={n}, batch={B}, pos={P}, d_model={D}]; got {tuple(noise.shape)}")
        return a, idx.long(), noise
    gens = example_generators(ctx.tokens, ctx.real, ctx.seed, salt="gradient_shap")
    a = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in gens], -1)
    idx = torch.stack([torch.randint(0, n_ref, (n,), generator=g) for g in gens], -1)
    noise = None
    if stdevs > 0:
        noise = torch.stack([stdevs * torch.randn(n, P, D, generator=g) for g in gens], 1)
    return a, idx, noise


@register("gradient_shap", default_steps=32, cite="Lundberg & Lee 2017 (SHAP); Captum's GradientShap")
def gradient_shap(ctx: Ctx, n_samples: int | None = None, stdevs: float = 0.0, n_references: int | None = None, draws: Any = None) -> MethodOutput:
    """GradientSHAP as Captum's ``GradientShap`` defines it (Lundberg & Lee 2017; Captum
    ``attr/_core/gradient_shap.py``): ``mean_s (x̃_s − x'_s) ⊙ ∂F/∂x |_{x'_s + α_s(x̃_s − x'_s)}``
    over ``n_samples`` (default ``n_steps``, 32) samples, each with ``x̃_s = x + ε_s``,
    ``ε_s ~ N(0, stdevs²)`` on every embedding entry (SmoothGrad's noise), ``x'_s`` drawn with
    replacement from a reference distribution, and ``α_s ~ U(0, 1)``.

    The distribution: ``n_references`` (default ``n_samples``) draws of ``baseline`` (default
    ``"uniform"``: a random real token per position; a float tensor ``[R, batch, pos, d_model]``
    is used as given). Draws are seeded per example by ``seed``, or given as
    ``draws={"alpha": [n, batch], "index": [n, batch], "noise": [n, batch, pos, d_model]}``.

    How it differs from ``expected_gradients``: that method draws a fresh baseline for every
    sample and no input noise; this one adds Gaussian noise to the input (and multiplies by the
    noisy difference) and resamples a fixed reference set. With ``stdevs=0`` and each reference
    drawn once the two agree in expectation. Completeness holds in expectation only:
    ``convergence_delta = Σ scores − (F(x) − mean_s F(x'_s))`` (with ``stdevs=0``).
    Extras: ``alpha``, ``index`` ``[n_samples, batch]``.
    """
    from mechattr.attribution.discrete_paths import gradients_at

    n = _positive_int("n_samples", n_samples if n_samples is not None else ctx.steps(32))
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or not stdevs >= 0:
        raise ValueError(f"stdevs must be a number ≥ 0, got {stdevs!r}")
    n_ref = _positive_int("n_references", n_references if n_references is not None else n)
    spec = "uniform" if ctx.baseline_spec is None else ctx.baseline_spec
    refs = ctx.baseline(n_ref, spec=spec)
    R = refs.shape[0]
    alpha, index, noise = _draws(ctx, n, R, float(stdevs), draws)
    x = ctx.embeds.float()
    dev = x.device
    cols = torch.arange(x.shape[0], device=dev)
    base = refs.float()[index.to(dev), cols[None].expand(n, -1)]  # [n, batch, pos, d]
    keep = (~ctx.exclude).to(dev)[None, :, :, None]
    xt = x[None].expand(n, *x.shape)
    if noise is not None:
        xt = xt + noise.to(dev) * keep  # excluded positions stay fixed
    a = alpha.to(dev).float()[..., None, None]
    g, f_points, f_x = gradients_at(ctx, base + a * (xt - base))
    attr = ((xt - base) * g).mean(0)
    f_base = _evaluate_points(ctx, base)
    f_b = f_base.mean(0)
    delta = attr.flatten(1).sum(-1) - (f_x - f_b)
    return MethodOutput(attr, delta, f_x, f_b, {"alpha": alpha.float(), "index": index})


def _evaluate_points(ctx: Ctx, points: Tensor) -> Tensor:
    """``F`` at embeddings ``points [V, batch, pos, d_model]`` → ``[V, batch]`` (no gradients)."""
    from mechattr.attribution.paths import evaluate_at_hook

    pts = points.to(ctx.embeds.dtype)
    return evaluate_at_hook(ctx.model, ctx.batch.tokens, ctx.target, "hook_embed", lambda xe, v, e: pts[v, e], pts.shape[0],
                            attention_mask=ctx.batch.attention_mask, batch_size=ctx.batch_size)
