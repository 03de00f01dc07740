"""Coalition token-attribution methods: Shapley value sampling, KernelSHAP, LIME, exact Shapley.

A *feature* is a real, non-excluded token, or one of the user's ``segments`` (words or
spans; they must not overlap and must cover every such token). A *coalition* keeps some
features and removes the rest: removed tokens get the ``baseline`` embedding at
``hook_embed`` (default: the zero embedding), or, with ``removal=``, one of the operators of
:mod:`mechattr.faithfulness.removal` (``zero``, ``pad``, ``mask``, ``delete``). Every
coalition of every example is one variant: all are stacked along the batch and run in
chunks of ``batch_size`` rows (one forward per chunk). Random draws: each example draws
from its own ``torch.Generator`` seeded with ``seed`` (default 0), in the order Captum draws
from torch's global generator, so an example's scores do not depend on its batch mates and
``torch.manual_seed(seed)`` before Captum's call on that example reproduces our samples. Scores are per feature; with ``segments`` a token gets
its segment's score divided by the segment's length (the span score is the segment's own).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.paths import evaluate_at_hook
from mechattr.attribution.tokens import Ctx, MethodOutput, register

MAX_EXACT = 12
INF_WEIGHT = 1e6  # Captum KernelShap's weight for the all-kept and all-removed samples


def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
    return v


def _gen(ctx: Ctx) -> torch.Generator:
    return torch.Generator().manual_seed(0 if ctx.seed is None else int(ctx.seed))


def features(ctx: Ctx) -> tuple[Tensor, list[Tensor]]:
    """Feature masks ``[F, batch, pos]`` (bool) and, per row, the indices of its features.

    Tokens: feature ``f`` of row ``i`` is its ``f``-th attributable token. Segments: feature
    ``f`` is segment ``f`` (rows list the segments holding an attributable token).
    """
    allowed = ctx.real & ~ctx.exclude
    if ctx.segments is None:
        n = allowed.sum(-1)
        F = max(int(n.max()), 1)
        masks = torch.zeros(F, *allowed.shape, dtype=torch.bool, device=allowed.device)
        rows = []
        for i in range(allowed.shape[0]):
            pos = allowed[i].nonzero().flatten()
            masks[torch.arange(pos.numel(), device=pos.device), i, pos] = True
            rows.append(torch.arange(pos.numel()))
        return masks, rows
    seg = ctx.segments.to(allowed.device)
    count = seg.long().sum(0)
    if bool((count > 1).any()):
        i, p = (count > 1).nonzero()[0].tolist()
        raise ValueError(f"segments overlap: position {p} of row {i} is in {int(count[i, p])} segments; segments must be disjoint")
    left = allowed & (count == 0)
    if bool(left.any()):
        i, p = left.nonzero()[0].tolist()
        raise ValueError(f"segments leave token {p} of row {i} out; every real, non-excluded token must be in one segment "
                         f"(exclude it with exclude_tokens, or add a span)")
    masks = seg & allowed[None]
    return masks, [masks[:, i].any(-1).nonzero().flatten().cpu() for i in range(allowed.shape[0])]


def removal_fn(ctx: Ctx, removal: Any = None, replacement_id: int | None = None) -> tuple[Any, Tensor]:
    """``(values, replacement)``: ``values(removed [V, batch, pos]) -> [V, batch]`` evaluates the
    target with those positions removed; ``replacement [batch, pos, d_model]`` is what a removed
    token's embedding becomes (zero for ``delete``; used by LIME's similarity kernel)."""
    if removal is None:
        base = ctx.baseline(1)
        if base.shape[0] != 1:
            raise ValueError("coalition methods take a single baseline (not a distribution); pass one baseline or removal=")
        base = base[0].to(ctx.embeds.dtype)

        def values(removed: Tensor) -> Tensor:
            def make(x: Tensor, v: Tensor, e: Tensor) -> Tensor:
                return torch.where(removed[v, e][..., None], base[e], x)

            return evaluate_at_hook(ctx.model, ctx.batch, ctx.target, "hook_embed", make, removed.shape[0], batch_size=ctx.batch_size)

        return values, base
    from mechattr.faithfulness.removal import (
        Removal,
        parse_removal,
        perturbed_values,
        replacement_embedding,
    )
    from mechattr.targets import Target

    op = parse_removal(removal)
    if ctx.baseline_spec is not None:
        raise ValueError(f"pass baseline= or removal=, not both (got baseline={ctx.baseline_spec!r}, removal={removal!r})")
    if not isinstance(ctx.target, Target):
        raise ValueError("removal= needs a target built by mechattr.targets (it is re-indexed per variant); "
                         "with a plain callable use baseline= instead")
    rep = replacement_embedding(ctx.model, op, replacement_id)
    base = torch.zeros_like(ctx.embeds) if rep is None else rep.to(ctx.embeds).expand_as(ctx.embeds)

    def values(removed: Tensor) -> Tensor:
        with torch.no_grad():
            return perturbed_values(ctx.model, ctx.batch, ctx.target, ~removed, op, batch_size=ctx.batch_size,
                                    replacement_id=replacement_id if op in (Removal.PAD, Removal.MASK) else None)

    return values, base


def coalition_values(ctx: Ctx, masks: Tensor, keep: Tensor, values: Any) -> Tensor:
    """Target on coalitions ``keep [V, batch, F]`` (True = feature kept): ``[V, batch]``."""
    removed = torch.einsum("vbf,fbp->vbp", (~keep).float().to(masks.device), masks.float()) > 0
    return values(removed).float()


def to_output(ctx: Ctx, masks: Tensor, phi: Tensor, f_in: Tensor | None, f_0: Tensor | None, *, efficient: bool, extras: dict) -> MethodOutput:
    """Per-feature scores ``phi [batch, F]`` → a :class:`MethodOutput` (token scores; span scores)."""
    m = masks.float()
    size = m.sum(-1).T.clamp_min(1)  # [batch, F]
    attr = torch.einsum("bf,fbp->bp", phi / size, m)
    delta = phi.sum(-1) - (f_in - f_0) if efficient and f_in is not None and f_0 is not None else None
    return MethodOutput(attr, delta, f_in, f_0, extras, windows=phi if ctx.segments is not None else None)


@register("shapley_sampling", per_dim=False, cite="Štrumbelj & Kononenko 2010; Castro et al. 2009")
def shapley_sampling(ctx: Ctx, n_samples: int = 25, removal: Any = None, replacement_id: int | None = None) -> MethodOutput:
    """Shapley value sampling (Castro et al. 2009; Štrumbelj & Kononenko 2010), as Captum's ``ShapleyValueSampling``.

    For each of ``n_samples`` random permutations π of the M features, add features to the
    empty coalition in π's order; ``φ_j`` = mean over permutations of ``v(S_π,j ∪ {j}) −
    v(S_π,j)``. Each permutation's contributions sum to ``v(all) − v(∅)`` exactly, so
    ``convergence_delta`` (efficiency) is 0 up to float error. Cost: ``1 + n_samples · M``
    variants per example. Draws: ``torch.randperm(M)`` per permutation.
    """
    _check_int("n_samples", n_samples)
    masks, rows = features(ctx)
    values, _ = removal_fn(ctx, removal, replacement_id)
    b, F = len(rows), masks.shape[0]
    keep = torch.ones(1 + n_samples * F, b, F, dtype=torch.bool)
    keep[0] = False
    perms = []
    for i, idx in enumerate(rows):
        M = idx.numel()
        g = _gen(ctx)
        keep[:, i, idx] = True
        keep[0, i] = False
        pr = [torch.randperm(M, generator=g) for _ in range(n_samples)]
        perms.append(pr)
        for s, p in enumerate(pr):
            for t in range(M):  # variant 1 + s·F + t keeps the first t + 1 features of p
                keep[1 + s * F + t, i, idx] = False
                keep[1 + s * F + t, i, idx[p[: t + 1]]] = True
    v = coalition_values(ctx, masks, keep, values).cpu()
    phi = torch.zeros(b, F)
    f_in = torch.zeros(b)
    for i, idx in enumerate(rows):
        M = idx.numel()
        f_in[i] = v[M, i]  # the last step of the first permutation keeps every feature
        for s, p in enumerate(perms[i]):
            seq = torch.cat([v[:1, i], v[1 + s * F : 1 + s * F + M, i]])
            phi[i, idx[p]] += (seq[1:] - seq[:-1]) / n_samples
    return to_output(ctx, masks, phi.to(ctx.embeds.device), f_in.to(ctx.embeds.device), v[0].to(ctx.embeds.device), efficient=True,
                     extras={"n_evaluations": torch.tensor([1 + n_samples * r.numel() for r in rows])})


def _shapley_weights(M: int) -> Tensor:
    """``w[s] = s! (M − s − 1)! / M!`` for coalition sizes ``s = 0..M−1``."""
    return torch.tensor([math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) for s in range(M)], dtype=torch.float64)


def exact_from_values(v: Tensor, M: int) -> Tensor:
    """Exact Shapley values ``[M]`` from ``v [2^M]`` indexed by bitmask (bit j = feature j kept)."""
    if M == 0:
        return torch.zeros(0, dtype=torch.float64)
    idx = torch.arange(2**M)
    size = torch.tensor([bin(s).count("1") for s in range(2**M)])
    w = _shapley_weights(M)
    phi = torch.zeros(M, dtype=torch.float64)
    v = v.double()
    for j in range(M):
        without = idx[(idx >> j) & 1 == 0]
        phi[j] = (w[size[without]] * (v[without | (1 << j)] - v[without])).sum()
    return phi


@register("exact_shapley", per_dim=False, cite="Shapley 1953")
def exact_shapley(ctx: Ctx, removal: Any = None, replacement_id: int | None = None) -> MethodOutput:
    """Exact Shapley values by enumerating all ``2^M`` coalitions (Shapley 1953), M ≤ 12.

    ``φ_j = Σ_{S ⊆ N∖j} |S|!(M−|S|−1)!/M! · (v(S ∪ j) − v(S))``; efficiency holds exactly.
    More than 12 features per example → ``ValueError`` (use ``shapley_sampling`` or segments).
    """
    masks, rows = features(ctx)
    big = [(i, r.numel()) for i, r in enumerate(rows) if r.numel() > MAX_EXACT]
    if big:
        raise ValueError(f"exact_shapley enumerates 2^M coalitions and allows at most {MAX_EXACT} features; rows "
                         f"{[i for i, _ in big[:5]]} have {[n for _, n in big[:5]]}; use shapley_sampling, or segments='words'")
    values, _ = removal_fn(ctx, removal, replacement_id)
    b, F = len(rows), masks.shape[0]
    Mmax = max(r.numel() for r in rows)
    bits = (torch.arange(2**Mmax)[:, None] >> torch.arange(Mmax)[None]) & 1  # [2^Mmax, Mmax]
    keep = torch.zeros(2**Mmax, b, F, dtype=torch.bool)
    for i, idx in enumerate(rows):
        keep[:, i, idx] = bits[:, : idx.numel()].bool()
    v = coalition_values(ctx, masks, keep, values).cpu()
    phi = torch.zeros(b, F)
    f_in = torch.zeros(b)
    for i, idx in enumerate(rows):
        M = idx.numel()
        phi[i, idx] = exact_from_values(v[: 2**M, i], M).float()
        f_in[i] = v[2**M - 1, i]
    dev = ctx.embeds.device
    return to_output(ctx, masks, phi.to(dev), f_in.to(dev), v[0].to(dev), efficient=True,
                     extras={"n_evaluations": torch.tensor([2 ** r.numel() for r in rows])})


def weighted_linear_fit(X: Tensor, y: Tensor, w: Tensor, alpha: float = 0.0, max_iter: int = 1000, tol: float = 1e-10) -> Tensor:
    """Coefficients (no intercept) of the weighted linear model with an intercept, float64.

    ``alpha = 0``: weighted least squares, minimum-norm solution (as scikit-learn's
    ``LinearRegression(sample_weight=w)``). ``alpha > 0``: weighted Lasso, minimising
    ``Σ w_i (y_i − b − x_iβ)² / (2 Σ w) + α ‖β‖₁`` (scikit-learn's ``Lasso`` objective with
    ``sample_weight``) by cyclic coordinate descent. Shapes: ``X [n, M]``, ``y, w [n]`` → ``[M]``.
    """
    X, y, w = X.double(), y.double(), w.double()
    wn = w / w.sum()
    Xc = X - (wn[:, None] * X).sum(0)
    yc = y - (wn * y).sum()
    if alpha == 0:
        s = wn.sqrt()
        return torch.linalg.lstsq(Xc * s[:, None], (yc * s)[:, None], driver="gelsd").solution[:, 0]
    # covariance-form coordinate descent on G = Xcᵀ W Xc, c = Xcᵀ W yc (python floats: M is small)
    G = (Xc.T * wn) @ Xc
    c = ((Xc.T * wn) @ yc).tolist()
    Gl = G.tolist()
    M = X.shape[1]
    beta = [0.0] * M
    Gb = [0.0] * M  # G @ beta
    for _ in range(max_iter):
        biggest = 0.0
        for j in range(M):
            z = Gl[j][j]
            if z <= 0.0:
                continue
            rho = c[j] - Gb[j] + z * beta[j]
            new = (rho - alpha if rho > alpha else rho + alpha if rho < -alpha else 0.0) / z
            d = new - beta[j]
            if d != 0.0:
                beta[j] = new
                Gj = Gl[j]
                for k in range(M):
                    Gb[k] += Gj[k] * d
                biggest = max(biggest, abs(d))
        if biggest < tol:
            break
    return torch.tensor(beta, dtype=torch.float64)


def _fit_rows(ctx: Ctx, masks: Tensor, rows: list[Tensor], samples: list[Tensor], weights: list[Tensor], values: Any, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Evaluate each row's interpretable samples ``[n_i, M_i]``, fit, return ``(phi, v_all, v)``."""
    b, F = len(rows), masks.shape[0]
    V = max(s.shape[0] for s in samples)
    keep = torch.ones(V + 1, b, F, dtype=torch.bool)  # variant V: everything kept (f(x))
    for i, (idx, s) in enumerate(zip(rows, samples)):
        keep[: s.shape[0], i] = False
        keep[: s.shape[0], i, idx] = s.bool()
    v = coalition_values(ctx, masks, keep, values).cpu()
    phi = torch.zeros(b, F)
    for i, (idx, s) in enumerate(zip(rows, samples)):
        if idx.numel():
            phi[i, idx] = weighted_linear_fit(s.float(), v[: s.shape[0], i], weights[i], alpha).float()
    return phi, v[V], v


