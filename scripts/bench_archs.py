"""Benchmark: activation patching and IG vs TransformerLens and Captum, per architecture and model kind.

On a 12-layer Llama-style grouped-query model (8 query heads, 2 key/value heads) and a
12-layer GPT-2 of the same width (multi-head), each loaded with ``mechattr.load_model``
as a HookedTransformer (TransformerLens 3 only) and as a TransformerBridge, times

* ``activation_patch(site="head_out")`` vs TransformerLens's
  ``patching.get_act_patch_attn_head_out_all_pos`` (plus the ``run_with_cache`` of the
  clean run it needs), numbers asserted equal;
* ``attribute_tokens(method="ig")`` vs Captum ``LayerIntegratedGradients`` attached to the
  module ``hook_embed`` is (its HookPoint), same steps, Gauss-Legendre, same baseline
  tokens, same rows per forward+backward, scores asserted equal;

and, as the physical unit, one forward and one forward+backward (to ``hook_embed``) of the
same batch, so every time is also a multiple of that unit. Models are random (seeded),
built offline from transformers configs and saved with a word-level tokenizer. Timing:
one warm-up round, then ``--reps`` rounds, each round running every call of the case
once in turn (peer and mechattr alternated); each figure is the best (``--stat best``,
the default: least disturbed by other jobs on a shared machine) or the median over rounds.

Usage: python scripts/bench_archs.py [--device cpu|cuda] [--reps 3] [--threads 1] [--write]
``--write`` replaces this TransformerLens major's section of benchmarks/archs.md and keeps
the other major's and the hand-written ``<!-- notes -->`` block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's patching progress bars

import torch  # noqa: E402

import mechattr  # noqa: E402
from mechattr import targets  # noqa: E402
from mechattr.io import versions  # noqa: E402
from mechattr.runtime.tl import HAS_HOOKED, TL_MAJOR, is_hooked  # noqa: E402

IDS = dict(bos_token_id=1, eos_token_id=1, pad_token_id=2)
FIRST_PLAIN = 3  # token ids below this are special (unk 0, bos/eos 1, pad 2)


def configs(a: argparse.Namespace) -> dict:
    """name -> (transformers config class name, kwargs, description)."""
    n_kv = a.heads // 4
    return {
        "llama_gqa": ("LlamaConfig", dict(vocab_size=a.vocab, hidden_size=a.d_model, intermediate_size=2 * a.d_model,
                                          num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=n_kv,
                                          max_position_embeddings=64, initializer_range=0.05, **IDS),
                      f"Llama-style (RMSNorm, rotary, SwiGLU d_mlp {2 * a.d_model}), GQA {a.heads} query / {n_kv} kv heads"),
        # d_mlp stays GPT-2's 4 × d_model: TransformerLens 3 builds a HookedTransformer for GPT-2 only then
        "gpt2": ("GPT2Config", dict(vocab_size=a.vocab, n_positions=64, n_embd=a.d_model, n_layer=a.layers, n_head=a.heads,
                                    initializer_range=0.05, **IDS),
                 f"GPT-2 (LayerNorm, learned positions, GELU d_mlp {4 * a.d_model}), MHA {a.heads} heads"),
    }


def save_tokenizer(d: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w1", eos_token="w1", pad_token="w2", unk_token="w0").save_pretrained(d)


def build(name: str, d: Path, a: argparse.Namespace, seed: int = 0) -> Path:
    """Build the random ``name`` model with a fixed seed and save it (weights + tokenizer) to ``d``."""
    import transformers

    cls_name, kw, _ = configs(a)[name]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls_name)(**kw)).eval()
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    save_tokenizer(d, a.vocab)
    return d


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def bench_case(model, a: argparse.Namespace) -> dict:
    """Time the six calls of one model, interleaved; check both pairs agree."""
    from captum.attr import LayerIntegratedGradients
    from transformer_lens import patching

    dev, B = a.device, a.batch
    for p in model.parameters():  # every call differentiates w.r.t. activations only
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(FIRST_PLAIN, a.vocab, (B, a.pos), generator=g).to(dev)
    corrupted = torch.randint(FIRST_PLAIN, a.vocab, (B, a.pos), generator=g).to(dev)
    good = torch.randint(FIRST_PLAIN, a.vocab, (B,), generator=g).to(dev)
    bad = torch.randint(FIRST_PLAIN, a.vocab, (B,), generator=g).to(dev)
    target = targets.logit_diff(good, bad)
    embed_hp = model.hook_dict["hook_embed"]  # the HookPoint module hook_embed is (HT and bridge alike)

    def ld(logits):
        n = logits.shape[0]
        last = logits[:, -1]
        return last.gather(1, good.repeat(n // B)[:, None])[:, 0] - last.gather(1, bad.repeat(n // B)[:, None])[:, 0]

    def unit_fwd():
        with torch.no_grad():
            return model(clean)

    def unit_fwd_bwd():
        leaf = {}

        def grab(mod, inp, out):
            leaf["x"] = out.detach().requires_grad_(True)
            return leaf["x"]

        h = embed_hp.register_forward_hook(grab)
        try:
            ld(model(clean)).sum().backward()
        finally:
            h.remove()
        return leaf["x"].grad

    def tl_patch():  # the clean cache is part of the work (activation_patch does it too)
        with torch.no_grad():
            _, cache = model.run_with_cache(clean)
            return patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, lambda lg: target(lg).mean())

    def our_patch():
        return mechattr.activation_patch(model, clean, corrupted, target, site="head_out")

    lig = LayerIntegratedGradients(lambda tok: ld(model(tok)), embed_hp)
    base = torch.full_like(clean, a.baseline)

    def captum_ig():
        return lig.attribute(clean, baselines=base, n_steps=a.steps, method="gausslegendre", internal_batch_size=a.rows)

    def our_ig():
        return mechattr.attribute_tokens(model, clean, target, method="ig", n_steps=a.steps, baseline=a.baseline, batch_size=a.rows)

    calls = {"fwd": unit_fwd, "fwd_bwd": unit_fwd_bwd, "tl_patch": tl_patch, "our_patch": our_patch,
             "captum_ig": captum_ig, "our_ig": our_ig}
    out, times, errors = {}, {k: [] for k in calls}, {}
    for rnd in range(a.reps + 1):  # round 0: warm-up (untimed)
        for name, fn in calls.items():
            if name in errors:
                continue
            sync(dev)
            t0 = time.perf_counter()
            try:
                res = fn()
            except Exception as err:  # a peer that cannot run on this kind: reported, not hidden
                if name.startswith("our"):
                    raise
                errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                print(f"    {name} failed: {errors[name]}", flush=True)
                continue
            sync(dev)
            if rnd:
                times[name].append(time.perf_counter() - t0)
            else:
                out[name] = res
    med = {k: min(v) if a.stat == "best" else statistics.median(v) for k, v in times.items() if v}
    res = {"t": med, "errors": errors}
    if "tl_patch" in out:
        res["patch_diff"] = float((out["tl_patch"].float().cpu() - out["our_patch"].float().cpu()).abs().max())
        res["patch_scale"] = float(out["our_patch"].abs().max())
        assert res["patch_diff"] <= 1e-4 * max(1.0, res["patch_scale"]), f"patching differs by {res['patch_diff']}"
    if "captum_ig" in out:
        theirs = out["captum_ig"].sum(-1).float().cpu()
        ours = out["our_ig"].scores.float().cpu()
        res["ig_diff"] = float((theirs - ours).abs().max())
        res["ig_scale"] = float(ours.abs().max())
        assert res["ig_diff"] <= 1e-4 * max(1.0, res["ig_scale"]), f"IG scores differ by {res['ig_diff']}"
    return res


def kinds() -> list[str]:
    return (["hooked"] if HAS_HOOKED else []) + ["bridge"]


def fmt_t(res: dict, name: str) -> str:
    t = res["t"].get(name)
    if t is None:
        return "fails"
    return f"{t:.3f} s ({t / res['t']['fwd']:.0f} fwd, {t / res['t']['fwd_bwd']:.1f} fwd+bwd)"


def ratio(res: dict, peer: str, ours: str) -> str:
    t = res["t"]
    return f"**{t[peer] / t[ours]:.2f}×**" if peer in t and ours in t else "–"


def diff(res: dict, key: str) -> str:
    return f"{res[key]:.1e} (of {res[key.replace('diff', 'scale')]:.1e})" if key in res else "–"


def section(results: list, a: argparse.Namespace, device_line: str, loads: list[str], started: str) -> str:
    import captum

    v = versions()
    lines = [f"<!-- tl{TL_MAJOR} -->", f"## TransformerLens {TL_MAJOR} ({v['transformer_lens']})", "",
             f"`{a.cmd}`, {started}.", "",
             f"- **Device:** {device_line}.",
             f"- **Versions:** mechattr {v['mechattr']}, torch {v['torch']}, transformer-lens {v['transformer_lens']}, "
             f"captum {captum.__version__}.",
             f"- **Load average (1/5/15 min) before → after each case:** {'; '.join(loads)}.",
             f"- **Kinds:** {', '.join(kinds())}" + ("" if HAS_HOOKED else " (no HookedTransformer on TransformerLens 4)") + ".",
             "",
             "| model | kind | 1 fwd (s) | 1 fwd+bwd (s) | TL patching | mechattr patching | patching speed-up | patch max abs diff "
             "| Captum IG | mechattr IG | IG speed-up | IG max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, kind, r in results:
        t = r["t"]
        lines.append(f"| {name} | {kind} | {t['fwd']:.4f} | {t['fwd_bwd']:.4f} | {fmt_t(r, 'tl_patch')} | {fmt_t(r, 'our_patch')} "
                     f"| {ratio(r, 'tl_patch', 'our_patch')} | {diff(r, 'patch_diff')} | {fmt_t(r, 'captum_ig')} | {fmt_t(r, 'our_ig')} "
                     f"| {ratio(r, 'captum_ig', 'our_ig')} | {diff(r, 'ig_diff')} |")
    for name, kind, r in results:
        for peer, msg in r["errors"].items():
            lines.append(f"\n{name} / {kind}: the peer `{peer}` fails: `{msg}`.")
    lines.append(f"<!-- /tl{TL_MAJOR} -->")
    return "\n".join(lines)


HEADER = """# Architectures: the fast paths vs their peers, per architecture and model kind

