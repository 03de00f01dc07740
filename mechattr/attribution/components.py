"""Attribution to model components: attention heads, MLPs, neurons and the residual stream.

Every score is an attribution of the **batch-mean** target ``mean_b F(x_b)`` (equivalently
the batch-mean of the per-example attributions), summed over the unit's own dimensions
(``d_head`` for heads, ``d_model`` for MLP outputs and residual streams) and, unless
``per_position=True``, over positions. Results are float32 on the model's device; pass
``return_result=True`` for a :class:`ComponentAttribution` with ``.to_frame()``,
``.plot()``, ``.save()``.

Head / MLP / neuron methods (registry ``COMPONENT_METHODS``): ``atp`` (Nanda 2023; Syed
et al. 2023), ``atp_star`` (Kramár et al. 2024), ``ig`` (joint IG over all units' outputs
from corrupted to clean), ``grad_x_act``, ``dla`` (direct logit attribution). Residual
methods (``RESID_METHODS``): ``ig``, ``grad_x_act``, ``atp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution import _sites
from mechattr.attribution import atp_star as _atp_star  # noqa: F401  (registers "atp_star")
from mechattr.attribution.component_methods import COMPONENT_METHODS, KINDS, Ctx
from mechattr.attribution.component_result import ComponentAttribution
from mechattr.checks import check_target_arg
from mechattr.inputs import prepare_pair, prepare_tokens
from mechattr.model import check_model, model_guard
from mechattr.registry import Registry

RESID_METHODS: Registry[Callable[..., tuple[Tensor, Tensor | None]]] = Registry("residual attribution method")

__all__ = ["attribute_heads", "attribute_mlps", "attribute_neurons", "attribute_resid", "ComponentAttribution", "COMPONENT_METHODS", "RESID_METHODS"]


def _check_common(model: Any, target: Any, n_steps: Any) -> None:
    check_model(model)
    check_target_arg(target)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")


def _inputs(model: Any, clean: Any, corrupted: Any, attention_mask: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    if corrupted is None:
        b = prepare_tokens(model, clean, attention_mask, name="clean")
        return b.tokens, b.attention_mask, None
    c, x = prepare_pair(model, clean, corrupted, attention_mask)
    return c.tokens, c.attention_mask, x.tokens


def _meta(method: str, target: Any, **kw: Any) -> dict:
    from mechattr.io import versions

    desc = target.describe() if hasattr(target, "describe") else {"target": getattr(target, "__name__", type(target).__name__)}
    return {"method": method, "target": desc, "versions": versions(), **kw}


# --------------------------------------------------------------------------- heads / mlps / neurons
def attribute_heads(
    model: Any,
    clean: Any,
    target: Callable,
    *,
    corrupted: Any = None,
    method: str = "atp",
    per_position: bool | str = False,
    kind: str = "heads",
    batch_size: int | None = None,
    attention_mask: Any = None,
    n_steps: int = 16,
    schedule: str = "gausslegendre",
    grad_drop: bool = True,
    qk_fix: bool = True,
    return_result: bool = False,
) -> Tensor | ComponentAttribution:
    """Attribute the batch-mean target to every attention head (or MLP / neuron).

    Methods (``a`` = a head's ``hook_z`` ``[batch, pos, head, d_head]``; an MLP's
    ``hook_mlp_out``; a neuron's ``mlp.hook_post``; ``F̄`` = batch-mean target):

    - ``atp``: ``Σ_{batch, pos, d_head} (a_corrupted − a_clean) · ∂F̄/∂a`` at the clean run
      (attribution patching, Nanda 2023; Syed et al. 2023) ≈ ``F̄(clean with the unit's
      corrupted activation) − F̄(clean)``. Two forwards and one backward for all units.
    - ``atp_star``: AtP* (Kramár et al. 2024): QK fix (attention pattern recomputed exactly
      for query/key changes, linearised only from pattern to output) and, unless
      ``grad_drop=False``, GradDrop (an unsigned magnitude). Heads only; a head's score sums
      its query, key and value nodes (``return_result=True`` keeps them in ``.parts`` when
      ``grad_drop=False``); ``qk_fix=False`` linearises the softmax too (ablation).
    - ``ig``: IG with every unit's output moved jointly from corrupted (zeros without
      ``corrupted``) to clean, ``n_steps`` points of ``schedule``; completeness: the sum over
      all units equals ``F̄(clean) − F̄(clean with every unit at the baseline)``.
    - ``grad_x_act``: ``a · ∂F̄/∂a``.
    - ``dla``: direct logit attribution through the cached final-LayerNorm scale (as
      TransformerLens's ``apply_ln_to_stack`` + ``logit_attrs``, generalised to any target
      by ``∂F̄/∂x̂``).

    ``kind``: ``"heads"`` → ``[n_layers, n_heads]``; ``"mlps"`` → ``[n_layers]``;
    ``"neurons"`` → ``[n_layers, d_mlp]``; ``per_position=True`` adds a trailing ``pos`` axis
    (the unit's own position); for ``dla`` over heads, ``per_position="source"`` splits each
    head's direct effect by source token (``z_t = Σ_s A[t,s] v_s``).
    ``corrupted`` (``atp``, ``atp_star``; optional baseline for ``ig``) must have the
    shape of ``clean``. Rows are chunked by ``batch_size``.
    """
    _check_common(model, target, n_steps)
    fn = COMPONENT_METHODS.get(method)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {list(KINDS)}")
    if kind != "heads" and getattr(model.cfg, "attn_only", False):
        raise ValueError(f"kind={kind!r}: the model is attention-only and has no MLPs")
    if not isinstance(per_position, bool) and not (per_position == "source" and method == "dla" and kind == "heads"):
        raise ValueError(f"per_position must be True, False, or 'source' (method='dla', kind='heads'), got {per_position!r}")
    with model_guard(model):
        toks, mask, corr = _inputs(model, clean, corrupted, attention_mask)
        _sites.row_size(model, toks, target, batch_size)  # validates batch_size
        ctx = Ctx(model, toks, mask, target, kind, corr, batch_size, n_steps, schedule, {"grad_drop": grad_drop, "per_position": per_position, "qk_fix": qk_fix})
        with _sites.finite_masked_scores(model, mask):
            per = fn(ctx).sum(1)  # [n_layers, pos, units]
        scores = per.permute(0, 2, 1) if per_position else per.sum(1)
        if kind == "mlps":
            scores = scores[:, 0]
        scores = scores.detach().float()
    if not return_result:
        return scores
    delta = ctx.extras.get("convergence_delta")
    if delta is not None:
        from mechattr.convergence import convergence_report

        completeness = convergence_report(delta, ctx.extras["f_input"] - ctx.extras["f_baseline"], f"attribute_{kind}(method={method!r})")
    parts = {k: (v.sum(1).permute(0, 2, 1) if per_position else v.sum((1, 2))).detach() for k, v in ctx.extras.get("parts", {}).items()}
    meta = _meta(method, target, n_steps=n_steps, schedule=schedule, corrupted=corr is not None, grad_drop=grad_drop, qk_fix=qk_fix)
    if delta is not None:
        meta["completeness"] = completeness
    return ComponentAttribution(scores, kind, method, bool(per_position), None if delta is None else delta.detach(), meta | {"positions": "source" if per_position == "source" else ("own" if per_position else "summed")}, parts or None)


def attribute_mlps(model: Any, clean: Any, target: Callable, **kw: Any) -> Tensor | ComponentAttribution:
    """:func:`attribute_heads` with ``kind="mlps"``: ``[n_layers]`` (``[n_layers, pos]``
    with ``per_position``), one score per MLP output ``blocks.L.hook_mlp_out``."""
    return attribute_heads(model, clean, target, kind="mlps", **kw)


def attribute_neurons(model: Any, clean: Any, target: Callable, **kw: Any) -> Tensor | ComponentAttribution:
    """:func:`attribute_heads` with ``kind="neurons"``: ``[n_layers, d_mlp]``, one score per
    MLP neuron (``blocks.L.mlp.hook_post``)."""
    return attribute_heads(model, clean, target, kind="neurons", **kw)


# --------------------------------------------------------------------------- residual stream
def resid_names(model: Any, include_final: bool = True) -> list[str]:
    """``blocks.L.hook_resid_pre`` for every layer, then the final residual
    ``blocks.{n_layers-1}.hook_resid_post``."""
    L = model.cfg.n_layers
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(L)] + ([f"blocks.{L - 1}.hook_resid_post"] if include_final else [])


@RESID_METHODS.register("grad_x_act")
def _resid_gxa(model: Any, toks: Tensor, mask: Tensor | None, corr: Tensor | None, target: Callable, names: list[str], **kw: Any) -> tuple[Tensor, None]:
    acts, grads, _ = _sites.grads_at(model, toks, mask, target, names, batch_size=kw["batch_size"])
    return torch.stack([(acts[n].float() * grads[n].float()).sum(-1) for n in names]), None


@RESID_METHODS.register("atp")
def _resid_atp(model: Any, toks: Tensor, mask: Tensor | None, corr: Tensor | None, target: Callable, names: list[str], **kw: Any) -> tuple[Tensor, None]:
    if corr is None:
        raise ValueError("method 'atp' needs corrupted= (a [batch, pos] batch the same shape as clean)")
    c = _sites.cache(model, corr, mask, names, kw["batch_size"])
    acts, grads, _ = _sites.grads_at(model, toks, mask, target, names, batch_size=kw["batch_size"])
    return torch.stack([((c[n].float() - acts[n].float()) * grads[n].float()).sum(-1) for n in names]), None


@RESID_METHODS.register("ig")
def _resid_ig(model: Any, toks: Tensor, mask: Tensor | None, corr: Tensor | None, target: Callable, names: list[str], **kw: Any) -> tuple[Tensor, Tensor]:
    """One path integral per residual stream (the path engine), baseline = the corrupted
    run's residual there (zeros without ``corrupted``); the rest of the model recomputes."""
    from mechattr.attribution.paths import path_integral, schedule

    alphas, weights = schedule(kw["n_steps"], kw["schedule"])
    base = _sites.cache(model, corr, mask, names, kw["batch_size"]) if corr is not None else None
    rows, deltas, gaps = [], [], []
    for n in names:
        pi = path_integral(model, toks, target, n, baseline=None if base is None else base[n], alphas=alphas, weights=weights, attention_mask=mask, batch_size=kw["batch_size"])
        a = _sites.zero_pads(n, pi.attributions.float(), mask).sum(-1)  # [batch, pos]
        rows.append(a / toks.shape[0])
        deltas.append((a.sum(-1) - (pi.f_input - pi.f_baseline)).mean())
        gaps.append((pi.f_input - pi.f_baseline).mean())
    from mechattr.convergence import convergence_report

    kw["report"].update(convergence_report(torch.stack(deltas), torch.stack(gaps), "attribute_resid(method='ig')"))
    return torch.stack(rows), torch.stack(deltas)


def attribute_resid(
    model: Any,
    tokens: Any,
    target: Callable,
    *,
    method: str = "ig",
    corrupted: Any = None,
    per_example: bool = False,
    include_final: bool = True,
    batch_size: int | None = None,
    attention_mask: Any = None,
    n_steps: int = 16,
    schedule: str = "gausslegendre",
    return_result: bool = False,
) -> Tensor | ComponentAttribution:
    """Attribute the batch-mean target to each residual stream and position.

    Rows: ``blocks.L.hook_resid_pre`` for ``L = 0..n_layers-1``, then (``include_final``)
    the final residual ``blocks.{n_layers-1}.hook_resid_post``: ``[n_layers + 1, pos]``.
    Each entry is the batch-mean over examples of the attribution summed over ``d_model``
    (``per_example=True`` keeps the batch: ``[batch, n_layers + 1, pos]``, each example's
    attribution to its own target).

    - ``grad_x_act``: ``x · ∂F/∂x`` at the clean run.
    - ``atp``: ``(x_corrupted − x_clean) · ∂F/∂x`` (needs ``corrupted``).
    - ``ig``: per residual stream, IG from the corrupted run's residual (zeros without
      ``corrupted``) to the clean one, later layers recomputed (the path engine,
      ``start_at_layer`` where available); each row sums to ``F̄(clean) − F̄(baseline at
      that stream)`` (the gap: ``convergence_delta`` of the result object).
    """
    _check_common(model, target, n_steps)
    fn = RESID_METHODS.get(method)
    with model_guard(model):
        toks, mask, corr = _inputs(model, tokens, corrupted, attention_mask)
        _sites.row_size(model, toks, target, batch_size)  # validates batch_size
        names = resid_names(model, include_final)
        with _sites.finite_masked_scores(model, mask):
            report: dict = {}
            per, delta = fn(model, toks, mask, corr, target, names, batch_size=batch_size, n_steps=n_steps, schedule=schedule, report=report)
        n = toks.shape[0]
        scores = (per.permute(1, 0, 2) * n) if per_example else per.sum(1)
        scores = scores.detach().float()
    if not return_result:
        return scores
    meta = _meta(method, target, n_steps=n_steps, schedule=schedule, corrupted=corr is not None, include_final=include_final, per_example=per_example)
    if report:
        meta["completeness"] = report
    return ComponentAttribution(scores, "resid", method, True, delta, meta)
