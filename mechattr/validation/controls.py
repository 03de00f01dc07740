"""Nulls a claim is tested against: matched component controls, and random answer tokens.

**Matched head sets.** A control for a claim about head set ``S`` is a head set of the same
size that contains no claimed and no documented head (documented: the organism card's
components, or ``documented=``). Where every layer of ``S`` has enough such heads for at
least :data:`~mechattr.validation.verdicts.MIN_CONTROLS` distinct sets, each member is
replaced by a head of its own layer; otherwise by any allowed head. ``n_possible`` counts
the distinct sets that exist; at most ``n_max`` are drawn (all, when fewer exist).

**Random answer tokens.** For a single-token answer target (``logit``, ``logprob``,
``prob``, ``logit_diff``) the claim's own ablation can be re-read for other answers: draw
``j`` picks, per example, a random token other than the example's answer (and, for
``logit_diff``, other than its ``incorrect`` token) and reads the same target for it. The
claim's effect on the real answer is compared with these effects: "is the effect specific
to the claimed behaviour, or does the ablation move every token alike?". It needs no extra
forward pass, so thousands of draws are cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechattr.components import Head
from mechattr.targets import Logit, LogitDiff, LogProb, Prob, Target

ANSWER_TARGETS = (Logit, LogProb, Prob, LogitDiff)


def _layer_pools(pool: Sequence[Head]) -> dict[int, list[Head]]:
    out: dict[int, list[Head]] = {}
    for h in pool:
        out.setdefault(h.layer, []).append(h)
    return out


def matched_sets(claim: Sequence[Head], heads: Sequence[Head], excluded: set[Head], n_max: int, seed: int,
                 min_possible: int = 20) -> tuple[list[tuple[Head, ...]], int, str]:
    """``(control sets, n_possible, rule)`` for ``claim`` (module docstring)."""
    pool = [h for h in heads if h not in excluded]
    m = len(claim)
    by_layer = _layer_pools(pool)
    need: dict[int, int] = {}
    for h in claim:
        need[h.layer] = need.get(h.layer, 0) + 1
    same = math.prod(math.comb(len(by_layer.get(layer, [])), c) for layer, c in need.items())
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17 * m + sum(h.layer * 31 + h.head for h in claim))
    if same >= min_possible:
        n_possible, rule = same, "same size, same layers, no claimed or documented head"
        draw = lambda: tuple(sorted(h for layer, c in need.items() for h in _pick(by_layer[layer], c, g)))  # noqa: E731
        pools = [(by_layer[layer], c) for layer, c in need.items()]
    else:
        n_possible, rule = math.comb(len(pool), m), "same size, any layer, no claimed or documented head"
        draw = lambda: tuple(sorted(_pick(pool, m, g)))  # noqa: E731
        pools = [(pool, m)]
    if n_possible == 0:
        return [], 0, rule
    if n_possible <= n_max:
        import itertools

        combos = itertools.product(*(itertools.combinations(p, c) for p, c in pools))
        return [tuple(sorted(h for part in parts for h in part)) for parts in combos], n_possible, rule
    out: dict[tuple[Head, ...], None] = {}
    while len(out) < n_max:
        out[draw()] = None
    return list(out), n_possible, rule


def _pick(pool: Sequence[Head], c: int, g: torch.Generator) -> list[Head]:
    return [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:c]]


def answer_null_available(target: Any) -> bool:
    """Whether ``target`` is a single-token answer target the answer-token null can re-read."""
    return isinstance(target, ANSWER_TARGETS) and getattr(target, "k", 1) == 1


def answer_ids(target: Target) -> Tensor:
    """The answer token per example (``correct`` for ``logit_diff``)."""
    return target.correct if isinstance(target, LogitDiff) else target.token_ids  # type: ignore[attr-defined]


def null_tokens(target: Target, n_examples: int, d_vocab: int, n_draws: int, seed: int) -> Tensor:
    """``[n_draws, batch]`` random tokens, each other than its example's answer (and its
    ``incorrect`` token for ``logit_diff``)."""
    g = torch.Generator().manual_seed(int(seed) + 4242)
    ans = answer_ids(target).cpu().reshape(-1).expand(n_examples) if answer_ids(target).ndim == 0 else answer_ids(target).cpu()
    bad = [ans]
    if isinstance(target, LogitDiff):
        inc = target.incorrect.cpu()
        bad.append(inc.reshape(-1).expand(n_examples) if inc.ndim == 0 else inc)
    # draw from the vocabulary minus the forbidden ids by shifting past them (uniform over the rest)
    ids = torch.randint(d_vocab - len(bad), (n_draws, n_examples), generator=g)
    forb = torch.stack(bad, 0).sort(0).values  # [n_bad, batch]
    for f in forb:
        ids = ids + (ids >= f[None]).long()
    return ids


def reread(target: Target, x: Tensor, ids: Tensor) -> Tensor:
    """``[V, R, batch]``: ``target`` read from logits ``x`` ``[V, batch, vocab]`` (at the
    target's position) with the answer replaced by ``ids`` ``[R, batch]``."""
    x = x.float()
    ids = ids.to(x.device)
    idx = ids.T[None].expand(x.shape[0], -1, -1)  # [V, batch, R]
    if isinstance(target, LogitDiff):
        inc = target.incorrect.to(x.device)
        inc = inc.expand(x.shape[1]) if inc.ndim == 0 else inc
        vals = x.gather(-1, idx) - x.gather(-1, inc[None, :, None].expand(x.shape[0], -1, 1))
    else:
        vals = target._values(x.reshape(-1, x.shape[-1])).reshape(x.shape).gather(-1, idx)  # type: ignore[attr-defined]
    return vals.permute(0, 2, 1)
