"""Token interactions: which *sets* of tokens act together on the target (SPEX, Shapley–Taylor).

:func:`attribute_interactions` treats the target as a set function ``v(S)`` of the kept
features ``S`` (tokens, or ``segments``; removed ones get the baseline embedding or a
removal operator, exactly as the coalition methods of ``shapley_methods.py``) and reports the
sets of 2..``max_order`` features with the largest effects:

- ``"shapley_taylor"``: the exact Shapley–Taylor interaction index of order k = ``max_order``
  (Sundararajan, Dhamdhere & Agarwal 2020) from all ``2^M`` coalitions (M ≤ 12): with the
  Möbius coefficients ``a(T) = Σ_{W ⊆ T} (−1)^{|T|−|W|} v(W)``, ``STI(S) = a(S)`` for
  ``|S| < k`` and ``STI(S) = Σ_{T ⊇ S} a(T) / C(|T|, k)`` for ``|S| = k``.
- ``"spex"``: sparse spectral interaction discovery (SPEX, Kang et al. 2025), see :func:`spex`.

The cores take a plain value function over masks (``[V, n] bool → [V]``), so they run on any
set function; the model path stacks every example's coalitions along the batch and runs
them in chunks of ``batch_size`` rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

METHODS = ("spex", "shapley_taylor")
MAX_ENUM = 12


class Interaction(NamedTuple):
    """One interacting set: token ``positions`` (sorted), its features' text, its effect."""

    positions: tuple[int, ...]
    tokens: tuple[str, ...]
    effect: float


@dataclass(repr=False)
class Interactions:
    """Interaction effects per example (CPU).

    ``effects[row]``: feature-index set → effect, every recovered set of size 1..``max_order``
    (Shapley–Taylor index, or SPEX's Möbius coefficient); ``features[row][f]``: the positions
    of feature ``f``; ``labels[row][f]`` its text; ``f_input``/``f_empty [batch]``: target with
    every / no feature kept; ``settings``: method and options.
    """

    method: str
    max_order: int
    effects: list[dict[tuple[int, ...], float]]
    features: list[list[tuple[int, ...]]]
    labels: list[list[str]]
    f_input: Tensor
    f_empty: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def top(self, row: int = 0, k: int = 5, *, min_size: int = 2) -> list[Interaction]:
        """The ``k`` sets of ≥ ``min_size`` features with the largest ``|effect|`` in ``row``."""
        items = [(S, e) for S, e in self.effects[row].items() if len(S) >= min_size]
        items.sort(key=lambda it: -abs(it[1]))
        out = []
        for S, e in items[:k]:
            pos = tuple(sorted(p for f in S for p in self.features[row][f]))
            out.append(Interaction(pos, tuple(self.labels[row][f] for f in S), float(e)))
        return out

    def to_frame(self) -> Any:
        """One row per (example, set): ``row, size, positions, tokens, effect`` (pandas)."""
        import pandas as pd

        recs = [{"row": i, "size": len(x.positions), "positions": x.positions, "tokens": x.tokens, "effect": x.effect}
                for i in range(len(self.effects)) for x in self.top(i, len(self.effects[i]), min_size=1)]
        return pd.DataFrame(recs, columns=["row", "size", "positions", "tokens", "effect"])

    def __repr__(self) -> str:
        best = self.top(0, 1) if self.effects else []
        head = f" row 0 top: {' × '.join(map(repr, best[0].tokens))} {best[0].effect:+.3g}" if best else ""
        return f"Interactions(method={self.method!r}, rows={len(self.effects)}, max_order={self.max_order},{head})"


def _sets_bits(n: int, max_size: int) -> list[tuple[int, ...]]:
    return [S for r in range(max_size + 1) for S in itertools.combinations(range(n), r)]


def mobius(values: Tensor, n: int) -> Tensor:
    """Möbius coefficients ``a [2^n]`` from ``v [2^n]`` indexed by bitmask (bit j = feature j kept)."""
    a = values.double().clone()
    for j in range(n):
        idx = torch.arange(2**n)
        has = idx[(idx >> j) & 1 == 1]
        a[has] -= a[has ^ (1 << j)]
    return a


