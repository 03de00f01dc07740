"""Sanity checks (Adebayo et al. 2018), cross-method agreement, completeness of path methods.

- :func:`cascading_randomization`: on a deep copy of the model (never the user's), re-draw
  the parameters stage by stage from the top down (unembedding, then blocks ``L-1 … 0``,
  then the embeddings); at each stage recompute the attribution map and report the
  Spearman rank correlation with the trained model's map, per example. A method whose map
  stays correlated with the trained one after the model is randomized explains the input
  or the architecture, not what the model learned.
- :func:`agreement`: pairwise Spearman rank correlation and top-k overlap
  ``|top_k(a) ∩ top_k(b)| / k`` between methods, over removable positions.
- :func:`completeness`: for path methods, ``Σ_pos scores − (F(x) − F(x'))`` (the
  result's ``convergence_delta``, Sundararajan et al. 2017) against a tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import rankdata
from torch import Tensor

from mechattr.faithfulness.metrics import check_k, check_scores, n_top, top_mask
from mechattr.faithfulness.removal import removable_mask
from mechattr.inputs import prepare_tokens
from mechattr.model import model_guard
from mechattr.runtime.clone import deepcopy_model


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties; NaN when one is constant)."""
    if a.numel() != b.numel() or a.numel() < 2:
        return float("nan")
    ra = torch.as_tensor(rankdata(a.detach().cpu().double().numpy()))
    rb = torch.as_tensor(rankdata(b.detach().cpu().double().numpy()))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def rowwise_spearman(a: Tensor, b: Tensor, keep: Tensor) -> Tensor:
    """``[batch]`` Spearman of rows of ``a`` and ``b`` over the positions where ``keep``."""
    return torch.tensor([spearman(x[m], y[m]) for x, y, m in zip(a, b, keep.bool())])


# --------------------------------------------------------------------------- Adebayo
def _stages(model: Any) -> list[tuple[str, list[str]]]:
    """Parameter names randomized at each cascading stage, top layer first.

    Stages are found by module (``unembed``/``ln_final``, ``blocks[L]``, ``embed``/``pos_embed``)
    and mapped to parameter names by identity, so a TransformerBridge (whose parameter
    names are its HF module paths) cascades the same way as a HookedTransformer.
    """
    name_of = {id(p): n for n, p in model.named_parameters()}

    def names(*modules: Any) -> list[str]:
        return [name_of[id(p)] for m in modules if m is not None for p in m.parameters() if id(p) in name_of]

    st = [("unembed", names(getattr(model, "unembed", None), getattr(model, "ln_final", None)))]
    for layer in reversed(range(model.cfg.n_layers)):
        st.append((f"blocks.{layer}", names(model.blocks[layer])))
    st.append(("embed", names(getattr(model, "embed", None), getattr(model, "pos_embed", None))))
    return [(s, ns) for s, ns in st if ns]


def stage_names(model: Any) -> list[str]:
    """The cascade's stage names for ``model``, top first (``unembed``, ``blocks.L-1`` … ``blocks.0``, ``embed``)."""
    return [s for s, _ in _stages(model)]


def _pick_stages(all_names: list[str], stages: Any) -> set[str]:
    if stages is None:
        return set(all_names)
    if isinstance(stages, int) and not isinstance(stages, bool):
        if stages < 2:
            raise ValueError(f"stages={stages!r}: an int must be ≥ 2 (the first and the fully randomized stage); allowed: "
                             f"2 … {len(all_names)}, a list of stage names, or None (every stage)")
        n = min(stages, len(all_names))
        idx = {round(i * (len(all_names) - 1) / (n - 1)) for i in range(n)}
        return {all_names[i] for i in idx}
    if isinstance(stages, str) or not isinstance(stages, Sequence):
        raise ValueError(f"stages must be None, an int ≥ 2 or a list of stage names; got {stages!r}")
    bad = [s for s in stages if s not in all_names]
    if bad or not stages:
        raise ValueError(f"unknown stage(s) {bad or stages!r}; allowed: {all_names}")
    return set(stages)


def _redraw(p: torch.nn.Parameter, g: torch.Generator) -> None:
    """Re-draw a parameter from a normal with its own mean and std (std 0.02 if constant)."""
    x = p.detach()
    std = float(x.float().std()) if x.numel() > 1 else 0.0
    std = std if std > 0 else 0.02
    new = torch.randn(x.shape, generator=g) * std + float(x.float().mean())
    p.data.copy_(new.to(p.device, p.dtype))


@dataclass
class SanityResult:
    """Cascading randomization: ``stages`` (names, top first) and ``spearman`` /
    ``spearman_abs`` ``[n_stages, batch]`` between the trained map and the map after
    randomizing every stage up to and including that one."""

    stages: list[str]
    spearman: Tensor
    spearman_abs: Tensor
    maps: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self, threshold: float = 0.5) -> dict[str, Any]:
        """Batch-mean correlation per stage; ``passes``: the fully randomized model's map
        has mean |Spearman| below ``threshold`` with the trained one."""
        mean = [float(torch.nanmean(r)) for r in self.spearman]
        mean_abs = [float(torch.nanmean(r)) for r in self.spearman_abs]
        final = mean[-1]
        return {"stages": self.stages, "spearman": mean, "spearman_abs": mean_abs,
                "threshold": threshold, "passes": bool(abs(final) < threshold) if final == final else False}


