"""Benchmark: token attribution methods vs Captum's LayerIntegratedGradients, side by side.

Times every method of ``attribute_tokens`` and Captum ``LayerIntegratedGradients`` over the
embedding layer on the same model, inputs, baseline and steps, in one run, and reports the
ratios and the completeness error of each IG-type method. Cases: a 4-layer d_model 256 model
with GPT-2's vocabulary (50257, random weights), batch 4 × 32 tokens, 64 Gauss-Legendre
steps; and the same with a small vocabulary (512). Then every method's hit rate on the
induction organism (top-3 contains the copied token). Then the perturbation methods
(occlusion, shapley_sampling, kernel_shap, lime) against Captum's ``LLMAttribution`` wrappers of
FeatureAblation / ShapleyValueSampling / KernelShap / Lime at the same number of model
evaluations (Captum evaluates one perturbed input per forward; we stack them), and deeplift
against Captum's ``LayerDeepLift`` (with the same rescale rule on the MLP activation). Load
average printed beside each figure. Writes benchmarks/token_attribution.md; ``--sections``
reruns some sections and keeps the others of the existing file.

Usage: python scripts/bench_token_attribution.py [--rounds 3] [--threads 2] [--samples 100]
       [--sections ig,hits,perturbation,deeplift]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechattr import organisms, targets
from mechattr.attribution.tokens import attribute_tokens, method_names
from mechattr.io import versions

STEPS = 64
ROWS = 64  # rows per forward+backward, for us (batch_size) and Captum (internal_batch_size)
OPTS = {"rpi": {"n_baselines": 4, "n_steps": 16}, "expected_gradients": {"n_samples": STEPS}}
SKIP = {"exact_shapley": "enumerates 2^M coalitions, M ≤ 12 (the inputs here have 23–32 tokens)"}


def make(d_vocab: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=4, d_model=256, n_heads=4, d_head=64, d_mlp=1024, d_vocab=d_vocab,
                                  n_ctx=64, act_fn="gelu", normalization_type="LN", seed=0)
    return HookedTransformer(cfg).eval()


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_case(d_vocab: int, rounds: int) -> list[dict]:
    """``rounds`` rounds; each times Captum once and every method once (interleaved, so a load
    spike on a shared machine hits both sides); each entry keeps its best round."""
    from captum.attr import LayerIntegratedGradients

    model = make(d_vocab)
    for p in model.parameters():  # both sides differentiate w.r.t. activations only
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, d_vocab, (4, 32), generator=g)
    ids = torch.randint(0, d_vocab, (4,), generator=g)
    target = targets.logit(ids)

    def fwd(tok):
        return model(tok)[torch.arange(tok.shape[0]), -1, ids.repeat(tok.shape[0] // 4)]

    lig = LayerIntegratedGradients(fwd, model.embed)
    attribute_tokens(model, tokens, target, "ig", n_steps=2)  # warm-up (allocator, imports)
    lig.attribute(tokens, baselines=torch.zeros_like(tokens), n_steps=2)

    def captum():
        return lig.attribute(tokens, baselines=torch.zeros_like(tokens), n_steps=STEPS, method="gausslegendre",
                             internal_batch_size=ROWS, return_convergence_delta=True)

    calls = {"captum": captum}
    opts_of = {}
    for m in [m for m in method_names() if m not in SKIP]:
        opts_of[m] = OPTS.get(m, {"n_steps": STEPS} if m in ("ig", "ig_clipped", "ps_ig", "aieg") else {})
        if m not in ("rpi", "expected_gradients"):  # those draw baselines from their default distributions
            opts_of[m] = {**opts_of[m], "baseline": 0}
        calls[m] = lambda m=m: attribute_tokens(model, tokens, target, m, batch_size=ROWS, seed=0, **opts_of[m])
    best: dict[str, float] = {}
    outs: dict[str, object] = {}
    for _ in range(rounds):
        for name, fn in calls.items():
            t, outs[name] = timed(fn)
            best[name] = min(best.get(name, float("inf")), t)
            if name == "captum":  # untimed: the call after Captum's GB-sized frees pays the allocator's page faults
                attribute_tokens(model, tokens, target, "ig", n_steps=16, batch_size=ROWS)
    attr, delta = outs["captum"]
    gap = (fwd(tokens) - fwd(torch.zeros_like(tokens))).detach()
    rows = [{"method": "captum LayerIntegratedGradients", "seconds": best["captum"], "ratio": 1.0,
             "completeness": float((delta.abs() / gap.abs()).max()), "opts": {"n_steps": STEPS}}]
    for m in [m for m in method_names() if m not in SKIP]:
        r = outs[m]
        comp = None
        if r.convergence_delta is not None and r.f_baseline is not None:
            comp = float((r.convergence_delta.abs() / (r.f_input - r.f_baseline).abs()).max())
        rows.append({"method": m, "seconds": best[m], "ratio": best["captum"] / best[m], "completeness": comp, "opts": opts_of[m]})
        if m == "ig":
            rows[-1]["vs_captum"] = float((r.scores - attr.sum(-1)).abs().max())
    return rows


def hit_rates(n: int) -> dict[str, float]:
    model = organisms.load("induction")
    batch = organisms.task("induction").sample(n, seed=4242)
    out = {}
    for m in [m for m in method_names() if m not in SKIP]:
        r = attribute_tokens(model, batch.tokens, batch.target, m, seed=0)
        top = r.scores.argsort(-1, descending=True)[:, :3]
        out[m] = float((top == batch.source_positions[:, :1]).any(-1).float().mean())
    n_attr = (~r.excluded).sum(-1).float()  # attributable tokens per row (BOS excluded)
    out["(chance: 3 random tokens)"] = float((3 / n_attr).mean())
    return out


# --- perturbation methods vs Captum's LLMAttribution wrappers -------------------------------
PERT_SHAPE = (4, 12)  # examples × tokens
PERT_VOCAB = 512  # Captum computes logits at every position, we only where the target reads: a small vocabulary is the conservative case
PERT = {  # ours -> (Captum class, our options, Captum attribute kwargs)
    "occlusion": ("FeatureAblation", {}, {}),
    "shapley_sampling": ("ShapleyValueSampling", {"n_samples": 4}, {"n_samples": 4}),
    "kernel_shap": ("KernelShap", {"n_samples": 60}, {"n_samples": 60}),
    "lime": ("Lime", {"n_samples": 60, "alpha": 0.0}, {"n_samples": 60}),
}


class _HFFace(torch.nn.Module):
    """The HuggingFace-style face Captum's LLMAttribution needs: ``forward(input_ids=...).logits``."""

    def __init__(self, model: HookedTransformer) -> None:
        super().__init__()
        object.__setattr__(self, "tl", model)
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, **kw):
        return SimpleNamespace(logits=self.tl(input_ids))


