"""Faithfulness of every token attribution method on the shipped organisms (AIEG Table 1 format).

For each organism and every registered method (``method_names()``): LO↓, Comp↑, Suff↓ at
k = 20% (DeYoung et al. 2020; Shrikumar et al. 2017; removal = zero embedding, never BOS),
the ground-truth hit rate (top-1 token is a position in the task's ``source_positions``),
the top-3 rate of the first source position (on ``induction``: the copied token), time per
example with the load average beside it, and a random-ranking row (mean over seeded draws).
A method that cannot run on an organism (e.g. exact Shapley beyond 12 tokens) gets a row
saying why. Writes ``benchmarks/faithfulness.md``; a section ``## Earlier runs`` already
in the output file is carried over unchanged.

    python analyses/faithfulness_table.py [--n 64] [--only induction,ioi] [--out benchmarks/faithfulness.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from mechattr import faithfulness as F
from mechattr import organisms
from mechattr.attribution.tokens import attribute_tokens, method_names
from mechattr.faithfulness.metrics import random_scores, top_mask
from mechattr.faithfulness.removal import removable_mask
from mechattr.inputs import prepare_tokens
from mechattr.io import versions

ISSUE13 = ("deeplift", "gradient_shap", "dig", "udig", "sig", "shapley_sampling", "kernel_shap", "lime", "exact_shapley",
           "reagent", "value_zeroing", "alti")
EARLIER = "## Earlier runs"


def hit_rate(scores: torch.Tensor, removable: torch.Tensor, sources: torch.Tensor) -> float:
    top = top_mask(scores, removable, torch.ones(scores.shape[0], dtype=torch.long)).float().argmax(-1)
    return float((sources == top[:, None]).any(-1).float().mean())


def top3_rate(scores: torch.Tensor, removable: torch.Tensor, sources: torch.Tensor) -> float:
    """Fraction of rows whose 3 highest-scoring removable tokens include ``sources[:, 0]``."""
    top = top_mask(scores, removable, torch.full((scores.shape[0],), 3, dtype=torch.long))
    src = sources[:, 0]
    ok = src >= 0
    got = top[torch.arange(scores.shape[0])[ok], src[ok]]
    return float(got.float().mean()) if ok.any() else float("nan")


def _row(m, tb, rem, meth, seed) -> dict:
    n = tb.tokens.shape[0]
    t = time.perf_counter()
    try:
        res = attribute_tokens(m, tb.tokens, tb.target, method=meth, seed=seed)
    except ValueError as err:  # the method does not apply here (e.g. too many tokens for exact Shapley)
        return {"method": meth, "error": str(err).split(";")[0][:120]}
    except Exception as err:  # noqa: BLE001 - a failing method gets a row, the table still runs
        return {"method": meth, "error": f"failed: {type(err).__name__}: {str(err)[:100]}"}
    dt = time.perf_counter() - t
    load = os.getloadavg()[0]
    s = res.scores.float().cpu()
    f = F.faithfulness(m, tb.tokens, tb.target, s, k=0.2, n_draws=0)
    return {"method": meth, "LO": float(f.log_odds.mean()), "Comp": float(f.comprehensiveness.mean()),
            "Suff": float(f.sufficiency.mean()), "hit": hit_rate(s, rem, tb.source_positions),
            "top3": top3_rate(s, rem, tb.source_positions), "ms": 1000 * dt / n, "load": load}


def table(name: str, n: int, seed: int, n_draws: int, methods: list[str]) -> tuple[list[dict], float]:
    m = organisms.load(name, device="cpu")
    tb = organisms.task(name).sample(n, seed)
    batch = prepare_tokens(m, tb.tokens)
    rem = removable_mask(m, batch, tb.target)
    t0 = time.perf_counter()
    rows = []
    for meth in methods:
        rows.append(_row(m, tb, rem, meth, seed))
        print(f"  {name} {meth}: {rows[-1].get('ms', float('nan')):.1f} ms/example (load {os.getloadavg()[0]:.1f})", flush=True)
    rnd = random_scores(tuple(tb.tokens.shape), seed, n_draws, "cpu")
    fs = [F.faithfulness(m, tb.tokens, tb.target, r, k=0.2, n_draws=0) for r in rnd]
    rows.append({"method": f"random ranking (mean of {n_draws})", "LO": sum(float(f.log_odds.mean()) for f in fs) / n_draws,
                 "Comp": sum(float(f.comprehensiveness.mean()) for f in fs) / n_draws,
                 "Suff": sum(float(f.sufficiency.mean()) for f in fs) / n_draws,
                 "hit": sum(hit_rate(r, rem, tb.source_positions) for r in rnd) / n_draws,
                 "top3": sum(top3_rate(r, rem, tb.source_positions) for r in rnd) / n_draws, "ms": None, "load": None})
    return rows, time.perf_counter() - t0


def _line(r: dict) -> str:
    if "error" in r:
        return f"| {r['method']} | n/a | n/a | n/a | n/a | n/a | | {r['error']} |"
    ms = "" if r["ms"] is None else f"{r['ms']:.1f}"
    load = "" if r["load"] is None else f"{r['load']:.1f}"
    return f"| {r['method']} | {r['LO']:.3f} | {r['Comp']:.3f} | {r['Suff']:.3f} | {r['hit']:.2f} | {r['top3']:.2f} | {ms} | {load} |"


def header(n: int, methods: list[str]) -> list[str]:
    missing = [m for m in ISSUE13 if m not in methods]
    return ["# Faithfulness of token attribution methods on the shipped organisms", "",
            "Format of the AIEG paper's Table 1: LO↓ (log-odds), Comp↑ (comprehensiveness), Suff↓ (sufficiency) at",
            "k = 20% of the removable tokens (BOS never removed), removal = zero token embedding (\"zero padding\"),",
            "ŷ = the task's answer token, mean over examples. Comp = p(ŷ|x) − p(ŷ|x without top-k), Suff = p(ŷ|x) −",
            "p(ŷ|top-k only) (DeYoung et al. 2020), LO = log p(ŷ|x without top-k) − log p(ŷ|x) (Shrikumar et al. 2017).",
            "Hit = fraction of examples whose top-1 token is a ground-truth source position (`TaskBatch.source_positions`).",
            "Top-3 = fraction whose 3 highest-scoring removable tokens include the first source position — on `induction`",
            "and `planted_induction` the copied token (the answer's earlier position); compare with the random row.",
            "ms/ex = wall-clock milliseconds of `attribute_tokens` per example (the whole batch in one call, divided by n),",
            "load = 1-minute load average right after it (the machine is shared: read times against it).",
            "Methods at their defaults (`attribute_tokens`, `seed` = the sample seed); n/a rows say why a method cannot run.",
            f"Generated by `python analyses/faithfulness_table.py --n {n}`.",
            "", f"Methods ({len(methods)}): " + ", ".join(f"`{m}`" for m in methods) + ".",
            "Issue 13 methods not registered at run time: " + (", ".join(f"`{m}`" for m in missing) if missing else "none") + ".", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated organisms (default: all)")
    ap.add_argument("--methods", default="", help="comma-separated methods (default: every registered one)")
    ap.add_argument("--out", default="benchmarks/faithfulness.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    methods = [m for m in a.methods.split(",") if m] or method_names()
    names = [x for x in a.only.split(",") if x] or organisms.names()
    lines = header(a.n, methods)
    t_all = time.perf_counter()
    for name in names:
        rows, total = table(name, a.n, a.seed, a.draws, methods)
        lines += [f"## {name} (n = {a.n}, seed = {a.seed})", "",
                  "| method | LO↓ | Comp↑ | Suff↓ | hit↑ | top-3↑ | ms/ex | load |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [_line(r) for r in rows]
        lines += ["", f"Total {total:.1f} s (attribution and faithfulness evaluation).", ""]
        print(f"{name}: {total:.1f} s", flush=True)
    v = versions()
    lines += ["## Environment", "", f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs), "
              f"torch threads = 1, " + ", ".join(f"{k} {v[k]}" for k in sorted(v)) + f". Whole run {time.perf_counter() - t_all:.0f} s.", ""]
    out = Path(a.out)
    if out.exists():
        old = out.read_text(encoding="utf-8")
        if EARLIER in old:
            lines += [old[old.index(EARLIER):].rstrip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
