"""Per-site attribution methods over heads, MLPs and neurons (the registry behind
:func:`mechattr.attribution.components.attribute_heads`).

A *kind* says which hook carries a unit's output (heads: ``blocks.L.attn.hook_z``
``[batch, pos, head, d_head]``; mlps: ``blocks.L.hook_mlp_out`` ``[batch, pos, d_model]``;
neurons: ``blocks.L.mlp.hook_post`` ``[batch, pos, d_mlp]``). Every method returns
``[n_layers, batch, pos, units]``: each example's attribution to the **batch-mean** target
(so summing over the batch gives the attribution of the mean target, and each entry is
1/batch of that example's own attribution).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.attribution import _sites
from mechattr.registry import Registry
from mechattr.runtime.arch import arch

COMPONENT_METHODS: Registry[Callable[["Ctx"], Tensor]] = Registry("component attribution method")
KINDS = ("heads", "mlps", "neurons")


@dataclass
class Ctx:
    """Everything a method needs: validated inputs on the model's device and settings."""

    model: Any
    toks: Tensor
    mask: Tensor | None
    target: Callable
    kind: str
    corrupted: Tensor | None = None
    batch_size: int | None = None
    n_steps: int = 16
    schedule: str = "gausslegendre"
    options: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # filled by methods (e.g. ig's completeness)

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    def names(self) -> list[str]:
        return [site_name(self.kind, layer) for layer in range(self.n_layers)]

    def need_corrupted(self, method: str) -> Tensor:
        if self.corrupted is None:
            raise ValueError(f"method {method!r} needs corrupted= (a [batch, pos] batch the same shape as clean)")
        return self.corrupted


def site_name(kind: str, layer: int) -> str:
    """Hook carrying a unit's output for ``kind`` at ``layer``."""
    if kind == "heads":
        return f"blocks.{layer}.attn.hook_z"
    if kind == "mlps":
        return f"blocks.{layer}.hook_mlp_out"
    if kind == "neurons":
        return f"blocks.{layer}.mlp.hook_post"
    raise ValueError(f"unknown kind {kind!r}; known: {list(KINDS)}")


def per_unit(kind: str, x: Tensor) -> Float[Tensor, "batch pos units"]:
    """Sum an elementwise attribution over each unit's own dimensions."""
    if kind == "heads":
        return x.sum(-1)
    if kind == "mlps":
        return x.sum(-1, keepdim=True)
    return x


def _stack(kind: str, names: list[str], f: Callable[[str], Tensor]) -> Tensor:
    return torch.stack([per_unit(kind, f(n)).float() for n in names])


# --------------------------------------------------------------------------- gradient methods
@COMPONENT_METHODS.register("atp")
def atp(ctx: Ctx) -> Tensor:
    """Attribution patching (Nanda 2023; Syed et al. 2023): ``(a_corrupted − a_clean) ·
    ∂(mean F)/∂a`` at the clean run — 2 forwards + 1 backward for every unit at once."""
    corr = _sites.cache(ctx.model, ctx.need_corrupted("atp"), ctx.mask, ctx.names(), ctx.batch_size)
    acts, grads, _ = _sites.grads_at(ctx.model, ctx.toks, ctx.mask, ctx.target, ctx.names(), batch_size=ctx.batch_size)
    return _stack(ctx.kind, ctx.names(), lambda n: (corr[n].float() - acts[n].float()) * grads[n].float())


@COMPONENT_METHODS.register("grad_x_act")
def grad_x_act(ctx: Ctx) -> Tensor:
    """Gradient × activation: ``a · ∂(mean F)/∂a`` at the clean run (AtP towards zero)."""
    acts, grads, _ = _sites.grads_at(ctx.model, ctx.toks, ctx.mask, ctx.target, ctx.names(), batch_size=ctx.batch_size)
    return _stack(ctx.kind, ctx.names(), lambda n: acts[n].float() * grads[n].float())


@COMPONENT_METHODS.register("ig")
def ig(ctx: Ctx) -> Tensor:
    """Integrated gradients over every unit's output *jointly* (Sundararajan et al. 2017).

    All sites (every layer's ``hook_z`` / ``hook_mlp_out`` / ``hook_post``) move together
    along ``a(α) = b + α·(x − b)`` with ``x`` the clean activations and ``b`` the corrupted
    ones (zeros without ``corrupted``); everything else (embeddings, MLPs for heads,
    LayerNorms) is recomputed. Completeness: the sum over all units equals
    ``mean F(clean) − mean F(clean run with every site at b)``; the gap is stored in
    ``ctx.extras["convergence_delta"]``.
    """
    from mechattr.attribution.paths import schedule

    names = ctx.names()
    x = _sites.cache(ctx.model, ctx.toks, ctx.mask, names, ctx.batch_size)
    if ctx.corrupted is not None:
        b = _sites.cache(ctx.model, ctx.corrupted, ctx.mask, names, ctx.batch_size)
    else:
        b = {k: torch.zeros_like(v) for k, v in x.items()}
    alphas, weights = schedule(ctx.n_steps, ctx.schedule)
    G, f_x, f_b = _sites.joint_path(ctx.model, ctx.toks, ctx.mask, ctx.target, x, b, alphas, weights, batch_size=ctx.batch_size)
    out = _stack(ctx.kind, names, lambda n: (x[n].float() - b[n].float()) * G[n])
    ctx.extras["f_input"], ctx.extras["f_baseline"] = f_x.mean(), f_b.mean()
    ctx.extras["convergence_delta"] = out.sum() - (f_x.mean() - f_b.mean())
    return out


