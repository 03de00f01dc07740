"""Benchmark at model scale: IG at 32–1024 tokens, memory budgets, generation, validate.

On a GPT-2-small-shaped HookedTransformer (12 layers, d_model 768, 12 heads, d_mlp 3072,
vocabulary 50257, n_ctx 1024, random init, built from HookedTransformerConfig via
``mechattr.runtime.tl``; TransformerLens 3 venv), each measurement in its own subprocess
(so peak RSS, ``resource.getrusage``, is that case's alone):

* ``ig``: ``attribute_tokens(method="ig")`` on one sequence of 32/128/256/512/1024 tokens vs
  Captum ``LayerIntegratedGradients`` (Gauss-Legendre, same steps and baseline token) at
  each ``internal_batch_size`` that fits in memory, its best kept; times as multiples of
  the physical unit ``n_steps × (forward + backward)`` of the same one-row batch (the
  house unit of scripts/bench_archs.py: full logits; also the "trunk" unit that unembeds
  only the target position), interleaved rounds, best round; peak RSS growth per call.
* ``budget``: IG at 1024 tokens under ``max_memory`` 1, 2, 4 GB: the plan (rows,
  recomputation), time and peak RSS growth, with glibc's default malloc and with a fixed
  mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``, so freed tensors leave RSS).
* ``generation``: ``attribute_generation`` of 32 teacher-forced tokens after a 32-token
  prompt vs 32 separate ``attribute_tokens`` calls (one per generated token, on its prefix).
* ``validate``: 8 prompts × 32 tokens, default settings (and ``profile="fast"`` where the
  installed ``validate`` has it), "before" from a git worktree of ``--before`` (PYTHONPATH)
  and "after" from this checkout; a case that runs past ``--validate-timeout`` is reported
  as such.

Results are cached as JSON per case under ``--cache`` so partial runs (``--sections``,
``--quick``) add up; the markdown is rendered from the cache. Load average printed beside
each figure. Usage::

    python scripts/bench_scale.py [--sections ig,budget,generation,validate] [--quick]
        [--rounds 2] [--threads 2] [--before c6a5cc4] [--out benchmarks/scale.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (32, 128, 256, 512, 1024)


# ----------------------------------------------------------------------------- worker side
def load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def gpt2_small(n_ctx: int = 1024):
    from mechattr.runtime.tl import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=n_ctx,
                                  act_fn="gelu_new", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():  # every call differentiates w.r.t. activations only
        p.requires_grad_(False)
    return model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def units(model, toks, tid: int):
    """(house unit: full forward + backward to hook_embed; trunk unit: the target position only)."""
    import torch

    hp = model.hook_dict["hook_embed"]

    def fb(trunk: bool):
        leaf = {}

        def grab(mod, inp, out):
            leaf["x"] = out.detach().requires_grad_(True)
            return leaf["x"]

        h = hp.register_forward_hook(grab)
        try:
            if trunk:
                resid = model(toks, stop_at_layer=model.cfg.n_layers)
                out = model.unembed(model.ln_final(resid[:, -1:]))[:, 0, tid]
            else:
                out = model(toks)[:, -1, tid]
            torch.autograd.grad(out.sum(), leaf["x"])
        finally:
            h.remove()

    return (lambda: fb(False)), (lambda: fb(True))


def work_ig(c: dict) -> dict:
    import torch
    from captum.attr import LayerIntegratedGradients

    from mechattr import targets
    from mechattr.attribution.tokens import attribute_tokens
    from mechattr.runtime.chunks import grad_plan

    model, pos, S = gpt2_small(), c["pos"], c["n_steps"]
    toks = torch.randint(3, 50257, (1, pos), generator=torch.Generator().manual_seed(0))
    tid = 11
    target = targets.logit(torch.tensor([tid]))
    house, trunk = units(model, toks, tid)
    ours = lambda: attribute_tokens(model, toks, target, "ig", n_steps=S, baseline=0)  # noqa: E731

    def fwd(tok):
        return model(tok)[:, -1, tid]

    lig = LayerIntegratedGradients(fwd, model.hook_dict["hook_embed"])

    def captum(ibs):
        return lambda: lig.attribute(toks, baselines=torch.zeros_like(toks), n_steps=S, method="gausslegendre", internal_batch_size=ibs)

    house(), trunk()  # warm-up
    base = max(rss(), peak())
    r_ours = ours()
    out = {"ours_peak": peak() - base, "plan": grad_plan(model, pos, n_read=1).__dict__}
    calls = {"house": house, "trunk": trunk, "ours": ours, **{f"captum{b}": captum(b) for b in c["captum_ibs"]}}
    best: dict[str, float] = {}
    for r in range(c["rounds"]):
        for name, fn in calls.items():
            t = timed(fn)
            best[name] = min(best.get(name, float("inf")), t)
            if r == 0 and name.startswith("captum"):
                out[f"{name}_peak"] = peak() - base  # ≥ this call's growth; exact when it exceeds all before
        out.setdefault("load", []).append(load_avg())
    a = lig.attribute(toks, baselines=torch.zeros_like(toks), n_steps=S, method="gausslegendre", internal_batch_size=c["captum_ibs"][0])
    out["max_diff_vs_captum"] = float((r_ours.scores[0] - a.sum(-1)[0]).abs().max())
    out["best"] = best
    return out


def work_budget(c: dict) -> dict:
    import torch

    from mechattr import targets
    from mechattr.attribution.tokens import attribute_tokens
    from mechattr.runtime.chunks import grad_plan

    model, pos = gpt2_small(), c["pos"]
    toks = torch.randint(3, 50257, (1, pos), generator=torch.Generator().manual_seed(0))
    target = targets.logit(torch.tensor([11]))
    attribute_tokens(model, toks[:, :32], target, "ig", n_steps=2, baseline=0)  # warm-up
    base = max(rss(), peak())
    t = timed(lambda: attribute_tokens(model, toks, target, "ig", n_steps=c["n_steps"], baseline=0, max_memory=c["budget"]))
    plan = grad_plan(model, pos, n_read=1, max_memory=c["budget"])
    return {"peak": peak() - base, "seconds": t, "rows": plan.rows, "checkpoint": plan.checkpoint, "row_bytes": plan.row_bytes,
            "load": load_avg(), "base_rss": base}


def work_generation(c: dict) -> dict:
    import torch

    from mechattr import targets
    from mechattr.attribution.tokens import attribute_generation, attribute_tokens

    model = gpt2_small()
    g = torch.Generator().manual_seed(0)
    P, N, S = c["prompt"], c["new"], c["n_steps"]
    prompt = torch.randint(3, 50257, (P,), generator=g)
    cont = torch.randint(3, 50257, (N,), generator=g)
    full = torch.cat([prompt, cont])

    m = c.get("method", "ig")
    kw = {"n_steps": S, "baseline": 0} if m == "ig" else {}

    def shared():
        return attribute_generation(model, prompt, cont, method=m, **kw)

    def separate():
        return [attribute_tokens(model, full[: P + i][None], targets.logprob(int(cont[i])), m, **kw) for i in range(N)]

    house, trunk = units(model, full[None, :-1], 11)
    house()
    best: dict[str, float] = {}
    outs = {}
    for _ in range(c["rounds"]):
        for name, fn in {"house": house, "shared": shared, "separate": separate}.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    diff = max(float((outs["shared"].matrix[i, : P + i] - outs["separate"][i].scores[0]).abs().max()) for i in range(N))
    return {"best": best, "max_diff": diff, "load": load_avg()}


def work_validate(c: dict) -> dict:
    import inspect

    import torch

    import mechattr
    from mechattr import targets

    model = gpt2_small(n_ctx=64)
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(3, 50257, (8, 32), generator=g)
    corr = torch.randint(3, 50257, (8, 32), generator=g)
    target = targets.logit_diff(torch.randint(3, 50257, (8,), generator=g), torch.randint(3, 50257, (8,), generator=g))
    kw = {}
    if c["profile"] != "default":
        if "profile" not in inspect.signature(mechattr.validate).parameters:
            return {"skipped": f"this validate has no profile= (signature: {list(inspect.signature(mechattr.validate).parameters)[:30]})"}
        kw["profile"] = c["profile"]
    t0 = time.perf_counter()
    rep = mechattr.validate(model, toks, target, corrupted=corr, **kw)
    secs = time.perf_counter() - t0
    verdicts = {}
    for cl in getattr(rep, "claims", []) or []:
        key = getattr(cl, "id", None) or str(getattr(cl, "claim", cl))[:80]
        verdicts[str(key)] = str(getattr(cl, "outcome", None) or getattr(cl, "verdict", ""))[:40]
    return {"seconds": secs, "load": load_avg(), "n_claims": len(verdicts), "verdicts": verdicts, "peak": peak(),
            "timings": getattr(rep, "timings", None)}


WORKERS = {"ig": work_ig, "budget": work_budget, "generation": work_generation, "validate": work_validate}


# ----------------------------------------------------------------------------- parent side
def run_case(kind: str, case: dict, a: argparse.Namespace, env_extra: dict | None = None, pythonpath: str | None = None, timeout: int = 1800) -> dict:
    key = kind + "-" + "-".join(f"{k}={v}" for k, v in sorted(case.items()) if k != "rounds")
    path = Path(a.cache) / f"{key}.json"
    if path.exists() and not a.fresh:
        return json.loads(path.read_text())
    if a.render_only:
        return {"error": "not run (--render-only: no cached result)"}
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": pythonpath or str(ROOT), "OMP_NUM_THREADS": str(a.threads),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--case", json.dumps(case), "--threads", str(a.threads)]
    print(f"[{time.strftime('%H:%M:%S')}] {key} (load {load_avg()})", flush=True)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=pythonpath or ROOT)
        out = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {"error": res.stderr[-800:]}
    except subprocess.TimeoutExpired:
        out = {"timeout": timeout}
    out["wall"] = time.perf_counter() - t0
    Path(a.cache).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    print("   ", json.dumps(out)[:400], flush=True)
    return out


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def section_ig(a) -> list[str]:
    S = 4 if a.quick else 8
    lines = ["## IG vs Captum, one sequence, GPT-2-small shape", "",
             f"n_steps = {S} (Gauss-Legendre), baseline token 0, target = logit of one token at the last position. "
             "unit = n_steps × (one forward + backward of the same one-row batch to `hook_embed`): *house* = full logits "
             "(as scripts/bench_archs.py), *trunk* = unembedding at the target position only. Captum: every "
             "`internal_batch_size` listed, best kept. Peak = growth of the process's peak RSS during the first call "
             "(Captum's is a lower bound when below ours).", "",
             "| tokens | plan (rows, recompute) | ours s | ours / unit (house) | ours / unit (trunk) | Captum best s (ibs) | Captum / unit (house) | Captum ÷ ours | peak ours | peak Captum | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pos in (LENGTHS[:3] if a.quick else LENGTHS):
        ibs = [b for b in (1, 2, 4, S) if b * pos <= 2048] or [1]
        r = run_case("ig", {"pos": pos, "n_steps": S, "captum_ibs": ibs, "rounds": a.rounds}, a)
        if "best" not in r:
            lines.append(f"| {pos} | – | {r.get('error', r.get('timeout', '?'))!s:.80} |")
            continue
        b = r["best"]
        cap = min((k for k in b if k.startswith("captum")), key=lambda k: b[k])
        lines.append(f"| {pos} | {r['plan']['rows']}, {r['plan']['checkpoint']} | {b['ours']:.2f} | {b['ours'] / (S * b['house']):.2f}× | "
                     f"{b['ours'] / (S * b['trunk']):.2f}× | {b[cap]:.2f} ({cap[6:]}) | {b[cap] / (S * b['house']):.2f}× | "
                     f"{b[cap] / b['ours']:.2f}× | {gb(r['ours_peak'])} | {gb(r.get(cap + '_peak', 0))} | {' '.join(r['load'])} |")
    return lines


def section_budget(a) -> list[str]:
    S = 1 if a.quick else 4
    lines = ["## Peak memory under `max_memory`, IG at 1024 tokens", "",
             f"n_steps = {S}; peak = growth of peak RSS during the call over the process after warm-up (weights, "
             "torch and a 32-token warm-up call already resident: *RSS before*). *default malloc*: glibc as installed; *mmap 128k*: "
             "`MALLOC_MMAP_THRESHOLD_=131072` (freed tensors go back to the OS, so RSS follows live tensors).", "",
             "| max_memory | rows | recompute | per-row estimate | RSS before | peak (default malloc) | s | peak (mmap 128k) | s | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for budget in ("1GB", "2GB", "4GB"):
        d = run_case("budget", {"pos": 1024, "n_steps": S, "budget": budget, "malloc": "default"}, a)
        if a.quick and budget != "1GB":
            m = {"peak": float("nan"), "seconds": float("nan")}  # --quick: the fixed-threshold run at 1 GB only
        else:
            m = run_case("budget", {"pos": 1024, "n_steps": S, "budget": budget, "malloc": "mmap"}, a, {"MALLOC_MMAP_THRESHOLD_": "131072"})
        if "peak" not in d or "peak" not in m:
            lines.append(f"| {budget} | {d.get('error', d.get('timeout', ''))!s:.60} | {m.get('error', m.get('timeout', ''))!s:.60} |")
            continue
        lines.append(f"| {budget} | {d['rows']} | {d['checkpoint']} | {gb(d['row_bytes'])} | {gb(d['base_rss'])} | {gb(d['peak'])} | {d['seconds']:.1f} | "
                     f"{gb(m['peak'])} | {m['seconds']:.1f} | {d['load']} |")
    return lines


def section_generation(a) -> list[str]:
    S = 4 if a.quick else 8
    N = 8 if a.quick else 32
    lines = ["## Generation attribution", "",
             f"{N} teacher-forced tokens after a 32-token prompt, target log-prob of each generated token: "
             "`attribute_generation` (one call: the steps share each forward — one per path point for IG and saliency, "
             "with a batched backward over the steps; one per occlusion window; one pattern forward for attention) vs "
             f"{N} separate `attribute_tokens` calls (one per generated token on its own prefix). IG: n_steps = {S}, "
             f"baseline token 0; the others at their defaults. unit = one forward+backward of the full {31 + N}-token "
             f"sequence (full logits). Rounds interleaved (shared, separate), best of {1 if a.quick else a.rounds}.", "",
             "| method | shared s | × unit | separate s | × unit | speed-up | max abs diff | load |", "|---|---|---|---|---|---|---|---|"]
    for m in ("ig", "saliency", "occlusion", "attention"):
        r = run_case("generation", {"prompt": 32, "new": N, "n_steps": S, "method": m, "rounds": 1 if a.quick else a.rounds}, a)
        if "best" not in r:
            lines.append(f"| {m} | failed: {str(r)[:100]} |")
            continue
        b = r["best"]
        lines.append(f"| {m} | {b['shared']:.2f} | {b['shared'] / b['house']:.1f} | {b['separate']:.2f} | "
                     f"{b['separate'] / b['house']:.1f} | {b['separate'] / b['shared']:.2f}× | {r['max_diff']:.1e} | {r['load']} |")
    lines += ["", "A gradient method needs one backward per generated token whichever way it runs (the Jacobian "
              "of N outputs has N rows; reverse mode gives one per backward), so sharing saves the forwards and "
              "batches the backwards: its ceiling is about (forward + backward) / backward ≈ 2× plus batching "
              "efficiency. Forward-only methods save N× the forwards."]
    return lines


def section_validate(a) -> list[str]:
    wt = Path(a.before_dir)
    if not wt.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), a.before], cwd=ROOT, check=True, capture_output=True)
    lines = ["## validate, 8 prompts × 32 tokens", "",
             f"Default settings (and `profile=\"fast\"` where available); \"before\" = commit {a.before} (git worktree, "
             f"PYTHONPATH), \"after\" = this checkout. Cut off after {a.validate_timeout} s.", "",
             "| code | profile | seconds | claims | load |", "|---|---|---|---|---|"]
    runs: dict[str, dict] = {}
    for who, pp in (("before", str(wt)), ("after", str(ROOT))):
        if who not in a.validate_sides:
            lines.append(f"| {who} | – | not run in this pass | | |")
            continue
        for prof in a.validate_profiles.split(","):
            r = run_case("validate", {"who": who, "profile": prof}, a, pythonpath=pp, timeout=a.validate_timeout)
            secs = f"{r['seconds']:.0f}" if "seconds" in r else (f"> {r['timeout']} (cut off)" if "timeout" in r else str(r.get("skipped") or r.get("error"))[:120])
            lines.append(f"| {who} | {prof} | {secs} | {r.get('n_claims', '–')} | {r.get('load', '–')} |")
            if who == "after" and "verdicts" in r:
                runs[prof] = r
    lines.append("")
    for prof, r in runs.items():
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in (r.get("timings") or {}).items() if v >= 1)
        lines.append(f"- after, {prof}: verdicts " + ", ".join(f"{k} {v}" for k, v in r["verdicts"].items()) + f"; steps: {steps}.")
    if len(runs) > 1:
        a_, b_ = list(runs.values())[:2]
        common = sorted(set(a_["verdicts"]) & set(b_["verdicts"]))
        same = [k for k in common if a_["verdicts"][k] == b_["verdicts"][k]]
        lines.append(f"- after: {len(same)} of {len(common)} claims in common get the same verdict in both profiles"
                     + ("" if len(same) == len(common) else f" (differ: {sorted(set(common) - set(same))})") + ".")
    return lines


SECTIONS = {"ig": section_ig, "budget": section_budget, "generation": section_generation, "validate": section_validate}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="ig,budget,generation,validate")
    ap.add_argument("--quick", action="store_true", help="fewer lengths/steps/tokens")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--before", default="c6a5cc4")
    ap.add_argument("--before-dir", default="/tmp/wt-before")
    ap.add_argument("--validate-sides", default="before,after")
    ap.add_argument("--validate-timeout", type=int, default=600)
    ap.add_argument("--validate-profiles", default="default,fast")
    ap.add_argument("--cache", default="/tmp/bench_scale")
    ap.add_argument("--fresh", action="store_true", help="ignore cached cases")
    ap.add_argument("--render-only", action="store_true", help="write the markdown from cached cases only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/scale.md"))
    ap.add_argument("--worker")
    ap.add_argument("--case")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.worker:
        print(json.dumps(WORKERS[a.worker](json.loads(a.case))))
        return
    from mechattr.io import versions

    lines = ["# Scale benchmark (GPT-2-small shape)", "",
             f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch threads = {a.threads}; {versions()}. "
             "Model: random HookedTransformer, 12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50257. "
             "Load average beside each figure (≈ 2 = this benchmark's own two threads on an otherwise idle machine; "
             "more = other jobs): absolute seconds vary between runs, ratios measured in one interleaved run less so. "
             f"No GPU was lent to this task, so there is no device table. Generated by `python scripts/bench_scale.py --sections {a.sections}{' --quick' if a.quick else ''}`.", ""]
    for s in a.sections.split(","):
        lines += SECTIONS[s](a) + [""]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
