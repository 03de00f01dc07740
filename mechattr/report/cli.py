"""``mechattr report``: validate attribution claims on a model and write report.html + report.json.

    mechattr report --model organism:induction --task induction --out reports/induction/
    mechattr report --model gpt2 --prompt "The Eiffel Tower is in" --target " Paris" --out reports/paris/

Progress bars (tqdm) while it runs, a summary table of verdicts on the terminal at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechattr.cli import command

DEFAULT_METHODS = "ig,input_x_gradient,saliency,attention"


def parse_claims(specs: list[str] | None) -> dict[str, list[str]]:
    """``["L1H2", "induction=L1H0,L1H1"]`` → ``{"L1H2": ["L1H2"], "induction": ["L1H0", "L1H1"]}``."""
    out: dict[str, list[str]] = {}
    for s in specs or []:
        name, _, heads = s.partition("=") if "=" in s else (s, "", s)
        hs = [h.strip() for h in heads.split(",") if h.strip()]
        if not hs:
            raise ValueError(f"empty claim {s!r}; use 'L1H2' or 'name=L1H0,L1H1'")
        out[name.strip()] = hs
    return out


def card_claims(organism: str) -> dict[str, list[str]]:
    """The organism card's circuit roles as named head-group claims."""
    from mechattr import organisms
    from mechattr.components import Head

    return {f"{role} (card)": [str(c) for c in comps if isinstance(c, Head)]
            for role, comps in organisms.circuit(organism).items() if any(isinstance(c, Head) for c in comps)}


def wrong_head(model: Any, organism: str, seed: int) -> str:
    """A seeded random head outside the organism's documented circuit (a deliberately wrong claim)."""
    import torch

    from mechattr import organisms
    from mechattr.components import all_heads

    circ = {c for comps in organisms.circuit(organism).values() for c in comps}
    pool = [h for h in all_heads(model) if h not in circ]
    if not pool:
        raise ValueError(f"organism {organism!r} has no head outside its circuit to use as a wrong claim")
    g = torch.Generator().manual_seed(int(seed) + 101)
    return str(pool[int(torch.randint(len(pool), (1,), generator=g))])


def _prompt_inputs(model: Any, prompts: list[str], target: str | None, corrupt: list[str] | None) -> tuple[Any, Any, Any]:
    import torch

    from mechattr import targets
    from mechattr.inputs import prepare_tokens, to_tokens

    batch = prepare_tokens(model, prompts)
    if target is None:
        with torch.no_grad():
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        from mechattr.targets import last_positions

        last = last_positions(batch.attention_mask, batch.shape[0], batch.shape[1], batch.tokens.device)
        ids = logits[torch.arange(batch.shape[0]), last].argmax(-1)
    elif target.startswith("id:"):
        ids = torch.tensor(int(target[3:]))
    else:
        tok = to_tokens(model, target, prepend_bos=False)[0]
        if len(tok) != 1:
            raise ValueError(f"--target {target!r} is {len(tok)} tokens; give a single token (or id:<n>)")
        ids = tok[0]
    corrupted = prepare_tokens(model, corrupt).tokens if corrupt else None
    return batch, targets.logit(ids, pos="last"), corrupted


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (if given) for the scope, then restored."""
    import torch

    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(before)


def run_report(
    *,
    model: str,
    out: str | Path,
    task: str | None = None,
    prompts: list[str] | None = None,
    target: str | None = None,
    corrupt: list[str] | None = None,
    n: int = 16,
    methods: str | list[str] = DEFAULT_METHODS,
    claims: dict[str, list[str]] | None = None,
    card: bool = False,
    wrong: bool = False,
    seed: int = 0,
    device: str | None = None,
    quiet: bool = False,
    threads: int | None = None,
    bridge: bool = False,
    **validate_kw: Any,
) -> Any:
    """Load, build inputs, :func:`mechattr.validate`, save; returns the :class:`ValidationReport`.

    ``threads`` sets torch's intra-op threads for this call only (restored afterwards)."""
    with _torch_threads(threads):
        from tqdm.auto import tqdm

        from mechattr.model import load_model
        from mechattr.validation import validate

        m = load_model(model, device=device or "cpu", bridge=bridge)
        organism = model[len("organism:"):] if model.startswith("organism:") else None
        meths = [x.strip() for x in methods.split(",")] if isinstance(methods, str) else list(methods)
        claims = dict(claims or {})
        source_positions = None
        if task is not None:
            from mechattr import organisms

            tb = organisms.task(task).sample(n, seed).to(next(m.parameters()).device)
            tokens, tgt, corrupted = tb.tokens, tb.target, getattr(tb, "corruptions", None) or tb.corrupted
            source_positions, mask = tb.source_positions, tb.attention_mask
        elif prompts:
            batch, tgt, corrupted = _prompt_inputs(m, prompts, target, corrupt)
            tokens, mask = batch.tokens, batch.attention_mask
        else:
            raise ValueError("give --task <organism> or at least one --prompt")
        if card or wrong:
            if organism is None:
                raise ValueError("--card-claims/--wrong-claim need an organism model (organism:<name>)")
            if card:
                claims.update(card_claims(organism))
            if wrong:
                h = wrong_head(m, organism, seed)
                claims[f"wrong: {h} (random non-circuit head)"] = [h]
        steps = 2 * len(meths) + 8 + (1 if validate_kw.get("circuit") else 0)
        bar = tqdm(total=steps, desc="validate", disable=quiet, file=sys.stderr)

        def progress(step: str) -> None:
            bar.set_description(step[:40])
            bar.update(1)

        try:
            if organism is not None and "organism" not in validate_kw and "documented" not in validate_kw:
                validate_kw["organism"] = organism  # controls never contain the card's components
            rep = validate(m, tokens, tgt, corrupted=corrupted, methods=meths, claims=claims, seed=seed,
                           source_positions=source_positions, attention_mask=mask, model_name=model, progress=progress,
                           **validate_kw)
        finally:
            bar.close()
        rep.settings["task"] = task
        rep.save(out)
        return rep


