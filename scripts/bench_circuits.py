"""Benchmark: circuit edge scores (EAP, EAP-IG, exact) and ACDC vs physical units, loops and peers.

Side by side in one run, on random (seeded) GPT-2 models built offline from transformers
configs (vocabulary 1000, so the unembedding is a small share of the cost) and loaded with
``mechattr.load_model``; batch 8 × 32 tokens (BOS first), target ``logit_diff(5, 9)`` at
the last position; torch on ``--threads`` threads (1 by default: on a shared 2-core machine
two threads time erratically):

1. on a GPT-2-small-shaped model (12 layers × 12 heads, d_model 768, d_mlp 3072): the
   physical unit U = 2 forwards + 1 backward of the batch (a ``no_grad`` forward and a
   forward+backward to the embeddings, parameters frozen, no other hook), the same unit with
   TransformerLens's split flags on (``U_split``: per-head q/k/v inputs and head results,
   which every edge method needs), and ``attribute_edges(method="eap")`` over all edges;
2. ``attribute_edges(method="eap_ig_inputs", n_steps=5)`` against n_steps × (fwd+bwd);
3. ``method="exact"`` on a subset of edges spread over the layers against a one-edge-at-a-time
   loop written here (one hooked forward per edge, as ``tests/circuits/reference.py``),
   numbers asserted equal; and ``acdc(edges=subset, tau=…)`` against a sequential ACDC loop
   written here, same kept edges asserted — both on smaller models (below), for time;
4. peers, each installed into its own throwaway venv (``--venvs``) and run in a subprocess
   of this same file (``--peer``) on the same weights: TransformerLens 4.3's
   ``tools.analysis.attribution_patching.attribution_patch(granularity="edge")`` and
   circuitkit 0.2.0's EAP / EAP-IG (``backends.eap.attribute``) and ACDC
   (``backends.acdc.prune_algos.ACDC.acdc_prune_scores``); scores compared to ours (max abs
   diff, Spearman rank correlation), times beside ours.

Timing: a warm-up round on a tiny input, then ``--reps`` rounds, each running every call of
the item once in turn; each figure is the best (``--stat best``) or median over rounds.
Peers run after ours (warm-up on a tiny input, then ``--peer-reps`` timed calls).

Usage: python scripts/bench_circuits.py [--reps 3] [--threads 1] [--quick] [--write]
``--write`` rewrites benchmarks/circuits.md, keeping its ``<!-- notes -->`` and
``<!-- roc -->`` blocks.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

VOCAB, BATCH, POS, GOOD, BAD = 1000, 8, 32, 5, 9
IDS = dict(bos_token_id=1, eos_token_id=1, pad_token_id=2)  # unk 0, bos/eos 1, pad 2; plain ids >= 3
PEERS = {"tl43": "transformer-lens==4.3.0", "circuitkit": "circuitkit==0.2.0"}


# ------------------------------------------------------------------ models and inputs
def shapes(a: argparse.Namespace) -> dict[str, tuple[int, int, int]]:
    """Model name -> (layers, heads, d_model); d_mlp = 4 d_model (GPT-2)."""
    if a.quick:
        return {"main": (2, 4, 128), "mid": (2, 4, 128), "tiny": (2, 4, 128)}
    return {"main": (12, 12, 768), "mid": (6, 8, 256), "tiny": (4, 4, 128)}


def build(d: Path, layers: int, heads: int, width: int, seed: int = 0) -> Path:
    """A random GPT-2 (seeded) saved with a word-level tokenizer (``w<id>``) to ``d``."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=width, n_layer=layers, n_head=heads, **IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(d)
    special = {0: "<unk>", 1: "<bos>", 2: "<pad>"}  # not "w1": special tokens match inside words ("w190")
    tk = Tokenizer(models.WordLevel({special.get(i, f"w{i}"): i for i in range(VOCAB)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<bos>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(d)
    return d


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, VOCAB, (BATCH, POS), generator=g)
    corr = torch.randint(3, VOCAB, (BATCH, POS), generator=g)
    clean[:, 0] = corr[:, 0] = IDS["bos_token_id"]
    return clean, corr


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def timed(calls: dict, warm: dict, reps: int, stat: str) -> tuple[dict, dict, str]:
    """Warm-up round (``warm``: same calls on tiny inputs), then ``reps`` interleaved rounds.
    Returns (best or median seconds per call, first output per call, load before → after)."""
    before = load_avg()
    for fn in warm.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    outs: dict = {}
    for _ in range(reps):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            res = fn()
            times[name].append(time.perf_counter() - t0)
            outs.setdefault(name, res)
    agg = {k: (min(v) if stat == "best" else statistics.median(v)) for k, v in times.items()}
    return agg, outs, f"{before} → {load_avg()}"


# ------------------------------------------------------------------ hand-written TL-hook loops
FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")


class EdgeFlags:
    """TransformerLens's three edge flags on for the ``with`` block, restored after."""

    def __init__(self, model):
        self.model, self.old = model, {f: bool(getattr(model.cfg, f, False)) for f in FLAGS}

    def _set(self, values: dict) -> None:
        for f, v in values.items():
            getattr(self.model, f"set_{f}")(v)

    def __enter__(self):
        self._set({f: True for f in FLAGS})

    def __exit__(self, *exc):
        self._set(self.old)


def sender_at(node, L: int) -> tuple[str, tuple]:
    from mechattr.components import MLP, Head, Input

    if isinstance(node, Input):
        return "blocks.0.hook_resid_pre", (slice(None),)
    if isinstance(node, Head):
        return f"blocks.{node.layer}.attn.hook_result", (slice(None), slice(None), node.head)
    assert isinstance(node, MLP)
    return f"blocks.{node.layer}.hook_mlp_out", (slice(None),)


def receiver_at(e, L: int) -> tuple[str, tuple]:
    from mechattr.components import MLP, Head

    r = e.receiver
    if isinstance(r, Head):
        return f"blocks.{r.layer}.hook_{e.input}_input", (slice(None), slice(None), r.head)
    if isinstance(r, MLP):
        return f"blocks.{r.layer}.hook_mlp_in", (slice(None),)
    return f"blocks.{L - 1}.hook_resid_post", (slice(None),)


def sender_cache(model, tokens, edges) -> dict:
    names = {sender_at(e.sender, model.cfg.n_layers)[0] for e in edges}
    _, c = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: c[n].clone() for n in names}


@torch.no_grad()
def loop_exact(model, clean, corr, target, edges) -> torch.Tensor:
    """One hooked forward per edge: receiver input += corrupted − clean sender output."""
    L = model.cfg.n_layers
    with EdgeFlags(model):
        cc, xc = sender_cache(model, clean, edges), sender_cache(model, corr, edges)
        base = target(model(clean)).float().mean()
        out = []
        for e in edges:
            sn, si = sender_at(e.sender, L)
            rn, ri = receiver_at(e, L)
            delta = xc[sn][si] - cc[sn][si]

            def hook(x, hook, ri=ri, delta=delta):
                x = x.clone()
                x[ri] += delta
                return x

            out.append(target(model.run_with_hooks(clean, fwd_hooks=[(rn, hook)])).float().mean() - base)
    return torch.stack(out)


@torch.no_grad()
def loop_acdc(model, clean, corr, target, edges, tau: float) -> tuple[set, int]:
    """Sequential ACDC (Conmy et al. 2023) in mechattr's order: receivers latest first, each
    receiver's edges latest sender first; an edge goes if ``|T(H∖e) − T(H)| < tau``; a receiver
    that feeds nothing any more loses its inputs untested. One hooked forward per test."""
    from mechattr.components import Logits, node_order

    L = model.cfg.n_layers
    with EdgeFlags(model):
        ref = sender_cache(model, corr, edges)

        def value(removed: list) -> float:
            live, hooks, by_recv = {}, [], {}
            for e in removed:
                rn, ri = receiver_at(e, L)
                by_recv.setdefault(rn, []).append((ri, *sender_at(e.sender, L)))

            def grab(name):
                def h(x, hook):
                    live[name] = x
                return h

            def patch(name):
                def h(x, hook):
                    x = x.clone()
                    for ri, sn, si in by_recv[name]:
                        x[ri] += ref[sn][si] - live[sn][si]
                    return x
                return h

            hooks = [(n, grab(n)) for n in {sender_at(e.sender, L)[0] for e in removed}]
            hooks += [(n, patch(n)) for n in by_recv]
            return float(target(model.run_with_hooks(clean, fwd_hooks=hooks)).float().mean())

        removed: list = []
        current, n_forwards = value(removed), 1
        into: dict = {}
        for e in edges:
            into.setdefault(e.receiver, []).append(e)
        for r in sorted(into, key=node_order, reverse=True):
            cand = sorted(into[r], key=lambda e: (node_order(e.sender), e.input or ""), reverse=True)
            if not isinstance(r, Logits) and not any(e.sender == r and e not in removed for e in edges):
                removed += cand
                continue
            for e in cand:
                trial = value(removed + [e])
                n_forwards += 1
                if abs(trial - current) < tau:
                    removed.append(e)
                    current = trial
    return {str(e) for e in edges if e not in removed}, n_forwards


# ------------------------------------------------------------------ ours
def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unit_calls(model, clean, corr, target, tag: str = "") -> dict:
    """fwd (no_grad), fwd+bwd to the embeddings, and both with the split flags on."""
    embed_hp = model.hook_dict["hook_embed"]

    def fwd():
        with torch.no_grad():
            return model(corr)

    def fwd_bwd():
        leaf = {}

        def grab(mod, inp, out):
            leaf["x"] = out.detach().requires_grad_(True)
            return leaf["x"]

        h = embed_hp.register_forward_hook(grab)
        try:
            target(model(clean)).sum().backward()
        finally:
            h.remove()

    def split(fn):
        def run():
            with EdgeFlags(model):
                return fn()
        return run

    return {f"fwd{tag}": fwd, f"fwd_bwd{tag}": fwd_bwd, f"fwd_split{tag}": split(fwd), f"fwd_bwd_split{tag}": split(fwd_bwd)}


def item_eap(a, model, clean, corr, target) -> dict:
    from mechattr.circuits import attribute_edges

    def calls(c, x):
        d = unit_calls(model, c, x, target)
        d["eap"] = lambda: attribute_edges(model, c, x, target, method="eap")
        d["eap_ig"] = lambda: attribute_edges(model, c, x, target, method="eap_ig_inputs", n_steps=a.steps)
        return d

    t, outs, load = timed(calls(clean, corr), calls(clean[:2, :8], corr[:2, :8]), a.reps, a.stat)
    return {"t": t, "outs": outs, "load": load}


def spread(edges: list, n: int) -> list:
    """``n`` edges spread evenly over the (receiver-ordered, so layer-ordered) edge list."""
    step = len(edges) / n
    return [edges[int(i * step)] for i in range(n)] if n < len(edges) else list(edges)


def subset_heads(n_heads: int, k: int) -> list[int]:
    """``k`` head indices spread from 0 to ``n_heads - 1`` (the last included: mechattr's
    ``run_circuits`` sizes a receiver hook's head axis by the largest head it sees)."""
    return sorted({round(i * (n_heads - 1) / max(1, k - 1)) for i in range(k)})


def connected_subset(model, k: int) -> list:
    """Every edge among input, :func:`subset_heads` of each layer, the MLPs and the logits."""
    from mechattr.circuits import model_edges
    from mechattr.components import Head

    heads = subset_heads(model.cfg.n_heads, k)
    keep = lambda n: not isinstance(n, Head) or n.head in heads  # noqa: E731
    return [e for e in model_edges(model) if keep(e.sender) and keep(e.receiver)]


def kl_target(model, clean):
    """Per example KL(clean ‖ run) of the next-token distribution at the last position
    (ACDC's metric, Conmy et al. 2023); rows may be variant-major repeats of the batch."""
    with torch.no_grad():
        ref = model(clean)[:, -1].float().log_softmax(-1)

    def kl(logits):
        lp = logits[:, -1].float().log_softmax(-1)
        r = ref.repeat(lp.shape[0] // ref.shape[0], 1)
        return (r.exp() * (r - lp)).sum(-1)

    return kl


def item_exact_acdc(a, mid, tiny, clean, corr, target) -> dict:
    from mechattr.circuits import acdc, attribute_edges, model_edges

    sub = spread(model_edges(mid), a.exact_edges)
    asub = connected_subset(tiny, a.acdc_heads)
    kl = kl_target(tiny, clean)
    calls = {"exact": lambda: attribute_edges(mid, clean, corr, target, method="exact", edges=sub).scores,
             "exact_loop": lambda: loop_exact(mid, clean, corr, target, sub),
             "acdc": lambda: acdc(tiny, clean, corr, kl, tau=a.tau, edges=asub, prune=False),
             "acdc_loop": lambda: loop_acdc(tiny, clean, corr, kl, asub, a.tau)}
    calls.update(unit_calls(mid, clean, corr, target, "_mid"))
    calls.update(unit_calls(tiny, clean, corr, target, "_tiny"))
    c2, x2 = clean[:2, :8], corr[:2, :8]
    kl2 = kl_target(tiny, c2)
    warm = {"exact": lambda: attribute_edges(mid, c2, x2, target, method="exact", edges=sub[:3]),
            "exact_loop": lambda: loop_exact(mid, c2, x2, target, sub[:3]),
            "acdc": lambda: acdc(tiny, c2, x2, kl2, tau=a.tau, edges=asub[-8:], prune=False),
            "acdc_loop": lambda: loop_acdc(tiny, c2, x2, kl2, asub[-8:], a.tau)}
    t, outs, load = timed(calls, warm, a.reps, a.stat)
    diff = float((outs["exact"] - outs["exact_loop"]).abs().max())
    assert diff <= 1e-4, f"exact differs from the one-edge loop by {diff}"
    ours = {str(e) for e in outs["acdc"].edges}
    theirs, n_loop = outs["acdc_loop"]
    assert ours == theirs, f"ACDC kept sets differ: only batched {sorted(ours - theirs)[:5]}, only loop {sorted(theirs - ours)[:5]}"
    return {"t": t, "load": load, "n_exact": len(sub), "exact_diff": diff, "exact_scale": float(outs["exact"].abs().max()),
            "n_acdc": len(asub), "acdc_kept": sorted(ours), "acdc_evals": outs["acdc"].settings["n_evaluated"],
            "acdc_loop_forwards": n_loop, "acdc_edges": [str(e) for e in asub]}


# ------------------------------------------------------------------ peers: venvs and subprocesses
def ensure_venv(root: Path, name: str, install: bool) -> tuple[Path | None, str]:
    """``root/name`` with torch (this torch's version) and the peer package; (python, note)."""
    d = root / name
    py, mark = d / "bin" / "python", d / ".mechattr-bench-ok"
    want = f"torch=={torch.__version__} {PEERS[name]}"
    if py.exists() and mark.exists() and mark.read_text().strip() == want:
        return py, f"reused {d}"
    if not install:
        return None, f"not installed ({d}); run once without --quick / with --install"
    t0 = time.perf_counter()
    try:
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--clear", str(d)], check=True,
                       capture_output=True, timeout=300)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *want.split()], capture_output=True, text=True, timeout=1500)
    except (subprocess.SubprocessError, OSError) as err:
        return None, f"install failed: {type(err).__name__}: {err}"
    if r.returncode:
        return None, f"pip install {want} failed: {r.stderr.strip().splitlines()[-1:]}"
    mark.write_text(want)
    return py, f"installed into {d} in {time.perf_counter() - t0:.0f} s"


