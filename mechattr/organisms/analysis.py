"""Circuit evidence for the organisms: head ablation and attention scores (raw hooks).

Ablation replaces a head's ``hook_z`` (``[batch, pos, head, d_head]``) with zeros
(``mode="zero"``) or with its mean over the batch at each position (``mode="mean"``).
These are the measurements the cards record; the tests re-derive them independently.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.components import MLP, Head
from mechattr.model import model_device, model_guard
from mechattr.organisms.tasks import TaskBatch
from mechattr.runtime.tl import HookedTransformer

MODES = ("zero", "mean")


@torch.no_grad()
def ablated_logits(model: HookedTransformer, tokens: Tensor, heads: Iterable[Head], mode: str = "mean") -> Float[Tensor, "batch pos vocab"]:
    """Logits with ``heads`` ablated at ``hook_z`` (zero, or the batch mean per position)."""
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; allowed: {list(MODES)}")
    by_layer: dict[int, list[int]] = {}
    for h in heads:
        by_layer.setdefault(h.layer, []).append(h.head)

    def make_hook(idx: list[int]):
        def hook(z, hook):
            z = z.clone()
            if mode == "zero":
                z[:, :, idx] = 0.0
            else:
                z[:, :, idx] = z[:, :, idx].mean(0, keepdim=True)
            return z
        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", make_hook(idx)) for layer, idx in by_layer.items()]
    with model_guard(model):
        return model.run_with_hooks(tokens.to(model_device(model)), fwd_hooks=hooks)


@torch.no_grad()
def mlp_ablated_logits(model: HookedTransformer, tokens: Tensor, mlp: MLP) -> Float[Tensor, "batch pos vocab"]:
    """Logits with ``mlp``'s output (``hook_mlp_out``) replaced by its batch mean at each position."""

    def hook(x, hook):
        return x.mean(0, keepdim=True).expand_as(x)

    with model_guard(model):
        return model.run_with_hooks(tokens.to(model_device(model)), fwd_hooks=[(mlp.hook_name, hook)])


def answer_accuracy(logits: Tensor, answers: Tensor) -> float:
    """Fraction of rows whose top logit at the last position is the answer."""
    return (logits[:, -1].argmax(-1).cpu() == answers.cpu()).float().mean().item()


@torch.no_grad()
def single_head_ablation(model: HookedTransformer, batch: TaskBatch, mode: str = "mean") -> Float[Tensor, "n_layers n_heads"]:
    """Accuracy with each single head ablated, ``[n_layers, n_heads]``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(L, H)
    for layer in range(L):
        for head in range(H):
            out[layer, head] = answer_accuracy(ablated_logits(model, batch.tokens, [Head(layer, head)], mode), batch.answers)
    return out


@torch.no_grad()
def patterns(model: HookedTransformer, tokens: Tensor) -> Float[Tensor, "layer batch head q k"]:
    """Attention patterns of every layer, stacked."""
    with model_guard(model):
        _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", layer].cpu() for layer in range(model.cfg.n_layers)])


def prev_token_score(pat: Float[Tensor, "batch head q k"]) -> Float[Tensor, " head"]:
    """Mean attention from position ``i`` to ``i-1`` over ``i >= 1`` (per head)."""
    diag = pat.diagonal(offset=-1, dim1=-2, dim2=-1)  # [batch, head, pos-1]
    return diag.mean((0, 2))


def attention_to(pat: Float[Tensor, "batch head q k"], key_pos: Tensor, query_pos: int = -1) -> Float[Tensor, " head"]:
    """Mean attention from ``query_pos`` to per-row key positions ``key_pos`` ``[batch]`` (``-1`` rows skipped)."""
    ok = key_pos >= 0
    rows = torch.arange(pat.shape[0])[ok]
    return pat[rows, :, query_pos, key_pos[ok]].mean(0)


def fmt(heads: Iterable[Head]) -> list[str]:
    return [str(h) for h in sorted(heads)]
