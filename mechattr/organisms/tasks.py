"""Task generators: seeded batches with answers, corrupted twins and ground-truth sources.

Every task has ``.sample(n, seed) -> TaskBatch`` (same seed, same batch) and
``.vocab`` (word ``i`` is token id ``i``; word 0 is ``<bos>``). Training uses
``.generate(n, generator)``, which also returns per-position training labels
(``-1`` where the next token is not determined by the task).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechattr import targets
from mechattr.organisms.vocab import BOS

IGNORE = -1


@dataclass
class TaskBatch:
    """A seeded batch of task examples.

    ``tokens`` ``[n, pos]``; ``answers`` ``[n]`` the correct next token at the last
    position; ``corrupted`` ``[n, pos]`` a minimally changed batch whose answer
    ``corrupted_answers`` ``[n]`` differs; ``target`` the logit of ``answers`` at the last
    position (``targets.logit(answers, pos=-1)``); ``source_positions`` ``[n, k]`` the input
    positions that carry the answer (``-1`` pads rows with fewer); ``attention_mask`` is
    ``None`` (all organisms' batches are unpadded); ``info`` holds named per-row ``[n]``
    positions of the task's parts (e.g. IOI's ``io``, ``s1``, ``s2``).

    ``corruptions`` maps a name to a corrupted ``[n, pos]`` batch: ``"value"`` is
    ``corrupted`` (it changes what the circuit copies or reads: the value path) and ``"key"``
    changes what the circuit's attention looks for or finds (the key/query path), so that
    attribution patching can see heads that act through attention patterns, e.g. previous-token
    heads (Nanda 2023; Kramár et al. 2024 on AtP's blind spots). ``corruption_notes`` says what
    each corruption changes and which components it reaches; ``corruption_positions`` ``[n, k]``
    the positions each one changes (``-1`` pads rows with fewer; a row with none is unchanged).
    """

    tokens: Int[Tensor, "n pos"]
    answers: Int[Tensor, " n"]
    corrupted: Int[Tensor, "n pos"]
    corrupted_answers: Int[Tensor, " n"]
    target: Any
    source_positions: Int[Tensor, "n k"]
    attention_mask: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)
    corruptions: dict[str, Tensor] = field(default_factory=dict)
    corruption_notes: dict[str, str] = field(default_factory=dict)
    corruption_positions: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.corruptions = {"value": self.corrupted, **{k: v for k, v in self.corruptions.items() if k != "value"}}

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: Any) -> TaskBatch:
        """The same batch with its tensors on ``device``."""
        mv = {k: getattr(self, k).to(device) for k in ("tokens", "answers", "corrupted", "corrupted_answers", "source_positions")}
        info = {k: v.to(device) for k, v in self.info.items()}
        corr = {k: v.to(device) for k, v in self.corruptions.items() if k != "value"}
        where = {k: v.to(device) for k, v in self.corruption_positions.items()}
        return replace(self, **mv, info=info, corruptions=corr, corruption_positions=where, target=targets.logit(mv["answers"], pos=-1))


def check_sample_args(n: Any, seed: Any) -> None:
    """Raise ``ValueError`` unless ``n`` is a positive int and ``seed`` an int."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")


class Task:
    """Base class: subclasses set ``name``, ``vocab``, ``n_pos`` and implement ``generate``."""

    name = "task"
    vocab: list[str] = [BOS]
    n_pos = 0
    corruption_notes: dict[str, str] = {}

    def generate(self, n: int, g: torch.Generator) -> tuple[TaskBatch, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> TaskBatch:
        """``n`` examples drawn with ``torch.Generator().manual_seed(seed)`` (CPU tensors)."""
        check_sample_args(n, seed)
        return self.generate(n, torch.Generator().manual_seed(seed))[0]

    def token_id(self, word: str) -> int:
        if word not in self._index:
            raise ValueError(f"{word!r} is not in the {self.name} vocabulary")
        return self._index[word]

    @property
    def _index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab={len(self.vocab)}, n_pos={self.n_pos})"

    def corruption_fields(self, key: Tensor, positions: dict[str, Tensor]) -> dict[str, Any]:
        """``TaskBatch`` keyword arguments for the corruptions: ``key`` ``[n, pos]`` and the
        changed positions of each corruption (``[n]`` or ``[n, k]``, ``-1`` = none)."""
        where = {k: (v[:, None] if v.ndim == 1 else v).long() for k, v in positions.items()}
        return {"corruptions": {"key": key}, "corruption_notes": dict(self.corruption_notes), "corruption_positions": where}


