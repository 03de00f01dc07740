"""``planted_backup``: a primary head and a backup head that writes only when the primary is silent.

Task (:class:`PlantedBackupTask`): BOS, then ``n_pos - 1`` random tokens; the answer at the
last position is the first token ``x_1``. Residual stream (no LayerNorm) in one-hot
subspaces ``TOK`` (current token), ``POS`` (position), ``OUT`` (read by ``W_U``) and one
``FLAG`` dimension ("the primary head wrote").

- Primary head ``L0H{PRIMARY_HEAD}``: every query attends to position 1 (positional QK,
  score ``S``); OV copies ``TOK_t`` into ``OUT_t`` and writes ``FLAG = 1`` for every
  non-BOS token.
- Backup head ``L1H{BACKUP_HEAD}``: query ``S·(1 − 2·FLAG)`` on the key of position 1 and
  ``S·FLAG`` on the key of position 0 (BOS), 0 elsewhere. With the primary's flag present
  it attends to BOS, whose value is zero, and writes nothing; with the flag gone (primary
  ablated) it attends to position 1 and copies ``x_1`` into ``OUT`` itself.
- ``W_U`` maps ``OUT_t`` to logit ``t`` with gain ``G``. Every other head and every bias
  is exactly zero.

Where the methods disagree (numbers in ``mechattr.organisms.edges`` and the card): under
``"patch"`` with the task's corruption (``x_1`` replaced) the primary's flag is unchanged,
the backup stays silent, and single-edge patching, EAP and ACDC agree on
``{input->L0H.v, L0H->logits}``. Under ``"zero"``: removing ``L0H->L1H.q`` (the flag the
backup reads) makes the backup write the answer again (+G), but the backup's softmax is
saturated on BOS, so EAP's first-order score for that edge is ~0; removing
``input->L0H.v`` is compensated by the backup (exact ~0) while EAP, blind to the
compensation, gives ~−G; ACDC visits ``L1H->logits`` first, finds the silent backup
irrelevant (Δ≈0) and prunes it, after which nothing upstream of the backup matters, so it
returns the primary path only although backup edges have large single-edge effects.
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

PRIMARY_HEAD = 3
BACKUP_HEAD = 1
D_VOCAB = 16
N_CTX = 8
SCORE = 20.0  # attention logit of the attended key
GAIN = 10.0  # logit of the answer
SOURCE = 1  # the answer's position


def config(d_vocab: int = D_VOCAB, n_ctx: int = N_CTX) -> dict:
    """``HookedTransformerConfig`` keyword arguments of the planted backup model."""
    return dict(
        n_layers=2, d_model=2 * d_vocab + n_ctx + 1, n_ctx=n_ctx, d_head=max(d_vocab + 1, 2), n_heads=4,
        d_vocab=d_vocab, attn_only=True, normalization_type=None, positional_embedding_type="standard",
        act_fn="relu", d_mlp=None, seed=None,
    )


def subspaces(d_vocab: int, n_ctx: int) -> dict[str, slice]:
    """Residual-stream slices ``TOK``, ``POS``, ``OUT``, ``FLAG``."""
    v, p = d_vocab, n_ctx
    return {"TOK": slice(0, v), "POS": slice(v, v + p), "OUT": slice(v + p, 2 * v + p), "FLAG": slice(2 * v + p, 2 * v + p + 1)}


@torch.no_grad()
def build_planted_backup(d_vocab: int = D_VOCAB, n_ctx: int = N_CTX) -> HookedTransformer:
    """The planted backup model (CPU, float32, eval mode, no tokenizer attached)."""
    if n_ctx <= SOURCE + 1:
        raise ValueError(f"n_ctx must exceed {SOURCE + 1}, got {n_ctx}")
    model = zeroed_model(config(d_vocab, n_ctx), "planted_backup")
    cfg = model.cfg
    sub = subspaces(d_vocab, n_ctx)
    tok, pos, out = (torch.arange(sub[k].start, sub[k].stop) for k in ("TOK", "POS", "OUT"))
    flag = sub["FLAG"].start
    v, scale = torch.arange(d_vocab), cfg.d_head**0.5
    content = v[1:]  # BOS (id 0) carries no value and no flag
    model.embed.W_E[v, tok] = 1.0
    model.pos_embed.W_pos[torch.arange(n_ctx), pos] = 1.0

    a0 = model.blocks[0].attn  # primary: every query -> position 1; copies the token, raises FLAG
    a0.W_Q[PRIMARY_HEAD, pos, 0] = SCORE * scale
    a0.W_K[PRIMARY_HEAD, pos[SOURCE], 0] = 1.0
    a0.W_V[PRIMARY_HEAD, tok[content], content] = 1.0
    a0.W_V[PRIMARY_HEAD, tok[content], 0] = 1.0  # value dim 0 (BOS's slot) is the flag
    a0.W_O[PRIMARY_HEAD, content, out[content]] = 1.0
    a0.W_O[PRIMARY_HEAD, 0, flag] = 1.0

    a1 = model.blocks[1].attn  # backup: query dim 0 -> key of position 1, dim 1 -> key of BOS
    a1.W_Q[BACKUP_HEAD, pos, 0] = SCORE * scale  # the constant part (every position)
    a1.W_Q[BACKUP_HEAD, flag, 0] = -2 * SCORE * scale
    a1.W_Q[BACKUP_HEAD, flag, 1] = SCORE * scale
    a1.W_K[BACKUP_HEAD, pos[SOURCE], 0] = 1.0
    a1.W_K[BACKUP_HEAD, pos[0], 1] = 1.0
    a1.W_V[BACKUP_HEAD, tok[content], content] = 1.0
    a1.W_O[BACKUP_HEAD, content, out[content]] = 1.0

    model.unembed.W_U[out, v] = GAIN
    return model.eval()


class PlantedBackupTask(Task):
    """Repeat the first token at the end.

    Row: BOS, then ``n_pos - 1`` uniform random tokens (repeats allowed). Answer ``x_1``.
    ``corrupted`` replaces ``x_1`` by a different token (the corrupted answer).
    ``corruptions["key"]`` replaces ``x_1`` by BOS (id 0): the circuit's only token-dependent
    query/key input is the primary's ``FLAG`` (raised by any non-BOS ``x_1``, read by the
    backup's query), so this corruption cannot keep the answer source; it removes the flag and
    the copied token together, and the backup (now attending to position 1) finds BOS's zero
    value. ``source_positions`` = ``[1]``. Training labels: the last position only.
    """

    name = "planted_backup"
    corruption_notes = {
        "value": "x_1 replaced by another token (the new answer); reaches the primary's value (OUT) only: the "
        "flag stays, so the backup stays silent",
        "key": "x_1 replaced by BOS, which carries no value and no flag: the backup's query (which reads the "
        "primary's FLAG, the circuit's only token-dependent query/key input) changes and it attends to "
        "position 1, where it finds nothing to copy. Unlike the other tasks' key corruptions this changes the "
        "answer source itself (every other position is read by nothing). Reaches the primary (value and "
        "flag) and the backup's query",
    }

    def __init__(self, d_vocab: int = D_VOCAB, n_pos: int = N_CTX) -> None:
        if d_vocab < 3:
            raise ValueError(f"d_vocab must be at least 3 (BOS and two tokens), got {d_vocab}")
        if n_pos <= SOURCE + 1:
            raise ValueError(f"n_pos must exceed {SOURCE + 1}, got {n_pos}")
        self.d_vocab, self.n_pos = d_vocab, n_pos
        self.vocab = [BOS] + [f"t{i}" for i in range(1, d_vocab)]

    def generate(self, n: int, g: torch.Generator) -> tuple[TaskBatch, Tensor]:
        V, P = self.d_vocab, self.n_pos
        tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), torch.randint(1, V, (n, P - 1), generator=g)], 1)
        answers = tokens[:, SOURCE].clone()
        shift = torch.randint(1, V - 1, (n,), generator=g)  # a different non-BOS token
        fresh = (answers - 1 + shift) % (V - 1) + 1
        corrupted = tokens.clone()
        corrupted[:, SOURCE] = fresh
        key = tokens.clone()
        key[:, SOURCE] = 0
        labels = torch.full((n, P), IGNORE)
        labels[:, -1] = answers
        batch = TaskBatch(
            tokens=tokens, answers=answers, corrupted=corrupted, corrupted_answers=fresh,
            target=targets.logit(answers, pos=-1), source_positions=torch.full((n, 1), SOURCE),
            **self.corruption_fields(key, {"value": torch.full((n,), SOURCE), "key": torch.full((n,), SOURCE)}),
        )
        return batch, labels


@torch.no_grad()
def backup_circuit(model: Any, task: Task) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Card circuit and evidence: accuracies under single/joint zero and mean head
    ablation (the backup compensates a zero-ablated primary) and the attention scores."""
    from mechattr.components import Head
    from mechattr.organisms.analysis import (
        ablated_logits,
        answer_accuracy,
        attention_to,
        patterns,
        single_head_ablation,
    )
    from mechattr.organisms.circuits import EVAL_N, EVAL_SEED, _r

    b = task.sample(EVAL_N, EVAL_SEED)
    primary, backup = Head(0, PRIMARY_HEAD), Head(1, BACKUP_HEAD)
    pats = patterns(model, b.tokens)
    zero = torch.zeros(len(b), dtype=torch.long)

    def acc(heads: list, mode: str) -> float:
        return round(answer_accuracy(ablated_logits(model, b.tokens, heads, mode), b.answers), 4)

    evidence = {
        "accuracy_clean": round(answer_accuracy(model(b.tokens), b.answers), 4),
        "attention_last_to_answer_source": _r(torch.stack([attention_to(pats[layer], b.source_positions[:, 0]) for layer in range(2)])),
        "attention_last_to_bos": _r(torch.stack([attention_to(pats[layer], zero) for layer in range(2)])),
        "accuracy_single_head_mean_ablation": _r(single_head_ablation(model, b, "mean")),
        "accuracy_single_head_zero_ablation": _r(single_head_ablation(model, b, "zero")),
        "accuracy_primary_zero_ablation": acc([primary], "zero"),
        "accuracy_primary_and_backup_zero_ablation": acc([primary, backup], "zero"),
        "eval": f"task.sample({EVAL_N}, seed={EVAL_SEED})",
    }
    return {"primary": [str(primary)], "backup": [str(backup)]}, evidence