def shapley_taylor(values: Tensor, n: int, order: int) -> dict[tuple[int, ...], float]:
    """Shapley–Taylor index (Sundararajan et al. 2020) of order ``order`` from ``v [2^n]``.

    Every set of 1..``order`` features → its index (definition in the module docstring).
    """
    a = mobius(values, n)
    idx = torch.arange(2**n)
    size = torch.tensor([bin(s).count("1") for s in range(2**n)])
    share = a / torch.tensor([math.comb(int(s), order) if s >= order else 1 for s in size], dtype=torch.float64)
    out = {}
    for S in _sets_bits(n, order)[1:]:
        bits = sum(1 << j for j in S)
        out[S] = float(a[bits]) if len(S) < order else float(share[(idx & bits) == bits].sum())
    return out


@dataclass
class SpexDesign:
    """SPEX sampling design: masks ``[C, P+1, 2^b, n]`` (True = kept) = ``M_cᵀℓ ⊕ d_p``."""

    n: int
    max_order: int
    hashes: Tensor  # [C, b, n] subsampling matrices over GF(2)
    delays: Tensor  # [P+1, n], row 0 = 0
    masks: Tensor  # [C, P+1, 2^b, n] bool

    @property
    def flat(self) -> Tensor:
        return self.masks.reshape(-1, self.n)


def spex_design(n: int, max_order: int = 2, *, n_bins_log2: int | None = None, n_delays: int | None = None,
                n_groups: int = 3, seed: int = 0) -> SpexDesign:
    """The masks SPEX queries: ``C`` groups, each ``2^b`` subsampled masks per delay (see :func:`spex`)."""
    n_cand = sum(math.comb(n, r) for r in range(max_order + 1))
    b = min(n, n_bins_log2 if n_bins_log2 is not None else max(3, math.ceil(math.log2(max(n, 2))) + 1))
    P = n_delays if n_delays is not None else math.ceil(math.log2(n_cand)) + 8
    g = torch.Generator().manual_seed(int(seed))
    hashes = torch.randint(0, 2, (n_groups, b, n), generator=g)
    delays = torch.cat([torch.zeros(1, n, dtype=torch.long), torch.randint(0, 2, (P, n), generator=g)])
    ell = (torch.arange(2**b)[:, None] >> torch.arange(b)[None]) & 1  # [2^b, b]
    sub = torch.einsum("lb,cbn->cln", ell, hashes) % 2  # [C, 2^b, n]
    masks = (sub[:, None] + delays[None, :, None]) % 2 == 1
    return SpexDesign(n, max_order, hashes, delays, masks)


def spex_decode(design: SpexDesign, values: Tensor, *, singleton_tol: float = 0.2, zero_tol: float = 1e-6) -> dict[tuple[int, ...], float]:
    """Möbius interactions (sets of 1..max_order features → effect) from the design's values."""
    C, P1, B, n = design.masks.shape
    b = design.hashes.shape[1]
    U = values.double().reshape(C, P1, B)
    ell = (torch.arange(B)[:, None] >> torch.arange(b)[None]) & 1
    H = (1 - 2 * ((ell @ ell.T) % 2)).double()  # Walsh–Hadamard, H[j, l] = (−1)^<j,l>
    U = torch.einsum("jl,cpl->cpj", H, U) / B  # U[c, p, j] = Σ_{k: M_c k = j} (−1)^<d_p,k> F(k)
    cands = _sets_bits(n, design.max_order)
    K = torch.zeros(len(cands), n, dtype=torch.long)
    for i, S in enumerate(cands):
        K[i, list(S)] = 1
    sig = (1 - 2 * ((K @ design.delays.T) % 2)).double()  # [K, P+1]
    weights = 2 ** torch.arange(b)
    bins = ((torch.einsum("kn,cbn->ckb", K, design.hashes) % 2) * weights).sum(-1)  # [C, K]
    members = [[(bins[c] == j).nonzero().flatten() for j in range(B)] for c in range(C)]
    scale = float(U.pow(2).sum(1).max()) or 1.0
    found: dict[int, float] = {}
    for _ in range(4 * C * B):
        progress = False
        for c in range(C):
            for j in range(B):
                u = U[c, :, j]
                E = float(u.pow(2).sum())
                m = members[c][j]
                if E <= zero_tol * scale or m.numel() == 0:
                    continue
                corr = sig[m] @ u
                best = int(corr.abs().argmax())
                F = float(corr[best]) / P1
                if E - P1 * F * F > singleton_tol * E:
                    continue
                k = int(m[best])
                found[k] = found.get(k, 0.0) + F
                U[torch.arange(C), :, bins[:, k]] -= F * sig[k][None]
                progress = True
        if not progress:
            break
    support = sorted(set(found) | {0})
    X = design.flat.long()
    phi = (1 - 2 * ((X @ K[support].T) % 2)).double()  # [V, |support|]
    coef = torch.linalg.lstsq(phi, values.double()[:, None], driver="gelsd").solution[:, 0]
    effects: dict[tuple[int, ...], float] = {}
    for kk, f in zip(support, coef.tolist()):
        T = cands[kk]
        for r in range(1, len(T) + 1):
            for S in itertools.combinations(T, r):  # a(S) = (−2)^|S| Σ_{T ⊇ S} F(T)
                effects[S] = effects.get(S, 0.0) + (-2) ** r * f
    return {S: e for S, e in effects.items() if abs(e) > 1e-9 * max(1.0, scale) ** 0.5}