def format_summary(rep: Any, width: int = 100) -> list[str]:
    """The verdict table of a :class:`ValidationReport` as lines of at most ``width`` columns:
    claim (shortened with … past 40 characters), verdict, tests passed, and the reason
    wrapped under their column, or on indented lines below the row when that column would be
    narrower than 48)."""
    import textwrap

    df = rep.summary_frame()
    claims = [str(c) for c in df["claim"]]
    vw = max(len("verdict"), *(len(str(v)) for v in df["verdict"]))
    tw = max(len("tests"), *(len(str(t)) for t in df["tests"]))
    cw = max(len("claim"), min(40, width - vw - tw - 4, max((len(c) for c in claims), default=0)))
    left = cw + vw + tw + 6
    nw = width - left
    below = nw < 48  # a narrow numbers column: the numbers go on their own indented lines instead
    lines = [f"{'claim':<{cw}}  {'verdict':<{vw}}  {'tests':>{tw}}" + ("" if below else "  numbers")]
    for claim, verdict, tests, numbers in zip(claims, df["verdict"], df["tests"], df["numbers"]):
        c = claim if len(claim) <= cw else claim[: cw - 1] + "…"
        row = f"{c:<{cw}}  {str(verdict):<{vw}}  {str(tests):>{tw}}"
        wrap = textwrap.wrap(str(numbers), width - 4 if below else nw, break_on_hyphens=False) or [""]
        if below:
            lines += [row] + ["    " + w for w in wrap]
        else:
            lines += [f"{row}  {wrap[0]}"] + [" " * left + w for w in wrap[1:]]
    return [ln.rstrip() for ln in lines]


def print_summary(rep: Any, out: str | Path, width: int = 100) -> None:
    """Print :func:`format_summary`, the skipped steps and where the report is (``width`` columns)."""
    import textwrap

    for line in format_summary(rep, width):
        print(line)
    for s in rep.skipped:
        print(textwrap.fill(f"skipped: {s['step']}: {s['reason']}", width, subsequent_indent="    "))
    print(f"\n{len(rep.confirmed())}/{len(rep.claims)} claims confirmed.")
    print(f"Report: {Path(out) / 'report.html'} (+ report.json)")