def run_peer(a, py: Path, name: str, data: Path) -> tuple[dict | None, str]:
    out = data / f"{name}.json"
    cmd = [str(py), str(Path(__file__).resolve()), "--peer", name, "--data", str(data), "--threads", str(a.threads),
           "--peer-reps", str(a.peer_reps)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.peer_timeout,
                       env={**os.environ, "PYTHONPATH": "", "TQDM_DISABLE": "1"})
    if r.returncode or not out.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return None, f"peer run failed (rc {r.returncode}): {' | '.join(tail)}"
    return json.loads(out.read_text()), f"ran in {time.perf_counter() - t0:.0f} s (wall, incl. import and load)"


def compare(ours, theirs: dict) -> dict:
    """Max abs diff and Spearman correlation over the edges both score."""
    mine = ours.as_dict() if hasattr(ours, "as_dict") else ours
    mine = {str(k): v for k, v in mine.items()}
    common = [k for k in mine if k in theirs]
    x = torch.tensor([mine[k] for k in common], dtype=torch.float64)
    y = torch.tensor([theirs[k] for k in common], dtype=torch.float64)

    def rank(v):
        return v.argsort().argsort().double()

    rx, ry = rank(x) - rank(x).mean(), rank(y) - rank(y).mean()
    rho = float((rx * ry).sum() / (rx.norm() * ry.norm())) if len(common) > 1 else float("nan")
    return {"n": len(common), "n_ours": len(mine), "n_theirs": len(theirs), "max_diff": float((x - y).abs().max()),
            "scale": float(x.abs().max()), "spearman": rho}