def spex(value_fn: Callable[[Tensor], Tensor], n: int, max_order: int = 2, *, seed: int = 0, **options: Any) -> dict[tuple[int, ...], float]:
    """SPEX (Kang et al. 2025): sparse Fourier/Möbius interactions of a set function on ``n`` features.

    ``value_fn(masks [V, n] bool) -> [V]`` (True = kept). The function's Fourier transform
    ``v(x) = Σ_k F(k) (−1)^<x,k>`` is assumed sparse and of degree ≤ ``max_order``. As SPEX:
    query ``C`` groups of masks ``x = M_cᵀℓ ⊕ d_p`` (random ``M_c ∈ F₂^{b×n}``, ``ℓ ∈ F₂^b``,
    delays ``d_p``); a Walsh–Hadamard transform of each group × delay aliases every ``F(k)``
    into bin ``M_c k`` with sign ``(−1)^<d_p,k>``; bins holding one coefficient (singletons)
    are decoded from their sign pattern and peeled from the other groups until none is left;
    ``F`` is then refitted by least squares on the recovered support and turned into Möbius
    (AND-) interactions ``a(S) = (−2)^{|S|} Σ_{T ⊇ S} F(T)``. Deviation from the paper: the
    delays are ``n_delays`` random vectors (default ``⌈log₂ #candidates⌉ + 8``) decoded by a
    maximum-correlation search over the candidate sets of degree ≤ ``max_order`` that hash to
    the bin, instead of BCH-coded delays with an algebraic decoder; a bin is a singleton when
    its best candidate leaves ≤ ``singleton_tol`` of its energy. Queries: ``C·(P+1)·2^b``.
    Options: ``n_bins_log2`` (b), ``n_delays`` (P), ``n_groups`` (C, 3), ``singleton_tol``.
    """
    dec = {k: options.pop(k) for k in ("singleton_tol", "zero_tol") if k in options}
    design = spex_design(n, max_order, seed=seed, **options)
    values = torch.as_tensor(value_fn(design.flat)).reshape(-1)
    return spex_decode(design, values, **dec)


