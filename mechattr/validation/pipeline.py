"""``validate()``: attribution → faithfulness vs random controls → heads → interventions → verdicts.

Steps (each timed; a step whose dependency is missing is recorded in ``skipped`` with the
reason, never replaced by a made-up number):

1. token attribution with every method (:func:`mechattr.attribute_tokens`, or your callables);
2. faithfulness of each map at top-``top_k`` (comp/suff/LO, DeYoung et al. 2020; Shrikumar et
   al. 2017) and deletion/insertion curves, each against seeded random rankings; ground-truth
   hit rate when ``source_positions`` are given; completeness of path methods; cross-method
   agreement; cascading-randomization sanity check (Adebayo et al. 2018);
3. head attribution (AtP, :func:`mechattr.attribute_heads`) → the ``top_heads`` heads;
4. each claimed head tested by ablation (zero, mean, resample; :func:`mechattr.ablation_scan`)
   and by path patching to the logits (:func:`mechattr.path_patch`) against the same
   intervention on the other (control) heads;
5. token→head links: link strength ``A[q, s] · ‖v_s W_O^h‖`` from each example's top token
   ``s`` (primary method) to the target position ``q``; the ``top_links`` strongest heads are
   tested by removing that edge only (:func:`~mechattr.validation.claims.edge_effects`)
   against removing the edge from random other source tokens;
6. verdicts (:mod:`mechattr.validation.claims`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechattr.components import Head, all_heads
from mechattr.faithfulness import (
    agreement,
    cascading_randomization,
    completeness,
    deletion_insertion,
    faithfulness,
)
from mechattr.faithfulness.metrics import check_count, check_k, random_scores, top_mask
from mechattr.faithfulness.removal import removable_mask, target_read_positions
from mechattr.inputs import Batch, prepare_pair, prepare_tokens
from mechattr.io import to_jsonable, versions
from mechattr.model import model_guard
from mechattr.runtime.arch import arch
from mechattr.targets import Target, run_target
from mechattr.validation.claims import Claim, compare, edge_effects, link_strength
from mechattr.validation.heads import SetAblation, control_sets, parse_head_claims
from mechattr.validation.report import ValidationReport

DEFAULT_METHODS = ("ig", "input_x_gradient", "saliency", "attention")
ABLATION_MODES = ("zero", "mean", "resample")


def str_tokens(model: Any, tokens: torch.Tensor) -> list[list[str]]:
    """Token strings per row (the ids as strings when the model has no tokenizer)."""
    if getattr(model, "tokenizer", None) is None:
        return [[str(int(t)) for t in row] for row in tokens]
    return [[str(s) for s in model.to_str_tokens(row)] for row in tokens]


def permuted_corruption(batch: Batch, removable: torch.Tensor, seed: int) -> torch.Tensor:
    """Default corrupted input: each row's removable tokens shuffled (seeded permutation)."""
    g = torch.Generator().manual_seed(int(seed) + 1)
    out = batch.tokens.clone()
    for r in range(out.shape[0]):
        idx = removable[r].nonzero().flatten()
        out[r, idx] = out[r, idx[torch.randperm(len(idx), generator=g).to(idx.device)]]
    return out


class _Steps:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress, self.timings, self.skipped, self._t = progress, {}, [], None

    def start(self, name: str) -> None:
        if self.progress is not None:
            self.progress(name)
        self._name, self._t = name, time.perf_counter()

    def stop(self) -> None:
        self.timings[self._name] = round(time.perf_counter() - self._t, 3)

    def skip(self, step: str, reason: str) -> None:
        self.skipped.append({"step": step, "reason": reason})


def _attribute(model: Any, batch: Batch, target: Any, method: Any, kw: dict) -> Any:
    if callable(method):
        return method(model, batch.tokens, target)
    from mechattr.attribution.tokens import attribute_tokens

    return attribute_tokens(model, batch.tokens, target, method=method, attention_mask=batch.attention_mask, **kw)


def _scores(res: Any) -> Any:
    return getattr(res, "scores", res)