def cascading_randomization(
    model: Any,
    tokens: Any,
    target: Any,
    fn: Any,
    *,
    seed: int = 0,
    attention_mask: Any = None,
    bos: Any = "auto",
    base: Any = None,
    stages: Any = None,
) -> SanityResult:
    """Adebayo et al. 2018 model-parameter randomization test, cascading from the top.

    ``fn(model, tokens, target)`` returns ``[batch, pos]`` scores (or a result with
    ``.scores``). Stage ``s`` randomizes (on a deep copy) the parameters of every stage up
    to ``s`` (unembed, blocks top→bottom, embed); Spearman over removable positions.

    ``base``: the trained model's map when the caller already has it (``[batch, pos]``;
    skips one call of ``fn``). ``stages``: evaluate ``fn`` only after these stages — an int
    ``n ≥ 2`` (``n`` stages evenly spaced from the first to the last, both included) or a
    sequence of stage names (:func:`stage_names`); ``None``: every stage. The cascade still
    re-draws every stage in order with the same generator, so an evaluated stage's map is
    exactly the full run's map at that stage; only the evaluations in between are skipped.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(model, tokens, target) -> scores, got {type(fn).__name__}")
    with model_guard(model):
        batch = prepare_tokens(model, tokens, attention_mask)
        keep = removable_mask(model, batch, target, bos=bos)
        what = "fn(model, tokens, target)" if base is None else "base"
        base = check_scores(fn(model, batch.tokens, target) if base is None else base, batch, keep, what)
        work = deepcopy_model(model)
    g = torch.Generator().manual_seed(int(seed))
    names, sp, sp_abs, maps = [], [], [], [base.cpu()]
    params = dict(work.named_parameters())
    cascade = _stages(work)
    wanted = _pick_stages([s for s, _ in cascade], stages)
    with model_guard(work):
        for stage, pnames in cascade:
            for n in pnames:
                _redraw(params[n], g)
            if stage not in wanted:
                continue
            s = check_scores(fn(work, batch.tokens, target), batch, keep, "fn(model, tokens, target)")
            names.append(stage)
            maps.append(s.cpu())
            sp.append(rowwise_spearman(base, s, keep))
            sp_abs.append(rowwise_spearman(base.abs(), s.abs(), keep))
    del work
    return SanityResult(names, torch.stack(sp), torch.stack(sp_abs), torch.stack(maps), {"seed": seed})


# --------------------------------------------------------------------------- agreement
def agreement(
    model: Any,
    tokens: Any,
    target: Any,
    maps: dict[str, Any],
    *,
    k: float | int = 0.2,
    attention_mask: Any = None,
    bos: Any = "auto",
) -> dict[str, Any]:
    """Pairwise agreement of attribution maps ``{method: [batch, pos]}`` over removable positions.

    Returns ``methods``, ``spearman`` and ``top_k_overlap`` as ``[m, m]`` nested lists of
    batch means; overlap is ``|top(a) ∩ top(b)| / n_top`` with ``n_top = max(1, ceil(k·n))``.
    """
    k = check_k(k)
    if not isinstance(maps, dict) or len(maps) < 1:
        raise ValueError("maps must be a non-empty dict {method name: [batch, pos] scores}")
    with model_guard(model):
        batch = prepare_tokens(model, tokens, attention_mask)
        keep = removable_mask(model, batch, target, bos=bos)
        names = list(maps)
        s = {m: check_scores(maps[m], batch, keep, f"maps[{m!r}]") for m in names}
        n = n_top(keep, k)
        tops = {m: top_mask(s[m], keep, n) for m in names}
        sp = [[float(torch.nanmean(rowwise_spearman(s[a], s[b], keep))) for b in names] for a in names]
        ov = [[float(((tops[a] & tops[b]).sum(-1).float() / n).mean()) for b in names] for a in names]
    return {"methods": names, "k": k, "spearman": sp, "top_k_overlap": ov}


# --------------------------------------------------------------------------- completeness
def completeness(result: Any, *, rtol: float = 0.05, atol: float = 1e-3) -> dict[str, Any]:
    """Completeness of a path attribution: ``|δ| ≤ atol + rtol · |F(x) − F(x')|``
    (:func:`mechattr.convergence.convergence_report`; ``F(x) − F(x') = Σ scores − δ``).

    ``result`` has ``.scores [batch, pos]`` and ``.convergence_delta [batch]``
    (``Σ scores − (F(x) − F(x'))``). Raises ``ValueError`` for non-path results.
    """
    delta = getattr(result, "convergence_delta", None)
    scores = getattr(result, "scores", None)
    if delta is None or scores is None:
        raise ValueError(
            "completeness needs a path-method result with .scores and .convergence_delta "
            "(ig, ig_clipped, expected_gradients, rpi, ps_ig); this result has none"
        )
    from mechattr.convergence import convergence_report

    d = torch.as_tensor(delta).detach().float().cpu().reshape(-1)
    total = torch.as_tensor(scores).detach().float().cpu().flatten(1).sum(-1).reshape(-1)
    rep = convergence_report(d, total - d, "completeness", rtol=rtol, atol=atol, warn=False)
    return {"delta": d.tolist(), "sum_scores": total.tolist(), **rep, "passes": rep["ok"]}


def methods_table(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> Any:
    """A labelled ``pandas.DataFrame`` of a method × method matrix."""
    import pandas as pd

    return pd.DataFrame(matrix, index=list(names), columns=list(names))