def attribute_interactions(model: Any, tokens: Any, target: Callable, *, method: str = "spex", max_order: int = 2,
                           baseline: Any = None, removal: Any = None, replacement_id: int | None = None,
                           batch_size: int | None = None, seed: int | None = None, attention_mask: Any = None,
                           exclude_bos: bool = True, exclude_tokens: Any = None, segments: Any = None,
                           **options: Any) -> Interactions:
    """Interacting token sets per example: :class:`Interactions` (see the module docstring).

    ``method``: ``"spex"`` (options of :func:`spex`) or ``"shapley_taylor"`` (exact, ≤ 12
    features). ``max_order``: 2 or 3. Features, removal, ``segments`` and exclusions as the
    coalition methods of :func:`mechattr.attribute_tokens` (``shapley_sampling`` etc.).
    """
    from mechattr.attribution import shapley_methods as sm
    from mechattr.attribution.result import span_masks, str_tokens_of
    from mechattr.attribution.tokens import Ctx, _clean_embeds, _exclusions, target_positions
    from mechattr.checks import check_target_arg
    from mechattr.inputs import prepare_tokens
    from mechattr.model import model_guard
    from mechattr.runtime.chunks import check_batch_size
    from mechattr.targets import check_target_rows

    if method not in METHODS:
        raise ValueError(f"unknown interaction method {method!r}; allowed: {list(METHODS)}")
    if isinstance(max_order, bool) or max_order not in (2, 3):
        raise ValueError(f"max_order must be 2 or 3, got {max_order!r}")
    allowed = {"n_bins_log2", "n_delays", "n_groups", "singleton_tol"} if method == "spex" else set()
    if set(options) - allowed:
        raise ValueError(f"method {method!r} got unknown option(s) {sorted(set(options) - allowed)}; its options: {sorted(allowed)}")
    check_target_arg(target)
    check_batch_size(batch_size)
    with model_guard(model):
        batch = prepare_tokens(model, tokens, attention_mask)
        check_target_rows(target, batch.shape[0])
        real, excl = _exclusions(model, batch, exclude_bos, exclude_tokens)
        strs = str_tokens_of(model, batch)
        spans = span_masks(segments, strs, real, excl) if segments is not None else None
        ctx = Ctx(model, batch, target, real, excl, _clean_embeds(model, batch), baseline, None, batch_size, seed,
                  target_positions(target, batch), spans)
        masks, rows = sm.features(ctx)
        values, _ = sm.removal_fn(ctx, removal, replacement_id)
        if method == "shapley_taylor":
            big = [r.numel() for r in rows if r.numel() > MAX_ENUM]
            if big:
                raise ValueError(f"shapley_taylor enumerates 2^M coalitions and allows at most {MAX_ENUM} features, got {big[0]}; "
                                 f"use method='spex' or segments")
            per_row = [((torch.arange(2 ** r.numel())[:, None] >> torch.arange(r.numel())[None]) & 1).bool() for r in rows]
        else:
            designs = [spex_design(r.numel(), max_order, seed=0 if seed is None else int(seed), **options) for r in rows]
            per_row = [d.flat for d in designs]
        V = max(p.shape[0] for p in per_row) + 1  # last variant: every feature kept
        keep = torch.ones(V, len(rows), masks.shape[0], dtype=torch.bool)
        for i, (idx, p) in enumerate(zip(rows, per_row)):
            keep[: p.shape[0], i, idx] = p
        empty = torch.zeros(1, len(rows), masks.shape[0], dtype=torch.bool)
        v = sm.coalition_values(ctx, masks, torch.cat([keep, empty]), values).cpu().double()
        effects = []
        for i, (idx, p) in enumerate(zip(rows, per_row)):
            n = idx.numel()
            vals = v[: p.shape[0], i]
            if method == "shapley_taylor":
                effects.append(shapley_taylor(vals, n, max_order))
            else:
                dec = {"singleton_tol": options["singleton_tol"]} if "singleton_tol" in options else {}
                effects.append(spex_decode(designs[i], vals, **dec))
        feats = [[tuple(masks[f, i].nonzero().flatten().tolist()) for f in idx.tolist()] for i, idx in enumerate(rows)]
        labels = [["".join(strs[i][q] for q in pos) for pos in fs] for i, fs in enumerate(feats)]
        settings = {"method": method, "max_order": max_order, "removal": removal, "baseline": baseline if isinstance(baseline, (int, str, type(None))) else "tensor",
                    "seed": seed, "batch_size": batch_size, "segments": segments if isinstance(segments, (str, type(None))) else [list(s) for s in segments],
                    "n_evaluations": [p.shape[0] for p in per_row], **options}
        return Interactions(method, max_order, effects, feats, labels, v[V - 1].float(), v[V].float(), settings)


__all__ = ["attribute_interactions", "Interactions", "Interaction", "spex", "spex_design", "spex_decode", "shapley_taylor", "mobius"]