def validate(
    model: Any,
    tokens: Any,
    target: Target,
    *,
    corrupted: Any = None,
    methods: Sequence[Any] | dict[str, Any] = DEFAULT_METHODS,
    top_k: float | int = 0.2,
    top_heads: int = 3,
    top_links: int = 2,
    claims: Any = (),
    max_head_controls: int = 100,
    source_positions: Any = None,
    removal: str = "zero",
    n_draws: int = 20,
    curve_steps: int = 10,
    curve_draws: int = 3,
    ablation_modes: Sequence[str] = ABLATION_MODES,
    sanity_methods: Sequence[str] | None = None,
    n_steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    attention_mask: Any = None,
    model_name: str | None = None,
    circuit: bool | dict[str, Any] = False,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Turn attributions into claims and test them with interventions (see the module docstring).

    ``target``: a :class:`mechattr.targets.Target`. ``methods``: names for
    :func:`mechattr.attribute_tokens` or ``{name: fn(model, tokens, target) -> [batch, pos]}``.
    ``claims``: head claims to test besides the ``top_heads`` found by AtP: heads or head
    groups, optionally named (``{"induction heads": ["L1H0", "L1H1"], "wrong": "L0H0"}``);
    each is tested against random head sets of its size (:mod:`mechattr.validation.heads`). ``source_positions``
    ``[batch, k]`` (``-1`` padded): ground-truth positions for the hit rate. ``sanity_methods``:
    methods for the cascading-randomization check (default: the first method; ``()``: none).
    ``circuit``: ``True`` or options for :func:`mechattr.report.circuit.circuit_report`
    (``method``, ``selection``, ``n``, ``tau``, …) adds the circuit section (edge scores, a
    circuit, its faithfulness and the tokens its input edges carry) on clean vs ``corrupted``.
    """
    if not isinstance(target, Target):
        raise TypeError("validate needs a mechattr.targets target (e.g. targets.logit(ids)); it reads positions per stacked row")
    k = check_k(top_k)
    top_heads, top_links = check_count(top_heads, "top_heads", 0), check_count(top_links, "top_links", 0)
    max_head_controls = check_count(max_head_controls, "max_head_controls")
    n_draws, curve_draws = check_count(n_draws, "n_draws", 1), check_count(curve_draws, "curve_draws", 0)
    for m in ablation_modes:
        if m not in ABLATION_MODES:
            raise ValueError(f"unknown ablation mode {m!r}; allowed: {list(ABLATION_MODES)}")
    named = dict(methods) if isinstance(methods, dict) else {str(m): m for m in methods}
    if not named:
        raise ValueError("methods is empty: pass at least one attribution method")
    steps = _Steps(progress)
    akw = {k2: v for k2, v in (("n_steps", n_steps), ("batch_size", batch_size), ("seed", seed)) if v is not None}
    with model_guard(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = prepare_tokens(model, tokens, attention_mask)
        removable = removable_mask(model, batch, target)
        user_claims = parse_head_claims(model, claims)
        given_corrupted = corrupted is not None
        if given_corrupted:
            batch, cb = prepare_pair(model, batch.tokens, corrupted, batch.attention_mask)
            corr = cb.tokens
        else:
            corr = permuted_corruption(batch, removable, seed)
        q = target_read_positions(target, batch)
        rep = ValidationReport(settings={}, versions=versions(), str_tokens=str_tokens(model, batch.tokens))
        fkw = {"k": k, "removal": removal, "seed": seed, "attention_mask": batch.attention_mask, "batch_size": batch_size}

        # 1-2. token attribution and faithfulness ------------------------------------------
        maps: dict[str, torch.Tensor] = {}
        for name, m in named.items():
            steps.start(f"attribution: {name}")
            try:
                res = _attribute(model, batch, target, m, akw)
            except ImportError as err:
                steps.skip(f"attribution: {name}", f"attribute_tokens not available ({err})")
                continue
            s = getattr(res, "scores", res)
            maps[name] = torch.as_tensor(s).detach().float().to(batch.tokens.device)
            if getattr(res, "convergence_delta", None) is not None:
                rep.completeness[name] = completeness(res)
            steps.stop()
            steps.start(f"faithfulness: {name}")
            f = faithfulness(model, batch, target, maps[name], n_draws=n_draws, **fkw)
            c = deletion_insertion(model, batch, target, maps[name], n_steps=curve_steps, n_draws=curve_draws,
                                   removal=removal, seed=seed, attention_mask=batch.attention_mask, batch_size=batch_size)
            entry = {"summary": f.summary(), "comprehensiveness": f.comprehensiveness, "sufficiency": f.sufficiency,
                     "log_odds": f.log_odds, "p_full": f.p_full, "n_top": f.settings["n_top"]}
            claim = Claim(f"tokens:{name}", "tokens", {"method": name, "k": k})
            for metric, sign in (("comprehensiveness", 1), ("sufficiency", -1), ("log_odds", -1)):
                claim.add(compare(metric, float(getattr(f, metric).mean()), f.control[metric].mean(-1), sign=sign))
            if source_positions is not None:
                hit, ctrl = _hit_rates(maps[name], removable, source_positions, n_draws, seed)
                entry.update(hit_rate=hit, hit_rate_control_mean=float(ctrl.mean()))
                claim.add(compare("ground-truth hit rate (top-1 token)", hit, ctrl))
            rep.faithfulness[name] = entry
            rep.curves[name] = {
                "fractions": c.fractions, "deletion_mean": c.deletion.mean(-1), "insertion_mean": c.insertion.mean(-1),
                "control_deletion_mean": None if c.control_deletion is None else c.control_deletion.mean((0, 2)),
                "control_insertion_mean": None if c.control_insertion is None else c.control_insertion.mean((0, 2)),
                "summary": c.summary()}
            rep.token_maps[name] = maps[name].cpu()
            rep.claims.append(claim)
            steps.stop()
        if len(maps) > 1:
            steps.start("agreement")
            rep.agreement = agreement(model, batch, target, maps, k=k)
            steps.stop()
        sanity = [m for m in (list(maps)[:1] if sanity_methods is None else sanity_methods) if m in maps]
        for name in sanity:
            steps.start(f"sanity: {name}")
            fn = named[name]
            r = cascading_randomization(
                model, batch, target,
                lambda mm, tt, tg, fn=fn: _scores(_attribute(mm, Batch(tt, batch.attention_mask), tg, fn, akw)),
                seed=seed, attention_mask=batch.attention_mask)
            rep.sanity[name] = r.summary()
            steps.stop()

        # 3-4. heads ------------------------------------------------------------------------
        heads = all_heads(model)
        grids: dict[str, Any] = {}
        steps.start("head attribution (AtP)")
        try:
            from mechattr.attribution.components import attribute_heads

            res = attribute_heads(model, batch.tokens, target, corrupted=corr, method="atp", attention_mask=batch.attention_mask)
            atp = torch.as_tensor(getattr(res, "scores", res)).float().cpu()
            grids["atp"] = atp
        except ImportError as err:
            steps.skip("head attribution (AtP)", f"attribute_heads not available ({err})")
        steps.stop()
        steps.start("ablation")
        abl: dict[str, torch.Tensor] = {}
        try:
            from mechattr.interventions.ablation import ablation_scan

            for mode in ablation_modes:
                abl[mode] = torch.as_tensor(ablation_scan(model, batch.tokens, target, kind="heads", mode=mode, seed=seed,
                                                          batch_size=batch_size, attention_mask=batch.attention_mask)).float().cpu()
        except ImportError as err:
            steps.skip("ablation", f"ablation_scan not available ({err})")
        grids["ablation"] = abl
        steps.stop()
        steps.start("path patching")
        try:
            from mechattr.interventions.path_patching import path_patch

            with torch.no_grad():
                clean_mean = float(run_target(model, batch.tokens, target, attention_mask=batch.attention_mask).mean())
            pp = torch.as_tensor(path_patch(model, batch.tokens, corr, target, heads, "logits", batch_size=batch_size,
                                            attention_mask=batch.attention_mask)).float().cpu() - clean_mean
            grids["path_patch"] = pp.reshape(model.cfg.n_layers, model.cfg.n_heads)
        except ImportError as err:
            steps.skip("path patching", f"path_patch not available ({err})")
        steps.stop()
        rank_by = grids.get("atp")
        if rank_by is None and abl:
            rank_by = abl[next(iter(abl))]
            steps.skip("head ranking by AtP", f"AtP unavailable; heads ranked by |{next(iter(abl))} ablation| instead")
        auto: list[Head] = []
        if rank_by is not None and top_heads:
            order = torch.argsort(rank_by.abs().flatten(), descending=True, stable=True)
            auto = [heads[int(i)] for i in order[:top_heads]]
        steps.start("head claims vs random heads")
        with torch.no_grad():
            clean_mean = float(run_target(model, batch.tokens, target, attention_mask=batch.attention_mask).mean())
        effect = SetAblation(model, batch, target, abl, seed, clean_mean)
        todo = [(str(h), (h,), "auto") for h in auto] + [(n, hs, "user") for n, hs in user_claims]
        for name, hs, src_kind in todo:
            cl = Claim(f"heads:{name}", "head", {"heads": [str(h) for h in hs]}, src_kind)
            if "atp" in grids:
                cl.note = "AtP " + ", ".join(f"{h}={float(grids['atp'][h.layer, h.head]):.4g}" for h in hs)
            others = {h for n2, hs2, _ in todo if n2 != name for h in hs2}
            ctrl, rule = control_sets(heads, hs, others, max_head_controls, seed)
            for mode in abl:
                cl.add(compare(f"ablation:{mode}", effect(mode, hs), [effect(mode, c) for c in ctrl], two_sided=True))
            if "path_patch" in grids and len(hs) == 1:
                g = grids["path_patch"]
                cl.add(compare("path_patch:logits", float(g[hs[0].layer, hs[0].head]),
                               [float(g[c[0].layer, c[0].head]) for c in ctrl], two_sided=True))
            cl.subject.update(n_control_sets=len(ctrl), control_rule=rule)
            rep.claims.append(cl)
        steps.stop()

        # 5. token -> head links --------------------------------------------------------------
        if maps and top_links:
            steps.start("token→head links")
            primary = next(iter(maps))
            src = top_mask(maps[primary], removable, torch.ones_like(q)).float().argmax(-1)
            with torch.no_grad():
                ls = link_strength(model, batch, q, src)
            grids["links"] = ls
            order = torch.argsort(ls.flatten(), descending=True, stable=True)
            rnd = _random_other_positions(removable, src, n_draws, seed)
            for i in order[:top_links]:
                h = heads[int(i)]
                eff = edge_effects(model, batch, target, h.layer, h.head, q, torch.cat([src[None], rnd]), batch_size=batch_size)
                cl = Claim(f"link:top token({primary})→{h}", "link", {"layer": h.layer, "head": h.head, "method": primary,
                           "source_positions": src.cpu().tolist()}, note=f"link strength {float(ls.flatten()[i]):.4g}")
                cl.add(compare("edge removal (value at the top token → target position)", float(eff[0]), eff[1:], two_sided=True))
                rep.claims.append(cl)
            steps.stop()
        steps.start("attention flow")
        try:
            from mechattr.graph import attention_flow

            same = bool((q == q[0]).all())
            out_pos = int(q[0]) if same else q
            rep.flow = torch.as_tensor(attention_flow(model, batch.tokens, output_pos=out_pos,
                                                      attention_mask=batch.attention_mask)).float().cpu()
            grids["flow_graph"] = _graph_json(model, batch)
        except ImportError as err:
            steps.skip("attention flow", f"attention_flow not available ({err})")
        steps.stop()
        if circuit:
            steps.start("circuit")
            from mechattr.report.circuit import circuit_report
            from mechattr.runtime.split import SplitUnsupported

            opts = dict(circuit) if isinstance(circuit, dict) else {}
            try:
                rep.circuit = circuit_report(model, batch.tokens, corr, target, attention_mask=batch.attention_mask,
                                             str_tokens=rep.str_tokens, batch_size=batch_size, model_name=model_name, **opts).to_dict()
            except SplitUnsupported as err:
                steps.skip("circuit", str(err))
            steps.stop()
        rep.heads = {"atp": grids.get("atp"), "ablation": abl, "path_patch": grids.get("path_patch"),
                     "links": grids.get("links"), "flow_graph": grids.get("flow_graph")}
        rep.skipped, rep.timings = steps.skipped, steps.timings
        rep.settings = to_jsonable({
            "model": model_name or getattr(model.cfg, "model_name", "model"), "architecture": arch(model).summary(), "n_layers": model.cfg.n_layers,
            "n_heads": model.cfg.n_heads, "target": target.describe(), "n_examples": batch.shape[0], "n_pos": batch.shape[1],
            "methods": list(named), "k": k, "removal": removal, "n_draws": n_draws, "curve_steps": curve_steps,
            "curve_draws": curve_draws, "top_heads": top_heads, "top_links": top_links, "ablation_modes": list(ablation_modes),
            "sanity_methods": sanity, "seed": seed, "n_steps": n_steps, "user_claims": {n: [str(h) for h in hs] for n, hs in user_claims}, "max_head_controls": max_head_controls,
            "corrupted": "given" if given_corrupted else "removable tokens permuted per row (seeded)",
            "verdict_rule": "a test confirms when the effect exceeds the 95th percentile of its random controls; a claim is confirmed when more than half of its tests confirm",
        })
        return rep


def _graph_json(model: Any, batch: Batch) -> dict[str, Any]:
    """The attention-flow graph of example 0 as JSON: nodes ``[layer, pos, token]``, edges
    ``[layer, k, layer + 1, q, capacity]`` (:func:`mechattr.attention_graph`)."""
    from mechattr.graph import attention_graph

    g = attention_graph(model, batch.tokens, batch_index=0, attention_mask=batch.attention_mask)
    return {"nodes": [[int(n[0]), int(n[1]), d.get("token")] for n, d in g.nodes(data=True)],
            "edges": [[int(u[0]), int(u[1]), int(v[0]), int(v[1]), float(d.get("capacity", 0.0))] for u, v, d in g.edges(data=True)]}


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


def _random_other_positions(removable: torch.Tensor, src: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """``[draws, batch]`` random removable positions other than ``src`` (``src`` itself if none)."""
    g = torch.Generator().manual_seed(int(seed) + 3)
    other = removable.clone()
    other[torch.arange(len(src)), src] = False
    w = torch.where(other.any(-1, keepdim=True), other.float(), removable.float()).cpu()
    return torch.multinomial(w, draws, replacement=True, generator=g).T.to(src.device)
