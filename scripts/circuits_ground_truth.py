"""Circuit methods against ground truth: ROC AUC on the planted organisms, recovered circuits
of the trained organisms beside their cards. Writes the ``<!-- roc -->`` section of
benchmarks/circuits.md (``--write``) or prints it.

* Planted organisms (``planted_induction``, ``planted_mlp``, ``planted_backup``): their active
  edges under each ablation are known exactly (``organisms.circuit_edges``). For every edge
  method, the ROC AUC of ``|score|`` against that set; for ACDC at the card's ``tau``, the
  precision and recall of the returned edges against the active set.
* Trained organisms (``induction``, ``ioi``, ``sentiment``): EAP-IG (inputs) scores, the
  smallest top-n circuit reaching faithfulness 0.8 on the curve, its nodes beside the card's
  documented components, and the curve's area.

Usage: python scripts/circuits_ground_truth.py [--n 16] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from mechattr import organisms
from mechattr.circuits import acdc, attribute_edges, faithfulness_curve, roc_auc
from mechattr.io import versions
from mechattr.organisms.edges import acdc_threshold

PLANTED = ["planted_induction", "planted_mlp", "planted_backup"]
TRAINED = ["induction", "ioi", "sentiment"]
METHODS = ["exact", "eap", "clean_corrupted", "eap_ig_inputs", "eap_ig_activations"]
MD = Path(__file__).resolve().parents[1] / "benchmarks" / "circuits.md"


def planted_rows(n: int, seed: int) -> list[str]:
    out = ["| organism | ablation | active edges | " + " | ".join(METHODS) + " | ACDC precision / recall (τ) |",
           "|---|---|---|" + "---|" * len(METHODS) + "---|"]
    for name in PLANTED:
        m = organisms.load(name)
        b = organisms.task(name).sample(n, seed)
        for ablation in ("patch", "zero"):
            truth = set(organisms.circuit_edges(name, ablation))
            corr = b.corrupted if ablation == "patch" else None
            cells = []
            for method in METHODS:
                if method == "clean_corrupted" and ablation != "patch":
                    cells.append("–")
                    continue
                s = attribute_edges(m, b.tokens, corr, b.target, method=method, ablation=ablation, n_steps=16)
                cells.append(f"{roc_auc(s, truth):.3f}")
            tau = acdc_threshold(name)
            got = {str(e) for e in acdc(m, b.tokens, corr, b.target, tau=tau, ablation=ablation).edges}
            prec = len(got & truth) / max(len(got), 1)
            rec = len(got & truth) / len(truth)
            out.append(f"| {name} | {ablation} | {len(truth)} | " + " | ".join(cells) + f" | {prec:.2f} / {rec:.2f} ({tau:g}) |")
    return out


def trained_rows(n: int, seed: int) -> list[str]:
    out = ["| organism | card components | recovered circuit (EAP-IG, smallest top-n with faithfulness ≥ 0.8) | edges | faithfulness | curve area |",
           "|---|---|---|---|---|---|"]
    for name in TRAINED:
        m = organisms.load(name)
        b = organisms.task(name).sample(n, seed)
        s = attribute_edges(m, b.tokens, b.corrupted, b.target, method="eap_ig_inputs", n_steps=16)
        curve = faithfulness_curve(m, s, b.tokens, b.corrupted, b.target)
        ok = [(k, f) for k, f in zip(curve.counts, curve.faithfulness) if k > 0 and f >= 0.8]
        k, f = ok[0] if ok else (curve.counts[-1], curve.faithfulness[-1])
        top = [e for e, _ in s.top(k)]
        nodes = sorted({str(x) for e in top for x in (e.sender, e.receiver)} - {"input", "logits"})
        card = sorted({str(c) for v in organisms.circuit(name).values() for c in v})
        out.append(f"| {name} | {', '.join(card)} | {', '.join(nodes)} | {k} | {f:.3f} | {curve.area:.3f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="examples per organism (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="replace the <!-- roc --> section of benchmarks/circuits.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    v = versions()
    lines = ["## Ground truth: planted organisms (ROC AUC of |score| against the active edges)", "",
             f"`python scripts/circuits_ground_truth.py --n {args.n} --seed {args.seed} --write` — torch {v.get('torch')}, "
             f"transformer-lens {v.get('transformer_lens', v.get('transformer-lens'))}, CPU. Active edges: those whose "
             "single-edge ablation changes the answer logit (every other edge changes it by exactly 0); ACDC at the "
             "card's τ, precision / recall against the same set. EAP-IG with 16 steps.", ""]
    lines += planted_rows(args.n, args.seed)
    lines += ["", "Where a gradient method falls short of 1.0 it is the documented first-order failure: under `zero`, "
              "q/k edges into saturated softmaxes get ~0 gradient and EAP's linearisation of planted_mlp's AND units "
              "misjudges edges, while exact patching and EAP-IG (activations) rank every active edge first; "
              "`planted_backup`'s switch edge `L0H3->L1H1.q` is the card's example (exact +10, EAP ≈ 0). ACDC under "
              "`zero` on planted_backup prunes the backup's output edge first (the backup is silent while the primary "
              "works), so it misses backup edges with large single-edge effects.", "",
              "## Trained organisms: recovered circuits beside their cards", ""]
    lines += trained_rows(args.n, args.seed)
    lines += ["", "The tasks' corruptions decide what a circuit can show: induction's corruption replaces the answer "
              "token's earlier occurrence, which only the value path reads, so the layer-0 heads the recovered circuit "
              "keeps are the ones whose outputs feed the induction heads' values there, not necessarily the card's "
              "previous-token heads (which matter under ablation, not under this patch); a key-path corruption "
              "(issue 11) would show them.", "", f"(generated in {time.perf_counter() - t0:.0f} s)"]
    text = "\n".join(lines)
    if args.write:
        md = MD.read_text() if MD.exists() else "# Circuits\n\n<!-- roc -->\n<!-- /roc -->\n"
        if "<!-- roc -->" not in md:
            md += "\n<!-- roc -->\n<!-- /roc -->\n"
        md = re.sub(r"<!-- roc -->.*?<!-- /roc -->", lambda _: f"<!-- roc -->\n{text}\n<!-- /roc -->", md, flags=re.S)
        MD.write_text(md)
        print(f"wrote {MD}")
    else:
        print(text)


if __name__ == "__main__":
    main()
