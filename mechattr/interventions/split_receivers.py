"""Path patching's run 3 with per-query-head key/value receivers (grouped/multi-query attention).

A receiver ``(layer, h, "k")`` is query head ``h``'s own key input: ``h`` attends with the
keys ``W_K^{kv(h)}`` of run 2's residual (``kv(h)``: its group's key/value head,
:meth:`mechattr.runtime.arch.Arch.kv_head`), its sibling query heads with the keys of run 3
(``use_split_qkv_input`` with one input per query head); likewise ``"v"``. Computed exactly
with the model's own attention (rotary, masks, soft caps): see :func:`split_stage3`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechattr.components import Component
from mechattr.interventions.variants import Edit, Mode, Variant, edit_hooks, max_rows
from mechattr.runtime.arch import arch
from mechattr.runtime.chunks import row_chunks
from mechattr.runtime.hooks import hooked
from mechattr.targets import check_finite, run_target


def _qkv_hook(r: tuple[int, int, str]) -> str:
    return f"blocks.{r[0]}.attn.hook_{r[2]}"


def _split_plan(recv: list) -> dict[int, list[tuple[tuple[str, ...], list[int]]]]:
    """Per receiver layer, the query heads with k/v receivers grouped by which of their
    inputs are patched: ``{layer: [(("k",), [h, ...]), (("k", "v"), [...]), ...]}``."""
    inputs: dict[tuple[int, int], set[str]] = {}
    for layer, head, which in recv:
        if which != "q":
            inputs.setdefault((layer, head), set()).add(which)
    plan: dict[int, dict[tuple[str, ...], list[int]]] = {}
    for (layer, head), ws in sorted(inputs.items()):
        plan.setdefault(layer, {}).setdefault(tuple(sorted(ws)), []).append(head)
    return {layer: sorted(g.items()) for layer, g in plan.items()}


def split_stage3(model: Any, c: Any, sends: list[Component], recv: list, inputs: dict, target: Callable, batch_size: int | None) -> Tensor:
    """Run 3 with per-query-head key/value receivers (module docstring), ``[n_senders, B]``.

    Rows are ``sender × copy × example``. Copy 0 is run 3 proper; copy ``j ≥ 1`` patches, in
    each receiver layer with a ``j``-th input set ``(ws, heads)``, ``hook_w[:, :, kv(h)]``
    for ``w`` in ``ws`` and ``h`` in ``heads`` with run 2's values. At ``hook_z`` of that
    layer, copy 0 takes the ``z`` of ``heads`` from copy ``j``, and every copy continues
    with copy 0's ``z`` (copies are identical outside a receiver layer's attention). Query
    receivers patch ``hook_q[:, :, h]`` in every copy.
    """
    a = arch(model)
    B, n_pos = c.shape
    plan = _split_plan(recv)
    n_c = 1 + max(len(g) for g in plan.values())
    n_s = len(sends)
    slots = []
    for i, s in enumerate(sends):
        q_edits = [Edit(_qkv_hook(r), (slice(None), r[1]), Mode.PATCH, inputs[r][i]) for r in recv if r[2] == "q"]
        for j in range(n_c):
            edits = list(q_edits)
            for layer, groups in plan.items():
                if 1 <= j <= len(groups):
                    ws, heads = groups[j - 1]
                    for w in ws:
                        hook = _qkv_hook((layer, heads[0], w))
                        kvs = sorted({a.head_index(hook, h) for h in heads})
                        edits.append(Edit(hook, (slice(None), kvs), Mode.PATCH, inputs[(layer, heads[0], w)][i]))
            slots.append(Variant(tuple(edits), f"{s}/copy{j}"))

    def merge(groups: list) -> Callable:
        def hook(z: Tensor, hook: Any = None) -> Tensor:
            zz = z.reshape(-1, n_c, B, *z.shape[1:]).clone()
            for j, (_, heads) in enumerate(groups, 1):
                zz[:, 0, :, :, heads] = zz[:, j, :, :, heads]
            zz[:, 1:] = zz[:, :1]
            return zz.reshape(z.shape)

        return hook

    per = max(1, max_rows(model, n_pos, batch_size, c.tokens.device) // (B * n_c))
    out = []
    for sl in row_chunks(n_s, per):
        chunk = slots[sl.start * n_c : sl.stop * n_c]
        hooks = edit_hooks(chunk, B, n_pos) + [(f"blocks.{layer}.attn.hook_z", merge(groups)) for layer, groups in plan.items()]
        with hooked(model, hooks):
            vals = run_target(model, c.tokens.repeat(len(chunk), 1), target, attention_mask=c.attention_mask, n_examples=B)
        out.append(check_finite(vals.reshape(-1, n_c, B)[:, 0].float(), "target under path patching"))
    return torch.cat(out)
