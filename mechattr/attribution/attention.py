"""Attribution over attention: which attention weights (query → key) the target uses.

``attribute_attention`` returns ``[batch, n_layers, n_heads, q, k]``, each example's
attribution to its own target ``F_b`` (float32, model's device). Methods (registry
``ATTENTION_METHODS``):

- ``grad_x_attn``: ``A ⊙ ∂F/∂A`` at the clean run (one backward for every layer).
- ``ig``: self-attention attribution (Hao et al. 2021, eq. 4): for each layer ``l`` the
  pattern of that layer (all heads) is scaled from 0 to its value, ``A_l(α) = α·A_l``,
  other layers recompute: ``A_l ⊙ ∫₀¹ ∂F(α·A_l)/∂A_l dα``. Per layer the entries sum to
  ``F(x) − F(A_l = 0)``.
- ``rpi``: randomized path integration over the pre-softmax attention *scores*
  (Shapiro et al. 2024, §5): for each layer, ``R`` random baselines
  ``b_r ~ N(μ_l, σ_l²)`` (μ, σ: mean and std of that layer's unmasked clean scores unless
  given), IG from ``b_r`` to the clean scores (masked entries stay masked), averaged over
  ``r`` (``return_all=True`` keeps ``[R, ...]`` so a caller can pick the map a task
  metric ψ prefers, as the paper does).

:func:`attention_to_tokens` aggregates any of these to a token map ``[batch, pos]``: the sum
over layers, heads and query positions of the attribution of each key token (so for ``ig``
and ``rpi`` it sums to ``Σ_l (F(x) − F(baseline_l))``); ``query=`` restricts to one query
position. The ``ig``/``rpi`` integrals run on the path engine
(:func:`mechattr.attribution.paths.path_integral`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.attribution import _sites
from mechattr.checks import check_target_arg
from mechattr.inputs import prepare_tokens
from mechattr.model import check_model, model_guard
from mechattr.registry import Registry

ATTENTION_METHODS: Registry[Callable[..., Tensor]] = Registry("attention attribution method")


def _pattern_names(model: Any) -> list[str]:
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]


@ATTENTION_METHODS.register("grad_x_attn")
def _grad_x_attn(model: Any, toks: Tensor, mask: Tensor | None, target: Callable, **kw: Any) -> Tensor:
    names = _pattern_names(model)
    acts, grads, _ = _sites.grads_at(model, toks, mask, target, names, batch_size=kw["batch_size"])
    n = toks.shape[0]  # grads_at differentiates the batch mean; each example's own gradient is n×
    return torch.stack([acts[k].float() * grads[k].float() * n for k in names], 1)


@ATTENTION_METHODS.register("ig")
def _ig_attn(model: Any, toks: Tensor, mask: Tensor | None, target: Callable, **kw: Any) -> Tensor:
    from mechattr.attribution.paths import path_integral, schedule

    alphas, weights = schedule(kw["n_steps"], kw["schedule"])
    out = []
    for name in _pattern_names(model):
        pi = path_integral(model, toks, target, name, baseline=None, alphas=alphas, weights=weights, attention_mask=mask, batch_size=kw["batch_size"])
        a = _sites.zero_pads(name, pi.attributions.float(), mask)
        out.append(a)
        kw["deltas"].append(a.flatten(1).sum(-1) - (pi.f_input - pi.f_baseline).float())
        kw["gaps"].append((pi.f_input - pi.f_baseline).float())
    return torch.stack(out, 1)


@ATTENTION_METHODS.register("rpi")
def _rpi_attn(model: Any, toks: Tensor, mask: Tensor | None, target: Callable, **kw: Any) -> Tensor:
    from mechattr.attribution.paths import path_integral, schedule

    R, seed, mu, sigma = kw["n_baselines"], kw["seed"], kw["mu"], kw["sigma"]
    if isinstance(R, bool) or not isinstance(R, int) or R < 1:
        raise ValueError(f"n_baselines must be a positive int, got {R!r}")
    if sigma is not None and not float(sigma) >= 0:
        raise ValueError(f"sigma must be ≥ 0, got {sigma!r}")
    alphas, weights = schedule(kw["n_steps"], kw["schedule"])
    names = [f"blocks.{layer}.attn.hook_attn_scores" for layer in range(model.cfg.n_layers)]
    scores = _sites.cache(model, toks, mask, names, kw["batch_size"])
    gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
    out, per_r = [], []
    for name in names:
        s = scores[name]
        neg = _sites.masked_fill_value(s.dtype)
        live = torch.isfinite(s) & (s > neg / 2)
        x = torch.where(live, s, torch.full_like(s, neg))
        vals = s[live].float()
        m = float(vals.mean()) if mu is None else float(mu)
        sd = float(vals.std()) if sigma is None else float(sigma)
        noise = torch.randn((R, *s.shape), generator=gen).to(s.device, s.dtype)
        b = torch.where(live[None], m + sd * noise, torch.full_like(noise, neg))
        pi = path_integral(model, toks, target, name, baseline=b, input_act=x, alphas=alphas, weights=weights, attention_mask=mask, batch_size=kw["batch_size"])
        a = _sites.zero_pads(name, pi.attributions.float(), mask)
        out.append(a)
        kw["deltas"].append(a.flatten(1).sum(-1) - (pi.f_input - pi.f_baseline).float())
        kw["gaps"].append((pi.f_input - pi.f_baseline).float())
        per_r.append(torch.stack([_sites.zero_pads(name, a.float(), mask) for a in pi.attributions_per_baseline]))
    if kw["return_all"]:
        return torch.stack(per_r, 2)  # [R, batch, n_layers, heads, q, k]
    return torch.stack(out, 1)


def attribute_attention(
    model: Any,
    tokens: Any,
    target: Callable,
    *,
    method: str = "grad_x_attn",
    n_steps: int = 16,
    schedule: str = "gausslegendre",
    n_baselines: int = 4,
    seed: int | None = None,
    mu: float | None = None,
    sigma: float | None = None,
    return_all: bool = False,
    batch_size: int | None = None,
    attention_mask: Any = None,
    return_delta: bool = False,
) -> Float[Tensor, "..."] | tuple[Tensor, Tensor | None]:
    """Attribute each example's target to every attention weight: ``[batch, n_layers,
    n_heads, q, k]`` (``rpi`` with ``return_all=True``: ``[R, batch, n_layers, n_heads, q,
    k]``). Methods ``grad_x_attn``, ``ig`` (Hao et al. 2021), ``rpi`` (Shapiro et al. 2024): see the
    module docstring. ``n_steps``/``schedule``: quadrature of ``ig``/``rpi``;
    ``n_baselines``, ``seed``, ``mu``, ``sigma``: RPI's Gaussian baselines over scores.
    Masked (future / padding) entries get 0.

    Path methods (``ig``, ``rpi``) are checked for convergence: per example and layer,
    ``δ = Σ_{heads, q, k} attr − (F(x) − F(baseline_l))``; a :class:`ConvergenceWarning`
    is raised when ``|δ|`` exceeds 5 % of the gap (:func:`~mechattr.attribution.paths.
    convergence_report`). ``return_delta=True`` returns ``(attr, δ [batch, n_layers])``
    (``δ`` is ``None`` for ``grad_x_attn``).
    """
    check_model(model)
    check_target_arg(target)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    fn = ATTENTION_METHODS.get(method)
    with model_guard(model):
        b = prepare_tokens(model, tokens, attention_mask)
        _sites.row_size(model, b.tokens, target, batch_size)  # validates batch_size
        with _sites.finite_masked_scores(model, b.attention_mask):
            deltas: list[Tensor] = []
            gaps: list[Tensor] = []
            out = fn(model, b.tokens, b.attention_mask, target, n_steps=n_steps, schedule=schedule, n_baselines=n_baselines,
                     seed=seed, mu=mu, sigma=sigma, return_all=return_all, batch_size=batch_size, deltas=deltas, gaps=gaps)
        delta = None
        if deltas:
            from mechattr.convergence import convergence_report

            delta = torch.stack(deltas, 1).detach().float()
            convergence_report(delta, torch.stack(gaps, 1), f"attribute_attention(method={method!r})")
        out = out.detach().float()
        return (out, delta) if return_delta else out


def attention_to_tokens(attr: Float[Tensor, "*r batch n_layers n_heads q k"], *, query: int | None = None) -> Float[Tensor, "*r batch k"]:
    """Token map from attention attribution: ``Σ_{layers, heads, queries} attr[..., q, k]``
    (only query position ``query`` when given; negative counts from the end)."""
    if attr.ndim < 5:
        raise ValueError(f"expected [..., batch, n_layers, n_heads, q, k], got shape {tuple(attr.shape)}")
    if query is not None:
        Q = attr.shape[-2]
        if not -Q <= query < Q:
            raise ValueError(f"query {query} out of range for {Q} query positions")
        return attr[..., query, :].sum((-3, -2))
    return attr.sum((-4, -3, -2))
