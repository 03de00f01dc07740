"""Where DeepLIFT's rescale rule can act on a model: elementwise activations between two hooks.

The rescale rule (Shrikumar et al. 2017, §3.5.2) needs an elementwise nonlinearity
``y = σ(x)`` whose input and output are both reachable. In TransformerLens (a
HookedTransformer, or a TransformerBridge in compatibility mode) that is the MLP's
activation: ``blocks.L.mlp.hook_pre`` holds ``x`` and ``blocks.L.mlp.hook_post`` holds
``σ(x)`` elementwise, on both model kinds. :func:`rescale_sites` lists those pairs and says
which layers have none:

- gated MLPs (LLaMA, Gemma, Mistral): ``hook_post = σ(gate) · linear (+ b_in)`` with
  ``gate`` at ``hook_pre`` and ``linear`` at ``hook_pre_linear``; σ's own output is at no
  hook, so the site carries σ itself (:attr:`RescaleSite.act`, the MLP module's ``act_fn``
  on a HookedTransformer, ``act_fn``/``act`` of the wrapped module on a bridge); without it
  the layer gets the plain gradient;
- activations followed by a LayerNorm inside the MLP (SoLU, ``*_ln``): ``hook_post`` is
  after the norm, not elementwise in ``hook_pre``;
- mixtures of experts and attention-only models: no single elementwise activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mechattr.runtime.arch import arch


@dataclass(frozen=True)
class RescaleSite:
    """One elementwise activation at block ``layer``: ``hook_post = σ(hook_pre)``, or for a
    gated MLP ``hook_post = σ(hook_pre) · hook_pre_linear (+ b_in)`` with ``linear`` the
    ``hook_pre_linear`` name and ``act`` = σ."""

    layer: int
    pre: str
    post: str
    linear: str | None = None
    act: Callable | None = None


def _activation(model: Any, layer: int) -> Callable | None:
    """σ of a gated MLP: the module's ``act_fn`` (HookedTransformer, HF) or ``act`` (native bridge)."""
    mlp = model.blocks[layer].mlp
    for mod in (mlp, getattr(mlp, "original_component", None)):
        for name in ("act_fn", "act"):
            fn = getattr(mod, name, None) if mod is not None else None
            if callable(fn):
                return fn
    return None


def rescale_sites(model: Any) -> tuple[list[RescaleSite], str]:
    """``(sites, note)``: the MLP activations where the rescale rule applies, and a one-line
    reason when some or all layers have none (``""`` when every layer has one)."""
    a = arch(model)
    cfg = model.cfg
    if a.attn_only or not a.d_mlp:
        return [], "attention-only model: no MLP activation (gradient everywhere)"
    gated = bool(getattr(cfg, "gated_mlp", False))
    if int(getattr(cfg, "num_experts", 0) or 0) > 0:
        return [], "mixture-of-experts MLP: no single elementwise activation (gradient)"
    act_name = str(getattr(cfg, "act_fn", "") or "")
    if act_name.endswith("_ln") or act_name.startswith("solu"):
        return [], f"activation {act_name!r} ends in a LayerNorm inside the MLP: hook_post is not elementwise in hook_pre (gradient)"
    sites, missing = [], []
    for layer in range(a.n_layers):
        pre, post = f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post"
        lin = f"blocks.{layer}.mlp.hook_pre_linear" if gated else None
        act = _activation(model, layer) if gated else None
        if a.has_hook(pre) and a.has_hook(post) and (not gated or (a.has_hook(lin) and act is not None)):
            sites.append(RescaleSite(layer, pre, post, lin, act))
        else:
            missing.append(layer)
    what = "mlp.hook_pre/hook_pre_linear/hook_post and a findable activation" if gated else "mlp.hook_pre/hook_post pair"
    note = f"layers {missing} have no {what} (gradient there)" if missing else ""
    return sites, note