class _IdTokenizer:
    """Text = token ids separated by spaces (the model has no tokenizer)."""

    def encode(self, text, return_tensors=None, add_special_tokens=True):
        ids = [int(t) for t in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def convert_ids_to_tokens(self, ids):
        return [str(int(i)) for i in ids]

    def convert_tokens_to_ids(self, toks):
        return [int(t) for t in toks]

    def decode(self, ids, **kw):
        return " ".join(str(int(i)) for i in torch.as_tensor(ids).reshape(-1))

    def __call__(self, text, return_offsets_mapping=False, **kw):
        ids, offsets, at = [], [], 0
        for t in text.split(" "):
            ids.append(int(t))
            offsets.append((at, at + len(t)))
            at += len(t) + 1
        return {"input_ids": ids, "offset_mapping": offsets}


class _LeastSquares:
    """Captum interpretable model: weighted least squares with intercept (Captum's Lime/KernelShap
    default to scikit-learn models, not installed here; ours fit the same closed form)."""

    def fit(self, data, **kw):
        X, y, w = (t.double() for t in next(iter(data)))
        w = w / w.sum()
        Xc, yc = X - w @ X, y.reshape(-1) - w @ y.reshape(-1)
        self.coef = torch.linalg.lstsq(Xc * w.sqrt()[:, None], (yc * w.sqrt())[:, None], driver="gelsd").solution[:, 0]

    def representation(self):
        return self.coef.float()[None]


def load() -> float:
    return os.getloadavg()[0]


def interleaved(calls: dict, rounds: int) -> tuple[dict, dict, dict]:
    """``rounds`` interleaved rounds over ``calls``: per key the best time, the 1-min load
    average when it was taken, and the last output."""
    best: dict = {}
    loads: dict = {}
    outs: dict = {}
    for _ in range(rounds):
        for key, fn in calls.items():
            la = load()
            t, outs[key] = timed(fn)
            if t < best.get(key, float("inf")):
                best[key], loads[key] = t, la
    return best, loads, outs


def bench_perturbation(rounds: int) -> list[dict]:
    """Ours (one call, all coalitions stacked) vs Captum LLMAttribution (one example and one
    perturbed input per forward), same model, inputs, baseline token 0, evaluations and seeds."""
    import captum.attr as ca

    model = make(PERT_VOCAB)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    b, n = PERT_SHAPE
    tokens = torch.randint(1, PERT_VOCAB, (b, n), generator=g)
    ids = torch.randint(0, PERT_VOCAB, (b,), generator=g)
    target = targets.logprob(ids)
    face, tok = _HFFace(model), _IdTokenizer()

    def captum_run(name: str):
        cls, _, kw = PERT[name]
        alg = getattr(ca, cls)(face) if cls != "Lime" else ca.Lime(face, interpretable_model=_LeastSquares())
        if cls == "KernelShap":
            alg.interpretable_model = _LeastSquares()
        llm = ca.LLMAttribution(alg, tok)
        out = []
        for i in range(b):
            torch.manual_seed(0)  # our draws: a generator per example seeded with seed=0
            inp = ca.TextTokenInput(" ".join(map(str, tokens[i].tolist())), tok, baselines=0)
            r = llm.attribute(inp, target=ids[i : i + 1], use_cached_outputs=False, forward_in_tokens=False, **kw)
            out.append(r.seq_attr)
        return torch.stack(out)

    def ours_run(name: str):
        return attribute_tokens(model, tokens, target, name, baseline=0, seed=0, **PERT[name][1])

    calls = {}
    for name in PERT:
        calls[("captum", name)] = lambda name=name: captum_run(name)
        calls[("ours", name)] = lambda name=name: ours_run(name)
    ours_run("occlusion"), captum_run("occlusion")  # warm-up
    best, loads, outs = interleaved(calls, rounds)
    rows = []
    for name in PERT:
        r = outs[("ours", name)]
        evals = r.extras["n_evaluations"].tolist()[0] if "n_evaluations" in r.extras else n + 1
        rows.append({"method": name, "captum": f"LLMAttribution({PERT[name][0]})", "opts": PERT[name][1], "evals": evals,
                     "ours_s": best[("ours", name)], "captum_s": best[("captum", name)],
                     "ratio": best[("captum", name)] / best[("ours", name)],
                     "load": (loads[("ours", name)], loads[("captum", name)]),
                     "diff": float((r.scores - outs[("captum", name)]).abs().max())})
    return rows


def _gelu_modules(model: HookedTransformer) -> HookedTransformer:
    """A copy whose MLP activation is an ``nn.GELU`` module (Captum's DeepLift hooks modules only)."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        if type(mod).__name__.endswith("MLP") and callable(getattr(mod, "act_fn", None)) and not isinstance(mod.act_fn, torch.nn.Module):
            mod.act_fn = torch.nn.GELU()
    return model


def bench_deeplift(rounds: int) -> dict | None:
    """Ours ``deeplift`` vs Captum ``LayerDeepLift`` on the embedding layer, same rescale rule."""
    from captum.attr import LayerDeepLift
    from captum.attr._core import deep_lift as cdl

    from mechattr.attribution.tokens import METHODS

    if "deeplift" not in method_names():
        return None
    model = make(50257)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (4, 32), generator=g)
    ids = torch.randint(0, 50257, (4,), generator=g)
    twin = _gelu_modules(model)

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "m", twin)
            self.acts = torch.nn.ModuleList([mod.act_fn for mod in twin.modules() if type(mod).__name__.endswith("MLP")])

        def forward(self, t):
            rows = torch.arange(t.shape[0])
            return self.m(t)[:, -1].log_softmax(-1)[rows, ids[rows % 4]]

    saved = cdl.SUPPORTED_NON_LINEAR.get(torch.nn.GELU)
    cdl.SUPPORTED_NON_LINEAR[torch.nn.GELU] = cdl.nonlinear
    try:
        dl = LayerDeepLift(F(), twin.hook_dict["hook_embed"])
        dl.eps = 1e-6
        calls = {"captum": lambda: dl.attribute(tokens, baselines=torch.zeros_like(tokens)),
                 "ours": lambda: attribute_tokens(model, tokens, targets.logprob(ids), "deeplift", baseline=0)}
        calls["captum"](), calls["ours"]()
        best, loads, outs = interleaved(calls, rounds)
    finally:
        if saved is None:
            cdl.SUPPORTED_NON_LINEAR.pop(torch.nn.GELU, None)
        else:
            cdl.SUPPORTED_NON_LINEAR[torch.nn.GELU] = saved
    return {"ours": best["ours"], "captum": best["captum"], "ratio": best["captum"] / best["ours"], "load": loads,
            "diff": float((outs["ours"].scores - outs["captum"].detach().sum(-1)).abs().max()), "cite": METHODS.get("deeplift").cite}


def fmt(x: float | None, p: str = ".2e") -> str:
    return "–" if x is None else format(x, p)


def merge(path: Path, preamble: list[str], sections: dict[str, list[str]], replace_all: bool) -> str:
    """The file's text with ``sections`` (heading -> lines) replaced or appended; the existing
    preamble and the other sections are kept unless ``replace_all``."""
    old_pre, old = [], {}
    if path.exists() and not replace_all:
        cur = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                cur = line
                old[cur] = []
            elif cur is None:
                old_pre.append(line)
            else:
                old[cur].append(line)
    merged = {**old, **{h: body for h, body in sections.items()}}
    out = (old_pre if old_pre and not replace_all else preamble)
    for h, body in merged.items():
        out = [*out, *([""] if out and out[-1] != "" else []), h, *body]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--sections", default="ig,hits,perturbation,deeplift",
                    help="comma-separated subset of ig,hits,perturbation,deeplift; the file's other sections are kept")
    ap.add_argument("--out", default="benchmarks/token_attribution.md")
    a = ap.parse_args()
    want = set(a.sections.split(","))
    if want - {"ig", "hits", "perturbation", "deeplift"}:
        raise SystemExit(f"unknown sections {sorted(want - {'ig', 'hits', 'perturbation', 'deeplift'})}")
    torch.set_num_threads(a.threads)
    import captum

    pre = ["# Token attribution benchmark", "",
           f"Device: CPU ({platform.processor() or platform.machine()}), torch threads = {a.threads}; "
           f"versions: {versions()}, captum {captum.__version__}.",
           f"Model: random HookedTransformer, 4 layers, d_model 256, 4 heads, d_mlp 1024; batch 4 × 32 tokens; "
           f"{STEPS} Gauss-Legendre steps; {ROWS} rows per forward+backward for both libraries; baseline: token 0 "
           "(`baseline=0`), except rpi (Gaussian baselines) and expected_gradients (uniform random tokens); "
           f"target: logit of a token at the last position. Time = best of {a.rounds} interleaved rounds (each round times Captum and every method once, after one small warm-up), same process. "
           "ratio = Captum IG time / method time (>1: faster than Captum). completeness = max over examples of "
           "|Σ scores − (F(x) − F(x'))| / |F(x) − F(x')|.",
           "The machine is shared (other jobs running): absolute seconds vary between runs, ratios less so. "
           "aieg = a forward-only pass along the path (for the emphasis factor) + the IG pass + one attention "
           "read; expected_gradients' completeness error is Monte-Carlo (64 random baselines and α), not "
           "quadrature. No GPU was lent to this task, so there is no GPU table.", ""]
    sections: dict[str, list[str]] = {}
    if "ig" in want:
        for d_vocab in (50257, 512):
            rows = bench_case(d_vocab, a.rounds)
            body = ["", "| method | options | seconds | ratio vs Captum IG | completeness error |", "|---|---|---|---|---|"]
            body += [f"| {r['method']} | {r['opts']} | {r['seconds']:.3f} | {r['ratio']:.2f}× | {fmt(r['completeness'])} |" for r in rows]
            ig = next(r for r in rows if r["method"] == "ig")
            body += ["", f"ig vs Captum: max |score difference| = {ig['vs_captum']:.2e}."]
            body += [f"Not run here: {m} ({why})." for m, why in SKIP.items()] + [""]
            sections[f"## d_vocab = {d_vocab}"] = body
            print(f"## d_vocab = {d_vocab}", *body, sep="\n", flush=True)
    if "hits" in want:
        hits = hit_rates(a.samples)
        body = ["", f"{a.samples} fresh samples (`organisms.task('induction').sample({a.samples}, seed=4242)`), "
                "default options of each method (ig-type: 64 steps; rpi: 4 baselines × 32 steps), target = logit of the answer.", "",
                "| method | hit rate |", "|---|---|"]
        body += [f"| {m} | {h:.2f} |" for m, h in hits.items()] + [""]
        sections["## Induction organism: copied token in the top 3"] = body
        print(*body, sep="\n", flush=True)
    if "perturbation" in want:
        rows = bench_perturbation(a.rounds)
        b, n = PERT_SHAPE
        body = ["", f"Same random model architecture with d_vocab {PERT_VOCAB} (Captum's wrapper computes logits at every "
                "position, ours only where the target reads, so a small vocabulary is the conservative case), "
                f"{b} examples × {n} random tokens, target: log-probability of a "
                "random token at the last position, removed tokens become token 0 on both sides (`baseline=0`; Captum "
                "`TextTokenInput(baselines=0)`), one feature per token, seeds fixed (Captum: `torch.manual_seed(0)` before "
                "each example; ours: `seed=0`, a generator per example), so both sides draw the same coalitions. Captum: "
                "`LLMAttribution(<method>(model), tokenizer).attribute(inp, target=..., forward_in_tokens=False, "
                "use_cached_outputs=False)` per example (it evaluates one perturbed input per forward); ours: one "
                "`attribute_tokens` call, every coalition of every example stacked and chunked (default `batch_size`). "
                "Lime/KernelShap on both sides fit the same weighted least squares (Captum's default models need "
                "scikit-learn, which is not installed; ours `alpha=0`); LIME's cosine kernel is on the 0/1 presence vector "
                "on both sides (Captum's wrapper hands Lime that vector; ours `kernel_on='features'`, the default). Time = best of "
                f"{a.rounds} interleaved rounds; load = 1-minute load average when that best run started (ours / Captum).", "",
                "| method | Captum | options | evaluations per example | ours s | Captum s | ratio | load | max \\|ours − Captum\\| |",
                "|---|---|---|---|---|---|---|---|---|"]
        body += [f"| {r['method']} | {r['captum']} | {r['opts']} | {r['evals']} | {r['ours_s']:.3f} | {r['captum_s']:.3f} | "
                 f"{r['ratio']:.1f}× | {r['load'][0]:.1f} / {r['load'][1]:.1f} | {r['diff']:.1e} |" for r in rows] + [""]
        sections["## Perturbation methods vs Captum LLMAttribution"] = body
        print(*body, sep="\n", flush=True)
    if "deeplift" in want:
        d = bench_deeplift(a.rounds)
        if d is None:
            body = ["", "deeplift is not registered in this checkout; no row.", ""]
        else:
            body = ["", "Same random model (d_vocab 50257), batch 4 × 32 tokens, baseline token 0, target log-probability at "
                    "the last position. Captum: `LayerDeepLift` on `hook_embed` of a copy of the model whose MLP activation "
                    "is an `nn.GELU` module registered with Captum's rescale rule (`eps=1e-6`), so both sides apply the same "
                    "rule set; whole batch in one call on both sides. Time = best of "
                    f"{a.rounds} interleaved rounds.", "",
                    "| method | ours s | Captum s | ratio | load (ours / Captum) | max \\|ours − Captum\\| |", "|---|---|---|---|---|---|",
                    f"| deeplift | {d['ours']:.3f} | {d['captum']:.3f} | {d['ratio']:.2f}× | {d['load']['ours']:.1f} / "
                    f"{d['load']['captum']:.1f} | {d['diff']:.1e} |", ""]
        sections["## DeepLIFT vs Captum LayerDeepLift"] = body
        print(*body, sep="\n", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(merge(out, pre, sections, replace_all=want == {"ig", "hits", "perturbation", "deeplift"}))


if __name__ == "__main__":
    main()
