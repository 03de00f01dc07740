"""``make demo``: the main job on the shipped induction organisms, with its own check.

For each organism (``induction``, trained; ``planted_induction``, analytic weights) it runs
:func:`mechattr.validate` on a seeded task batch with the card's circuit roles and one
deliberately wrong claim (a seeded random head outside the circuit) and writes
``<out>/<organism>/report.html`` + ``report.json`` (``<out>/report.html`` is the induction
one). It then checks the verdicts: the card's heads confirmed, the copied-token attribution
confirmed (token claim of the primary method, ground-truth hit rate above random), the
wrong claim not confirmed. Exit status 1 when a check fails.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

DEMO = {
    "induction": {"n": 32, "methods": "ig,input_x_gradient,saliency,attention,occlusion", "circuit": True},
    "planted_induction": {"n": 16, "methods": "ig,input_x_gradient,attention", "circuit": True},
}


def check(rep: Any) -> list[tuple[str, bool, str]]:
    """``(what, ok, numbers)`` for the demo's expected verdicts."""
    out = []
    for c in rep.claims:
        if c.id.endswith("(card)"):
            out.append((f"documented {c.id} confirmed", c.verdict == "confirmed", c.verdict))
        if c.id.startswith("heads:wrong"):
            out.append((f"{c.id} not confirmed", c.verdict != "confirmed", c.verdict))
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
            out.append(("circuit faithfulness >= 0.8", f is not None and f >= 0.8, f"{len(circ['circuit'])} edges, faithfulness {f}"))
    hit = next((t for t in tok.tests if t.test.startswith("ground-truth")), None)
    if hit is not None:
        out.append((f"{primary} top token is the copied token above chance", hit.confirmed,
                    f"hit rate {hit.effect:.2f} vs random q95 {hit.threshold:.2f}"))
    return out


def run_demo(out: str = "reports/demo", seed: int = 0, organisms: tuple[str, ...] = tuple(DEMO), quiet: bool = False, **kw: Any) -> int:
    from mechattr.report.cli import print_summary, run_report

    root = Path(out)
    ok_all = True
    t_all = time.perf_counter()
    for name in organisms:
        cfg = {**DEMO[name], **kw}
        t0 = time.perf_counter()
        print(f"\n== {name} ==")
        rep = run_report(model=f"organism:{name}", task=name, out=root / name, card=True, wrong=True, seed=seed,
                         quiet=quiet, threads=1, device="cpu", **cfg)
        print_summary(rep, root / name)
        for what, ok, nums in check(rep):
            ok_all &= ok
            print(f"  [{'ok' if ok else 'FAILED'}] {what} ({nums})")
        print(f"  {name}: {time.perf_counter() - t0:.1f} s")
        if name == organisms[0]:
            for f in ("report.html", "report.json"):
                shutil.copyfile(root / name / f, root / f)
    print(f"\ndemo finished in {time.perf_counter() - t_all:.1f} s; open {root / 'report.html'}"
          + ("" if ok_all else "\nSOME CHECKS FAILED (see above)"))
    return 0 if ok_all else 1
