"""Token→head links: link strength and the one-edge intervention that tests a link claim.

:func:`link_strength` ranks heads by how much they move the top token's value to the target
position; :func:`edge_effects` removes exactly that attention edge (a variant per source).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechattr.components import Head
from mechattr.inputs import Batch
from mechattr.runtime.arch import arch
from mechattr.runtime.cache import cache_activations
from mechattr.targets import Target, check_target_rows


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
    per_example: bool = False,
) -> Tensor:
    """``[variants]`` batch-mean change of ``target`` when one attention edge is removed
    (``[variants, batch]`` per example with ``per_example=True``).

    The edge (source ``src[v, b]`` → query ``q[b]``) of query head ``(layer, head)``:
    ``z[q, h] ← z[q, h] − A[h, q, s] · v[s, kv(h)]`` (the head's value at that source
    position no longer reaches the query; nothing else changes in that layer — under
    grouped- or multi-query attention the sibling query heads that share the key/value head
    ``kv(h)`` keep their edges). Each source choice is one ``ADD`` variant on the variant
    engine (:func:`mechattr.interventions.variants.run_variants`)."""
    from mechattr.interventions.variants import Edit, Mode, Variant, run_variants

    a = arch(model)
    Head(layer, head).check(model)
    kv = a.head_index(f"blocks.{layer}.attn.hook_v", head)
    v_n, b = src.shape
    dev = batch.tokens.device
    check_target_rows(target, b)
    pre = f"blocks.{layer}.attn."
    ar = torch.arange(b, device=dev)
    with torch.no_grad():
        # the layer's pattern and values are those of the clean run (the edit is at its own
        # hook_z, after them); cached first, since some bridges fire hook_pattern after hook_z
        acts = cache_activations(model, batch.tokens, [pre + "hook_v", pre + "hook_pattern", pre + "hook_z"],
                                 attention_mask=batch.attention_mask)
        z = acts[pre + "hook_z"]  # [b, pos, heads, d_head]
        variants = [Variant((), "clean")]
        for v in range(v_n):
            s = src[v].to(dev)
            delta = torch.zeros_like(z)
            w = acts[pre + "hook_pattern"][ar, head, q.to(dev), s]  # [b]
            delta[ar, q.to(dev), head] = -(w[:, None] * acts[pre + "hook_v"][ar, s, kv]).to(z.dtype)
            variants.append(Variant((Edit(pre + "hook_z", (slice(None), head), Mode.ADD, delta),), f"edge {v}"))
        out = run_variants(model, batch.tokens, variants, target, attention_mask=batch.attention_mask, batch_size=batch_size)
        d = (out[1:] - out[:1]).float()
    return (d if per_example else d.mean(-1)).cpu()


def random_other_positions(removable: Tensor, src: Tensor, draws: int, seed: int) -> Tensor:
    """``[draws, batch]`` random removable positions other than ``src`` (``src`` itself if none)."""
    g = torch.Generator().manual_seed(int(seed) + 3)
    other = removable.clone()
    other[torch.arange(len(src)), src] = False
    w = torch.where(other.any(-1, keepdim=True), other.float(), removable.float()).cpu()
    return torch.multinomial(w, draws, replacement=True, generator=g).T.to(src.device)


def run_link_claims(model: Any, batch: Batch, target: Target, maps: dict[str, Tensor], rep: Any, *, removable: Tensor,
                    q: Tensor, top_links: int, n_draws: int, min_effect: float, seed: int, batch_size: int | None,
                    floor: float = 0.05, adaptive: bool = True, round_size: int = 25) -> None:
    """Link claims for the ``top_links`` strongest heads (:func:`link_strength` from each
    example's top token of the first method): remove that edge (per example, with a bootstrap
    interval) vs the same edge from ``n_draws`` random other source tokens (two-sided). Only
    heads whose link strength exceeds ``floor`` × the largest (and 0) become claims.
    ``adaptive``: the random sources are evaluated ``round_size`` at a time, in the order of
    the full draw, and stop once the test cannot become significant
    (:func:`~mechattr.validation.stats.decided_not_significant`): the verdict equals the full
    draw's; the number used is the test's ``n_controls``."""
    from mechattr.components import all_heads
    from mechattr.faithfulness.metrics import top_mask
    from mechattr.validation.stats import ALPHA, bootstrap_ci, decided_not_significant, mc_pvalue
    from mechattr.validation.verdicts import MIN_EXAMPLES, Claim, TestResult

    heads = all_heads(model)
    primary = next(iter(maps))
    src = top_mask(maps[primary], removable, torch.ones_like(q)).float().argmax(-1)
    with torch.no_grad():
        ls = link_strength(model, batch, q, src)
    rep.heads["links"] = ls
    order = torch.argsort(ls.flatten(), descending=True, stable=True)
    rnd = random_other_positions(removable, src, n_draws, seed)
    n = batch.shape[0]
    flat = ls.flatten()
    strong = [i for i in order.tolist() if flat[i] > 0 and flat[i] > floor * float(flat.max())]
    for i in strong[:top_links]:
        h = heads[int(i)]
        step = round_size if adaptive else n_draws
        eff = edge_effects(model, batch, target, h.layer, h.head, q, torch.cat([src[None], rnd[:step]]), batch_size=batch_size,
                           per_example=True)
        per, ctrl = eff[0], eff[1:].mean(-1)
        while ctrl.numel() < n_draws and not decided_not_significant(int((ctrl.abs() >= abs(float(per.mean()))).sum()), n_draws):
            more = rnd[ctrl.numel() : ctrl.numel() + step]
            ctrl = torch.cat([ctrl, edge_effects(model, batch, target, h.layer, h.head, q, more, batch_size=batch_size)])
        lo, hi = bootstrap_ci(per, seed=seed) if n >= MIN_EXAMPLES else (None, None)
        thr = float(torch.quantile(ctrl.abs().double(), 1 - ALPHA))
        t = TestResult("edge removal (value at the top token → target position)", float(per.mean()), thr, int(ctrl.numel()),
                       bool(abs(float(per.mean())) > thr), [float(x) for x in ctrl[:200]],
                       "two-sided: |effect| vs |edge removed from random other source tokens|", lo, hi,
                       mc_pvalue(abs(float(per.mean())), ctrl.abs()), None, "random source tokens", -1, min_effect, True)
        cl = Claim(f"link:top token({primary})→{h}", "link", {"layer": h.layer, "head": h.head, "method": primary,
                   "source_positions": src.cpu().tolist()}, note=f"link strength {float(ls.flatten()[i]):.4g}")
        cl.add(t)
        rep.claims.append(cl)