# --------------------------------------------------------------------------- direct logit attribution
def final_direction(ctx: Ctx) -> tuple[str, Tensor, Tensor | None, dict[str, Tensor]]:
    """Gradient of the batch-mean target at the final normalised residual, divided by the
    cached LayerNorm scale and centred (for LN), plus the activations of the ``kind``.

    Returns ``(hook, g' [batch, pos, d_model], scale, acts)`` where ``g'·c`` is the direct
    contribution of a residual-stream term ``c``: ``(c − mean c)/scale · ∂F/∂x̂``.
    """
    model = ctx.model
    final = "ln_final.hook_normalized" if "ln_final.hook_normalized" in model.hook_dict else f"blocks.{ctx.n_layers - 1}.hook_resid_post"
    extra = ["ln_final.hook_scale"] if final.startswith("ln_final") else []
    acts, grads, _ = _sites.grads_at(model, ctx.toks, ctx.mask, ctx.target, [final], batch_size=ctx.batch_size)
    cached = _sites.cache(model, ctx.toks, ctx.mask, ctx.names() + extra, ctx.batch_size)
    g = grads[final].float()
    B, P = ctx.toks.shape
    if g.shape[1] != P:  # the final LN ran only at the positions the target reads
        idx = ctx.target.positions(B, P, ctx.mask, g.device)
        g = torch.zeros(B, P, g.shape[-1], device=g.device).scatter_add_(1, idx[:, :, None].expand(-1, -1, g.shape[-1]), g)
    scale = cached["ln_final.hook_scale"].float() if extra else None
    if scale is not None:
        g = g / scale
    if arch(model).norm in ("LN", "LNPre"):
        g = g - g.mean(-1, keepdim=True)  # (c − mean c)·g = c·(g − mean g)
    return final, g, scale, cached


@COMPONENT_METHODS.register("dla")
def dla(ctx: Ctx) -> Tensor:
    """Direct logit attribution (as TransformerLens's ``cache.apply_ln_to_stack`` +
    ``logit_attrs``): each unit's write into the residual stream, centred and divided by
    the cached final-LayerNorm scale, dotted with ``∂F/∂x̂`` (x̂ the normalised final
    residual). For a logit target ``∂F/∂x̂ = w_ln ⊙ W_U[:, token]``, so the direct terms of all
    heads, MLPs, embeddings and biases plus ``b_ln·W_U[:, token] + b_U[token]`` sum to the
    logit. Heads write ``z @ W_O``; neurons ``post · W_out``; MLPs ``hook_mlp_out``.
    """
    _, g, _, cached = final_direction(ctx)
    model = ctx.model
    if ctx.options.get("per_position") == "source":
        return _dla_by_source(ctx, g)
    out = []
    for layer, n in enumerate(ctx.names()):
        a = cached[n].float()
        if ctx.kind == "heads":
            u = torch.einsum("hed,bpd->bphe", model.W_O[layer].float(), g)
            out.append((a * u).sum(-1))
        elif ctx.kind == "neurons":
            out.append(a * torch.einsum("nd,bpd->bpn", model.W_out[layer].float(), g))
        else:
            out.append((a * g).sum(-1, keepdim=True))
    return torch.stack(out)


def _dla_by_source(ctx: Ctx, g: Tensor) -> Tensor:
    """DLA of each head split by *source* (key) position: ``z_t = Σ_s A[t,s] v_s``, so the
    head's direct effect is ``Σ_s Σ_t A[t,s] v_s · (W_O g'_t)``; returns
    ``[n_layers, batch, source_pos, head]`` (summing over sources gives plain DLA)."""
    from mechattr.attribution.atp_star import _heads

    if ctx.kind != "heads":
        raise ValueError("per_position='source' splits heads by source token; it needs kind='heads'")
    model, H = ctx.model, ctx.model.cfg.n_heads
    names = [n for layer in range(ctx.n_layers) for n in (f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_pattern")]
    c = _sites.cache(model, ctx.toks, ctx.mask, names, ctx.batch_size)
    out = []
    for layer in range(ctx.n_layers):
        v = _heads(c[f"blocks.{layer}.attn.hook_v"], H).float()
        A = c[f"blocks.{layer}.attn.hook_pattern"].float()
        u = torch.einsum("hed,btd->bthe", model.W_O[layer].float(), g)
        out.append(torch.einsum("bhts,bshe,bthe->bsh", A, v, u))
    return torch.stack(out)
