"""Head and head-set claims: one batch of ablation variants for every test and control.

For claims about heads (:class:`~mechattr.validation.claims.HeadClaim`,
:class:`~mechattr.validation.claims.SetClaim`) with ablation ``mode`` (default ``mean``;
Heimersheim & Nanda 2024 on ablation baselines), the variants are:

- *necessity* of set ``S``: ablate ``S``; the effect is ``T(ablated) − T(clean)`` per example;
- *sufficiency* of ``S`` (sets): ablate every head outside ``S``; reported as the fraction
  ``(T(only S) − T(none)) / (T(clean) − T(none))`` of the target that ``S`` alone keeps;
- *redundancy* (each member ``h`` of a set): ablate ``S ∖ {h}``; ``h``'s effect within the
  group is ``T(S ablated) − T(S ∖ {h} ablated)`` ("does ``h`` matter once its partners are
  gone?", the backup-head test of Wang et al. 2022 §3; McGrath et al. 2023's *hydra effect*).

These claim variants run once, stacked, and their logits at the target position are kept, so
the answer-token null (:mod:`mechattr.validation.controls`) costs no forward pass. Matched
control sets (when ≥ 20 exist) run on the variant engine (:func:`mechattr.interventions.
variants.run_variants`), shared by every claim that draws the same set, in rounds of
``round_size`` when ``adaptive`` (a claim stops drawing once it cannot become significant,
:func:`mechattr.validation.stats.decided_not_significant`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechattr.components import Head, all_heads, parse_component
from mechattr.interventions.ablation import AblationValues
from mechattr.interventions.variants import Mode, Variant, edit_hooks, run_variants
from mechattr.model import model_guard
from mechattr.validation import controls as C
from mechattr.validation.claims import HeadClaim, SetClaim
from mechattr.validation.stats import (
    ALPHA,
    bootstrap_ci,
    decided_not_significant,
    magnitude_interval,
    mc_pvalue,
)
from mechattr.validation.verdicts import (
    CONFIRMED,
    MIN_CONTROLS,
    MIN_EXAMPLES,
    REDUNDANT,
    Claim,
    TestResult,
)


@dataclass
class ComponentRun:
    """Per-example effects of every claim variant (``effects[frozenset(heads)]`` ``[batch]``),
    the clean target ``[batch]``, and the records made."""

    clean: Tensor
    effects: dict[frozenset, Tensor] = field(default_factory=dict)
    records: list[Claim] = field(default_factory=list)
    groups: dict[str, tuple[Head, ...]] = field(default_factory=dict)
    n_variants: int = 0


def readout(model: Any, batch: Any, variants: Sequence[Variant], target: Any, budget: int = 1 << 24) -> Tensor:
    """``[V, batch, k, vocab]`` logits at the target's positions under each variant (edits
    through :func:`mechattr.interventions.variants.edit_hooks`, ``budget`` logits per chunk)."""
    b, p = batch.shape
    dev = batch.tokens.device
    pos = target.positions(b, p, batch.attention_mask, dev)
    per = max(1, budget // max(1, b * p * model.cfg.d_vocab))
    out = []
    with model_guard(model), torch.no_grad():
        for i in range(0, len(variants), per):
            chunk = list(variants[i : i + per])
            n = len(chunk)
            kw = {} if batch.attention_mask is None else {"attention_mask": batch.attention_mask.repeat(n, 1)}
            with model.hooks(fwd_hooks=edit_hooks(chunk, b, p)):
                logits = model(batch.tokens.repeat(n, 1), **kw)
            idx = pos.repeat(n, 1)
            sel = logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[-1])).float()
            out.append(sel.reshape(n, b, *sel.shape[1:]))
    return torch.cat(out)


def _test(name: str, per_ex: Tensor, min_effect: float, seed: int, n_boot: int) -> TestResult:
    lo, hi = bootstrap_ci(per_ex, n_boot=n_boot, seed=seed) if per_ex.numel() >= MIN_EXAMPLES else (None, None)
    return TestResult(name, float(per_ex.mean()), float("nan"), 0, False, [], "", lo, hi, min_effect=min_effect)


def run_components(
    model: Any,
    batch: Any,
    target: Any,
    claims: Sequence[HeadClaim | SetClaim],
    *,
    documented: set[Head],
    mode: str = "mean",
    min_effect: float,
    n_controls: int = 100,
    n_answer_draws: int = 2000,
    adaptive: bool = True,
    round_size: int = 25,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int | None = None,
) -> ComponentRun:
    """Test every component claim (module docstring); records carry ``p`` but no outcome yet."""
    heads = all_heads(model)
    b = batch.shape[0]
    m = Mode.parse(mode)
    vals = AblationValues(model, batch, heads, m, None, seed)

    def variant(hs: frozenset) -> Variant:
        return Variant(tuple(vals.edit(h, None) for h in sorted(hs)), "+".join(map(str, sorted(hs))))

    sets = [frozenset(c.heads) for c in claims]
    keys: dict[frozenset, None] = {frozenset(): None}
    for c in claims:
        s = frozenset(c.heads)
        keys[s] = None
        if isinstance(c, SetClaim):
            keys[frozenset(heads) - s] = None
            keys[frozenset(heads)] = None
            for h in c.heads:
                keys[s - {h}] = None
                keys[frozenset({h})] = None
    order = list(keys)
    logits = readout(model, batch, [variant(k) if k else Variant() for k in order], target)
    tvals = torch.stack([target.from_selected(logits[i]) for i in range(len(order))]).float().cpu()  # [V, b]
    run = ComponentRun(clean=tvals[0], n_variants=len(order))
    run.effects = {k: tvals[i] - tvals[0] for i, k in enumerate(order)}
    answer_null = C.answer_null_available(target) and logits.shape[2] == 1
    if answer_null:
        ids = C.null_tokens(target, b, logits.shape[-1], n_answer_draws, seed)
        rr = C.reread(target, logits[:, :, 0], ids).cpu()  # [V, R, b]
        null_means = {k: (rr[i] - rr[0]).mean(-1) for i, k in enumerate(order)}  # [R]

    claimed = {h for s in sets for h in s}
    excl = claimed | set(documented)
    records: list[Claim] = []
    pending: list[tuple[Claim, TestResult, list[tuple[Head, ...]]]] = []
    for c, s in zip(claims, sets):
        kind = "set" if isinstance(c, SetClaim) else "head"
        rec = Claim(c.id, kind, {"heads": [str(h) for h in sorted(s)], "mode": m.value}, c.source)
        t = _test(f"necessity: {m.value}-ablate {'the set' if kind == 'set' else 'the head'}", run.effects[s], min_effect, seed, n_boot)
        t.primary = True
        ctrl, n_possible, rule = C.matched_sets(sorted(s), heads, excl, n_controls, seed)
        t.n_possible = n_possible
        t.rule = f"two-sided: |effect| vs |null|; controls: {rule} ({n_possible} exist)"
        lo_hi = (t.ci_low, t.ci_high)
        refuted_already = None not in lo_hi and magnitude_interval(*lo_hi)[1] < min_effect  # type: ignore[arg-type]
        if n_possible >= MIN_CONTROLS and b > 1:
            t.null = "matched heads"
            if not refuted_already and ctrl:
                pending.append((rec, t, ctrl))
        elif answer_null:
            t.null = "random answer tokens (the same ablation re-read for other answers)"
            nul = null_means[s].abs()
            t.controls = [float(x) for x in null_means[s][:200]]
            t.n_controls, t.n_possible = int(nul.numel()), -1
            t.threshold = float(torch.quantile(nul.double(), 1 - ALPHA))
            t.p = mc_pvalue(abs(t.effect), nul)
            t.confirmed = abs(t.effect) > t.threshold
        else:
            t.null = f"matched heads (only {n_possible} exist)"
        rec.add(t)
        if isinstance(c, SetClaim):
            none_ = run.effects[frozenset(heads)]
            denom = float(-none_.mean())
            if abs(denom) > 1e-12:
                keep = (run.effects[frozenset(heads) - s] - none_) / denom  # [b]: its mean is the fraction
                st = _test("sufficiency: ablate every other head (fraction of the target the set keeps alone)",
                           keep, min_effect, seed, n_boot)
                st.min_effect, st.rule = None, "(T(only S) − T(no heads)) / (T(clean) − T(no heads)); not part of the verdict"
                rec.add(st)
            run.groups[rec.id] = tuple(sorted(s))
        records.append(rec)
    _draw_controls(model, batch, target, pending, variant, n_controls, adaptive, round_size, batch_size)
    run.records = records
    return run


def _draw_controls(model: Any, batch: Any, target: Any, pending: list, variant: Any, n_max: int, adaptive: bool,
                   round_size: int, batch_size: int | None) -> None:
    """Run matched control sets (shared across claims) in rounds; fill ``p`` and the quantile."""
    if not pending:
        return
    done: dict[tuple[Head, ...], float] = {}
    active = list(range(len(pending)))
    step = round_size if adaptive else n_max
    used = [0] * len(pending)
    while active:
        need: dict[tuple[Head, ...], None] = {}
        for i in active:
            for s in pending[i][2][used[i] : used[i] + step]:
                if s not in done:
                    need[s] = None
        if need:
            todo = list(need)
            out = run_variants(model, batch.tokens, [Variant()] + [variant(frozenset(s)) for s in todo], target,
                               attention_mask=batch.attention_mask, batch_size=batch_size)
            means = (out[1:] - out[:1]).mean(-1).float().cpu()
            done.update({s: float(v) for s, v in zip(todo, means)})
        still = []
        for i in active:
            rec, t, ctrl = pending[i]
            used[i] = min(len(ctrl), used[i] + step)
            vals = torch.tensor([done[s] for s in ctrl[: used[i]]], dtype=torch.float64)
            k = int((vals.abs() >= abs(t.effect)).sum())
            if used[i] < len(ctrl) and not decided_not_significant(k, len(ctrl)):
                still.append(i)
                continue
            t.controls = [float(x) for x in vals[:200]]
            t.n_controls = int(vals.numel())
            t.threshold = float(torch.quantile(vals.abs(), 1 - ALPHA))
            t.p = max(mc_pvalue(abs(t.effect), vals.abs()), (k + 1) / (len(ctrl) + 1))
            t.confirmed = abs(t.effect) > t.threshold
            if t.n_controls < len(ctrl):
                t.rule += f"; stopped after {t.n_controls} of {len(ctrl)} draws (cannot become significant)"
        active = still


def apply_redundancy(run: ComponentRun, min_effect: float, seed: int, n_boot: int = 1000) -> None:
    """Give member heads of a confirmed set the verdict "redundant: necessary as part of {…}"
    when their effect within the set is at least ``min_effect`` (interval) and exceeds their
    effect alone by at least ``min_effect`` (paired interval over examples)."""
    confirmed = {n: g for n, g in run.groups.items() if run_record(run, n).outcome == CONFIRMED}
    for rec in run.records:
        if rec.kind != "head":
            continue
        h = parse_component(rec.subject["heads"][0])
        for name, g in sorted(confirmed.items(), key=lambda kv: len(kv[1])):
            if h not in g:
                continue
            s = frozenset(g)
            marg = run.effects[s] - run.effects[s - {h}]
            solo = run.effects[frozenset({h})]
            sign = 1.0 if float(marg.mean()) >= 0 else -1.0
            diff = sign * (marg - solo)
            mt = _test(f"within {name}: ablate the set vs the set without this head", marg, min_effect, seed, n_boot)
            dt = _test("within-set effect minus effect alone", diff, min_effect, seed, n_boot)
            rec.add(mt)
            rec.add(dt)
            if mt.ci_low is None or dt.ci_low is None:
                break
            m_lo = magnitude_interval(mt.ci_low, mt.ci_high)[0]  # type: ignore[arg-type]
            if m_lo >= min_effect and dt.ci_low >= min_effect:
                members = ", ".join(map(str, g))
                alone = f"alone: {rec.outcome} ({rec.reason})"
                rec.outcome = f"{REDUNDANT}: necessary as part of {{{members}}}"
                rec.reason = (f"within the set its effect is {mt.effect:.3g} (95% CI [{mt.ci_low:.3g}, {mt.ci_high:.3g}]), "
                              f"{dt.effect:.3g} more than alone; {alone}")
            break


def run_record(run: ComponentRun, claim_id: str) -> Claim:
    return next(r for r in run.records if r.id == claim_id)