`python scripts/bench_archs.py` (one section per TransformerLens major; `--write` replaces
its own section and keeps the other major's and the notes).

- **Models:** random (seeded, `initializer_range` 0.05) transformers models built offline from
  their configs, saved with `save_pretrained` and a word-level tokenizer, loaded with
  `mechattr.load_model(dir, bridge=False)` (a HookedTransformer; TransformerLens 3 only) and
  `bridge=True` (a TransformerBridge in compatibility mode). {models}
- **Inputs:** batch {batch} × {pos} tokens (ids ≥ 3, so no special token), target
  `logit_diff(correct, incorrect)` at the last position.
- **Patching:** `activation_patch(site="head_out")` vs TransformerLens
  `patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)`, its
  time including the `run_with_cache` of the clean run (mechattr caches too). Both give the
  batch-mean target of the corrupted run with one head's clean `hook_z` patched in, all
  positions, for every (layer, query head); asserted equal (max abs diff shown, with the
  largest value for scale).
- **IG:** `attribute_tokens(method="ig", n_steps={steps}, baseline={baseline},
  batch_size={rows})` vs Captum `LayerIntegratedGradients` attached to the `hook_embed`
  HookPoint module (the same module on a HookedTransformer and, through its alias, on the
  bridge's `embed` component), `n_steps={steps}`, Gauss-Legendre, `internal_batch_size={rows}`,
  baseline token {baseline} for every position; scores (summed over d_model) asserted equal.
  The baseline is a token id, not `"zero"`: Captum's layer methods take *input* baselines
  (token ids), so the zero embedding cannot be given to it, and on the RMSNorm model the
  zero embedding is the singular point of the first norm. Parameters are frozen for every
  call (both libraries differentiate with respect to activations only).
- **Physical unit:** `1 fwd` = one `no_grad` forward of the batch; `1 fwd+bwd` = one forward
  and backward of the target sum to `hook_embed` (a forward hook making it a leaf). Each
  method's time is also given as a multiple of both ("(N fwd, M fwd+bwd)"). The ideal for
  TL patching is 1 + n_layers·n_heads forwards; for IG, n_steps forward+backward units.
- **Timing:** one warm-up round, then {reps} rounds; each round runs, in turn, the forward,
  the forward+backward, TL patching, mechattr patching, Captum IG, mechattr IG once; each
  figure is the **{stat}** over the rounds. speed-up = peer time / mechattr time (> 1: mechattr
  faster). The machine is shared with other engineers running tests (2 cores): absolute
  seconds move with the load, which is given per case; ratios move less.
"""


def write(path: Path, a: argparse.Namespace, body: str) -> None:
    descr = " ".join(f"`{n}`: {d}, {a.layers} layers, d_model {a.d_model}, d_vocab {a.vocab}."
                     for n, (_, _, d) in configs(a).items())
    header = HEADER.format(models=descr, batch=a.batch, pos=a.pos, steps=a.steps, baseline=a.baseline, rows=a.rows,
                           reps=a.reps, stat="best (minimum)" if a.stat == "best" else "median")
    old = path.read_text() if path.exists() else ""
    sections = {m.group(1): m.group(0) for m in re.finditer(r"<!-- tl(\d+) -->.*?<!-- /tl\1 -->", old, flags=re.S)}
    sections[str(TL_MAJOR)] = body
    notes = re.search(r"<!-- notes -->.*?<!-- /notes -->", old, flags=re.S)  # hand-written findings, kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + (notes.group(0) + "\n\n" if notes else "")
                    + "\n\n".join(sections[k] for k in sorted(sections)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8, help="query heads; the GQA model has heads // 4 kv heads")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pos", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rows", type=int, default=64, help="rows per forward+backward of IG, both libraries")
    ap.add_argument("--baseline", type=int, default=0, help="IG baseline token id")
    ap.add_argument("--stat", default="best", choices=["best", "median"], help="figure over the timed rounds")
    ap.add_argument("--models", default="llama_gqa,gpt2")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", default="benchmarks/archs.md")
    a = ap.parse_args()
    a.cmd = "python scripts/bench_archs.py " + " ".join(sys.argv[1:])
    warnings.filterwarnings("ignore")
    threads0 = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        dev_name = (torch.cuda.get_device_name() if a.device == "cuda" else
                    f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, "
                    f"torch threads = {torch.get_num_threads()}")
        print(f"device: {dev_name}; versions: {versions()}; TL major {TL_MAJOR}; kinds {kinds()}", flush=True)
        results, loads = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for name in a.models.split(","):
                d = build(name, Path(tmp) / name, a)
                for kind in kinds():
                    model = mechattr.load_model(d, device=a.device, bridge=(kind == "bridge"))
                    if is_hooked(model) != (kind == "hooked"):
                        raise SystemExit(f"{name}: asked for a {kind} model, load_model gave a {type(model).__name__}")
                    before = load_avg()
                    print(f"{name} / {kind} ({type(model).__name__}), load average {before}", flush=True)
                    r = bench_case(model, a)
                    after = load_avg()
                    loads.append(f"{name}/{kind} {before} → {after}")
                    print(f"  load average after: {after}; {a.stat} (s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["t"].items())
                          + "; " + ", ".join(f"{k} {v:.1e}" for k, v in r.items() if k.endswith("diff")), flush=True)
                    results.append((name, kind, r))
                    del model
        body = section(results, a, dev_name, loads, started)
        print("\n" + body)
        if a.write:
            write(Path(a.out), a, body)
            print(f"wrote {a.out}")
    finally:
        torch.set_num_threads(threads0)


if __name__ == "__main__":
    main()
