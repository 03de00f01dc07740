"""Report section: where attribution and intervention disagree, and why that can happen.

For every head ablated alone in the run and every corruption, AtP (Nanda 2023; Kramár et
al. 2024) is read in both directions — *noising* (gradient at the clean run, corrupted
activations patched in) and *denoising* (gradient at the corrupted run, clean activations
patched in) — and compared with the ablation effect:

- ablation ``|Δ| ≥ min_effect`` while ``|AtP| < max(min_effect, 10 % of |Δ|)``: AtP misses a
  head that matters. Either the corruption does not move the head's inputs (e.g. it changes
  only the value path, so a head that acts through keys/queries — a previous-token head —
  has the same activation in both runs), or the head acts through a saturated softmax whose
  gradient at the clean run is ~0 (then the denoising direction, linearised at the corrupted
  run, often sees it);
- ``|AtP| ≥ min_effect`` while ablation ``|Δ| < min_effect``: a first-order estimate overshoots
  (saturation), or the effect of patching between the two inputs differs from removing the
  head (ablation replaces the head's output by its mean; other heads can compensate).

Token maps disagree with each other when one method's top-``k`` tokens are confirmed and
another's refuted on the same inputs.
"""

from __future__ import annotations

from typing import Any

from mechattr.validation.sections import Context, esc, register_section

WHY_MISSED = ("AtP ≈ 0 but ablation is large: this corruption may not change the head's inputs (it may move only the "
              "value path, so heads acting through keys/queries look identical in both runs), or the head acts through a "
              "saturated softmax whose gradient at the clean run is ~0")
WHY_SATURATED = ("noising AtP ≈ 0 but denoising AtP sees the head: a saturated softmax at the clean run hides it from the "
                 "gradient there; linearised at the corrupted run it shows")
WHY_OVER = ("AtP is large but ablation is small: a first-order estimate can overshoot through saturation, or patching "
            "between the two inputs differs from removing the head (other heads may compensate)")


def compute(ctx: Context) -> dict[str, Any] | None:
    me = ctx.min_effect
    rows = []
    for head, d in sorted(ctx.solo.items()):
        layer, h = (int(x) for x in head[1:].split("H"))
        for corr, grids in ctx.atp.items():
            noise = float(grids["noising"][layer][h]) if grids.get("noising") is not None else None
            den = float(grids["denoising"][layer][h]) if grids.get("denoising") is not None else None
            small = max(me, 0.1 * abs(d))
            why = None
            big_abl = abs(d) >= me
            n0 = noise is None or abs(noise) < small
            d0 = den is None or abs(den) < small
            if big_abl and n0 and d0:
                why = WHY_MISSED
            elif big_abl and n0 and not d0:
                why = WHY_SATURATED
            elif not big_abl and max(abs(noise or 0.0), abs(den or 0.0)) >= me:
                why = WHY_OVER
            if why:
                rows.append({"head": head, "corruption": corr, "ablation": d, "atp_noising": noise, "atp_denoising": den,
                             "why": why})
    tok = [c for c in ctx.report.claims if c.kind == "tokens"]
    conf = [c.id for c in tok if c.verdict_kind == "confirmed"]
    ref = [c.id for c in tok if c.verdict_kind == "refuted"]
    maps = ([{"confirmed": conf, "refuted": ref,
              "why": "the maps rank different tokens first; removing one map's top tokens changes the prediction, "
                     "removing the other's does not, so at most one of them is right about these inputs"}]
            if conf and ref else [])
    return {"heads": rows, "token_maps": maps, "min_effect": me}


def render(data: dict[str, Any]) -> str:
    rows, maps = data.get("heads", []), data.get("token_maps", [])
    if not rows and not maps:
        return "<p>No disagreement between attribution and intervention above the minimum effect.</p>"

    def num(x: Any) -> str:
        return "–" if x is None else f"{x:.3g}"

    out = [f"<p class='note'>Minimum effect {num(data.get('min_effect'))} (target units). AtP noising: gradient at the "
           "clean run; denoising: at the corrupted run.</p>"]
    if rows:
        out.append("<table id='disagreements'><tr><th>head</th><th>corruption</th><th>ablation Δ</th><th>AtP noising</th>"
                   "<th>AtP denoising</th><th>why it can happen</th></tr>")
        out += [f"<tr><td>{esc(r['head'])}</td><td>{esc(r['corruption'])}</td><td>{num(r['ablation'])}</td>"
                f"<td>{num(r['atp_noising'])}</td><td>{num(r['atp_denoising'])}</td>"
                f"<td style='text-align:left'>{esc(r['why'])}</td></tr>" for r in rows]
        out.append("</table>")
    for m in maps:
        out.append(f"<p class='warn'>Token maps disagree: confirmed {esc(', '.join(m['confirmed']))}; refuted "
                   f"{esc(', '.join(m['refuted']))}. {esc(m['why'])}.</p>")
    return "".join(out)


register_section("disagreements", "Disagreements: attribution vs intervention", compute, render)
