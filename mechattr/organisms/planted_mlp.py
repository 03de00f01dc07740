"""``planted_mlp``: a circuit through an MLP (a ReLU lookup table), written analytically.

Task (:class:`PlantedMLPTask`): BOS, then ``n_pos - 1`` random digits ``x_1 ..`` (words
``n0 .. n{K-1}``, token id = value + 1); the answer at the last position is
``(x_1 + x_2) mod K``. Residual stream (``d_model = 4·d_vocab + n_ctx``, no LayerNorm) in
one-hot subspaces ``TOK`` (current token, ``W_E``), ``POS`` (position, ``W_pos``),
``PREV`` (previous token), ``MID`` (the lookup's result) and ``OUT`` (read by ``W_U``).

- Previous-token head ``L0H{PREV_HEAD}``: positional QK, score ``S·[j = i-1]``; OV copies
  ``TOK_j`` into ``PREV``.
- ``MLP0``: one ReLU unit per digit pair ``(a, b)``,
  ``2·ReLU(PREV_a + TOK_b − 1.5)`` (1 iff the previous token is ``a`` and the current one
  ``b``: an AND, not a linear map), written to ``MID_{(a+b) mod K}``.
- Mover head ``L1H{MOVER_HEAD}``: every query attends to position 2 (positional QK); OV
  copies ``MID`` into ``OUT``; ``W_U`` maps ``OUT_t`` to logit ``t`` with gain ``G``.

Every other head, ``MLP1`` and every bias except ``MLP0``'s ``b_in`` are exactly zero, so
edges outside the circuit have exactly zero effect (``mechattr.organisms.edges``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechattr import targets
from mechattr.organisms.planted import zeroed_model
from mechattr.organisms.tasks import IGNORE, Task, TaskBatch
from mechattr.organisms.vocab import BOS
from mechattr.runtime.tl import HookedTransformer

PREV_HEAD = 2
MOVER_HEAD = 0
N_DIGITS = 10  # K
N_CTX = 8
SCORE = 20.0  # attention logit of the attended key (others get 0)
GAIN = 10.0  # logit of the answer
SOURCES = (1, 2)  # the two operand positions; the MLP computes at the second


def config(n_digits: int = N_DIGITS, n_ctx: int = N_CTX) -> dict:
    """``HookedTransformerConfig`` keyword arguments of the planted MLP model."""
    v = n_digits + 1
    return dict(
        n_layers=2, d_model=4 * v + n_ctx, n_ctx=n_ctx, d_head=max(v, n_ctx), n_heads=4, d_vocab=v,
        attn_only=False, d_mlp=n_digits * n_digits, act_fn="relu", normalization_type=None,
        positional_embedding_type="standard", seed=None,
    )


def subspaces(d_vocab: int, n_ctx: int) -> dict[str, slice]:
    """Residual-stream slices ``TOK``, ``POS``, ``PREV``, ``MID``, ``OUT``."""
    v, p = d_vocab, n_ctx
    return {"TOK": slice(0, v), "POS": slice(v, v + p), "PREV": slice(v + p, 2 * v + p),
            "MID": slice(2 * v + p, 3 * v + p), "OUT": slice(3 * v + p, 4 * v + p)}


def lookup(a: Tensor, b: Tensor, n_digits: int = N_DIGITS) -> Tensor:
    """The table: token ids ``a``, ``b`` (digit + 1) → token id of ``(a + b) mod K``."""
    return (a - 1 + b - 1) % n_digits + 1


@torch.no_grad()
def build_planted_mlp(n_digits: int = N_DIGITS, n_ctx: int = N_CTX) -> HookedTransformer:
    """The planted MLP model (CPU, float32, eval mode, no tokenizer attached)."""
    if n_ctx <= max(SOURCES):
        raise ValueError(f"n_ctx must exceed {max(SOURCES)}, got {n_ctx}")
    model = zeroed_model(config(n_digits, n_ctx), "planted_mlp")
    cfg = model.cfg
    V, K = cfg.d_vocab, n_digits
    sub = subspaces(V, n_ctx)
    tok, pos, prev, mid, out = (torch.arange(sub[k].start, sub[k].stop) for k in ("TOK", "POS", "PREV", "MID", "OUT"))
    v, i, scale = torch.arange(V), torch.arange(n_ctx), cfg.d_head**0.5
    model.embed.W_E[v, tok] = 1.0
    model.pos_embed.W_pos[i, pos] = 1.0

    a0 = model.blocks[0].attn  # previous-token head, as in planted_induction
    a0.W_Q[PREV_HEAD, pos[i], i] = SCORE * scale
    a0.W_K[PREV_HEAD, pos[i[:-1]], i[:-1] + 1] = 1.0
    a0.W_V[PREV_HEAD, tok, v] = 1.0
    a0.W_O[PREV_HEAD, v, prev] = 1.0

    m0 = model.blocks[0].mlp  # unit (a, b): 2·ReLU(PREV_a + TOK_b - 1.5) -> MID_{a+b mod K}
    d = torch.arange(1, K + 1)
    a_ids, b_ids = d.repeat_interleave(K), d.repeat(K)
    units = torch.arange(K * K)
    m0.W_in[prev[a_ids], units] = 1.0
    m0.W_in[tok[b_ids], units] = 1.0
    m0.b_in[:] = -1.5
    m0.W_out[units, mid[lookup(a_ids, b_ids, K)]] = 2.0

    a1 = model.blocks[1].attn  # mover: every query -> position 2; copies MID into OUT
    a1.W_Q[MOVER_HEAD, pos, 0] = SCORE * scale
    a1.W_K[MOVER_HEAD, pos[SOURCES[1]], 0] = 1.0
    a1.W_V[MOVER_HEAD, mid, v] = 1.0
    a1.W_O[MOVER_HEAD, v, out] = 1.0

    model.unembed.W_U[out, v] = GAIN
    return model.eval()


class PlantedMLPTask(Task):
    """Modular addition of the first two digits, read at the last position.

    Row: BOS, then ``n_pos - 1`` uniform random digits (repeats allowed). Answer
    ``(x_1 + x_2) mod K``. ``corrupted`` replaces both ``x_1`` and ``x_2`` by different
    digits (``x_1' ≠ x_1``, ``x_2' ≠ x_2``) whose sum differs too, so each operand alone,
    and both together, change the answer. Every attention pattern in the circuit is positional,
    so no token change reaches a query or key; ``corruptions["key"]`` therefore changes only
    ``x_1`` (to ``corrupted``'s ``x_1'``), the operand that reaches ``MLP0`` through the
    previous-token head, isolating that path from ``x_2``'s direct one (and the answer changes).
    ``source_positions`` = ``[1, 2]``. Training labels: the last position only.
    """

    name = "planted_mlp"
    corruption_notes = {
        "value": "both operands x_1 and x_2 replaced (the sum changes); reaches the previous-token head (x_1 -> "
        "PREV at position 2), MLP0 (both operands) and the mover",
        "key": "only x_1 replaced (by the value corruption's x_1'); every attention pattern here is positional, "
        "so no token change reaches a query/key: this isolates the previous-token head's path instead "
        "(L0H2 -> MLP0 -> L1H0); x_2 and its direct path into MLP0 are unchanged",
    }

    def __init__(self, n_digits: int = N_DIGITS, n_pos: int = N_CTX) -> None:
        if n_digits < 3:
            raise ValueError(f"n_digits must be at least 3 (a corruption needs two other digits), got {n_digits}")
        if n_pos <= max(SOURCES) + 1:
            raise ValueError(f"n_pos must exceed {max(SOURCES) + 1}, got {n_pos}")
        self.n_digits, self.n_pos = n_digits, n_pos
        self.vocab = [BOS] + [f"n{i}" for i in range(n_digits)]

    def generate(self, n: int, g: torch.Generator) -> tuple[TaskBatch, Tensor]:
        K, P = self.n_digits, self.n_pos
        tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), torch.randint(1, K + 1, (n, P - 1), generator=g)], 1)
        a, b = tokens[:, SOURCES[0]], tokens[:, SOURCES[1]]
        # x1' = x1 + s, x2' = x2 + t (mod K) with s, t != 0 and s + t != 0 (mod K)
        s = torch.randint(1, K, (n,), generator=g)
        t = torch.randint(1, K - 1, (n,), generator=g)
        t = t + (t >= K - s).long()  # skip t = K - s
        corrupted = tokens.clone()
        corrupted[:, SOURCES[0]] = (a - 1 + s) % K + 1
        corrupted[:, SOURCES[1]] = (b - 1 + t) % K + 1
        answers = lookup(a, b, K)
        key = tokens.clone()
        key[:, SOURCES[0]] = corrupted[:, SOURCES[0]]
        labels = torch.full((n, P), IGNORE)
        labels[:, -1] = answers
        batch = TaskBatch(
            tokens=tokens, answers=answers, corrupted=corrupted,
            corrupted_answers=lookup(corrupted[:, SOURCES[0]], corrupted[:, SOURCES[1]], K),
            target=targets.logit(answers, pos=-1),
            source_positions=torch.tensor(SOURCES).expand(n, 2).clone(),
            **self.corruption_fields(key, {"value": torch.tensor(SOURCES).expand(n, 2), "key": torch.full((n,), SOURCES[0])}),
        )
        return batch, labels


@torch.no_grad()
def mlp_circuit(model: Any, task: Task) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Card circuit and evidence: accuracies under single-head and MLP mean ablation,
    the previous-token and mover attention scores."""
    from mechattr.components import MLP, Head
    from mechattr.organisms.analysis import (
        answer_accuracy,
        attention_to,
        mlp_ablated_logits,
        patterns,
        prev_token_score,
        single_head_ablation,
    )
    from mechattr.organisms.circuits import EVAL_N, EVAL_SEED, _r

    b = task.sample(EVAL_N, EVAL_SEED)
    pats = patterns(model, b.tokens)
    evidence = {
        "accuracy_clean": round(answer_accuracy(model(b.tokens), b.answers), 4),
        "layer0_prev_token_attention": _r(prev_token_score(pats[0])),
        "layer1_attention_last_to_position_2": _r(attention_to(pats[1], b.source_positions[:, 1])),
        "accuracy_single_head_mean_ablation": _r(single_head_ablation(model, b, "mean")),
        "accuracy_single_mlp_mean_ablation": [
            round(answer_accuracy(mlp_ablated_logits(model, b.tokens, MLP(layer)), b.answers), 3) for layer in range(model.cfg.n_layers)
        ],
        "eval": f"task.sample({EVAL_N}, seed={EVAL_SEED})",
    }
    circuit = {"previous_token": [str(Head(0, PREV_HEAD))], "mlp": ["MLP0"], "mover": [str(Head(1, MOVER_HEAD))]}
    return circuit, evidence
