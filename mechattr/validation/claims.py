"""Claims, their tests against random controls, and the edge intervention for token→head links.

A :class:`Claim` ("the top-20% tokens by IG matter", "head L1H2 matters", "head L1H2 at the
target position reads the top token") carries :class:`TestResult` rows. A test compares
the claim's intervention effect with the same intervention on random controls (random
rankings, random heads, random source tokens): *confirmed* when the effect exceeds the 95th
percentile of the controls (two-sided claims compare magnitudes). A claim's verdict is
*confirmed* when more than half of its tests confirm it, else *not confirmed*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechattr.components import Head
from mechattr.inputs import Batch
from mechattr.runtime.arch import arch
from mechattr.runtime.cache import cache_activations
from mechattr.runtime.chunks import row_chunks
from mechattr.runtime.hooks import hooked
from mechattr.targets import Target, check_target_rows, run_target

CONFIRMED, NOT_CONFIRMED, UNTESTED = "confirmed", "not confirmed", "untested"


@dataclass
class TestResult:
    """One intervention test of a claim against its controls.

    ``effect`` is the claim's number; ``threshold`` the controls' 95th percentile (of
    ``|control|`` when ``two_sided``; for lower-is-better tests, ``sign=-1`` compares
    ``-effect`` with the 95th percentile of ``-controls``).
    """

    test: str
    effect: float
    threshold: float
    n_controls: int
    confirmed: bool
    controls: list[float] = field(default_factory=list)
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(test: str, effect: float, controls: Any, *, two_sided: bool = False, sign: int = 1, q: float = 0.95) -> TestResult | None:
    """Build a :class:`TestResult`; ``None`` when there are no controls."""
    c = torch.as_tensor(controls, dtype=torch.float64).flatten()
    if c.numel() == 0:
        return None
    if two_sided:
        val, ref, rule = abs(float(effect)), c.abs(), f"|effect| > q{int(q * 100)}(|controls|)"
    elif sign < 0:
        val, ref, rule = -float(effect), -c, f"effect < q{int(round((1 - q) * 100))}(controls)"
    else:
        val, ref, rule = float(effect), c, f"effect > q{int(q * 100)}(controls)"
    thr = float(torch.quantile(ref, q))
    shown = thr if sign > 0 or two_sided else -thr
    return TestResult(test, float(effect), shown, int(c.numel()), bool(val > thr), [float(x) for x in c], rule)


@dataclass
class Claim:
    """A claim to test: ``kind`` is ``tokens``, ``head`` or ``link``; ``source`` ``auto``
    (found by attribution) or ``user``."""

    id: str
    kind: str
    subject: dict[str, Any]
    source: str = "auto"
    tests: list[TestResult] = field(default_factory=list)
    note: str = ""

    def add(self, t: TestResult | None) -> None:
        if t is not None:
            self.tests.append(t)

    @property
    def verdict(self) -> str:
        if not self.tests:
            return UNTESTED
        return CONFIRMED if sum(t.confirmed for t in self.tests) * 2 > len(self.tests) else NOT_CONFIRMED

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "subject": self.subject, "source": self.source,
                "verdict": self.verdict, "note": self.note, "tests": [t.to_dict() for t in self.tests]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Claim:
        return cls(d["id"], d["kind"], d["subject"], d.get("source", "auto"),
                   [TestResult(**t) for t in d.get("tests", [])], d.get("note", ""))


# --------------------------------------------------------------------------- links
def link_strength(model: Any, batch: Batch, q: Int[Tensor, " batch"], src: Int[Tensor, " batch"]) -> Tensor:
    """``[n_layers, n_heads]`` batch mean of how much each head at the query position writes
    from the source token's value.

    ``pattern[b, h, q_b, s_b] · ‖v[b, s_b, kv(h)] W_O^h‖`` where ``kv(h)`` is the key/value
    head query head ``h`` reads (``h`` itself under multi-head attention; its group's shared
    head under grouped- or multi-query attention, :meth:`mechattr.runtime.arch.Arch.kv_head`).
    """
    a = arch(model)
    names = {f"blocks.{layer}.attn.hook_{k}" for layer in range(a.n_layers) for k in ("pattern", "v")}
    _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n in names)
    ar = torch.arange(batch.shape[0], device=batch.tokens.device)
    out = torch.zeros(a.n_layers, a.n_heads)
    for layer in range(a.n_layers):
        hv = f"blocks.{layer}.attn.hook_v"
        kv = torch.tensor([a.head_index(hv, h) for h in range(a.n_heads)], device=batch.tokens.device)
        pat = cache[f"blocks.{layer}.attn.hook_pattern"][ar, :, q, src]  # [b, h]
        v = cache[hv][ar, src][:, kv]  # [b, h, d_head]: each query head's value
        wo = model.blocks[layer].attn.W_O  # [h, d_head, d_model]
        norm = torch.einsum("bhd,hdm->bhm", v.to(wo.dtype), wo).norm(dim=-1)
        out[layer] = (pat * norm).float().mean(0).cpu()
    return out


def edge_effects(
    model: Any,
    batch: Batch,
    target: Target,
    layer: int,
    head: int,
    q: Int[Tensor, " batch"],
    src: Int[Tensor, "variants batch"],
    *,
    batch_size: int | None = None,
) -> Tensor:
    """``[variants]`` batch-mean change of ``target`` when one attention edge is removed.

    The edge (source ``src[v, b]`` → query ``q[b]``) of query head ``(layer, head)``:
    ``z[q, h] ← z[q, h] − A[h, q, s] · v[s, kv(h)]`` (the head's value at that source
    position no longer reaches the query; nothing else changes in that layer — under
    grouped- or multi-query attention the sibling query heads that share the key/value head
    ``kv(h)`` keep their edges). Variants are stacked along the batch dimension."""
    a = arch(model)
    Head(layer, head).check(model)
    kv = a.head_index(f"blocks.{layer}.attn.hook_v", head)
    v_n, b = src.shape
    rows = v_n * b
    dev = batch.tokens.device
    tokens = batch.tokens.repeat(v_n, 1)
    mask = None if batch.attention_mask is None else batch.attention_mask.repeat(v_n, 1)
    s_rows = src.to(dev).reshape(rows)
    q_rows = q.to(dev).repeat(v_n)
    ex = torch.arange(rows, device=dev) % b
    check_target_rows(target, b)
    pre = f"blocks.{layer}.attn."
    with torch.no_grad():
        clean = run_target(model, batch.tokens, target, attention_mask=batch.attention_mask).mean()
        # the layer's pattern and values are those of the clean run (the edit is at its own
        # hook_z, after them); cached first, since some bridges fire hook_pattern after hook_z
        acts = cache_activations(model, batch.tokens, [pre + "hook_v", pre + "hook_pattern"], attention_mask=batch.attention_mask)
        w_all = acts[pre + "hook_pattern"][ex, head, q_rows, s_rows]  # [rows]
        v_all = acts[pre + "hook_v"][ex, s_rows, kv]  # [rows, d_head]
        full = target.take(ex)
        bs = rows if batch_size is None else max(1, int(batch_size))
        vals = []
        for sl in row_chunks(rows, bs):
            r0, r1 = sl.start, sl.stop
            ar = torch.arange(r1 - r0, device=dev)
            qs = q_rows[r0:r1]
            delta = w_all[r0:r1, None] * v_all[r0:r1]

            def edit(z: Tensor, hook: Any, ar: Tensor = ar, qs: Tensor = qs, delta: Tensor = delta) -> Tensor:
                z = z.clone()
                z[ar, qs, head] = z[ar, qs, head] - delta.to(z.dtype)
                return z

            with hooked(model, [(pre + "hook_z", edit)]):
                m = None if mask is None else mask[r0:r1]
                vals.append(run_target(model, tokens[r0:r1], full.take(torch.arange(r0, r1, device=dev)), attention_mask=m))
        out = torch.cat(vals).reshape(v_n, b).mean(-1) - clean
    return out.cpu()