@register("kernel_shap", per_dim=False, cite="Lundberg & Lee 2017")
def kernel_shap(ctx: Ctx, n_samples: int = 25, removal: Any = None, replacement_id: int | None = None) -> MethodOutput:
    """KernelSHAP (Lundberg & Lee 2017), as Captum's ``KernelShap``.

    Samples: the all-kept and the all-removed coalition (weight 1e6, standing in for the
    kernel's infinite weight), then ``n_samples − 2`` coalitions drawn from the Shapley kernel:
    size ``k ∈ 1..M−1`` with probability ∝ ``(M−1)/(k(M−k))``, then ``k`` features uniformly
    (the top ``k`` of ``torch.randn(1, M)``), each weight 1; φ = coefficients of a weighted
    linear regression with intercept (minimum-norm least squares). Efficiency holds only
    approximately (``extras["efficiency_gap"]``). M = 1: φ = v(all) − v(∅).
    """
    _check_int("n_samples", n_samples)
    masks, rows = features(ctx)
    values, _ = removal_fn(ctx, removal, replacement_id)
    samples, weights = [], []
    for idx in rows:
        M = idx.numel()
        g = _gen(ctx)
        s = [torch.ones(M, dtype=torch.long), torch.zeros(M, dtype=torch.long)][:n_samples]
        if M >= 2:
            k = torch.arange(M, dtype=torch.float)
            probs = torch.tensor(float(M - 1)) / (k * (M - k))
            probs[0] = 0.0
            probs = probs / probs.sum(-1, keepdim=True)
            for _ in range(n_samples - 2):
                n_sel = int(torch.multinomial(probs[None], 1, True, generator=g))
                r = torch.randn(1, M, generator=g)
                thr = torch.kthvalue(r, M - n_sel).values.item()
                s.append((r[0] > thr).long())
        S = torch.stack(s) if M else torch.zeros(len(s), 0, dtype=torch.long)
        samples.append(S)
        full = (S.sum(-1) == 0) | (S.sum(-1) == M)
        weights.append(torch.where(full, INF_WEIGHT, 1.0).double())
    phi, f_in, v = _fit_rows(ctx, masks, rows, samples, weights, values, 0.0)
    f_0 = v[1] if n_samples >= 2 else None  # M = 1: the fit through v(∅) and v(all) is v(all) − v(∅)
    dev = ctx.embeds.device
    extras = {"n_evaluations": torch.tensor([n_samples] * len(rows))}
    if f_0 is not None:
        extras["efficiency_gap"] = phi.sum(-1) - (f_in - f_0)
    return to_output(ctx, masks, phi.to(dev), f_in.to(dev), None if f_0 is None else f_0.to(dev), efficient=False, extras=extras)


