"""``mechattr attribute``: token attribution from the command line.

``mechattr attribute MODEL TEXT [--answer TOKEN] [--method ig] [--n-steps N]
[--baseline zero] [--top-k 5] [--out result.json]`` scores each token of ``TEXT`` for the
log-prob of ``--answer`` (a token string or id; default: the model's top prediction) at the
last position, prints the top tokens and saves the :class:`TokenAttribution` if asked.
"""

from __future__ import annotations

import argparse

from mechattr.cli import command


def _args(p: argparse.ArgumentParser) -> None:
    from mechattr.attribution.baselines import NAMED
    from mechattr.attribution.tokens import METHODS, method_names

    methods = ", ".join(f"{m} ({METHODS.get(m).default_steps} steps)" if METHODS.get(m).default_steps else m
                        for m in method_names())
    p.add_argument("model", help="organism:<name>, a local HF model directory, or a HF model name in the local cache")
    p.add_argument("text", help="the prompt (words the tokenizer does not know are an error)")
    p.add_argument("--answer", default=None,
                   help="the next token to explain: a token string or an id (default: the model's top prediction)")
    p.add_argument("--method", default="ig", help=f"attribution method, one of: {methods}")
    p.add_argument("--n-steps", type=int, default=None,
                   help="path steps for path methods (default: the method's own, listed under --method)")
    p.add_argument("--baseline", default=None,
                   help=f"baseline: {', '.join(NAMED)} or a token id (default: the zero embedding with additive "
                        f"positional embeddings, else the mean token embedding)")
    p.add_argument("--seed", type=int, default=0, help="seed of random baselines and samplers")
    p.add_argument("--top-k", type=int, default=5, help="how many tokens to print")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--out", default=None, help="save the result to this .json or .safetensors file (default: not saved)")


def _answer_id(model, answer: str | None, logits) -> int:
    from mechattr.inputs import to_tokens

    if answer is None:
        return int(logits[0, -1].argmax())
    if answer.lstrip("-").isdigit():
        return int(answer)
    ids = to_tokens(model, answer, prepend_bos=False)[0]
    if ids.numel() != 1:
        raise ValueError(f"--answer {answer!r} is {ids.numel()} tokens; give a single token (or its id)")
    return int(ids[0])


@command("attribute", "token attribution: which tokens of TEXT made the model predict the answer")
def attribute(args: argparse.Namespace) -> int:
    import torch

    from mechattr import load_model, targets
    from mechattr.attribution.tokens import attribute_tokens
    from mechattr.inputs import to_tokens

    model = load_model(args.model, device=args.device)
    tokens = to_tokens(model, args.text)
    with torch.no_grad():
        logits = model(tokens)
    ans = _answer_id(model, args.answer, logits)
    baseline = int(args.baseline) if args.baseline is not None and args.baseline.isdigit() else args.baseline
    res = attribute_tokens(model, tokens, targets.logprob(ans), args.method, n_steps=args.n_steps, baseline=baseline, seed=args.seed)
    print(f"method {args.method}; target log p({model.to_single_str_token(ans)!r}) at the last position")
    if res.convergence_delta is not None:
        print(f"convergence delta {float(res.convergence_delta[0]):.3g} (F(x) − F(x') = {float(res.f_input[0] - res.f_baseline[0]):.3g})")
    for pos, tok, score in res.top_k(args.top_k)[0]:
        print(f"{pos:4d}  {tok!r:>20}  {score:+.4f}")
    if args.out:
        print(f"saved {res.save(args.out)}")
    return 0


attribute.add_arguments = _args  # type: ignore[attr-defined]
