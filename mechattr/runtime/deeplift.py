"""Where DeepLIFT's rescale rule can act on a model: elementwise activations between two hooks.

The rescale rule (Shrikumar et al. 2017, §3.5.2) needs an elementwise nonlinearity
``y = σ(x)`` whose input and output are both reachable. In TransformerLens (a
HookedTransformer, or a TransformerBridge in compatibility mode) that is the MLP's
activation: ``blocks.L.mlp.hook_pre`` holds ``x`` and ``blocks.L.mlp.hook_post`` holds
``σ(x)`` elementwise, on both model kinds. :func:`rescale_sites` lists those pairs and says
which layers have none:

- gated MLPs (LLaMA, Gemma, Mistral): ``hook_post = σ(gate) · linear (+ b_in)``; the
  activation's own output is not at a hook, so the layer gets the plain gradient;
- activations followed by a LayerNorm inside the MLP (SoLU, ``*_ln``): ``hook_post`` is
  after the norm, not elementwise in ``hook_pre``;
- mixtures of experts and attention-only models: no single elementwise activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechattr.runtime.arch import arch


@dataclass(frozen=True)
class RescaleSite:
    """One elementwise activation: ``hook_post = σ(hook_pre)`` at block ``layer``."""

    layer: int
    pre: str
    post: str


def rescale_sites(model: Any) -> tuple[list[RescaleSite], str]:
    """``(sites, note)``: the MLP activations where the rescale rule applies, and a one-line
    reason when some or all layers have none (``""`` when every layer has one)."""
    a = arch(model)
    cfg = model.cfg
    if a.attn_only or not a.d_mlp:
        return [], "attention-only model: no MLP activation (gradient everywhere)"
    if getattr(cfg, "gated_mlp", False):
        return [], "gated MLP: the activation's output is not at a hook (hook_post = σ(gate)·linear), so gradient"
    if int(getattr(cfg, "num_experts", 0) or 0) > 0:
        return [], "mixture-of-experts MLP: no single elementwise activation (gradient)"
    act = str(getattr(cfg, "act_fn", "") or "")
    if act.endswith("_ln") or act.startswith("solu"):
        return [], f"activation {act!r} ends in a LayerNorm inside the MLP: hook_post is not elementwise in hook_pre (gradient)"
    sites, missing = [], []
    for layer in range(a.n_layers):
        pre, post = f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post"
        if a.has_hook(pre) and a.has_hook(post):
            sites.append(RescaleSite(layer, pre, post))
        else:
            missing.append(layer)
    note = f"layers {missing} have no mlp.hook_pre/hook_post pair (gradient there)" if missing else ""
    return sites, note
