"""Per-head inputs and outputs *without* split forwards, where they are linear maps of the
unsplit activations (checked once per model).

TransformerLens's split flags (:mod:`mechattr.runtime.split`) give each head its own q/k/v
input and output by copying the residual ``n_heads`` times; on a CPU that makes a forward
several times slower. Gradient-based edge scores do not need the copies when, for every
layer ``l`` and input ``w ∈ {q, k, v}``,

* ``hook_w = LN1_l(resid_pre_l) · W_w + b_w`` per head (``[n, d_model, d_head]`` weights,
  ``n = n_heads`` for ``q``, ``n_kv_heads`` for ``k``/``v``), and
* ``hook_attn_out = Σ_h z_h W_O^h + b_O``.

Then ``∂T/∂x_{w,h} = J_{LN1}(resid_pre)ᵀ (W_w^h ∂T/∂hook_w[h])`` — one batched
vector–Jacobian product through the model's own ``ln1`` module — and head ``h``'s output is
``z_h W_O^h``. :func:`linear_io` verifies both identities numerically on a probe forward
(rotary and q/k-norm models, whose ``hook_q`` is not this linear map, fail it and keep the
split path) and returns ``None`` where they do not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechattr.runtime.arch import arch
from mechattr.runtime.hooks import hooked
from mechattr.runtime.memo import per_model


@dataclass(frozen=True)
class LinearIO:
    """Access to the verified linear maps (module docstring)."""

    model: Any

    def weights(self, layer: int, which: str) -> tuple[Tensor, Tensor]:
        """``(W [n, d_model, d_head], b [n, d_head])`` of input ``which`` at ``layer``."""
        attn = self.model.blocks[layer].attn
        w = getattr(attn, f"_W_{which.upper()}", None) if which != "q" else None
        b = getattr(attn, f"_b_{which.upper()}", None) if which != "q" else None
        w = getattr(attn, f"W_{which.upper()}") if w is None else w
        b = getattr(attn, f"b_{which.upper()}") if b is None else b
        return w, b

    def w_out(self, layer: int) -> Tensor:
        """``W_O [n_heads, d_head, d_model]`` of ``layer``."""
        return self.model.blocks[layer].attn.W_O

    def input_grads(self, layer: int, resid_pre: Tensor, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """``∂T/∂x`` at each head's own ``q``/``k``/``v`` input ``[batch, pos, n, d_model]``
        from ``grads[w] = ∂T/∂hook_w`` ``[batch, pos, n, d_head]``."""
        parts, sizes = [], []
        for w in "qkv":
            W, _ = self.weights(layer, w)
            u = torch.einsum("bpne,nde->nbpd", grads[w].to(W.dtype), W)
            parts.append(u)
            sizes.append(u.shape[0])
        cot = torch.cat(parts)
        # one LayerNorm over n stacked copies (it acts on the last axis only): n VJPs at once
        x = resid_pre.detach().unsqueeze(0).expand(cot.shape[0], *resid_pre.shape).contiguous().requires_grad_(True)
        with torch.enable_grad():
            y = self.model.blocks[layer].ln1(x)
            (g,) = torch.autograd.grad(y, x, grad_outputs=cot.to(y.dtype))
        out = {}
        for w, part in zip("qkv", torch.split(g, sizes)):
            out[w] = part.permute(1, 2, 0, 3)
        return out

    def head_outputs(self, layer: int, z: Tensor) -> Tensor:
        """Each head's output ``z_h W_O^h`` ``[batch, pos, n_heads, d_model]``."""
        W = self.w_out(layer)
        return torch.einsum("bphe,hed->bphd", z.to(W.dtype), W)


def linear_io(model: Any) -> LinearIO | None:
    """A :class:`LinearIO` when its identities hold on ``model`` (checked once), else ``None``."""
    return LinearIO(model) if _verified(model) else None


@per_model
def _verified(model: Any) -> bool:
    a = arch(model)
    try:
        lio = LinearIO(model)
        names = []
        for layer in range(a.n_layers):
            names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
            names += [f"blocks.{layer}.attn.hook_{w}" for w in "qkv"]
        store: dict[str, Tensor] = {}

        def keep(name: str) -> Any:
            def hook(act: Tensor, hook: Any = None) -> Tensor:
                store[name] = act.detach()
                return act

            return hook

        g = torch.Generator().manual_seed(0)
        toks = torch.randint(0, int(model.cfg.d_vocab), (2, 5), generator=g).to(next(model.parameters()).device)
        with torch.no_grad(), hooked(model, [(n, keep(n)) for n in names]):
            model(toks)
        if set(names) - set(store):
            return False
        with torch.no_grad():
            for layer in range(a.n_layers):
                y = model.blocks[layer].ln1(store[f"blocks.{layer}.hook_resid_pre"])
                for w in "qkv":
                    W, b = lio.weights(layer, w)
                    want = store[f"blocks.{layer}.attn.hook_{w}"]
                    got = torch.einsum("bpd,nde->bpne", y.to(W.dtype), W) + b
                    if got.shape != want.shape or not torch.allclose(got, want.to(got.dtype), atol=1e-4, rtol=1e-3):
                        return False
                attn = model.blocks[layer].attn
                out = lio.head_outputs(layer, store[f"blocks.{layer}.attn.hook_z"]).sum(2) + attn.b_O
                if not torch.allclose(out, store[f"blocks.{layer}.hook_attn_out"].to(out.dtype), atol=1e-4, rtol=1e-3):
                    return False
        return True
    except Exception:  # a model without these weights or hooks: the split path
        return False