def _organism_names() -> list[str]:
    """The shipped organisms (weights + card) without importing them (that imports TransformerLens)."""
    d = Path(__file__).resolve().parents[1] / "organisms" / "weights"
    return sorted(f.stem for f in d.glob("*.safetensors") if f.with_suffix(".json").exists())


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from mechattr.attribution.tokens import method_names
    from mechattr.faithfulness.removal import Removal

    p.add_argument("--model", help="organism:<name>, a local HF model directory, or a HF model name in the local cache "
                                    "(default: organism:<task> with --task; required with --prompt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch; padded with a mask)")
    src.add_argument("--task", help=f"a shipped organism's task, drawn --n times, one of: {', '.join(_organism_names())} "
                                     f"(no default: give --task or --prompt)")
    p.add_argument("--target", help="answer token for --prompt: a token string, or id:<n> (default: the model's prediction)")
    p.add_argument("--corrupt", action="append",
                   help="corrupted prompt(s) for path patching and AtP, one per --prompt, same length (default: none)")
    p.add_argument("--n", type=int, default=16, help="examples drawn from --task")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated token attribution methods, from: {', '.join(method_names())}")
    p.add_argument("--claim", action="append", help="extra head claim: 'L1H2' or 'name=L1H0,L1H1' (repeatable)")
    p.add_argument("--card-claims", action="store_true", help="also test the organism card's circuit roles")
    p.add_argument("--wrong-claim", action="store_true", help="also test a random non-circuit head (should not be confirmed)")
    p.add_argument("--top-k", type=float, default=0.2,
                   help="fraction in (0, 1] of each prompt's positions in a token claim and its faithfulness tests")
    p.add_argument("--top-heads", type=int, default=3, help="heads AtP ranks highest that become claims")
    p.add_argument("--removal", default="zero",
                   help=f"how a token is removed in faithfulness tests, one of: {', '.join(r.value for r in Removal)}")
    p.add_argument("--n-draws", type=int, default=None,
                   help="random rankings for token claims (default: the profile's: fast the fewest Holm needs — 80 for 4 methods —, "
                        "default 100, thorough 500)")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--fast", dest="profile", action="store_const", const="fast",
                      help="profile fast: path methods at 16 steps first (their default when completeness fails), the fewest random "
                           "rankings Holm needs, 100 matched controls, mean ablation only, no sanity check, attention flow or "
                           "path patching (default: the default profile)")
    prof.add_argument("--thorough", dest="profile", action="store_const", const="thorough",
                      help="profile thorough: 500 controls, zero/mean/resample ablation, finer curves (default: the default profile)")
    p.set_defaults(profile="default")
    p.add_argument("--min-effect", type=float, default=0.05,
                   help="minimum effect, a fraction of |clean - corrupted| target gap (default 0.05)")
    p.add_argument("--n-steps", type=int, default=None, help="path-method steps (default: each method's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of task sampling, controls and random baselines")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--bridge", action="store_true", help="load as a TransformerBridge (always the case on TransformerLens 4)")
    p.add_argument("--out", required=True, help="output directory (report.html, report.json)")
    p.add_argument("--circuit", action="store_true", help="add the circuit section (EAP-IG edge scores, a circuit, its faithfulness)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("report", "validate attribution claims with interventions and write report.html + report.json")
def _report(args: argparse.Namespace) -> int:
    model = args.model or (f"organism:{args.task}" if args.task else None)
    if model is None:
        raise ValueError("--model is required with --prompt")
    rep = run_report(model=model, out=args.out, task=args.task, prompts=args.prompt, target=args.target,
                     corrupt=args.corrupt, n=args.n, methods=args.methods, claims=parse_claims(args.claim),
                     card=args.card_claims, wrong=args.wrong_claim, seed=args.seed, device=args.device, quiet=args.quiet,
                     top_k=args.top_k, top_heads=args.top_heads, removal=args.removal, n_draws=args.n_draws,
                     n_steps=args.n_steps, bridge=args.bridge, circuit=args.circuit, profile=args.profile,
                     min_effect=args.min_effect)
    print_summary(rep, args.out)
    return 0


_report.add_arguments = _add_arguments  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- circuit
def run_circuit(*, model: str, out: str | Path, task: str | None, n: int = 16, seed: int = 0, device: str | None = None,
                bridge: bool = False, threads: int | None = None, n_edges: int | None = None, **kw: Any) -> Any:
    """Load, sample ``task``, :func:`mechattr.report.circuit.circuit_report`, save ``circuit.html/json``."""
    with _torch_threads(threads):
        from mechattr import organisms
        from mechattr.model import load_model
        from mechattr.report.circuit import circuit_report
        from mechattr.validation.pipeline import str_tokens

        if task is None:
            raise ValueError("mechattr circuit needs --task <organism task> (its clean/corrupted pairs and target)")
        m = load_model(model, device=device or "cpu", bridge=bridge)
        tb = organisms.task(task).sample(n, seed).to(next(m.parameters()).device)
        rep = circuit_report(m, tb.tokens, tb.corrupted, tb.target, attention_mask=tb.attention_mask,
                             str_tokens=str_tokens(m, tb.tokens), model_name=model, n=n_edges, **kw)
        rep.settings["task"] = task
        rep.save(out)
        return rep


def _circuit_args(p: argparse.ArgumentParser) -> None:
    from mechattr.circuits.names import ABLATIONS, METHODS, SELECTIONS

    p.add_argument("--model", help="organism:<name> or a local model directory (default: organism:<task>)")
    p.add_argument("--task", required=True, help=f"a shipped organism's task, one of: {', '.join(_organism_names())}")
    p.add_argument("--n", type=int, default=16, help="examples drawn from --task (default 16)")
    p.add_argument("--method", default="eap_ig_inputs", choices=METHODS, help="edge scores (default eap_ig_inputs)")
    p.add_argument("--selection", default="topn", choices=SELECTIONS, help="how the circuit is chosen (default topn)")
    p.add_argument("--edges", type=int, default=None, help="top-n / greedy edge count (default: smallest top-n reaching --min-faithfulness)")
    p.add_argument("--threshold", type=float, default=None,
                   help="|score| threshold for --selection threshold (no default: required there)")
    p.add_argument("--tau", type=float, default=None,
                   help="ACDC threshold in target units for --selection acdc (no default: required there)")
    p.add_argument("--ablation", default="patch", choices=ABLATIONS, help="what an ablated edge carries (default patch)")
    p.add_argument("--min-faithfulness", type=float, default=0.8, help="for the default --edges (default 0.8)")
    p.add_argument("--n-steps", type=int, default=10, help="EAP-IG steps (default 10)")
    p.add_argument("--seed", type=int, default=0, help="task sampling seed (default 0)")
    p.add_argument("--device", default=None, help="cpu | cuda (default cpu)")
    p.add_argument("--bridge", action="store_true", help="load as a TransformerBridge (always the case on TransformerLens 4)")
    p.add_argument("--out", required=True, help="output directory (circuit.html, circuit.json)")


@command("circuit", "score every edge, choose and evaluate a circuit, write circuit.html + circuit.json")
def _circuit(args: argparse.Namespace) -> int:
    rep = run_circuit(model=args.model or f"organism:{args.task}", out=args.out, task=args.task, n=args.n, seed=args.seed,
                      device=args.device, bridge=args.bridge, method=args.method, selection=args.selection, n_edges=args.edges,
                      threshold=args.threshold, tau=args.tau, ablation=args.ablation, min_faithfulness=args.min_faithfulness,
                      n_steps=args.n_steps)
    ev = rep.evaluation
    f = ev.get("faithfulness")
    print(f"circuit: {len(rep.circuit)} of {rep.curve.get('n_edges')} edges, faithfulness "
          f"{'undefined' if f is None else f'{f:.3f}'}; curve area {rep.curve.get('area', float('nan')):.3f}")
    for e in rep.circuit[:20]:
        print(f"  {e}")
    print(f"Report: {Path(args.out) / 'circuit.html'} (+ circuit.json)")
    return 0


_circuit.add_arguments = _circuit_args  # type: ignore[attr-defined]
