"""Path patching (Wang et al. 2022, "Interpretability in the Wild", §3.1), batched over senders.

For each sender (a head, patched at ``hook_z``, or an MLP, at ``hook_mlp_out``):

1. cache the clean and the corrupted run;
2. run clean with the sender's activation taken from corrupted and every other head's
   ``z`` frozen to its clean value (MLPs and LayerNorms recompute), caching the
   receivers' inputs;
3. run clean with only those receiver inputs patched (a receiver ``(layer, head, "q")``
   is that head's query input — TransformerLens's ``use_split_qkv_input`` — so we patch
   the query it computes, ``hook_q[:, :, head]``; ``"logits"`` is the final residual
   stream, i.e. the target of run 2); the result is the batch-mean target.

Key/value receivers under grouped- and multi-query attention. A receiver ``(layer, h,
"k")`` is *query head* ``h``'s key input: the keys ``h`` attends with are the projection
``W_K^{kv(h)}`` (``kv(h)``: the key/value head of ``h``'s group,
:meth:`mechattr.runtime.arch.Arch.kv_head`) of run 2's residual, while the sibling query
heads that share ``kv(h)`` keep the clean keys (``use_split_qkv_input`` with one input per
query head, projected by its group's ``W_K``); likewise ``"v"``. Under multi-head attention
this is patching ``hook_k[:, :, h]``. We compute it exactly without re-implementing
attention (rotary, soft-capping, masks stay the model's): run 3 stacks, per sender, one
copy of the clean run plus one per distinct set of patched inputs (``k``, ``v``, ``k+v``)
among the receivers of a layer; a copy patches whole key/value heads ``hook_k/v[:, :,
kv(h)]`` (run 2's values), and at ``hook_z`` of that layer the receiver heads' ``z`` are
taken from their copy into the base copy, whose ``z`` every copy then continues with
(:func:`mechattr.interventions.split_receivers.split_stage3`).

With every head frozen, run 2 changes the residual only through the sender's output and
the MLPs, which act position by position: on a HookedTransformer with standard blocks we
compute it as that MLP chain (for ``"logits"`` only at the target's positions) instead
of full forwards. Other models run the hooked forwards on the variant engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.components import MLP, Component, Head, parse_components
from mechattr.inputs import prepare_pair
from mechattr.interventions.result import InterventionResult
from mechattr.interventions.split_receivers import split_stage3
from mechattr.interventions.variants import (
    Edit,
    Mode,
    Variant,
    base_hooks,
    cache_activations,
    max_rows,
    run_variants,
)
from mechattr.io import versions
from mechattr.model import check_model, model_guard
from mechattr.runtime import blocks as lastblock
from mechattr.runtime.arch import arch
from mechattr.runtime.cache import cache_pair
from mechattr.runtime.chunks import row_chunks
from mechattr.runtime.tl import simple_attn_linear
from mechattr.targets import Target, check_finite, check_target_rows, target_values

QKV = ("q", "k", "v")


def parse_receivers(model: Any, receivers: Any) -> str | list[tuple[int, int, str]]:
    """``"logits"`` or a validated list of ``(layer, head, "q"|"k"|"v")``."""
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"unknown receivers {receivers!r}; use 'logits' or a list of (layer, head, 'q'|'k'|'v')")
        return "logits"
    if isinstance(receivers, tuple) and len(receivers) == 3 and isinstance(receivers[2], str):
        receivers = [receivers]
    out = []
    for r in list(receivers):
        if not (isinstance(r, (tuple, list)) and len(r) == 3 and isinstance(r[2], str)):
            raise ValueError(f"bad receiver {r!r}: expected (layer, head, 'q'|'k'|'v') or receivers='logits'")
        layer, head, which = r
        if which not in QKV:
            raise ValueError(f"receiver {r!r}: input must be one of {list(QKV)}, got {which!r}")
        if not (isinstance(layer, int) and isinstance(head, int)) or isinstance(layer, bool) or isinstance(head, bool):
            raise ValueError(f"bad receiver {r!r}: layer and head must be ints")
        Head(layer, head).check(model)
        out.append((int(layer), int(head), which))
    if not out:
        raise ValueError("no receivers given: pass 'logits' or at least one (layer, head, 'q'|'k'|'v')")
    return list(dict.fromkeys(out))


def path_patch(
    model: Any,
    clean: Any,
    corrupted: Any,
    target: Callable | None = None,
    senders: Any = None,
    receivers: Any = None,
    *,
    batch_size: int | None = None,
    attention_mask: Any = None,
    return_result: bool = False,
) -> Tensor | InterventionResult:
    """Batch-mean target when only the paths ``sender → receivers`` carry the corrupted input.

    ``senders``: heads/MLPs (``"L0H1"``, ``Head``, ``"MLP0"``); ``receivers``: ``"logits"``
    or ``[(layer, head, "q"|"k"|"v"), ...]``, all in later layers than every sender.
    Returns ``[len(senders)]`` float32 on the model's device (``return_result=True``: an
    :class:`InterventionResult` with the unpatched ``clean`` batch-mean target). A ``k``/``v``
    receiver ``(layer, h, ·)`` is query head ``h``'s own key/value input, also under
    grouped- or multi-query attention, where the query heads sharing ``h``'s key/value head
    are left clean (module docstring).
    """
    check_model(model)
    with model_guard(model), torch.no_grad():
        c, x = prepare_pair(model, clean, corrupted, attention_mask)
        check_target_rows(target, c.shape[0])
        if senders is None or receivers is None:
            raise TypeError("path_patch needs senders (heads/MLPs) and receivers ('logits' or [(layer, head, 'q'|'k'|'v')])")
        sends = parse_components(senders, model)
        recv = parse_receivers(model, receivers)
        n_l = model.cfg.n_layers
        for s in sends:
            for r in ([] if recv == "logits" else recv):
                if r[0] <= s.layer:
                    raise ValueError(
                        f"receiver {r} is in layer {r[0]}, not after sender {s} (layer {s.layer}); "
                        f"receivers must be in later layers than every sender"
                    )
        max_rows(model, c.shape[1], batch_size, c.tokens.device)  # validates batch_size
        stop = n_l if recv == "logits" else max(r[0] for r in recv)
        resid, idx, base_cache = None, None, None
        a = arch(model)
        split = recv != "logits" and a.group > 1 and any(r[2] != "q" for r in recv)
        if lastblock.supported(model) and not split:
            # the last block's queries matter only where the target reads
            if isinstance(target, Target) and (recv == "logits" or all(r[0] == n_l - 1 and r[2] == "q" for r in recv)):
                idx = target.positions(c.shape[0], c.shape[1], c.attention_mask, c.tokens.device)
            extra = []
            if recv != "logits":  # run 3's entry points; the first receiver layer's q/k/v and z
                first = _first_layer(recv) if idx is None else []
                extra = base_hooks(model, [_stage3(recv, None, ""), _stage3(recv, None, "", first)])
                extra += [_qkv_hook((r[0], r[1], w)) for r in first for w in QKV]
            resid, base_cache = _frozen_chain(model, c, x, sends, stop, idx=idx, target=target if recv == "logits" else None, batch_size=batch_size, extra=extra)
        if recv == "logits":
            vals = resid if resid is not None else _generic_logits(model, c, x, sends, target, batch_size)
        else:
            if resid is None:
                first, inputs = [], _generic_inputs(model, c, x, sends, recv, batch_size)
            else:
                inputs = _receiver_inputs(model, resid, [r for r in recv if r not in first], c.shape, idx)
                if first:
                    inputs["z"] = _receiver_z(model, resid, first, base_cache, c.attention_mask)
            if split:
                vals = split_stage3(model, c, sends, recv, inputs, target, batch_size)
            else:
                variants = [_stage3(recv, {r: v[i] for r, v in inputs.items()}, str(s), first) for i, s in enumerate(sends)]
                vals = run_variants(model, c.tokens, variants, target, attention_mask=c.attention_mask, batch_size=batch_size, base_cache=base_cache)
        scores = vals.mean(1).float()
    if not return_result:
        return scores
    with model_guard(model), torch.no_grad():
        clean_mean = float(run_variants(model, c.tokens, [Variant()], target, attention_mask=c.attention_mask).mean())
    settings = {"receivers": recv, "clean": clean_mean, "batch_size": batch_size,
                "target": target.describe() if hasattr(target, "describe") else repr(target), "versions": versions()}
    return InterventionResult(scores, [str(s) for s in sends], ("sender",), "path_patch", settings)


def _stage3(recv: list, values: dict | None, name: str, first: list | None = None) -> Variant:
    """Run 3 for one sender: the receivers' q/k/v replaced by their run-2 values.

    Receivers in ``first`` (all in one layer ``R``) are applied as one edit of
    ``blocks.R.attn.hook_z`` at their heads (``values["z"]``, from :func:`_receiver_z`):
    the same run, entered after block ``R``'s attention.
    """
    mode = Mode.ZERO if values is None else Mode.PATCH
    first = first or []
    edits = [Edit(_qkv_hook(r), (slice(None), r[1]), mode, None if values is None else values[r]) for r in recv if r not in first]
    if first:
        heads = sorted({r[1] for r in first})
        z = Edit(f"blocks.{first[0][0]}.attn.hook_z", (slice(None), heads), mode, None if values is None else values["z"])
        edits.insert(0, z)
    return Variant(tuple(edits), name)


def _first_layer(recv: list) -> list:
    """The receivers in the earliest receiver layer."""
    lo = min(r[0] for r in recv)
    return [r for r in recv if r[0] == lo]


def _qkv_hook(r: tuple[int, int, str]) -> str:
    return f"blocks.{r[0]}.attn.hook_{r[2]}"


# ----------------------------------------------------------------------------- generic
def _stage2_variants(model: Any, clean_z: dict, corr: dict, sends: list[Component], stop: int) -> list[Variant]:
    out = []
    for s in sends:
        edits = [Edit(f"blocks.{layer}.attn.hook_z", (), Mode.PATCH, clean_z[f"blocks.{layer}.attn.hook_z"]) for layer in range(s.layer + 1, stop)]
        idx = (slice(None), s.head) if isinstance(s, Head) else ()
        out.append(Variant((Edit(s.hook_name, idx, Mode.PATCH, corr[s.hook_name]), *edits), str(s)))
    return out


def _caches(model: Any, c: Any, x: Any, sends: list[Component], stop: int) -> tuple[dict, dict]:
    lo = min(s.layer for s in sends)
    clean = cache_activations(model, c.tokens, [f"blocks.{layer}.attn.hook_z" for layer in range(lo + 1, stop)] or [sends[0].hook_name], attention_mask=c.attention_mask)
    corr = cache_activations(model, x.tokens, [s.hook_name for s in sends], attention_mask=x.attention_mask)
    return clean, corr


def _generic_logits(model: Any, c: Any, x: Any, sends: list[Component], target: Callable, batch_size: int | None) -> Tensor:
    n_l = model.cfg.n_layers
    clean_z, corr = _caches(model, c, x, sends, n_l)
    variants = _stage2_variants(model, clean_z, corr, sends, n_l)
    return run_variants(model, c.tokens, variants, target, attention_mask=c.attention_mask, batch_size=batch_size)


def _generic_inputs(model: Any, c: Any, x: Any, sends: list[Component], recv: list, batch_size: int | None) -> dict:
    stop = max(r[0] for r in recv)
    clean_z, corr = _caches(model, c, x, sends, stop)
    variants = _stage2_variants(model, clean_z, corr, sends, stop)
    B = c.shape[0]
    per = max(1, max_rows(model, c.shape[1], batch_size, c.tokens.device) // B)
    names = sorted({_qkv_hook(r) for r in recv})
    got: dict[str, list[Tensor]] = {n: [] for n in names}
    for sl in row_chunks(len(variants), per):
        acts = cache_activations(model, c.tokens, names, attention_mask=c.attention_mask, variants=variants[sl])
        for n in names:
            got[n] += list(acts[n].reshape(-1, B, *acts[n].shape[1:]))
    return {r: got[_qkv_hook(r)] for r in recv}


# ----------------------------------------------------------------------------- fast path
def _frozen_chain(model: Any, c: Any, x: Any, sends: list[Component], stop: int, *, idx: Tensor | None, target: Callable | None, batch_size: int | None, extra: list[str]) -> tuple[Any, dict]:
    """Run 2 with every head frozen, as the position-wise MLP chain from each sender.

    Computed at positions ``idx`` (``[B, k]``) only when given. Returns ``[n_senders, B]``
    target values (``target`` given: receivers ``"logits"``) or, per sender,
    ``{layer: [B, pos or k, d_model]}``: the residual entering each layer up to ``stop``;
    and the clean run's activations (including hooks ``extra``), cached in one forward
    with the corrupted run's.
    """
    cfg = model.cfg
    B, n_pos = c.shape
    layers = sorted({s.layer for s in sends})
    names = [f"blocks.{layer}.hook_resid_mid" if not cfg.attn_only else f"blocks.{layer}.hook_resid_post" for layer in layers]
    names += [f"blocks.{layer}.hook_attn_out" for layer in range(layers[0] + 1, stop)]
    names += [f"blocks.{s.layer}.attn.hook_z" for s in sends if isinstance(s, Head)]
    raw, corr = cache_pair(model, c, x, [*names, *extra], [s.hook_name for s in sends])
    clean = raw
    if idx is not None:
        clean = {k: lastblock.take(v, idx) for k, v in clean.items()}
        corr = {k: lastblock.take(v, idx) for k, v in corr.items()}

    def start(s: Component) -> tuple[Tensor, Tensor | None]:
        """Residual after the sender's sublayer (pre-MLP for heads) and an MLP override."""
        if isinstance(s, MLP):
            return clean[f"blocks.{s.layer}.hook_resid_mid"], corr[s.hook_name]
        z_c, z_x = clean[s.hook_name][:, :, s.head], corr[s.hook_name][:, :, s.head]
        delta = (z_x - z_c) @ model.blocks[s.layer].attn.W_O[s.head]
        key = f"blocks.{s.layer}.hook_resid_post" if cfg.attn_only else f"blocks.{s.layer}.hook_resid_mid"
        return clean[key] + delta, None

    per = max(1, max_rows(model, n_pos if idx is None else idx.shape[1], batch_size, c.tokens.device) // B)
    outs: list[Any] = [None] * len(sends)
    order = sorted(range(len(sends)), key=lambda i: sends[i].layer)
    for sl in row_chunks(len(order), per):
        group = order[sl]
        lay = {sends[i].layer for i in group}
        for layer in sorted(lay):
            sub = [i for i in group if sends[i].layer == layer]
            starts = [start(sends[i]) for i in sub]
            h = torch.cat([st[0] for st in starts])
            if not cfg.attn_only:
                blk = model.blocks[layer]
                mlp = blk.mlp(blk.ln2(h))
                over = [st[1] for st in starts]
                if any(o is not None for o in over):
                    mlp = torch.cat([o if o is not None else m for o, m in zip(over, mlp.split(B))])
                h = h + mlp
            res = {layer + 1: h}
            for nxt in range(layer + 1, stop):
                mid = h + clean[f"blocks.{nxt}.hook_attn_out"].repeat(len(sub), 1, 1)
                h = mid if cfg.attn_only else mid + model.blocks[nxt].mlp(model.blocks[nxt].ln2(mid))
                res[nxt + 1] = h
            if target is not None:
                vals = _final_target(model, h, target, idx, len(sub), c.attention_mask)
                for j, i in enumerate(sub):
                    outs[i] = vals[j * B : (j + 1) * B]
            else:
                for j, i in enumerate(sub):
                    outs[i] = {k: v[j * B : (j + 1) * B] for k, v in res.items()}
    if target is not None:
        return torch.stack(outs), raw
    return outs, raw


def _final_target(model: Any, resid: Tensor, target: Callable, idx: Tensor | None, n_var: int, mask: Tensor | None) -> Float[Tensor, " rows"]:
    logits = lastblock.final_logits(model, resid)
    B = logits.shape[0] // n_var
    if isinstance(target, Target):
        t = target.take(torch.arange(logits.shape[0], device=logits.device) % B)
        return check_finite(t.from_selected(logits).float(), "target under path patching")
    return check_finite(target_values(target, logits, mask, n_examples=B), "target under path patching")


def _receiver_inputs(model: Any, resid: list[dict], recv: list, shape: tuple[int, int], idx: Tensor | None) -> dict:
    """Per receiver, per sender: the receiver's q/k/v ``[B, pos, head, d_head]`` from run 2.

    One LayerNorm + projection per (layer, q/k/v) over all senders at once. With ``idx``
    (last-layer queries, computed only at the target's positions) the values are scattered
    into full-length tensors, zero elsewhere (the engine reads them only at ``idx``).
    """
    B, n_pos = shape
    out: dict = {}
    for layer, which in sorted({(r[0], r[2]) for r in recv}):
        attn = model.blocks[layer].attn
        w, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[which]
        x = torch.cat([res[layer] for res in resid])
        vals = simple_attn_linear(model.blocks[layer].ln1(x), w, b)
        if idx is not None:
            full = vals.new_zeros(vals.shape[0], n_pos, *vals.shape[2:])
            rows = idx.repeat(len(resid), 1)
            vals = full.scatter(1, rows[:, :, None, None].expand(-1, -1, *vals.shape[2:]), vals)
        for r in recv:
            if (r[0], r[2]) == (layer, which):
                out[r] = list(vals.split(B))
    return out


def _receiver_z(model: Any, resid: list[dict], first: list, clean: dict, mask: Tensor | None) -> list[Tensor]:
    """Per sender, ``blocks.R.attn.hook_z`` of run 3 (``[B, pos, n_heads, d_head]``).

    ``first``: receivers, all in layer ``R``. Only their heads' ``z`` change: each is the
    attention of that head with its receiver q/k/v from run 2 (``resid[i][R]``) and its
    other inputs clean; the other heads keep the clean ``z``. One LayerNorm, projections
    of the receiver heads only, and attention of those heads only, over all senders.
    """
    layer = first[0][0]
    n, attn = len(resid), model.blocks[layer].attn
    heads = sorted({r[1] for r in first})
    x = model.blocks[layer].ln1(torch.cat([res[layer] for res in resid]))
    qkv = []
    for which in QKV:
        hook = _qkv_hook((layer, 0, which))
        cur = clean[hook][:, :, [arch(model).head_index(hook, h) for h in heads]].repeat(n, 1, 1, 1)
        mine = [j for j, h in enumerate(heads) if (layer, h, which) in first]
        if mine:
            hs = [heads[j] for j in mine]
            w, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[which]
            cur[:, :, mine] = simple_attn_linear(x, w[hs], b[hs])
        qkv.append(cur)
    z_heads = lastblock.attend(attn, *qkv, None, None if mask is None else mask.repeat(n, 1), hooks=False)
    z = clean[f"blocks.{layer}.attn.hook_z"].repeat(n, 1, 1, 1)
    z[:, :, heads] = z_heads.to(z.dtype)
    return list(z.split(z.shape[0] // n))
