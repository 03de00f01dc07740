"""Attribution of generated text: each generated token to the prompt and earlier generations.

The ``[n_generated, n_context]`` matrix (as Inseq): row ``i`` scores the tokens at positions
``0 .. P+i−1`` for the target "log-prob (or prob, logit) of generated token ``i``". All steps
are rows of one batch: row ``i`` is the full sequence with its target read at position
``P+i−1`` (causal attention makes later positions irrelevant: they score exactly 0).

The rows share their input, so the path engine (:mod:`mechattr.attribution.paths`) runs each
path point ONCE for all N steps and separates their gradients in one batched backward over
the N one-hot output cotangents (``torch.autograd.grad(..., is_grads_batched=True)``): one
forward per path point instead of N, and one row's saved activations instead of N. Methods
whose rows differ (per-row random baselines) fall back to N rows. Forward-only methods share
the same way: occlusion runs each window once for all steps
(:func:`mechattr.attribution.paths.evaluate_at_hook`), attention and rollout read one forward.

Cost: a gradient method still needs one backward per generated token (the Jacobian has N
rows), so sharing saves the forwards only — about 1.3–3× at 32 tokens on CPU; forward-only
methods save N× the forwards (≈12× at 32 tokens; benchmarks/scale.md). Occlusion windows
lie over the whole context: with ``window > 1`` a window reaching past step ``i``'s
position counts only its part before it, so the last ``window − 1`` scores of a row differ
from an occlusion of that step's prefix alone (``window=1``: identical).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechattr import targets as T
from mechattr.inputs import prepare_tokens, to_tokens
from mechattr.io import load_result, save_result, versions
from mechattr.model import model_guard

STEP_TARGETS = {"logprob": T.logprob, "prob": T.prob, "logit": T.logit}


@dataclass
class GenerationAttribution:
    """``matrix [n_generated, n_context]`` (CPU float32; entries right of the step's position
    are 0), ``context`` strings (``n_context``), ``generated`` strings, ``step_scores`` per
    step (``prob``, ``logprob``, ``entropy`` of the predictive distribution), the per-step
    ``convergence_delta`` for path methods, ``method`` and ``settings``."""

    matrix: Tensor
    tokens: Tensor
    context: list[str]
    generated: list[str]
    n_prompt: int
    step_scores: dict[str, Tensor]
    method: str
    settings: dict[str, Any]
    convergence_delta: Tensor | None = None
    versions: dict[str, str] = field(default_factory=versions)

    def __repr__(self) -> str:
        from mechattr import reprs

        return reprs.text(*reprs.generation_attribution(self))

    def _repr_html_(self) -> str:
        """A small escaped HTML table (shapes, top items, settings names) for notebooks."""
        from mechattr import reprs

        return reprs.html(*reprs.generation_attribution(self))

    def to_frame(self):
        """Long pandas frame: ``step, generated, position, context_token, score``."""
        import pandas as pd

        rows = [
            {"step": i, "generated": self.generated[i], "position": j, "context_token": self.context[j], "score": float(self.matrix[i, j])}
            for i in range(self.matrix.shape[0])
            for j in range(self.n_prompt + i)
        ]
        return pd.DataFrame(rows, columns=["step", "generated", "position", "context_token", "score"])

    def plot(self, *, title: str | None = None):
        """Heatmap: generated tokens (rows) × context tokens (columns)."""
        from mechattr.report.figures import token_heatmap

        strs = [self.context] * self.matrix.shape[0]
        labels = [f"{i}: {g}" for i, g in enumerate(self.generated)]
        return token_heatmap(self.matrix, strs, title=title or f"generation attribution ({self.method})", row_labels=labels)

    def save(self, path: str | Path) -> Path:
        """Save via :func:`mechattr.io.save_result` (JSON or safetensors)."""
        tensors = {"matrix": self.matrix, "tokens": self.tokens, "convergence_delta": self.convergence_delta}
        tensors.update({f"step.{k}": v for k, v in self.step_scores.items()})
        meta = {"kind": "GenerationAttribution", "context": self.context, "generated": self.generated, "n_prompt": self.n_prompt,
                "method": self.method, "settings": self.settings, "versions": self.versions}
        return save_result(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> GenerationAttribution:
        tensors, meta = load_result(path)
        if meta.get("kind") != "GenerationAttribution":
            raise ValueError(f"{path} does not hold a GenerationAttribution (kind={meta.get('kind')!r})")
        steps = {k.removeprefix("step."): v for k, v in tensors.items() if k.startswith("step.")}
        return cls(matrix=tensors["matrix"], tokens=tensors["tokens"], context=meta["context"], generated=meta["generated"],
                   n_prompt=meta["n_prompt"], step_scores=steps, method=meta["method"], settings=meta["settings"],
                   convergence_delta=tensors.get("convergence_delta"), versions=meta.get("versions", {}))


def _greedy(model: Any, prompt: Tensor, n: int) -> Tensor:
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            if seq.shape[1] >= model.cfg.n_ctx:
                break
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return seq[0, prompt.shape[1]:]


def attribute_generation(
    model: Any,
    prompt: Any,
    continuation: Any = None,
    *,
    max_new_tokens: int | None = None,
    method: str = "ig",
    step_target: str = "logprob",
    **kwargs: Any,
) -> GenerationAttribution:
    """Attribute each generated token to the context before it (Inseq-style matrix).

    ``prompt``: a string or ``[pos]``/``[1, pos]`` token ids (one sequence). Either
    ``continuation`` (string or ids, teacher-forced) or ``max_new_tokens`` (greedy decoding).
    Step ``i`` target: ``step_target`` (``"logprob"``, ``"prob"``, ``"logit"``) of generated
    token ``i`` at position ``P+i−1``. The steps are the rows of one batch passed to
    :func:`attribute_tokens` with ``method`` and ``kwargs`` (baseline, n_steps, max_memory, …);
    gradient methods share one forward per path point across the steps (module docstring).
    Returns :class:`GenerationAttribution` with ``matrix [n_generated, P + n_generated − 1]``.
    """
    from mechattr.attribution.tokens import attribute_tokens

    if step_target not in STEP_TARGETS:
        raise ValueError(f"unknown step_target {step_target!r}; allowed: {sorted(STEP_TARGETS)}")
    if (continuation is None) == (max_new_tokens is None):
        raise ValueError("pass exactly one of continuation= (text or ids to attribute) or max_new_tokens= (greedy generation)")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be an int ≥ 1, got {max_new_tokens!r}")
    with model_guard(model):
        p = prepare_tokens(model, prompt, name="prompt")
        if p.tokens.shape[0] != 1:
            raise ValueError(f"prompt must be one sequence, got a batch of {p.tokens.shape[0]}")
        if continuation is None:
            gen = _greedy(model, p.tokens, max_new_tokens)
            if gen.numel() == 0:
                raise ValueError(f"the prompt already fills the context (n_ctx={model.cfg.n_ctx}); nothing to generate")
        else:
            if isinstance(continuation, str):
                continuation = to_tokens(model, continuation, prepend_bos=False)
            gen = prepare_tokens(model, continuation, name="continuation").tokens
            if gen.shape[0] != 1:
                raise ValueError("continuation must be one sequence")
            gen = gen[0]
        P, G = p.tokens.shape[1], gen.numel()
        full = torch.cat([p.tokens[0], gen.to(p.tokens.device)])
        if full.numel() > model.cfg.n_ctx:
            raise ValueError(f"prompt + continuation has {full.numel()} tokens, more than n_ctx={model.cfg.n_ctx}")
        ctx = full[:-1]
        rows = ctx[None].expand(G, -1).clone()
        pos = torch.arange(P - 1, P + G - 1, device=rows.device)
        target = STEP_TARGETS[step_target](gen, pos)
        res = attribute_tokens(model, rows, target, method, **kwargs)
        with torch.no_grad():
            lp = model(ctx[None])[0, P - 1 :].float().log_softmax(-1)
        tok_lp = lp.gather(-1, gen[:, None].to(lp.device))[:, 0]
        steps = {"logprob": tok_lp, "prob": tok_lp.exp(), "entropy": -(lp.exp() * lp).sum(-1)}
        strs = res.str_tokens[0]
        gen_strs = [str(s) for s in model.to_str_tokens(gen)] if getattr(model, "tokenizer", None) is not None else [f"<{int(t)}>" for t in gen]
        return GenerationAttribution(
            matrix=res.scores, tokens=full.cpu(), context=strs, generated=gen_strs, n_prompt=P,
            step_scores={k: v.detach().cpu() for k, v in steps.items()}, method=method,
            settings={**res.settings, "step_target": step_target, "decoding": "teacher-forced" if continuation is not None else "greedy"},
            convergence_delta=res.convergence_delta,
        )
