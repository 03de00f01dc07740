"""Token-map claims: each method's top-``k`` tokens tested against one shared set of random rankings.

For each method, comprehensiveness, sufficiency and log-odds at top-``k`` (DeYoung et al.
2020; Shrikumar et al. 2017) are computed for its map; the null is the same three metrics for
seeded random rankings — which do not depend on the method, so they are drawn **once** and
shared by every method (issue 16). The primary test is comprehensiveness (the drop of
``p(ŷ)`` when the top-``k`` tokens are removed), one-sided; its minimum effect is
``min_effect`` × the mean clean ``p(ŷ)``. With ``adaptive``, random rankings are drawn in
rounds and drawing stops once no method's test can still become significant
(:func:`mechattr.validation.stats.decided_not_significant`) or every draw is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mechattr.faithfulness import (
    agreement,
    cascading_randomization,
    completeness,
    deletion_insertion,
    faithfulness,
)
from mechattr.faithfulness.metrics import random_scores, top_mask
from mechattr.inputs import Batch
from mechattr.validation.stats import ALPHA, bootstrap_ci, decided_not_significant, mc_pvalue
from mechattr.validation.verdicts import MIN_EXAMPLES, Claim, TestResult, compare

METRICS = (("comprehensiveness", 1), ("sufficiency", -1), ("log_odds", -1))


def attribute(model: Any, batch: Batch, target: Any, method: Any, kw: dict) -> Any:
    if callable(method):
        return method(model, batch.tokens, target)
    from mechattr.attribution.tokens import attribute_tokens

    return attribute_tokens(model, batch.tokens, target, method=method, attention_mask=batch.attention_mask, **kw)


def _attribute_steps(model: Any, batch: Batch, target: Any, method: Any, kw: dict, path_steps: int | None) -> tuple[Any, int | None]:
    """:func:`attribute`, first with ``path_steps`` steps for a path method (``run_token_claims``);
    returns the result and the steps it used (``None`` for a method without steps)."""
    import warnings as _w

    from mechattr.attribution.tokens import METHODS, _load_methods

    default = None
    if path_steps is not None and isinstance(method, str) and "n_steps" not in kw:
        _load_methods()
        spec = METHODS.get(method) if method in METHODS else None
        default = getattr(spec, "default_steps", None)
    if default is None or default <= path_steps:
        return attribute(model, batch, target, method, kw), default
    with _w.catch_warnings():
        _w.simplefilter("ignore")  # the trial's convergence warning: the check below decides
        res = attribute(model, batch, target, method, {**kw, "n_steps": path_steps})
    if getattr(res, "convergence_delta", None) is not None and completeness(res)["passes"]:
        return res, path_steps
    return attribute(model, batch, target, method, kw), default


def _scores(res: Any) -> Any:
    return getattr(res, "scores", res)


def run_token_claims(model: Any, batch: Batch, target: Any, named: dict[str, Any], rep: Any, steps: Any, *, akw: dict,
                     k: Any, removal: str, n_draws: int, curve_steps: int, curve_draws: int, source_positions: Any,
                     removable: torch.Tensor, min_effect: float, seed: int, batch_size: int | None, adaptive: bool,
                     round_size: int = 25, sanity_methods: Any = None, n_boot: int = 1000,
                     sanity_stages: Any = None, path_steps: int | None = None) -> dict[str, torch.Tensor]:
    """Fill ``rep`` (token maps, faithfulness, curves, agreement, sanity, token claims); returns the maps.

    ``path_steps``: path methods (a registered default ``n_steps``) first run with this many
    steps when the caller gave no ``n_steps``; a map that fails completeness
    (:func:`mechattr.faithfulness.completeness`: ``|δ| ≤ 1e-3 + 5 % |F(x) − F(x')|``) is
    recomputed at the method's default. The steps used are in ``rep.settings["path_steps"]``."""
    fkw = {"k": k, "removal": removal, "attention_mask": batch.attention_mask, "batch_size": batch_size}
    maps: dict[str, torch.Tensor] = {}
    results: dict[str, Any] = {}
    warnings: list[str] = []
    path_used: dict[str, int] = rep.settings.setdefault("path_steps", {})
    for name, m in named.items():
        steps.start(f"attribution: {name}")
        try:
            res, used = _attribute_steps(model, batch, target, m, akw, path_steps)
        except ImportError as err:
            steps.skip(f"attribution: {name}", f"attribute_tokens not available ({err})")
            continue
        if used is not None:
            path_used[name] = used
        maps[name] = torch.as_tensor(_scores(res)).detach().float().to(batch.tokens.device)
        for w in (getattr(res, "settings", None) or {}).get("warnings", []) if isinstance(getattr(res, "settings", None), dict) else []:
            if w not in warnings:
                warnings.append(w)
        if getattr(res, "convergence_delta", None) is not None:
            rep.completeness[name] = completeness(res)
        steps.stop()
        steps.start(f"faithfulness: {name}")
        results[name] = faithfulness(model, batch, target, maps[name], n_draws=0, seed=seed, **fkw)
        # random-ranking curves do not depend on the method: drawn with the first method only, shared
        shared = next(iter(rep.curves.values()), None)
        c = deletion_insertion(model, batch, target, maps[name], n_steps=curve_steps, n_draws=0 if shared else curve_draws,
                               removal=removal, seed=seed, attention_mask=batch.attention_mask, batch_size=batch_size)
        rep.curves[name] = {
            "fractions": c.fractions, "deletion_mean": c.deletion.mean(-1), "insertion_mean": c.insertion.mean(-1),
            "control_deletion_mean": None if c.control_deletion is None else c.control_deletion.mean((0, 2)),
            "control_insertion_mean": None if c.control_insertion is None else c.control_insertion.mean((0, 2)),
            "summary": c.summary()}
        if shared:
            rep.curves[name]["control_deletion_mean"] = shared["control_deletion_mean"]
            rep.curves[name]["control_insertion_mean"] = shared["control_insertion_mean"]
        rep.token_maps[name] = maps[name].cpu()
        steps.stop()
    if warnings:
        rep.settings.setdefault("warnings", [])
        rep.settings["warnings"] += [w for w in warnings if w not in rep.settings["warnings"]]
    if not maps:
        return maps
    steps.start("random rankings (shared by every method)")
    ctrl = _shared_controls(model, batch, target, maps, results, n_draws, seed, fkw, adaptive, round_size, min_effect)
    steps.stop()
    for name, f in results.items():
        f.control = ctrl
        n = batch.shape[0]
        entry = {"summary": f.summary(), "comprehensiveness": f.comprehensiveness, "sufficiency": f.sufficiency,
                 "log_odds": f.log_odds, "p_full": f.p_full, "n_top": f.settings["n_top"]}
        claim = Claim(f"tokens:{name}", "tokens", {"method": name, "k": k})
        me = min_effect * float(f.p_full.mean())
        comp = f.comprehensiveness.double().cpu()
        lo, hi = bootstrap_ci(comp, n_boot=n_boot, seed=seed) if n >= MIN_EXAMPLES else (None, None)
        cm = ctrl["comprehensiveness"].mean(-1).double().cpu() if ctrl else torch.zeros(0)
        t = TestResult("comprehensiveness", float(comp.mean()), float(torch.quantile(cm, 1 - ALPHA)) if cm.numel() else float("nan"),
                       int(cm.numel()), bool(cm.numel() and comp.mean() > torch.quantile(cm, 1 - ALPHA)), [float(x) for x in cm[:200]],
                       "one-sided: effect vs random rankings (top-k of uniform random scores)", lo, hi,
                       mc_pvalue(float(comp.mean()), cm) if cm.numel() else None, None, "random rankings", -1, me, True)
        claim.add(t)
        for metric, sign in METRICS[1:]:
            if ctrl:
                claim.add(compare(metric, float(getattr(f, metric).mean()), ctrl[metric].mean(-1), sign=sign))
        if source_positions is not None:
            hit, hc = _hit_rates(maps[name], removable, source_positions, max(20, cm.numel()), seed)
            entry.update(hit_rate=hit, hit_rate_control_mean=float(hc.mean()))
            claim.add(compare("ground-truth hit rate (top-1 token)", hit, hc))
        rep.faithfulness[name] = entry
        rep.claims.append(claim)
    if len(maps) > 1:
        steps.start("agreement")
        rep.agreement = agreement(model, batch, target, maps, k=k)
        steps.stop()
    sanity = [m for m in (list(maps)[:1] if sanity_methods is None else sanity_methods) if m in maps]
    for name in sanity:
        steps.start(f"sanity: {name}")
        fn = named[name]
        skw = {**akw, "n_steps": path_used[name]} if name in path_used else akw  # the steps its map used
        r = cascading_randomization(
            model, batch, target,
            lambda mm, tt, tg, fn=fn, skw=skw: _scores(attribute(mm, Batch(tt, batch.attention_mask), tg, fn, skw)),
            seed=seed, attention_mask=batch.attention_mask, base=maps[name], stages=sanity_stages)
        rep.sanity[name] = r.summary()
        steps.stop()
    rep.settings["sanity_methods"] = sanity
    return maps


def _shared_controls(model: Any, batch: Batch, target: Any, maps: dict, results: dict, n_draws: int, seed: int, fkw: dict,
                     adaptive: bool, round_size: int, min_effect: float) -> dict[str, torch.Tensor]:
    """``{metric: [draws, batch]}`` for random rankings, drawn in rounds (module docstring)."""
    first = next(iter(maps.values()))
    parts: list[dict[str, torch.Tensor]] = []
    drawn, r = 0, 0
    step = round_size if adaptive else n_draws
    while drawn < n_draws:
        d = min(step, n_draws - drawn)
        # each round has its own seed: rankings never repeat across rounds
        f = faithfulness(model, batch, target, first, n_draws=d, seed=seed + 1009 * r, **fkw)
        parts.append({k2: v.cpu() for k2, v in f.control.items()})
        drawn, r = drawn + d, r + 1
        cm = torch.cat([p["comprehensiveness"] for p in parts]).mean(-1)
        undecided = [n for n, fr in results.items()
                     if not decided_not_significant(int((cm >= float(fr.comprehensiveness.mean())).sum()), n_draws)]
        if not undecided:
            break
    return {k2: torch.cat([p[k2] for p in parts]) for k2 in parts[0]} if parts else {}


def _hit_rates(scores: torch.Tensor, removable: torch.Tensor, source_positions: Any, n_draws: int, seed: int) -> tuple[float, torch.Tensor]:
    """Fraction of examples whose top-1 removable token is a ground-truth source position,
    for ``scores`` and for ``n_draws`` random rankings."""
    sp = torch.as_tensor(source_positions).long().to(scores.device)
    if sp.ndim == 1:
        sp = sp[:, None]
    if sp.shape[0] != scores.shape[0]:
        raise ValueError(f"source_positions has {sp.shape[0]} rows but tokens have {scores.shape[0]}")
    one = torch.ones(scores.shape[0], dtype=torch.long, device=scores.device)

    def rate(s: torch.Tensor) -> float:
        top = top_mask(s, removable, one).float().argmax(-1)
        return float((sp == top[:, None]).any(-1).float().mean())

    ctrl = torch.tensor([rate(r) for r in random_scores(tuple(scores.shape), seed + 2, n_draws, scores.device)])
    return rate(scores), ctrl


Progress = Callable[[str], None]
