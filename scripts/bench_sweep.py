"""Sweep benchmark: examples/s (local vs Ray), peak memory as the dataset grows 10x, overhead vs a plain loop.

    python scripts/bench_sweep.py                 # sizes for a shared 2-core CPU (minutes)
    python scripts/bench_sweep.py --scale 10      # 10x every dataset (10^5 AtP prompts per run, ...)
    python scripts/bench_sweep.py --write         # also write benchmarks/sweeps.md
    python scripts/bench_sweep.py --big 100000 --big-ig 20000   # also AtP (local, ray) and IG (local) at those sizes

Every measurement runs in its own subprocess (clean peak RSS: ru_maxrss). Model: the
induction organism; IG with n_steps=16, AtP (``heads``) per batch (``per_example=False``)
and per example (one call per example: the direct per-example numbers).
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
import json, resource, sys, time, torch
torch.set_num_threads(1)
mode, data, analysis, opts, bs, out, engine = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
import mechattr
if mode in ("sweep", "sweep_loaded"):  # sweep_loaded: the model is loaded before the clock starts, as in the loop
    spec = "organism:induction" if mode == "sweep" else mechattr.load_model("organism:induction", device="cpu")
    t0 = time.perf_counter()
    r = mechattr.sweep(spec, data, analysis, out, options=opts, batch_size=bs, engine=engine, num_workers=2, progress=False)
    dt, n = time.perf_counter() - t0, r.n_run
else:  # the plain loop: the same function on the same batches of the task's tensors, no reading, no writing
    from mechattr import organisms, targets
    n = sum(1 for _ in open(data))
    b = organisms.task("induction").sample(n, seed=0)  # the same prompts as sweep-data's first chunk (n <= 10000)
    m = mechattr.load_model("organism:induction", device="cpu")
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        tg = targets.logit(b.answers[i:i + bs], pos=-1)
        if analysis == "tokens":
            mechattr.attribute_tokens(m, b.tokens[i:i + bs], tg, **opts)
        else:
            mechattr.attribute_heads(m, b.tokens[i:i + bs], tg, corrupted=b.corrupted[i:i + bs])
    dt = time.perf_counter() - t0
print(json.dumps({"n": n, "seconds": dt, "ex_per_s": n / dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, data: Path, analysis: str, opts: dict, bs: int, engine: str = "local") -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        p = subprocess.run([sys.executable, "-c", CHILD, mode, str(data), analysis, json.dumps(opts), str(bs), out + "/o", engine],
                           capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="runs of the loop and the sweep (model given) in the overhead rows; fastest kept")
    ap.add_argument("--big", type=int, default=0, help="also AtP per batch at this many prompts, local and ray")
    ap.add_argument("--big-ig", type=int, default=0, help="also IG at this many prompts, local")
    a = ap.parse_args()
    from mechattr.io import versions
    from mechattr.sweep.datasets import write_organism_dataset

    s = lambda n: int(n * a.scale)  # noqa: E731
    tmp = Path(tempfile.mkdtemp())
    sizes = sorted({s(1000), s(2000), s(10000), s(20000)} | ({a.big} if a.big else set()) | ({a.big_ig} if a.big_ig else set()))
    data = {n: write_organism_dataset("induction", n, tmp / f"d{n}.jsonl", seed=0) for n in sizes}
    ig, atp_b, atp_e = {"method": "ig", "n_steps": 16}, {"per_example": False}, {}
    rows = []
    for name, analysis, opts, n, bs in [("IG (n_steps=16)", "tokens", ig, s(2000), 64),
                                         ("AtP per batch", "heads", atp_b, s(20000), 256),
                                         ("AtP per example", "heads", atp_e, s(1000), 64)]:
        for engine in ("local", "ray"):
            r = run("sweep", data[n], analysis, opts, bs, engine)
            rows.append((name, engine, n, r))
            print(name, engine, n, r, flush=True)
    mem = []
    for n in (s(2000), s(20000)):
        r = run("sweep", data[n], "heads", atp_b, 256)
        mem.append((n, r))
        print("memory", n, r, flush=True)
    over = []
    for name, analysis, opts, n, bs in [("IG (n_steps=16)", "tokens", ig, s(1000), 64), ("AtP per batch", "heads", atp_b, s(10000), 256)]:
        loop_opts = {k: v for k, v in opts.items() if k != "per_example"}
        # loop and sweep (model given) interleaved a.reps times, the fastest of each kept (a shared, loaded CPU)
        r_loop, r_loaded = None, None
        for _ in range(a.reps):
            r_loop = min(filter(None, [r_loop, run("loop", data[n], analysis, loop_opts, bs)]), key=lambda r: r["seconds"])
            r_loaded = min(filter(None, [r_loaded, run("sweep_loaded", data[n], analysis, opts, bs)]), key=lambda r: r["seconds"])
        r_sweep = run("sweep", data[n], analysis, opts, bs)
        over.append((name, n, r_loop, r_loaded, r_sweep))
        print("overhead", name, n, r_loop, r_loaded, r_sweep, flush=True)
    big = []
    for name, analysis, opts, n, bs, engines in [("AtP per batch", "heads", atp_b, a.big, 256, ("local", "ray")),
                                                  ("IG (n_steps=16)", "tokens", ig, a.big_ig, 64, ("local",))]:
        for engine in engines if n else ():
            r = run("sweep", data[n], analysis, opts, bs, engine)
            big.append((name, engine, n, r))
            print("big", name, engine, n, r, flush=True)
    md = [
        "# Sweeps: throughput, memory, overhead",
        "",
        f"`python scripts/bench_sweep.py --write` (scale {a.scale}) on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs: numbers are noisy), torch threads 1 per process, "
        f"versions {json.dumps(versions())}. Model: the induction organism (2 layers, 4 heads, 24 tokens). "
        "Times include loading the model, checking the dataset and writing shards (for Ray: starting Ray and its actors).",
        "",
        "## examples/s",
        "",
        "| analysis | engine | prompts | seconds | examples/s | peak RSS (driver, MB) |",
        "|---|---|---|---|---|---|",
        *[f"| {nm} | {eng} | {n} | {r['seconds']:.1f} | {r['ex_per_s']:.0f} | {r['peak_rss_mb']:.0f} |" for nm, eng, n, r in rows],
        "",
        "## peak memory as the dataset grows 10x (AtP per batch, batch_size 256, local)",
        "",
        "| prompts | peak RSS (MB) | examples/s |",
        "|---|---|---|",
        *[f"| {n} | {r['peak_rss_mb']:.0f} | {r['ex_per_s']:.0f} |" for n, r in mem],
        "",
        "## overhead of the sweep machinery vs calling the function in a loop",
        "",
        "The loop calls the same function on the same batches of ready-made token tensors (its clock starts after "
        "its model load). The sweep also reads and checks the JSONL, tokenizes, writes Parquet shards (fsync'd) and "
        "the manifest: *sweep (model given)* is `mechattr.sweep(model, ...)` with the model loaded before the clock "
        "starts, as in the loop (the machinery alone); *sweep (spec)* also loads the model from its spec (one run). Loop and "
        f"sweep (model given) ran {a.reps} times each, interleaved, each in a fresh process; the fastest of each is shown.",
        "",
        "| analysis | prompts | loop examples/s | sweep (model given) examples/s | overhead | sweep (spec) examples/s | overhead |",
        "|---|---|---|---|---|---|---|",
        *[f"| {nm} | {n} | {lo['ex_per_s']:.0f} | {ld['ex_per_s']:.0f} | {100 * (ld['seconds'] / lo['seconds'] - 1):+.0f}% "
          f"| {sw['ex_per_s']:.0f} | {100 * (sw['seconds'] / lo['seconds'] - 1):+.0f}% |" for nm, n, lo, ld, sw in over],
        "",
    ]
    if big:
        md += ["## large runs", "", "| analysis | engine | prompts | seconds | examples/s | peak RSS (driver, MB) |", "|---|---|---|---|---|---|",
               *[f"| {nm} | {eng} | {n} | {r['seconds']:.1f} | {r['ex_per_s']:.0f} | {r['peak_rss_mb']:.0f} |" for nm, eng, n, r in big], ""]
    target = Path(__file__).resolve().parents[1].joinpath("benchmarks", "sweeps.md")
    old = target.read_text() if target.exists() else ""
    if not big and "## large runs" in old:  # kept from the run that made them (--big), said so
        kept = old[old.index("## large runs"):old.index("## Findings") if "## Findings" in old else len(old)].rstrip()
        md += [kept.replace("## large runs", "## large runs (kept from an earlier --big run)", 1) if "kept from" not in kept else kept, ""]
    if target.exists() and "## Findings" in target.read_text():  # the hand-written findings are kept
        md += [target.read_text()[target.read_text().index("## Findings"):].rstrip(), ""]
    text = "\n".join(md)
    print(text)
    if a.write:
        target.write_text(text)


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.0f}s")