# ------------------------------------------------------------------ peer side (runs in the peer venv, no mechattr)
def peer_main(a: argparse.Namespace) -> None:
    data = Path(a.data)
    inp = {**json.loads((data / "inputs.json").read_text()), **load_file(str(data / "inputs.safetensors"))}
    res = {"versions": {"torch": torch.__version__}}
    (peer_tl43 if a.peer == "tl43" else peer_circuitkit)(a, data, inp, res)
    (data / f"{a.peer}.json").write_text(json.dumps(res))


def best_of(fn, reps: int) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


def peer_tl43(a, data: Path, inp: dict, res: dict) -> None:
    import importlib.metadata

    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    res["versions"]["transformer_lens"] = importlib.metadata.version("transformer-lens")
    m = TransformerBridge.boot_transformers(str(data / "main_hf"), device="cpu")
    m.enable_compatibility_mode(disable_warnings=True)
    m.eval()  # parameters left trainable: its backward hooks need a graph from the weights
    g, b = inp["good"], inp["bad"]
    metric = lambda lg: lg[0, -1, g] - lg[0, -1, b]  # noqa: E731
    cfg = EdgeAttributionConfig(granularity="edge")
    clean, corr = inp["clean"], inp["corr"]
    attribution_patch(m, clean[:1, :4], corr[:1, :4], metric, cfg)  # warm-up
    t, r = best_of(lambda: attribution_patch(m, clean, corr, metric, cfg), a.peer_reps)

    def name(n):
        return {"embed": "input", "attn_head_out": f"L{n.layer}H{n.head}", "mlp_out": f"MLP{n.layer}",
                "mlp_in": f"MLP{n.layer}", "logits": "logits"}.get(n.kind) or f"L{n.layer}H{n.head}.{n.kind[0]}"

    agg: dict[str, float] = {}
    for (w, rd), s in r.edge_scores.items():
        rn = name(rd)
        key = f"{name(w)}->{rn.split('.')[0]}" + (f".{rn.split('.')[1]}" if "." in rn else "")
        agg[key] = agg.get(key, 0.0) + s
    res["eap"] = {"time": t, "scores": agg, "n_position_edges": len(r.edge_scores)}


