"""ReAGent token attribution (Zhao & Shan 2023, ReAGent: a model-agnostic feature attribution
method for generative language models).

Importance is learnt by replacing random token subsets and watching the target: each of
``n_probes`` independent probes keeps logit-scale scores ``s [batch, pos]`` (seeded uniform
start) and, per iteration,

1. replaces each attributable token with probability ``replace_ratio`` by a proposal;
2. measures ``Δ = p(x) − p(x̃)``, the drop of the target's probability (``score="prob"``)
   or ``tanh(F(x) − F(x̃))`` for any target (``score="target"``);
3. updates ``s ← s + logit(½ + ½·d)`` with ``d = Δ`` on replaced tokens and ``−Δ`` on kept ones;
4. stops (that probe, that example) once keeping only its top ``keep_top_n`` tokens and
   replacing the rest leaves the model's original top-1 prediction at the target position in
   its top ``stop_top_k`` (the paper's stopping rule; ``stop_top_k=None``: run every step).

Scores: the mean over probes of ``softmax(s)`` over the attributable tokens (sums to 1 per
row). The paper proposes replacements with a second, masked language model; none can be
downloaded here, so the proposer is the model itself (``proposer="model"``: token ``t`` at
position ``i`` is drawn from the model's own next-token distribution at ``i − 1`` on the
clean input, the original token excluded) or uniform over the vocabulary
(``proposer="uniform"``, the original token excluded). All replacements of an iteration are
variants stacked along the batch (row ``probe·batch + i``), chunked by ``batch_size``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.tokens import Ctx, MethodOutput, register
from mechattr.runtime.chunks import max_rows, row_chunks
from mechattr.targets import Target, check_finite, prob, run_target

PROPOSERS = ("model", "uniform")
SCORES = ("prob", "target")


class _InTopK(Target):
    """1 where ``token_ids`` is among the ``k`` largest logits at ``pos`` (ties count for it), else 0."""

    name = "in_top_k"
    _per_example = ("token_ids",)

    def __init__(self, token_ids: Tensor, k: int, pos: Any) -> None:
        super().__init__(pos)
        self.token_ids, self.top = token_ids, k

    def from_selected(self, logits: Tensor) -> Tensor:
        x = logits[:, 0].float()
        mine = x.gather(-1, self.token_ids.to(x.device)[:, None])
        return ((x > mine).sum(-1) < self.top).float()


def _evaluate(ctx: Ctx, toks: Tensor, ex: Tensor, target: Any) -> Tensor:
    """``target`` on token rows ``toks [rows, pos]`` of examples ``ex [rows]``: ``[rows]``, in
    chunks of ``batch_size`` rows (a plain callable target sees whole ``[batch]`` blocks)."""
    n = ctx.tokens.shape[0]
    mask = ctx.batch.attention_mask
    size = max_rows(ctx.model, toks.shape[1], ctx.batch_size, toks.device)
    out = []
    with torch.no_grad():
        if not isinstance(target, Target):
            if toks.shape[0] % n or not bool((ex == torch.arange(toks.shape[0], device=ex.device) % n).all()):
                raise ValueError("reagent with a plain callable target runs every probe to the end: pass stop_top_k=None")
            size = max(n, size - size % n)
        for sl in row_chunks(toks.shape[0], size):
            e = ex[sl]
            plain = not isinstance(target, Target)
            t = target if plain else target.take(e)
            m = None if mask is None else mask[e]
            out.append(run_target(ctx.model, toks[sl], t, attention_mask=m, n_examples=n if plain else None).float())
    return check_finite(torch.cat(out), "target")


def _proposals(ctx: Ctx, proposer: str) -> Tensor:
    """``[batch, pos, vocab]`` replacement distribution per position (original token excluded):
    uniform, or (``"model"``) the model's next-token distribution at the previous real
    position on the clean input (uniform at a row's first real position)."""
    toks = ctx.tokens
    vocab = int(ctx.model.cfg.d_vocab)
    dist = torch.ones(*toks.shape, vocab, device=toks.device)
    if proposer == "model":
        kw = {} if ctx.batch.attention_mask is None else {"attention_mask": ctx.batch.attention_mask}
        with torch.no_grad():
            probs = ctx.model(toks, **kw).float()[..., :vocab].softmax(-1)
        for i in range(toks.shape[0]):
            idx = ctx.real[i].nonzero().flatten().to(toks.device)
            dist[i, idx[1:]] = probs[i, idx[:-1]]
    dist = dist.scatter(-1, toks[..., None], 0.0)
    return dist / dist.sum(-1, keepdim=True).clamp_min(1e-30)


class _Draws:
    """Per-example random streams (:func:`mechattr.attribution.baselines.example_generators`:
    seeded by ``seed`` and the example's real tokens), so a row's draws depend on neither its
    index nor the rest of the batch nor padding."""

    def __init__(self, ctx: Ctx, dist: Tensor, n_probes: int) -> None:
        from mechattr.attribution.baselines import example_generators

        self.real = ctx.real.cpu()
        self.gens = example_generators(ctx.tokens, self.real, ctx.seed, salt="reagent")
        self.dist, self.R, self.dev = dist.cpu(), n_probes, ctx.tokens.device

    def _fill(self, fn: Any, dtype: torch.dtype) -> Tensor:
        out = torch.zeros(self.R, *self.real.shape, dtype=dtype)
        for i, g in enumerate(self.gens):
            idx = self.real[i].nonzero().flatten()
            out[:, i, idx] = fn(i, idx, g)
        return out.to(self.dev)

    def uniform(self) -> Tensor:
        """``[R, batch, pos]`` U(0, 1) at real positions."""
        return self._fill(lambda i, idx, g: torch.rand(self.R, idx.numel(), generator=g), torch.float32)

    def tokens(self) -> Tensor:
        """``[R, batch, pos]`` proposals drawn from ``dist`` at real positions."""
        return self._fill(lambda i, idx, g: torch.multinomial(self.dist[i, idx], self.R, replacement=True, generator=g).T, torch.long)


def _check(name: str, v: Any, lo: Any, hi: Any, integer: bool, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and math.isfinite(v) and lo <= v <= hi
    if not ok:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{lo}, {hi}]{' or None' if allow_none else ''}, got {v!r}")


@register("reagent", per_dim=False, default_steps=50, cite="Zhao & Shan 2023, ReAGent")
def reagent(
    ctx: Ctx,
    n_probes: int = 16,
    replace_ratio: float = 0.3,
    proposer: str = "model",
    score: str = "prob",
    keep_top_n: int = 5,
    stop_top_k: int | None = 3,
) -> MethodOutput:
    """ReAGent (Zhao & Shan 2023): importance from the target's response to random replacements.

    Algorithm, options and proposers: see the module docstring. ``n_steps`` (default 50) is
    the maximum number of iterations; ``seed`` fixes the start scores, subsets and proposals.
    ``score="prob"`` needs a token target (``logit``/``logprob``/``prob`` of token ids: the
    probability of those ids at the same position is used); ``score="target"`` works with
    any target. ``extras``: ``steps [n_probes, batch]`` (iterations each probe ran),
    ``per_probe [n_probes, batch, pos]``.
    """
    _check("n_probes", n_probes, 1, 4096, True)
    _check("replace_ratio", replace_ratio, 1e-9, 1.0, False)
    _check("keep_top_n", keep_top_n, 1, 10**9, True)
    _check("stop_top_k", stop_top_k, 1, 10**9, True, allow_none=True)
    if proposer not in PROPOSERS:
        raise ValueError(f"unknown proposer {proposer!r}; allowed: {list(PROPOSERS)} (no second model can be downloaded)")
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; allowed: {list(SCORES)}")
    f = ctx.target
    if score == "prob":
        ids = getattr(f, "token_ids", None)
        if not (isinstance(f, Target) and f.name in ("logit", "logprob", "prob") and ids is not None):
            raise ValueError("reagent score='prob' needs a token target (targets.logit/logprob/prob); use score='target' for this target")
        f = prob(ids, pos=f.pos)
    steps = ctx.steps(50)
    toks = ctx.tokens
    n, P = toks.shape
    dev = toks.device
    allowed = (ctx.real & ~ctx.exclude).to(dev)  # [batch, pos]
    draws = _Draws(ctx, _proposals(ctx, proposer), n_probes)
    f0 = _evaluate(ctx, toks, torch.arange(n, device=dev), f)  # [batch]
    stop_t = None
    if stop_top_k is not None:
        if not isinstance(f, Target):
            raise ValueError("reagent's stopping rule needs a mechattr.targets target; pass stop_top_k=None for a plain callable")
        kw = {} if ctx.batch.attention_mask is None else {"attention_mask": ctx.batch.attention_mask}
        with torch.no_grad():
            logits = ctx.model(toks, **kw)
        pred = logits[torch.arange(n, device=logits.device), ctx.target_pos.to(logits.device)].argmax(-1).to(dev)
        stop_t = _InTopK(pred, stop_top_k, ctx.target_pos.to(dev))
    s = draws.uniform()
    active = torch.ones(n_probes, n, dtype=torch.bool, device=dev)
    ran = torch.zeros(n_probes, n, dtype=torch.long, device=dev)
    for _ in range(steps):
        if not bool(active.any()):
            break
        # draws for every (probe, example) each step, so a row's draws do not depend on the others' stopping
        repl = (draws.uniform() < replace_ratio) & allowed[None]
        x_t = torch.where(repl, draws.tokens(), toks[None])
        pr, ex = active.nonzero(as_tuple=True)
        delta = f0[ex] - _evaluate(ctx, x_t[pr, ex], ex, f)
        d = delta if score == "prob" else torch.tanh(delta)
        d = torch.where(repl[pr, ex], d[:, None], -d[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
        s[pr, ex] = s[pr, ex] + torch.logit(0.5 + 0.5 * d)
        ran[pr, ex] += 1
        if stop_t is not None:
            top = _topn(_softmax(s, allowed), allowed, keep_top_n)
            x_k = torch.where(allowed[None] & ~top, draws.tokens(), toks[None])
            done = _evaluate(ctx, x_k[pr, ex], ex, stop_t) > 0.5
            active[pr[done], ex[done]] = False
    per = _softmax(s, allowed)
    options = {"n_steps": steps, "n_probes": n_probes, "replace_ratio": replace_ratio, "proposer": proposer, "score": score,
               "keep_top_n": keep_top_n, "stop_top_k": stop_top_k}
    return MethodOutput(per.mean(0), extras={"steps": ran.cpu(), "per_probe": per.cpu(), "proposer": proposer, "options": options})


def _softmax(s: Tensor, allowed: Tensor) -> Tensor:
    """Softmax of ``s [R, batch, pos]`` over the allowed positions (others 0)."""
    z = s.masked_fill(~allowed[None], float("-inf")).softmax(-1)
    return torch.nan_to_num(z, nan=0.0)


def _topn(scores: Tensor, allowed: Tensor, k: int) -> Tensor:
    """``[R, batch, pos]`` mask of each row's ``k`` highest allowed scores."""
    masked = scores.masked_fill(~allowed[None], float("-inf"))
    rank = masked.argsort(-1, descending=True).argsort(-1)
    return (rank < k) & allowed[None]