class InductionTask(Task):
    """Repeated random tokens; predict the token that followed the last token's earlier occurrence.

    Row layout (``n_pos`` tokens): BOS at 0, then distinct random tokens ``x_1 ..`` except
    that the last ``m`` positions (``m`` uniform in ``1..max_repeat``) copy ``x_a .. x_{a+m-1}``
    (``a`` uniform in ``1..n_pos-2m-1``). The answer is ``x_{a+m}``. Because ``a`` and ``m``
    vary, only induction (find the earlier occurrence of the current token, copy what
    followed) solves it. ``source_positions`` = ``[a+m, a+m-1]`` (the answer's earlier
    position and the earlier occurrence of the last token). ``corrupted`` replaces
    ``x_{a+m}`` by a token unused in the row, which becomes the corrupted answer.
    ``corruptions["key"]`` instead replaces ``x_{a+m-1}`` at its earlier position ``a+m-1``
    (the token the induction head's key at ``a+m`` carries, written there by a previous-token
    head) by the same unused token: the answer ``x_{a+m}`` stays in the row but no key matches
    the query any more (Olsson et al. 2022). Training labels: every position of the second
    occurrence, whose next token is determined.
    """

    name = "induction"
    corruption_notes = {
        "value": "the answer's earlier copy x_{a+m} (the token the induction head copies: its value/OV path) "
        "replaced by a token unused in the row, which becomes the answer; reaches the induction heads' values "
        "(previous-token heads only at position a+m+1, which no query matches)",
        "key": "the earlier occurrence x_{a+m-1} of the current token (what the previous-token head writes into "
        "the key at a+m, which the induction head's query matches: its key/query path) replaced by a token "
        "unused in the row; the answer token stays at a+m but nothing points to it. Reaches the previous-token "
        "heads (their output at a+m) and, through their keys, the induction heads' attention",
    }

    def __init__(self, d_vocab: int = 64, n_pos: int = 24, max_repeat: int = 8) -> None:
        if n_pos + 1 > d_vocab:
            raise ValueError(f"n_pos={n_pos} needs d_vocab > n_pos (distinct tokens), got {d_vocab}")
        if not 1 <= max_repeat <= (n_pos - 2) // 2:
            raise ValueError(f"max_repeat must be in 1..{(n_pos - 2) // 2}, got {max_repeat}")
        self.d_vocab, self.n_pos, self.max_repeat = d_vocab, n_pos, max_repeat
        self.vocab = [BOS] + [f"t{i}" for i in range(1, d_vocab)]

    def generate(self, n: int, g: torch.Generator) -> tuple[TaskBatch, Tensor]:
        P, V = self.n_pos, self.d_vocab
        perm = torch.rand(n, V - 1, generator=g).argsort(-1) + 1
        base = torch.cat([torch.zeros(n, 1, dtype=torch.long), perm[:, : P - 1]], 1)
        m = torch.randint(1, self.max_repeat + 1, (n,), generator=g)
        a = (torch.rand(n, generator=g) * (P - 2 * m - 1)).long() + 1
        pos = torch.arange(P)[None]
        start2 = (P - m)[:, None]
        src = torch.where(pos >= start2, a[:, None] + pos - start2, pos)
        tokens = base.gather(1, src)
        rows = torch.arange(n)
        ans_pos = a + m
        answers = tokens[rows, ans_pos]
        fresh = perm[:, P - 1]
        corrupted = tokens.clone()
        corrupted[rows, ans_pos] = fresh
        key = tokens.clone()
        key[rows, ans_pos - 1] = fresh
        labels = torch.where(pos >= start2, base.gather(1, (src + 1).clamp(max=P - 1)), IGNORE)
        labels[:, -1] = answers
        batch = TaskBatch(
            tokens=tokens, answers=answers, corrupted=corrupted, corrupted_answers=fresh,
            target=targets.logit(answers, pos=-1),
            source_positions=torch.stack([ans_pos, ans_pos - 1], 1),
            **self.corruption_fields(key, {"value": ans_pos, "key": ans_pos - 1}),
        )
        return batch, labels