@register("lime", per_dim=False, cite="Ribeiro et al. 2016")
def lime(ctx: Ctx, n_samples: int = 25, alpha: float = 0.01, kernel_width: float = 1.0, kernel_on: str = "features",
         removal: Any = None, replacement_id: int | None = None) -> MethodOutput:
    """LIME (Ribeiro et al. 2016), with Captum ``Lime``'s defaults.

    ``n_samples`` coalitions, each feature kept with probability 1/2 (``torch.bernoulli``);
    sample weight ``exp(−d² / (2 · kernel_width²))`` with ``d`` a cosine distance: with
    ``kernel_on="features"`` (default) between the all-kept 0/1 vector and the coalition's,
    ``d = 1 − √(k/M)`` for k of M kept (the representation LIME's text explainer and Captum's
    ``LLMAttribution(Lime)`` use); with ``"embeddings"`` between the row's token embeddings
    (``hook_embed``, real positions, flattened) and the perturbed ones (Captum ``Lime`` on an
    embedding input). The interpretable model is a weighted Lasso with intercept,
    penalty ``alpha`` (Captum's default ``SkLearnLasso(alpha=0.01)``; fitted here by coordinate
    descent, no scikit-learn needed; ``alpha=0`` gives weighted least squares). φ = its
    coefficients (no efficiency property).
    """
    _check_int("n_samples", n_samples)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number ≥ 0, got {alpha!r}")
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or not kernel_width > 0:
        raise ValueError(f"kernel_width must be a number > 0, got {kernel_width!r}")
    if kernel_on not in ("features", "embeddings"):
        raise ValueError(f"kernel_on must be 'features' or 'embeddings', got {kernel_on!r}")
    masks, rows = features(ctx)
    values, base = removal_fn(ctx, removal, replacement_id)
    samples, weights = [], []
    for i, idx in enumerate(rows):
        M = idx.numel()
        g = _gen(ctx)
        S = torch.stack([torch.bernoulli(torch.full((1, M), 0.5), generator=g)[0].long() for _ in range(n_samples)])
        if kernel_on == "features":
            cos = (S.sum(-1).double() / max(M, 1)).sqrt()
        else:
            real = ctx.real[i]
            x = ctx.embeds[i][real].float().cpu()
            fm = masks[idx][:, i][:, real].cpu()  # [M, n_real]
            removed = (~S.bool()).float() @ fm.float() > 0  # [n, n_real]
            xp = torch.where(removed[..., None], base[i][real].float().cpu()[None], x[None])
            cos = torch.nn.functional.cosine_similarity(x.flatten()[None], xp.flatten(1), dim=1)
        d = 1 - cos
        samples.append(S)
        weights.append(torch.exp(-(d.double() ** 2) / (2 * kernel_width**2)))
    phi, f_in, _ = _fit_rows(ctx, masks, rows, samples, weights, values, float(alpha))
    dev = ctx.embeds.device
    return to_output(ctx, masks, phi.to(dev), f_in.to(dev), None, efficient=False,
                     extras={"n_evaluations": torch.tensor([n_samples] * len(rows))})
