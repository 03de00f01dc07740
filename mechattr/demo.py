"""``make demo``: the main job on the shipped induction organisms, with its own check.

For each organism (``induction``, trained; ``planted_induction``, analytic weights) it runs
:func:`mechattr.validate` on a seeded task batch with the card's circuit roles and one
deliberately wrong claim (a seeded random head outside the circuit) and writes
``<out>/<organism>/report.html`` + ``report.json`` (each with its circuit section). It then
checks the verdicts: the card's heads confirmed, the copied-token attribution confirmed
(token claim of the primary method, ground-truth hit rate above random), the wrong claim not
confirmed, the circuit found. ``<out>/index.html`` links every report the demo made (and
every other page in an organism's directory) with its checks. The terminal output fits 100
columns. Exit status 1 when a check fails.
"""

from __future__ import annotations

import html
import textwrap
import time
from pathlib import Path
from typing import Any

DEMO = {
    "induction": {"n": 32, "methods": "ig,input_x_gradient,saliency,attention,occlusion", "circuit": True},
    "planted_induction": {"n": 16, "methods": "ig,input_x_gradient,attention", "circuit": True},
}


def check(rep: Any) -> list[tuple[str, bool, str]]:
    """``(what, ok, numbers)`` for the demo's expected verdicts: every documented group
    ``confirmed``; the wrong claim anything but ``confirmed`` or ``redundant`` (it should be
    ``refuted``; ``inconclusive`` passes the check but is printed)."""
    out = []
    for c in rep.claims:
        if c.id.endswith("(card)"):
            out.append((f"documented {c.id} confirmed", c.verdict == "confirmed", c.verdict))
        if c.id.startswith("heads:wrong"):
            out.append((f"{c.id} not confirmed", c.verdict_kind not in ("confirmed", "redundant"), c.verdict))
    primary = rep.settings["methods"][0]
    tok = rep.claim(f"tokens:{primary}")
    out.append((f"copied-token attribution ({primary}) confirmed", tok.verdict == "confirmed", tok.verdict))
    circ = getattr(rep, "circuit", None) or {}
    if circ.get("circuit"):
        from mechattr import organisms

        name = str(rep.settings.get("task"))
        f = circ["evaluation"].get("faithfulness")
        if name in organisms.edges.names():
            want = set(organisms.circuit_edges(name, "patch"))
            out.append(("circuit = the planted edges", set(circ["circuit"]) == want, f"{len(circ['circuit'])} edges, faithfulness {f:.3f}"))
        else:
            shown = "undefined" if f is None else f"{f:.3f}"
            out.append(("circuit faithfulness >= 0.8", f is not None and f >= 0.8, f"{len(circ['circuit'])} edges, faithfulness {shown}"))
    hit = next((t for t in tok.tests if t.test.startswith("ground-truth")), None)
    if hit is not None:
        out.append((f"{primary} top token is the copied token above chance", hit.confirmed,
                    f"hit rate {hit.effect:.2f} vs random q95 {hit.threshold:.2f}"))
    return out


WIDTH = 100  # terminal columns the printed summary fits


def write_index(root: Path, results: dict[str, dict[str, Any]]) -> Path:
    """``root/index.html``: one row per organism (claims confirmed, the demo's checks) linking
    every ``.html``/``.json`` page in ``root/<organism>/``; self-contained, no scripts.

    ``results``: organism → ``{"confirmed": int, "claims": int, "checks": [(what, ok, numbers)],
    "seconds": float}``."""
    e = html.escape
    rows = []
    for name, r in results.items():
        pages = sorted(p for p in (root / name).glob("*") if p.suffix in (".html", ".json"))
        links = " · ".join(f'<a href="{e(name)}/{e(p.name)}">{e(p.name)}</a>' for p in pages)
        checks = "".join(f'<li class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"} {e(what)} '
                         f'<span class="n">({e(str(nums))})</span></li>' for what, ok, nums in r["checks"])
        rows.append(f"<tr><td><b>{e(name)}</b></td><td>{r['confirmed']}/{r['claims']}</td>"
                    f"<td><ul>{checks}</ul></td><td>{links}</td><td>{r['seconds']:.0f} s</td></tr>")
    ok_all = all(ok for r in results.values() for _, ok, _ in r["checks"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mechattr demo</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:72em}} table{{border-collapse:collapse}}
td,th{{border-top:1px solid #ddd;padding:.5em;vertical-align:top;text-align:left}} ul{{margin:0;padding-left:1em}}
li{{list-style:none}} .ok{{color:#176117}} .bad{{color:#b00020;font-weight:bold}} .n{{color:#666}}
</style></head><body><h1>mechattr demo</h1>
<p>{"All checks passed." if ok_all else '<span class="bad">Some checks failed.</span>'} One report per
shipped model organism: claims (token maps, heads, links) tested with interventions against random
controls, and the circuit section. Open a report for the details.</p>
<table><tr><th>organism</th><th>claims confirmed</th><th>demo checks</th><th>pages</th><th>time</th></tr>
{"".join(rows)}</table></body></html>
"""
    out = root / "index.html"
    out.write_text(page)
    return out


def run_demo(out: str = "reports/demo", seed: int = 0, organisms: tuple[str, ...] = tuple(DEMO), quiet: bool = False, **kw: Any) -> int:
    from mechattr.report.cli import print_summary, run_report

    root = Path(out)
    ok_all = True
    t_all = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name in organisms:
        cfg = {**DEMO[name], **kw}
        t0 = time.perf_counter()
        print(f"\n== {name} ==")
        rep = run_report(model=f"organism:{name}", task=name, out=root / name, card=True, wrong=True, seed=seed,
                         quiet=quiet, threads=1, device="cpu", **cfg)
        print_summary(rep, root / name, width=WIDTH)
        checks = check(rep)
        for what, ok, nums in checks:
            ok_all &= ok
            print(textwrap.fill(f"  [{'ok' if ok else 'FAILED'}] {what} ({nums})", WIDTH, subsequent_indent="      "))
        seconds = time.perf_counter() - t0
        print(f"  {name}: {seconds:.1f} s")
        results[name] = {"confirmed": len(rep.confirmed()), "claims": len(rep.claims), "checks": checks,
                         "seconds": seconds}
    index = write_index(root, results)
    print(f"\ndemo finished in {time.perf_counter() - t_all:.1f} s; open {index}"
          + ("" if ok_all else "\nSOME CHECKS FAILED (see above)"))
    return 0 if ok_all else 1
