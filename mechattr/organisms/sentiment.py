"""The sentiment task: filler words, one polarity word, negators; classify with ``pos``/``neg``.

Each row is BOS, ``n_words`` words, then the marker ``sentiment:``; the answer at the last
position is ``pos`` or ``neg``. Exactly one word is a polarity word (positive: good, great, ...;
negative: bad, awful, ...). With probability 1/2 a negator (``not``/``never``) directly
precedes it and flips the label. With probability 1/2 a stray negator sits elsewhere, not
directly before the polarity word, and does not count. All other words are neutral filler.
Label: ``pos`` iff (positive word) XOR (negated). ``source_positions`` = ``[polarity word
position, its negator's position or -1]``. ``corrupted`` replaces the polarity word with one of
the opposite polarity, flipping the answer. ``corruptions["key"]`` leaves the polarity word and
toggles the word right before it, the position the negation-detecting attention reads from the
polarity word: a negator becomes a filler word, a filler word becomes a negator (fixed choices by
row index, no extra random draws); this flips the answer too. Rows whose polarity word is at
position 1 (only BOS before it) cannot be toggled and are left unchanged (their
``corruption_positions["key"]`` is -1). ``info``: ``polarity``, ``negator`` (-1 if none),
``stray`` (-1 if none).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechattr import targets
from mechattr.organisms.tasks import IGNORE, Task, TaskBatch
from mechattr.organisms.vocab import BOS

FILLER = ["the", "movie", "film", "plot", "story", "acting", "cast", "music", "ending", "script",
          "was", "is", "and", "it", "with", "a", "very", "quite", "really", "overall"]
POSITIVE = ["good", "great", "excellent", "wonderful", "fun"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull"]
NEGATORS = ["not", "never"]
MARKER, POS, NEG = "sentiment:", "pos", "neg"


class SentimentTask(Task):
    """Negation-aware sentiment; see the module docstring."""

    name = "sentiment"
    corruption_notes = {
        "value": "the polarity word replaced by one of the opposite polarity (answer flips); reaches what reads "
        "the polarity word's identity (value path: the heads reading it from the final position, MLP0)",
        "key": "the word right before the polarity word toggled (negator <-> filler; answer flips), the polarity "
        "word kept: changes what the negation-detecting heads find when they attend from the polarity word to "
        "the previous position (key/query and value of that read; here L0H0 and L0H2); rows with the polarity "
        "word at position 1 are unchanged",
    }

    def __init__(self, n_words: int = 10) -> None:
        if n_words < 3:
            raise ValueError(f"n_words must be at least 3, got {n_words}")
        self.vocab = [BOS, *FILLER, *POSITIVE, *NEGATIVE, *NEGATORS, MARKER, POS, NEG]
        idx = self._index
        self.n_words, self.n_pos = n_words, n_words + 2
        self.filler = torch.tensor([idx[w] for w in FILLER])
        self.positive = torch.tensor([idx[w] for w in POSITIVE])
        self.negative = torch.tensor([idx[w] for w in NEGATIVE])
        self.negators = torch.tensor([idx[w] for w in NEGATORS])
        self.marker, self.pos_id, self.neg_id = idx[MARKER], idx[POS], idx[NEG]
        self.groups = {"filler": self.filler.tolist(), "positive": self.positive.tolist(),
                       "negative": self.negative.tolist(), "negators": self.negators.tolist()}

    def generate(self, n: int, g: torch.Generator) -> tuple[TaskBatch, Tensor]:
        W = self.n_words
        rows = torch.arange(n)

        def pick(pool: Tensor, k: int | tuple = (n,)) -> Tensor:
            return pool[torch.randint(len(pool), k if isinstance(k, tuple) else (k,), generator=g)]

        tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), pick(self.filler, (n, W)),
                            torch.full((n, 1), self.marker)], 1)
        p = torch.randint(1, W + 1, (n,), generator=g)  # polarity word position
        positive = torch.rand(n, generator=g) < 0.5
        negated = (torch.rand(n, generator=g) < 0.5) & (p >= 2)
        has_stray = torch.rand(n, generator=g) < 0.5
        # stray negator: uniform over positions q in 1..W with q not in {p-1, p}
        scores = torch.rand(n, W, generator=g)
        q_all = torch.arange(1, W + 1)[None]
        bad = (q_all == p[:, None]) | (q_all == p[:, None] - 1)
        q = scores.masked_fill(bad, -1.0).argmax(1) + 1
        tokens[rows, p] = torch.where(positive, pick(self.positive), pick(self.negative))
        neg_pos = torch.where(negated, p - 1, -1)
        stray = torch.where(has_stray, q, -1)
        tokens[rows[negated], p[negated] - 1] = pick(self.negators, (int(negated.sum()),))
        tokens[rows[has_stray], q[has_stray]] = pick(self.negators, (int(has_stray.sum()),))
        is_pos = positive ^ negated
        answers = torch.where(is_pos, self.pos_id, self.neg_id)
        corrupted = tokens.clone()
        corrupted[rows, p] = torch.where(positive, pick(self.negative), pick(self.positive))
        key, key_pos = tokens.clone(), torch.where(p >= 2, p - 1, -1)
        swap = self.negators[rows % len(self.negators)]
        swap = torch.where(negated, self.filler[rows % len(self.filler)], swap)
        can = key_pos >= 0
        key[rows[can], key_pos[can]] = swap[can]
        labels = torch.full_like(tokens, IGNORE)
        labels[:, -1] = answers
        batch = TaskBatch(
            tokens=tokens, answers=answers, corrupted=corrupted,
            corrupted_answers=torch.where(is_pos, self.neg_id, self.pos_id),
            target=targets.logit(answers, pos=-1), source_positions=torch.stack([p, neg_pos], 1),
            info={"polarity": p, "negator": neg_pos, "stray": stray},
            **self.corruption_fields(key, {"value": p, "key": key_pos}),
        )
        return batch, labels