def save_ht(m, data: Path, stem: str) -> None:
    """A HookedTransformer as JSON config + safetensors state (no pickle), for :func:`ht_from`."""
    cfg = {k: (str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v) for k, v in m.cfg.to_dict().items()}
    (data / f"{stem}_ht.json").write_text(json.dumps(cfg))
    save_file({k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}, str(data / f"{stem}_ht.safetensors"))


def ht_from(data: Path, stem: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    d = json.loads((data / f"{stem}_ht.json").read_text())
    init = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}  # the peer's TL may know fewer
    d = {k: v for k, v in d.items() if k in init}
    d["dtype"] = getattr(torch, d["dtype"])
    m = HookedTransformer(HookedTransformerConfig(**d), AutoTokenizer.from_pretrained(str(data / f"{stem}_hf")), move_to_device=False)
    m.load_state_dict(load_file(str(data / f"{stem}_ht.safetensors")))
    m.eval()
    for f in FLAGS:
        getattr(m, f"set_{f}")(True)
    return m


def peer_circuitkit(a, data: Path, inp: dict, res: dict) -> None:
    import importlib.metadata

    import circuitkit  # noqa: F401  (installs its TransformerLens patches before TL is imported)
    from circuitkit.backends.eap.attribute import attribute
    from circuitkit.backends.eap.eap_utils import tokenize_plus
    from circuitkit.backends.eap.graph import Graph

    res["versions"].update(circuitkit=importlib.metadata.version("circuitkit"),
                           transformer_lens=importlib.metadata.version("transformer-lens"))
    m = ht_from(data, "main")
    g, b = inp["good"], inp["bad"]

    def metric(logits, clean_logits, input_lengths, label):  # summed over the batch: circuitkit divides by it
        last = logits[torch.arange(logits.shape[0]), input_lengths - 1]
        return (last[:, g] - last[:, b]).sum()

    def loader(clean, corr):
        text = lambda t: [" " + " ".join(f"w{i}" for i in row[1:].tolist()) for row in t]  # noqa: E731
        toks = tokenize_plus(m, text(clean))[0]
        if not torch.equal(toks, clean):
            raise SystemExit(f"circuitkit tokenizes differently: {toks[0, :6].tolist()} vs {clean[0, :6].tolist()}")
        return [(text(clean), text(corr), torch.zeros(len(clean), dtype=torch.long))]

    def names(graph):
        def node(n: str) -> str:
            if n.startswith("a"):
                layer, head = n[1:].split(".h")
                return f"L{layer}H{head}"
            return f"MLP{n[1:]}" if n.startswith("m") else n

        out = {}
        for key, e in graph.edges.items():
            src, dst = key.split("->")
            qkv = ""
            if dst.endswith(">"):
                dst, qkv = dst[:-3], "." + dst[-2]
            out[f"{node(src)}->{node(dst)}{qkv}"] = float(e.score)
        return out

    clean, corr = inp["clean"], inp["corr"]
    dl, dl2 = loader(clean, corr), loader(clean[:2, :8], corr[:2, :8])
    for key, method, steps in (("eap", "EAP", None), ("eap_ig", "EAP-IG-inputs", inp["steps"])):
        graph = Graph.from_model(m)
        run = lambda d, graph=graph, method=method, steps=steps: attribute(  # noqa: E731
            m, graph, d, metric, method=method, ig_steps=steps, quiet=True)
        run(dl2)  # warm-up
        t, _ = best_of(lambda: run(dl), a.peer_reps)  # noqa: B023 (called at once)
        res[key] = {"time": t, "scores": names(graph)}
    try:
        res["acdc"] = circuitkit_acdc(a, data, inp)
    except Exception as err:  # reported, not hidden
        res["acdc_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def circuitkit_acdc(a, data: Path, inp: dict) -> dict:
    """auto-circuit's ACDC as circuitkit ships it, on the same edges, KL target, one tau."""
    from circuitkit.backends.acdc.data import PromptDataLoader, PromptDataset
    from circuitkit.backends.acdc.prune_algos.ACDC import acdc_prune_scores
    from circuitkit.backends.acdc.utils.graph_utils import patchable_model

    m = ht_from(data, "tiny")
    pm = patchable_model(m, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu"))

    def node(n: str) -> str:
        if n == "Resid Start":
            return "input"
        if n == "Resid End":
            return "logits"
        if n.startswith("MLP "):
            return f"MLP{n[4:]}"
        parts = n[1:].split(".")
        return f"L{parts[0]}H{parts[1]}" + (f".{parts[2].lower()}" if len(parts) > 2 else "")

    def ours(e) -> str:
        d = node(e.dest.name)
        head, _, w = d.partition(".")
        return f"{node(e.src.name)}->{head}" + (f".{w}" if w else "")

    want = set(inp["acdc_edges"])
    pm.edges = {e for e in pm.edges if ours(e) in want}
    clean, corr = inp["clean"], inp["corr"]
    col = lambda x: x[:, None]  # noqa: E731
    ds = PromptDataset(clean, corr, col(torch.full((len(clean),), inp["good"])), col(torch.full((len(clean),), inp["bad"])))
    dl = PromptDataLoader(ds, device=torch.device("cpu"), batch_size=len(clean))
    exp = math.floor(math.log10(inp["tau"]))
    kw = dict(tao_exps=[exp], tao_bases=[inp["tau"] / 10**exp], faithfulness_target="kl_div")
    t, _ = best_of(lambda: acdc_prune_scores(pm, dl, None, **kw), a.peer_reps)
    kept = sorted(ours(e) for e in pm.edges if float(e.patch_mask(pm).data[e.patch_idx]) == 0.0)
    return {"time": t, "kept": kept, "n_edges": len(pm.edges)}


# ------------------------------------------------------------------ markdown
def fmt(t: float | None, unit: float | None = None, name: str = "U") -> str:
    if t is None:
        return "–"
    return f"{t:.2f} s" + (f" ({t / unit:.2f} {name})" if unit else "")


def report(a, r1: dict, r3: dict, peers: dict, notes: dict, info: dict) -> str:
    t = r1["t"]
    U, Us = t["fwd"] + t["fwd_bwd"], t["fwd_split"] + t["fwd_bwd_split"]
    ig_u, ig_us = a.steps * t["fwd_bwd"], a.steps * t["fwd_bwd_split"]
    L, H, D = shapes(a)["main"]
    out = [f"`{a.cmd}`, {info['started']}, {info['wall']:.0f} s wall in all.", "",
           f"- **Device:** {info['device']}.", f"- **Versions:** {info['versions']}.",
           f"- **Load average (1/5/15 min) before → after:** items 1–2: {r1['load']}; item 3: {r3['load']}"
           + "".join(f"; {k}: {v}" for k, v in info["peer_load"].items()) + ".", "",
           f"### 1–2. EAP and EAP-IG on model `main` ({L} layers × {H} heads, d_model {D}, "
           f"d_vocab {VOCAB}; {info['n_edges']} edges)", "",
           "| call | time | × U (2 fwd + 1 bwd) | × U_split | target |", "|---|---|---|---|---|",
           f"| 1 fwd (no_grad) | {t['fwd']:.3f} s | | | |",
           f"| 1 fwd+bwd (to the embeddings) | {t['fwd_bwd']:.3f} s | | | |",
           f"| **U** = fwd + fwd+bwd | {U:.3f} s | 1 | {U / Us:.2f} | |",
           f"| **U_split** (same, split flags on) | {Us:.3f} s | {Us / U:.2f} | 1 | |",
           f"| `attribute_edges(method=\"eap\")` | {t['eap']:.2f} s | **{t['eap'] / U:.2f}** | {t['eap'] / Us:.2f} | ≤ 1.5 × U |",
           "", f"| call | time | × {a.steps} (fwd+bwd) | × {a.steps} (fwd+bwd, split) | target |", "|---|---|---|---|---|",
           f"| `attribute_edges(method=\"eap_ig_inputs\", n_steps={a.steps})` | {t['eap_ig']:.2f} s | **{t['eap_ig'] / ig_u:.2f}** "
           f"| {t['eap_ig'] / ig_us:.2f} | ≤ 1.3 × |", ""]
    t3 = r3["t"]
    Lm, Hm, Dm = shapes(a)["mid"]
    Lt, Ht, Dt = shapes(a)["tiny"]
    out += ["### 3. Exact edge patching and ACDC vs one-forward-per-test loops", "",
            f"Exact: model `mid` ({Lm} layers × {Hm} heads, d_model {Dm}), {r3['n_exact']} edges spread over the layers; "
            f"max abs diff {r3['exact_diff']:.1e} (of {r3['exact_scale']:.1e}). Unit: one forward of the batch, plain "
            f"{t3['fwd_mid']:.3f} s, split flags on {t3['fwd_split_mid']:.3f} s.", "",
            "| call | time | × fwd (split) | speed-up | target |", "|---|---|---|---|---|",
            f"| one-edge-at-a-time loop ({r3['n_exact']} + 3 hooked forwards) | {t3['exact_loop']:.2f} s "
            f"| {t3['exact_loop'] / t3['fwd_split_mid']:.1f} | 1 | |",
            f"| `attribute_edges(method=\"exact\", edges=subset)` | {t3['exact']:.2f} s | {t3['exact'] / t3['fwd_split_mid']:.1f} "
            f"| **{t3['exact_loop'] / t3['exact']:.2f}×** | ≥ 10× |", "",
            f"ACDC: model `tiny` ({Lt} layers × {Ht} heads, d_model {Dt}), the {r3['n_acdc']} edges among input, heads "
            f"{subset_heads(Ht, a.acdc_heads)} of each layer, the MLPs and the logits; target: KL(clean ‖ circuit) of the last "
            f"position (batch mean), tau = {a.tau:g}; both keep the same {len(r3['acdc_kept'])} edges (asserted). Unit: one "
            f"forward, plain {t3['fwd_tiny']:.3f} s, split flags on {t3['fwd_split_tiny']:.3f} s.", "",
            "| call | time | forwards (rows / batch) | × fwd (split) | speed-up |", "|---|---|---|---|---|",
            f"| sequential ACDC loop | {t3['acdc_loop']:.2f} s | {r3['acdc_loop_forwards']} | "
            f"{t3['acdc_loop'] / t3['fwd_split_tiny']:.1f} | 1 |",
            f"| `acdc(edges=subset, tau={a.tau:g})` (batched prefixes) | {t3['acdc']:.2f} s | {r3['acdc_evals']} | "
            f"{t3['acdc'] / t3['fwd_split_tiny']:.1f} | **{t3['acdc_loop'] / t3['acdc']:.2f}×** |", ""]
    out += ["### 4. Peers (same weights, each in its own venv)", ""]
    rows = [f"Model `main`, same batch and target. U = {U:.3f} s; for EAP-IG the unit is {a.steps} × (fwd+bwd) = "
            f"{ig_u:.3f} s.", "",
            "| peer | call | peer time | mechattr time | speed-up (peer / ours) | edges compared | max abs diff | Spearman ρ |",
            "|---|---|---|---|---|---|---|---|"]
    acdc_rows = []
    for name, p in peers.items():
        for key, label, unit, uname in (("eap", "EAP", U, "U"), ("eap_ig", f"EAP-IG inputs, {a.steps} steps", ig_u, "units")):
            c = p.get(f"cmp_{key}")
            if c is None:
                continue
            mt, pt = t[key], p["res"][key]["time"]
            rows.append(f"| {name} | {label} | {fmt(pt, unit, uname)} | {fmt(mt, unit, uname)} | **{pt / mt:.2f}×** | {c['n']} "
                        f"(ours {c['n_ours']}, theirs {c['n_theirs']}) | {c['max_diff']:.1e} (of {c['scale']:.1e}) "
                        f"| {c['spearman']:.6f} |")
        if p.get("acdc"):
            q = p["acdc"]
            acdc_rows.append(f"| {name} | {q['n_edges']} | {fmt(q['time'], t3['fwd_split_tiny'], 'fwd')} | "
                             f"{fmt(t3['acdc'], t3['fwd_split_tiny'], 'fwd')} | **{q['time'] / t3['acdc']:.2f}×** | "
                             f"{len(q['kept'])} / {len(r3['acdc_kept'])} | {q['jaccard']:.2f} |")
    out += rows + [""]
    if acdc_rows:
        out += [f"ACDC, model `tiny`, the same {r3['n_acdc']} edges, KL target, tau {a.tau:g} (unit: one split forward of "
                f"`tiny`, {t3['fwd_split_tiny']:.3f} s):", "",
                "| peer | edges | peer time | mechattr `acdc` time | speed-up (peer / ours) | kept (peer / ours) | Jaccard |",
                "|---|---|---|---|---|---|---|", *acdc_rows, ""]
    for name, p in peers.items():
        out.append(f"- **{name}** (`{PEERS[name]}`): {p['note']}" + (f"; {p['versions']}" if p.get("versions") else "") + ".")
    out += ["- TransformerLens 4.3 scores the denoising direction ((clean − corrupted) · gradient at the corrupted "
            "run), per example and per position: its position edges are summed per edge and compared with our "
            "`attribute_edges(model, corrupted, clean, …)` (roles swapped; the time column is our regular EAP, the same "
            "work). It runs on a TransformerBridge of the same HF weights (TransformerLens 4 has no HookedTransformer).",
            "- circuitkit gets the same token ids (as text through its own tokenizer call, checked equal) and a "
            "metric summed over the batch (it divides by the batch size itself); its model is a TransformerLens 3.8 "
            "HookedTransformer built from our HookedTransformer's config and state dict. Its ACDC is auto-circuit's "
            "(edges in order of receiver layer, an edge goes if `KL − KL_prev < tau`, signed), restricted to the "
            "same edges; ours tests `|ΔKL| < tau` in receiver order, so equal circuits are not guaranteed."]
    for k, v in notes.items():
        out.append(f"- {k}: {v}")
    return "\n".join(out)


HEADER = """# Circuits: edge attribution, exact patching and ACDC vs physical units, loops and peers

`python scripts/bench_circuits.py --write` rewrites this file from its run (keeping the
hand-written `notes` and `roc` blocks). Method: see the script's docstring.

- **Models:** random GPT-2s (seed 0, transformers' default init), built offline from
  `GPT2Config` with d_vocab 1000 (a small vocabulary keeps the unembedding a small share of
  the cost; GPT-2's own 50257 would add about a third to every forward and backward), saved
  with `save_pretrained` and a word-level tokenizer and loaded with `mechattr.load_model` (a
  HookedTransformer, LayerNorm folded). `main` is GPT-2-small-shaped; item 3's exact and ACDC
  runs use the smaller `mid` and `tiny` models, for time (a one-forward-per-edge loop on the
  GPT-2-small shape costs seconds per edge on this CPU).
- **Inputs:** batch 8 × 32 tokens (BOS, then ids ≥ 3 at random; the corrupted batch is
  another random draw), target `logit_diff(5, 9)` at the last position (ACDC: KL to the clean
  run, below). Parameters frozen throughout (everything differentiates activations only).
- **Units:** `U` = one `no_grad` forward + one forward and backward of the target to the
  embeddings (a forward hook at `hook_embed` makes them a leaf): the least any EAP can do (a
  corrupted and a clean forward, one backward). `U_split` = the same with TransformerLens's
  `use_split_qkv_input`, `use_attn_result` and `use_hook_mlp_in` on, which every edge method
  here (ours and the peers') runs under.
- **Timing:** a warm-up round on a 2 × 8 slice, then the rounds, each running every call of the
  item once in turn; best of the rounds. Peers: separate processes after ours, warm-up on a
  tiny input, then best of `--peer-reps` calls.
"""


def write(path: Path, body: str) -> None:
    old = path.read_text() if path.exists() else ""
    notes = re.search(r"<!-- notes -->.*?<!-- /notes -->", old, flags=re.S)
    roc = re.search(r"<!-- roc -->.*?<!-- /roc -->", old, flags=re.S)
    roc_text = roc.group(0) if roc else "<!-- roc -->\n## ROC AUC (filled in by hand)\n\n_To be added._\n<!-- /roc -->"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + (notes.group(0) + "\n\n" if notes else "") + "<!-- results -->\n## Results\n\n"
                    + body + "\n<!-- /results -->\n\n" + roc_text + "\n")


# ------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave the default)")
    ap.add_argument("--stat", default="best", choices=["best", "median"])
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG n_steps")
    ap.add_argument("--exact-edges", type=int, default=60)
    ap.add_argument("--acdc-heads", type=int, default=2, help="ACDC subset: N heads of each layer, first and last included")
    ap.add_argument("--tau", type=float, default=None, help="ACDC threshold (KL units); default 5e-4 (quick: 1e-3)")
    ap.add_argument("--peers", default="tl43,circuitkit", help="comma-separated subset of " + ",".join(PEERS) + ", or ''")
    ap.add_argument("--venvs", default="/tmp/mechattr-bench-venvs")
    ap.add_argument("--peer-reps", type=int, default=1)
    ap.add_argument("--peer-timeout", type=int, default=900)
    ap.add_argument("--install", action="store_true", help="install missing peer venvs even with --quick")
    ap.add_argument("--quick", action="store_true", help="2-layer models, 1 round: a smoke run (< 2 min)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", default="benchmarks/circuits.md")
    ap.add_argument("--peer", choices=list(PEERS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    if a.peer:
        return peer_main(a)
    if a.quick:
        a.reps, a.exact_edges = min(a.reps, 1), min(a.exact_edges, 12)
    a.tau = a.tau if a.tau is not None else (1e-3 if a.quick else 5e-4)
    a.cmd = "python scripts/bench_circuits.py " + " ".join(sys.argv[1:])
    import mechattr
    from mechattr import targets
    from mechattr.circuits import attribute_edges, model_edges
    from mechattr.io import versions

    t_start = time.perf_counter()
    info = {"started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "peer_load": {},
            "device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, torch threads = "
                      f"{torch.get_num_threads()}"}
    v = versions()
    info["versions"] = f"mechattr {v['mechattr']}, torch {v['torch']}, transformer-lens {v['transformer_lens']}"
    print(f"{info['device']}; {info['versions']}; load {load_avg()}", flush=True)
    clean, corr = batch()
    target = targets.logit_diff(GOOD, BAD)
    with tempfile.TemporaryDirectory(prefix="mechattr-bench-circuits-") as tmp:
        data = Path(tmp)
        models = {}
        for name, (L, H, D) in shapes(a).items():
            build(data / f"{name}_hf", L, H, D)
            models[name] = frozen(mechattr.load_model(data / f"{name}_hf", device="cpu"))
        main_m = models["main"]
        info["n_edges"] = len(model_edges(main_m))
        print("items 1-2 ...", flush=True)
        r1 = item_eap(a, main_m, clean, corr, target)
        print("  " + ", ".join(f"{k} {x:.2f}" for k, x in r1["t"].items()), flush=True)
        print("item 3 ...", flush=True)
        r3 = item_exact_acdc(a, models["mid"], models["tiny"], clean, corr, target)
        print("  " + ", ".join(f"{k} {x:.2f}" for k, x in r3["t"].items()), flush=True)
        peers, notes = {}, {}
        names = [p for p in a.peers.split(",") if p]
        if names:
            for stem in ("main", "tiny"):
                m = models[stem]
                if hasattr(m.cfg, "to_dict") and type(m).__name__ == "HookedTransformer":
                    save_ht(m, data, stem)
            save_file({"clean": clean.contiguous(), "corr": corr.contiguous()}, str(data / "inputs.safetensors"))
            (data / "inputs.json").write_text(json.dumps({"good": GOOD, "bad": BAD, "steps": a.steps, "tau": a.tau,
                                                          "acdc_edges": r3["acdc_edges"]}))
        for name in names:
            py, note = ensure_venv(Path(a.venvs), name, install=a.install or not a.quick)
            p = {"note": note}
            peers[name] = p
            if py is None:
                continue
            before = load_avg()
            print(f"peer {name} ...", flush=True)
            res, run_note = run_peer(a, py, name, data)
            info["peer_load"][name] = f"{before} → {load_avg()}"
            p["note"] += "; " + run_note
            if res is None:
                continue
            p["res"], p["versions"] = res, ", ".join(f"{k} {x}" for k, x in res["versions"].items())
            if "eap" in res:
                # TransformerLens 4.3 scores the denoising direction (gradient at the corrupted run): our EAP with roles swapped
                ref = (attribute_edges(main_m, corr, clean, target, method="eap") if name == "tl43" else r1["outs"]["eap"])
                p["cmp_eap"] = compare(ref, res["eap"]["scores"])
            if "eap_ig" in res:
                p["cmp_eap_ig"] = compare(r1["outs"]["eap_ig"], res["eap_ig"]["scores"])
            if "acdc" in res:
                q, mine = res["acdc"], set(r3["acdc_kept"])
                q["jaccard"] = len(mine & set(q["kept"])) / max(1, len(mine | set(q["kept"])))
                p["acdc"] = q
            if "acdc_error" in res:
                p["note"] += f"; ACDC failed: {res['acdc_error']}"
            print(f"  {p}"[:400], flush=True)
        info["wall"] = time.perf_counter() - t_start
        body = report(a, r1, r3, peers, notes, info)
    print("\n" + body)
    if a.write:
        write(Path(a.out), body)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
