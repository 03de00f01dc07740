"""Sweep benchmark: examples/s (local vs Ray), peak memory as the dataset grows 10x, overhead vs a plain loop.

    python scripts/bench_sweep.py                 # sizes for a shared 2-core CPU (minutes)
    python scripts/bench_sweep.py --scale 10      # 10x every dataset (10^5 AtP prompts per run, ...)
    python scripts/bench_sweep.py --write         # also write benchmarks/sweeps.md
    python scripts/bench_sweep.py --big 100000 --big-ig 100000  # also AtP and IG (local, ray) at those sizes
    python scripts/bench_sweep.py --only overhead --reps 5 --write  # one section; the others are kept from the file

Every measurement runs in its own subprocess (clean peak RSS: ru_maxrss) and records its
wall time, its CPU time (all its threads: ``time.process_time``) and the load average
(``os.getloadavg``) before and after. Model: the induction organism; IG with n_steps=16,
AtP (``heads``) per batch (``per_example=False``) and per example (one call per example:
the direct per-example numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time, torch
torch.set_num_threads(1)
mode, data, analysis, opts, bs, out, engine = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
import mechattr
if mode == "sweep_noop":  # the machinery alone: the same sweep with an analysis that returns rows of the same shape at once
    from mechattr.sweep import analyses as A

    def noop(model, batch, **_):
        if analysis == "tokens":
            return A.Rows(torch.zeros(len(batch), batch.tokens.shape[1]), None,
                          {"tokens": batch.str_tokens, "completeness_error": [0.0] * len(batch)})
        c = model.cfg
        return A.Rows(torch.zeros(1, c.n_layers * c.n_heads), [f"L{i}H{j}" for i in range(c.n_layers) for j in range(c.n_heads)],
                      {"n_examples": [len(batch)]}, per_batch=True)

    A.register("bench_noop")(noop)
    analysis, opts, mode = "bench_noop", {}, "sweep_loaded"
if mode in ("sweep", "sweep_loaded"):  # sweep_loaded: the model is loaded before the clock starts, as in the loop
    spec = "organism:induction" if mode == "sweep" else mechattr.load_model("organism:induction", device="cpu")
    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    r = mechattr.sweep(spec, data, analysis, out, options=opts, batch_size=bs, engine=engine, num_workers=2, progress=False)
    dt, cpu, n = time.perf_counter() - t0, time.process_time() - c0, r.n_run
else:  # the plain loop: the same function on the same batches of the task's tensors, no reading, no writing
    from mechattr import organisms, targets
    n = sum(1 for _ in open(data))
    b = organisms.task("induction").sample(n, seed=0)  # the same prompts as sweep-data's first chunk (n <= 10000)
    m = mechattr.load_model("organism:induction", device="cpu")
    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    for i in range(0, n, bs):
        tg = targets.logit(b.answers[i:i + bs], pos=-1)
        if analysis == "tokens":
            mechattr.attribute_tokens(m, b.tokens[i:i + bs], tg, **opts)
        else:
            mechattr.attribute_heads(m, b.tokens[i:i + bs], tg, corrupted=b.corrupted[i:i + bs])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"n": n, "seconds": dt, "cpu_s": cpu, "ex_per_s": n / dt, "load": [load0, os.getloadavg()[0]],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, data: Path, analysis: str, opts: dict, bs: int, engine: str = "local") -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        p = subprocess.run([sys.executable, "-c", CHILD, mode, str(data), analysis, json.dumps(opts), str(bs), out + "/o", engine],
                           capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


SECTIONS = ("throughput", "memory", "overhead", "big")
HEADINGS = {"throughput": "## examples/s", "memory": "## peak memory as the dataset grows 10x (AtP per batch, batch_size 256, local)",
            "overhead": "## overhead of the sweep machinery vs calling the function in a loop", "big": "## large runs"}


def _load(r: dict) -> str:
    return "{:.1f}→{:.1f}".format(*r["load"]) if "load" in r else "?"


def _old_sections(text: str) -> dict[str, str]:
    """The sections of an earlier benchmarks/sweeps.md, by key (kept when this run skips them), and the findings."""
    out = {}
    for key, head in [*HEADINGS.items(), ("findings", "## Findings")]:
        i = next((text.index(h) for h in (head, head + " (kept") if h in text), -1)
        if i < 0:
            continue
        j = min([k for k in (text.find("\n## ", i + 1),) if k >= 0] or [len(text)])
        out[key] = text[i:j].rstrip()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="runs of the loop and the sweep (model given) in the overhead rows; fastest kept")
    ap.add_argument("--big", type=int, default=0, help="also AtP per batch at this many prompts, local and ray")
    ap.add_argument("--big-ig", type=int, default=0, help="also IG at this many prompts, local and ray")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if not only <= set(SECTIONS):
        raise SystemExit(f"--only takes {','.join(SECTIONS)}, got {a.only!r}")
    from mechattr.io import versions
    from mechattr.sweep.datasets import write_organism_dataset

    s = lambda n: int(n * a.scale)  # noqa: E731
    tmp = Path(tempfile.mkdtemp())
    sizes = sorted({s(1000), s(2000), s(10000), s(20000)} | ({a.big} if a.big else set()) | ({a.big_ig} if a.big_ig else set()))
    data = {n: write_organism_dataset("induction", n, tmp / f"d{n}.jsonl", seed=0) for n in sizes}
    ig, atp_b, atp_e = {"method": "ig", "n_steps": 16}, {"per_example": False}, {}
    run_row = "| {} | {} | {} | {:.1f} | {:.0f} | {:.0f} | {} |"
    sec: dict[str, list[str]] = {}
    if "throughput" in only:
        rows = []
        for name, analysis, opts, n, bs in [("IG (n_steps=16)", "tokens", ig, s(2000), 64),
                                             ("AtP per batch", "heads", atp_b, s(20000), 256),
                                             ("AtP per example", "heads", atp_e, s(1000), 64)]:
            for engine in ("local", "ray"):
                r = run("sweep", data[n], analysis, opts, bs, engine)
                rows.append((name, engine, n, r))
                print(name, engine, n, r, flush=True)
        sec["throughput"] = [HEADINGS["throughput"], "", "| analysis | engine | prompts | seconds | examples/s | peak RSS (driver, MB) | load avg |",
                             "|---|---|---|---|---|---|---|",
                             *[run_row.format(nm, eng, n, r["seconds"], r["ex_per_s"], r["peak_rss_mb"], _load(r)) for nm, eng, n, r in rows]]
    if "memory" in only:
        mem = []
        for n in (s(2000), s(20000)):
            r = run("sweep", data[n], "heads", atp_b, 256)
            mem.append((n, r))
            print("memory", n, r, flush=True)
        sec["memory"] = [HEADINGS["memory"], "", "| prompts | peak RSS (MB) | examples/s | load avg |", "|---|---|---|---|",
                         *[f"| {n} | {r['peak_rss_mb']:.0f} | {r['ex_per_s']:.0f} | {_load(r)} |" for n, r in mem]]
    if "overhead" in only:
        over = []
        for name, analysis, opts, n, bs in [("IG (n_steps=16)", "tokens", ig, s(1000), 64), ("AtP per batch", "heads", atp_b, s(10000), 256)]:
            loop_opts = {k: v for k, v in opts.items() if k != "per_example"}
            # loop and sweep (model given) interleaved a.reps times, each in a fresh process; the fastest wall time and
            # the smallest CPU time of each kept (a shared, loaded CPU)
            loops, loaded, noops = [], [], []
            for _ in range(a.reps):
                loops.append(run("loop", data[n], analysis, loop_opts, bs))
                loaded.append(run("sweep_loaded", data[n], analysis, opts, bs))
                noops.append(run("sweep_noop", data[n], analysis, opts, bs))
                print("overhead", name, n, loops[-1], loaded[-1], noops[-1], flush=True)
            r_sweep = run("sweep", data[n], analysis, opts, bs)
            over.append((name, n, loops, loaded, noops, r_sweep))
            print("overhead", name, n, "spec", r_sweep, flush=True)
        pct = lambda x, y: f"{100 * (x / y - 1):+.1f}%"  # noqa: E731
        lines, alone = [], []
        for nm, n, loops, loaded, noops, sw in over:
            lo, ld = min(loops, key=lambda r: r["seconds"]), min(loaded, key=lambda r: r["seconds"])
            lc, sc = min(r["cpu_s"] for r in loops), min(r["cpu_s"] for r in loaded)
            lines.append(f"| {nm} | {n} | {lo['seconds']:.2f} ({_load(lo)}) | {ld['seconds']:.2f} ({_load(ld)}) | {pct(ld['seconds'], lo['seconds'])} "
                         f"| {lc:.2f} | {sc:.2f} | {pct(sc, lc)} | {sw['seconds']:.2f} | {pct(sw['seconds'], lo['seconds'])} |")
            nw, nc = min(r["seconds"] for r in noops), min(r["cpu_s"] for r in noops)
            alone.append(f"| {nm} | {n} | {nw:.2f} | {nc:.2f} | {lc:.2f} | {100 * nc / lc:.1f}% |")
        runs = [f"| {nm} | {i + 1} | {lo['seconds']:.2f} / {lo['cpu_s']:.2f} ({_load(lo)}) | {ld['seconds']:.2f} / {ld['cpu_s']:.2f} ({_load(ld)}) |"
                for nm, n, loops, loaded, noops, sw in over for i, (lo, ld) in enumerate(zip(loops, loaded))]
        sec["overhead"] = [
            HEADINGS["overhead"], "",
            "The loop calls the same function on the same batches of ready-made token tensors (its clock starts after "
            "its model load). The sweep also reads and checks the JSONL, tokenizes, writes Parquet shards (fsync'd) and "
            "the manifest: *sweep (model given)* is `mechattr.sweep(model, ...)` with the model loaded before the clock "
            "starts, as in the loop (the machinery alone); *sweep (spec)* also loads the model from its spec (one run). Loop and "
            f"sweep (model given) ran {a.reps} times each, interleaved, each in a fresh process: the fastest wall time of each "
            "(load average at its start→end in brackets) and the smallest CPU time (all threads of the process: the work "
            "the machinery adds, whatever the other jobs on the machine do).", "",
            "| analysis | prompts | loop wall s | sweep (model given) wall s | overhead (wall) | loop CPU s | sweep CPU s | overhead (CPU) "
            "| sweep (spec) wall s | overhead |",
            "|---|---|---|---|---|---|---|---|---|---|", *lines, "",
            "The machinery alone: the same sweep (model given) with a no-op analysis that returns rows of the same shape "
            "at once (reading, checking, tokenizing, grouping, writing, setup), smallest of the runs, against the loop's "
            "CPU time. Small absolute times, so much less disturbed by the machine's load than the difference of two "
            "large ones; it leaves out what running both at once costs (GIL, caches).", "",
            "| analysis | prompts | no-op sweep wall s | no-op sweep CPU s | loop CPU s | machinery / loop (CPU) |",
            "|---|---|---|---|---|---|", *alone, "",
            "Every run (wall s / CPU s, load average start→end):", "",
            "| analysis | run | loop | sweep (model given) |", "|---|---|---|---|", *runs]
    big = []
    for name, analysis, opts, n, bs in [("AtP per batch", "heads", atp_b, a.big, 256), ("IG (n_steps=16)", "tokens", ig, a.big_ig, 64)]:
        for engine in ("local", "ray") if n and "big" in only else ():
            r = run("sweep", data[n], analysis, opts, bs, engine)
            big.append((name, engine, n, r))
            print("big", name, engine, n, r, flush=True)
    if big:
        sec["big"] = [HEADINGS["big"], "", "| analysis | engine | prompts | seconds | examples/s | peak RSS (driver, MB) | load avg |",
                      "|---|---|---|---|---|---|---|",
                      *[run_row.format(nm, eng, n, r["seconds"], r["ex_per_s"], r["peak_rss_mb"], _load(r)) for nm, eng, n, r in big]]
    target = Path(__file__).resolve().parents[1].joinpath("benchmarks", "sweeps.md")
    old = _old_sections(target.read_text()) if target.exists() else {}
    md = [
        "# Sweeps: throughput, memory, overhead",
        "",
        f"`python scripts/bench_sweep.py --write` (scale {a.scale}) on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs: numbers are noisy; the load average is beside each figure), "
        f"torch threads 1 per process, versions {json.dumps(versions())}. Model: the induction organism (2 layers, 4 heads, 24 tokens). "
        "Times include checking the dataset and writing shards, and (unless said otherwise) loading the model "
        "(for Ray: starting Ray and its actors).",
        "",
    ]
    for key in SECTIONS:
        if key in sec:
            md += [*sec[key], ""]
        elif key in old:  # kept from the run that made it, said so
            kept = old[key]
            md += [kept if "(kept" in kept.splitlines()[0] else kept.replace(HEADINGS[key], HEADINGS[key] + " (kept from an earlier run)", 1), ""]
    if "findings" in old:  # the hand-written findings are kept
        md += [old["findings"], ""]
    text = "\n".join(md)
    print(text)
    if a.write:
        target.write_text(text)


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.0f}s")
