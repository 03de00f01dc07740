"""``validate()``: claims → one batch of variants for their tests and controls → verdicts → report.

The straight line:

1. token maps per method and their claims, against one shared set of random rankings
   (:mod:`mechattr.validation.token_maps`);
2. AtP per corruption, noising and denoising (:func:`mechattr.attribute_heads`); heads
   scoring above ``claim_floor`` × the largest score (never exactly 0) become auto-claims;
3. every head / head-set claim (user, card, auto, and each member of a set) tested by
   ablation in one batch of variants with matched controls or the answer-token null
   (:mod:`mechattr.validation.components`); token→head links by removing one attention edge
   (:mod:`mechattr.validation.links`); claimed circuits by Wang et al. 2022's faithfulness,
   completeness and minimality (:func:`mechattr.circuits.evaluate_circuit`);
4. verdicts: Holm–Bonferroni within each family (token maps, components, links) at α = 0.05,
   plus the minimum effect (:mod:`mechattr.validation.verdicts`); redundancy of set members;
5. report sections from the registry (:mod:`mechattr.validation.sections`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechattr.components import Head, all_heads
from mechattr.faithfulness.metrics import check_count, check_k
from mechattr.faithfulness.removal import removable_mask, target_read_positions
from mechattr.inputs import Batch, prepare_pair, prepare_tokens
from mechattr.io import to_jsonable, versions
from mechattr.model import model_guard
from mechattr.runtime.arch import arch
from mechattr.targets import Target, run_target
from mechattr.validation import sections as S
from mechattr.validation.claims import (
    CircuitClaim,
    HeadClaim,
    SetClaim,
    TokenMapClaim,
    parse_claims,
)
from mechattr.validation.components import apply_redundancy, run_components
from mechattr.validation.describe import circuit_claim as _circuit_claim
from mechattr.validation.describe import profile_words as _profile_words
from mechattr.validation.describe import target_words as _target_words
from mechattr.validation.links import run_link_claims
from mechattr.validation.report import ValidationReport
from mechattr.validation.stats import ALPHA, holm
from mechattr.validation.token_maps import run_token_claims
from mechattr.validation.verdicts import Claim, decide

DEFAULT_METHODS = ("ig", "input_x_gradient", "saliency", "attention")
ABLATION_MODES = ("zero", "mean", "resample")
PROFILES: dict[str, dict[str, Any]] = {
    "fast": {"n_draws": 0, "max_head_controls": 100, "answer_draws": 1000, "link_draws": 100, "curve_draws": 1,
             "curve_steps": 5, "modes": ("mean",), "sanity": False, "flow": False, "path_patch": False, "path_steps": 16},
    "default": {"n_draws": 100, "max_head_controls": 200, "answer_draws": 2000, "link_draws": 100, "curve_draws": 3,
                "curve_steps": 10, "modes": ("mean",), "sanity": True, "sanity_stages": 3, "flow": True, "path_patch": True},
    "thorough": {"n_draws": 500, "max_head_controls": 500, "answer_draws": 5000, "link_draws": 200, "curve_draws": 5,
                 "curve_steps": 20, "modes": ("mean", "zero", "resample"), "sanity": True, "sanity_stages": None, "flow": True,
                 "path_patch": True},
}
RULE = ("Holm–Bonferroni within each family of claims (token maps; heads and head sets; links) at α = 0.05 on Monte Carlo "
        "p-values against each test's null, AND the 95% bootstrap interval of |effect| at or above the minimum effect; "
        "refuted when that interval lies entirely below the minimum effect; underpowered when fewer than 20 matched "
        "controls exist and no other null applies, or with fewer than 4 examples")


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


def _corruptions(model: Any, batch: Batch, corrupted: Any) -> tuple[Batch, dict[str, torch.Tensor]]:
    items = corrupted.items() if isinstance(corrupted, dict) else [("corrupted", corrupted)]
    out = {}
    for name, c in items:
        batch, cb = prepare_pair(model, batch.tokens, c, batch.attention_mask)
        out[str(name)] = cb.tokens
    if not out:
        raise ValueError("corrupted is an empty dict: give at least one name → tensor")
    return batch, out


def _documented(model: Any, organism: str | None, documented: Any) -> set[Head]:
    heads: set[Head] = set()
    if organism is not None:
        from mechattr import organisms

        heads |= {c for comps in organisms.circuit(organism).values() for c in comps if isinstance(c, Head)}
    if documented is not None:
        from mechattr.components import parse_component

        for d in documented:
            c = parse_component(d, model)
            if isinstance(c, Head):
                heads.add(c)
    return heads


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
    max_head_controls: int | None = None,
    source_positions: Any = None,
    removal: str = "zero",
    n_draws: int | None = None,
    curve_steps: int | None = None,
    curve_draws: int | None = None,
    ablation_modes: Sequence[str] | None = None,
    sanity_methods: Sequence[str] | None = None,
    n_steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    attention_mask: Any = None,
    model_name: str | None = None,
    circuit: bool | dict[str, Any] = False,
    progress: Callable[[str], None] | None = None,
    profile: str = "default",
    min_effect: float = 0.05,
    claim_floor: float = 0.05,
    organism: str | None = None,
    documented: Any = None,
    adaptive: bool = True,
) -> ValidationReport:
    """Turn attributions into claims and test them with interventions (module docstring).

    ``target``: a :class:`mechattr.targets.Target`. ``corrupted``: ``[batch, pos]`` tokens,
    or ``{name: tokens}`` for several corruptions (AtP runs under each; the first is the
    reference for the minimum effect and the circuit section); default: each row's tokens
    permuted. ``methods``: names for :func:`mechattr.attribute_tokens` or ``{name: fn(model,
    tokens, target) -> [batch, pos]}``. ``claims``: typed claims
    (:mod:`mechattr.validation.claims`), heads or head groups, optionally named
    (``{"induction": ["L1H0", "L1H1"], "wrong": "L0H0"}``). ``organism`` / ``documented``:
    components controls never contain (the card's circuit / your list). ``profile``:
    ``"fast"`` | ``"default"`` | ``"thorough"`` (:data:`PROFILES`; explicit ``n_draws``,
    ``max_head_controls``, ``curve_*``, ``ablation_modes`` override it). ``min_effect``: the
    minimum effect as a fraction of ``|T(clean) − T(corrupted)|`` (of ``|T(clean)|`` without a
    given corruption); token claims use the fraction of the clean ``p(ŷ)``. ``claim_floor``:
    auto-claims only for heads whose AtP magnitude exceeds this fraction of the largest (and
    is not 0). ``adaptive``: stop drawing controls once a test cannot become significant.
    ``circuit``: ``True`` or options for :func:`mechattr.report.circuit.circuit_report`.
    """
    if not isinstance(target, Target):
        raise TypeError("validate needs a mechattr.targets target (e.g. targets.logit(ids)); it reads positions per stacked row")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {list(PROFILES)}")
    prof = PROFILES[profile]
    k = check_k(top_k)
    top_heads, top_links = check_count(top_heads, "top_heads", 0), check_count(top_links, "top_links", 0)
    n_ctrl = check_count(prof["max_head_controls"] if max_head_controls is None else max_head_controls, "max_head_controls")
    named = dict(methods) if isinstance(methods, dict) else {str(m): m for m in methods}
    # enough random rankings that the strictest Holm level over the token claims is reachable: (1 + 0) / (1 + n) ≤ α / m
    need = int(-(-len(named) // ALPHA))
    n_draws = check_count(max(prof["n_draws"], need) if n_draws is None else n_draws, "n_draws", 1)
    curve_draws = check_count(prof["curve_draws"] if curve_draws is None else curve_draws, "curve_draws", 0)
    curve_steps = prof["curve_steps"] if curve_steps is None else curve_steps
    modes = tuple(prof["modes"] if ablation_modes is None else ablation_modes)
    for m in modes:
        if m not in ABLATION_MODES:
            raise ValueError(f"unknown ablation mode {m!r}; allowed: {list(ABLATION_MODES)}")
    if not modes:
        raise ValueError(f"ablation_modes is empty; allowed: {list(ABLATION_MODES)}")
    for name, v in (("min_effect", min_effect), ("claim_floor", claim_floor)):
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"{name} must be a fraction in [0, 1), got {v!r}")
    if not named:
        raise ValueError("methods is empty: pass at least one attribution method")
    steps = _Steps(progress)
    akw = {k2: v for k2, v in (("n_steps", n_steps), ("batch_size", batch_size), ("seed", seed)) if v is not None}
    with model_guard(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = prepare_tokens(model, tokens, attention_mask)
        removable = removable_mask(model, batch, target)
        typed = parse_claims(model, claims)
        doc = _documented(model, organism, documented)
        given = corrupted is not None
        if given:
            batch, corrs = _corruptions(model, batch, corrupted)
        else:
            corrs = {"permuted": permuted_corruption(batch, removable, seed)}
        n = batch.shape[0]
        q = target_read_positions(target, batch)
        rep = ValidationReport(settings={}, versions=versions(), str_tokens=str_tokens(model, batch.tokens))
        with torch.no_grad():
            clean_t = float(run_target(model, batch.tokens, target, attention_mask=batch.attention_mask).mean())
            first = next(iter(corrs.values()))
            corr_t = float(run_target(model, first, target, attention_mask=batch.attention_mask).mean())
        gap = abs(clean_t - corr_t) if given else abs(clean_t)
        me = float(min_effect) * gap

        # 1. token maps -------------------------------------------------------------------------
        tok_claims = [c for c in typed if isinstance(c, TokenMapClaim)]
        maps = run_token_claims(model, batch, target, named, rep, steps, akw=akw, k=k, removal=removal, n_draws=n_draws,
                                curve_steps=curve_steps, curve_draws=curve_draws, source_positions=source_positions,
                                removable=removable, min_effect=min_effect, seed=seed, batch_size=batch_size,
                                adaptive=adaptive, sanity_methods=(sanity_methods if sanity_methods is not None
                                                                   else (None if prof["sanity"] else ())),
                                sanity_stages=prof.get("sanity_stages"), path_steps=prof.get("path_steps"))
        for c in tok_claims:
            if c.id not in {r.id for r in rep.claims}:
                steps.skip(c.id, f"method {c.method!r} is not among methods {list(named)}")

        # 2. AtP per corruption, both directions; auto-claims ----------------------------------------
        heads = all_heads(model)
        atp: dict[str, dict[str, Any]] = {}
        steps.start("head attribution (AtP)")
        try:
            from mechattr.attribution.components import attribute_heads

            for cname, ct in corrs.items():
                fwd = attribute_heads(model, batch.tokens, target, corrupted=ct, method="atp", attention_mask=batch.attention_mask)
                bwd = attribute_heads(model, ct, target, corrupted=batch.tokens, method="atp", attention_mask=batch.attention_mask)
                atp[cname] = {"noising": torch.as_tensor(getattr(fwd, "scores", fwd)).float().cpu(),
                              "denoising": torch.as_tensor(getattr(bwd, "scores", bwd)).float().cpu()}
        except ImportError as err:
            steps.skip("head attribution (AtP)", f"attribute_heads not available ({err})")
        steps.stop()
        if prof["path_patch"]:  # the "Heads" section's direct-effect map: one batched call for every head
            steps.start("path patching")
            try:
                from mechattr.interventions.path_patching import path_patch

                pp = torch.as_tensor(path_patch(model, batch.tokens, first, target, heads, "logits", batch_size=batch_size,
                                                attention_mask=batch.attention_mask)).float().cpu() - clean_t
                rep.heads["path_patch"] = pp.reshape(model.cfg.n_layers, model.cfg.n_heads)
            except ImportError as err:
                steps.skip("path patching", f"path_patch not available ({err})")
            steps.stop()
        comp_claims = [c for c in typed if isinstance(c, (HeadClaim, SetClaim))]
        claimed_single = {c.head for c in comp_claims if isinstance(c, HeadClaim)}
        auto: list[Head] = []
        if atp and top_heads:
            score = torch.stack([g.abs() for d in atp.values() for g in d.values()]).amax(0)
            top = float(score.max())
            ok = (score > claim_floor * top) & (score > 0)
            order = torch.argsort(score.flatten(), descending=True, stable=True)
            auto = [heads[int(i)] for i in order if bool(ok.flatten()[i])][:top_heads]
        comp_claims = [HeadClaim(h, "", "auto") for h in auto if h not in claimed_single] + comp_claims
        for c in list(comp_claims):
            if isinstance(c, SetClaim):
                have = {x.head for x in comp_claims if isinstance(x, HeadClaim)}
                comp_claims += [HeadClaim(h, "", "member") for h in c.heads if h not in have]

        # 3. component claims: one batch of variants -------------------------------------------------
        steps.start("heads and head sets: ablation variants + controls")
        solo: dict[str, float] = {}
        run = None
        primary_mode = modes[0] if "mean" not in modes else "mean"
        if n == 1 and primary_mode != "zero":
            steps.skip(f"{primary_mode} ablation", "one example: mean/resample ablation needs a population (the "
                       "example's own activation would replace itself); zero ablation used instead")
            primary_mode = "zero"
        if comp_claims:
            run = run_components(model, batch, target, comp_claims, documented=doc, mode=primary_mode, min_effect=me,
                                 n_controls=n_ctrl, n_answer_draws=prof["answer_draws"], adaptive=adaptive, seed=seed,
                                 batch_size=batch_size)
            for extra in [x for x in modes if x != primary_mode and not (n == 1 and x != "zero")]:
                sec = run_components(model, batch, target, comp_claims, documented=doc, mode=extra, min_effect=me,
                                     n_controls=0, n_answer_draws=prof["answer_draws"], adaptive=True, seed=seed,
                                     batch_size=batch_size)
                for r, s2 in zip(run.records, sec.records):
                    t = s2.tests[0]
                    t.primary, t.test = False, t.test + " (secondary mode, not part of the verdict)"
                    r.add(t)
            for r in run.records:
                if atp:
                    r.note = "AtP " + "; ".join(
                        f"{cn}: " + ", ".join(f"{h}={float(g['noising'][int(h[1:].split('H')[0]), int(h.split('H')[1])]):.3g}"
                                              for h in r.subject["heads"]) for cn, g in atp.items())
                if r.kind == "head":
                    solo[r.subject["heads"][0]] = float(run.effects[frozenset({_head(r)})].mean())
            rep.claims += run.records
        steps.stop()

        # 3b. links ---------------------------------------------------------------------------------
        if maps and top_links:
            steps.start("token→head links")
            run_link_claims(model, batch, target, maps, rep, removable=removable, q=q, top_links=top_links,
                            n_draws=prof["link_draws"], min_effect=me, seed=seed, batch_size=batch_size,
                            floor=claim_floor, adaptive=adaptive)
            steps.stop()

        # 3c. circuits ------------------------------------------------------------------------------
        for c in [c for c in typed if isinstance(c, CircuitClaim)]:
            steps.start(f"circuit claim {c.name}")
            rep.claims.append(_circuit_claim(model, batch, first, target, c, seed, batch_size))
            steps.stop()

        # 4. verdicts -------------------------------------------------------------------------------
        for fam in ("tokens", "component", "link"):
            recs = [r for r in rep.claims if _family(r) == fam and r.primary is not None and r.primary.p is not None]
            for r, pa in zip(recs, holm([r.primary.p for r in recs])):  # type: ignore[union-attr]
                r.primary.p_adj = pa  # type: ignore[union-attr]
        for r in rep.claims:
            if r.kind == "circuit":
                continue
            t = r.primary
            if t is not None:
                t.primary = True
                r.outcome, r.reason = decide(t, n)
                t.outcome = r.outcome
        if run is not None:
            apply_redundancy(run, me, seed)

        # 5. sections, flow, circuit ------------------------------------------------------------------
        if prof["flow"]:
            steps.start("attention flow")
            try:
                from mechattr.graph import attention_flow

                same = bool((q == q[0]).all())
                rep.flow = torch.as_tensor(attention_flow(model, batch.tokens, output_pos=int(q[0]) if same else q,
                                                          attention_mask=batch.attention_mask)).float().cpu()
                rep.heads["flow_graph"] = _graph_json(model, batch)
            except ImportError as err:
                steps.skip("attention flow", f"attention_flow not available ({err})")
            steps.stop()
        if circuit:
            steps.start("circuit")
            from mechattr.report.circuit import circuit_report
            from mechattr.runtime.split import SplitUnsupported

            opts = dict(circuit) if isinstance(circuit, dict) else {}
            try:
                rep.circuit = circuit_report(model, batch.tokens, first, target, attention_mask=batch.attention_mask,
                                             str_tokens=rep.str_tokens, batch_size=batch_size, model_name=model_name, **opts).to_dict()
            except SplitUnsupported as err:
                steps.skip("circuit", str(err))
            steps.stop()
        rep.heads.update({"atp": atp[next(iter(atp))]["noising"] if atp else None,
                          "atp_by_corruption": atp, "ablation_solo": {primary_mode: solo}})
        ctx = S.Context(model, batch, target, rep, me, atp, solo)
        rep.sections = S.compute_sections(ctx)
        rep.skipped, rep.timings = rep.skipped + steps.skipped, steps.timings
        tw = _target_words(model, target, batch)
        rep.settings.update(to_jsonable({
            "model": model_name or getattr(model.cfg, "model_name", "model"), "architecture": arch(model).summary(),
            "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads, "target": target.describe(), "target_words": tw,
            "n_examples": n, "n_pos": batch.shape[1], "methods": list(named), "k": k, "removal": removal,
            "profile": profile, "profile_runs": _profile_words(profile, n_draws, n_ctrl, prof, modes, curve_draws, adaptive),
            "n_draws": n_draws, "curve_steps": curve_steps, "curve_draws": curve_draws, "top_heads": top_heads,
            "top_links": top_links, "ablation_modes": list(modes), "primary_mode": primary_mode, "seed": seed,
            "n_steps": n_steps, "user_claims": [c.id for c in typed], "documented": sorted(map(str, doc)),
            "max_head_controls": n_ctrl, "min_effect": min_effect, "min_effect_abs": me, "target_clean": clean_t,
            "target_corrupted": corr_t if given else None, "claim_floor": claim_floor, "adaptive": adaptive,
            "corrupted": list(corrs) if given else "removable tokens permuted per row (seeded)",
            "verdict_rule": RULE,
        }))
        return rep


def _head(r: Claim) -> Head:
    from mechattr.components import parse_component

    return parse_component(r.subject["heads"][0])  # type: ignore[return-value]


def _family(r: Claim) -> str:
    return "component" if r.kind in ("head", "set") else "tokens" if r.kind == "tokens" else r.kind


def _graph_json(model: Any, batch: Batch) -> dict[str, Any]:
    """The attention-flow graph of example 0 as JSON: nodes ``[layer, pos, token]``, edges
    ``[layer, k, layer + 1, q, capacity]`` (:func:`mechattr.attention_graph`)."""
    from mechattr.graph import attention_graph

    g = attention_graph(model, batch.tokens, batch_index=0, attention_mask=batch.attention_mask)
    return {"nodes": [[int(n[0]), int(n[1]), d.get("token")] for n, d in g.nodes(data=True)],
            "edges": [[int(u[0]), int(u[1]), int(v[0]), int(v[1]), float(d.get("capacity", 0.0))] for u, v, d in g.edges(data=True)]}
