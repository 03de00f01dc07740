"""The IOI task: indirect-object identification on templated sentences (word-level).

"When Mary and John went to the store , John gave a drink to" → "Mary". Every template has
14 words (15 tokens with BOS); the two names appear in both orders (ABBA and BABA) and the
subject is repeated later (S2). Answer: the indirect object (IO). ``corrupted`` replaces S2
by the IO, so the repeated name and hence the answer flip to the subject.
``corruptions["key"]`` replaces S1 by a third name: S2 no longer repeats an earlier name, so
whatever attends from S2 (or from the end) to the earlier copy of the subject (duplicate-token
and induction-type heads in Wang et al. 2022's IOI circuit; here, the heads that find and
subtract the subject) finds nothing, while the IO token, the answer source, is untouched and
the sentence no longer says which of the two first names is the indirect object.
``source_positions`` = ``[IO position]``. ``info`` holds ``io``, ``s1``, ``s2`` positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechattr import targets
from mechattr.organisms.tasks import IGNORE, Task, TaskBatch
from mechattr.organisms.vocab import BOS

NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Anna", "David", "Emma",
         "Paul", "Lucy", "Mark", "Kate", "Peter", "Jane", "Adam", "Rose", "Sam", "Ella"]
PLACES = ["store", "garden", "school", "park", "office", "market", "house", "beach"]
OBJECTS = ["drink", "book", "ring", "ball", "key", "apple", "letter", "gift"]
TEMPLATES = [
    "When A and B went to the P , C gave a O to",
    "After A and B went to the P , C handed a O to",
    "While A and B were at the P , C passed a O to",
    "A and B went to the P , then C gave a O to",
    "At the P , A and B talked and C gave a O to",
    "A and B got a O at the P , C gave it to",
]
SLOTS = {"A": -1, "B": -2, "C": -3, "P": -4, "O": -5}


def _words() -> list[str]:
    words = [BOS, *NAMES, *PLACES, *OBJECTS]
    for t in TEMPLATES:
        for w in t.split():
            if w not in SLOTS and w not in words:
                words.append(w)
    return words


class IOITask(Task):
    """Indirect-object identification; see the module docstring."""

    name = "ioi"
    corruption_notes = {
        "value": "S2 replaced by the IO name, so the repeated name and the answer flip to the subject; reaches "
        "every head that reads the names' identities (value path) and the subject detection at S2",
        "key": "S1 replaced by a third name not in the sentence, so S2 matches no earlier name (the duplicate "
        "the subject-detecting heads look for: their key/query path); IO stays in place, but the subject can "
        "no longer be told from the IO, so the IO logit should drop. Reaches the layer-0 heads that read the names "
        "and MLP0 (the card lists the measured effects)",
    }

    def __init__(self) -> None:
        self.vocab = _words()
        idx = self._index
        rows = [[SLOTS.get(w, idx.get(w, 0)) for w in t.split()] for t in TEMPLATES]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("IOI templates must all have the same number of words")
        self.templates = torch.tensor([[0, *r] for r in rows])
        self.n_pos = self.templates.shape[1]
        self.name_ids = torch.tensor([idx[w] for w in NAMES])
        self.place_ids = torch.tensor([idx[w] for w in PLACES])
        self.object_ids = torch.tensor([idx[w] for w in OBJECTS])
        self.groups = {"names": self.name_ids.tolist(), "places": self.place_ids.tolist(), "objects": self.object_ids.tolist()}

    def generate(self, n: int, g: torch.Generator) -> tuple[TaskBatch, Tensor]:
        t = self.templates[torch.randint(len(self.templates), (n,), generator=g)]
        pick = torch.rand(n, len(self.name_ids), generator=g).argsort(-1)[:, :3]
        io, s, third = self.name_ids[pick[:, 0]], self.name_ids[pick[:, 1]], self.name_ids[pick[:, 2]]
        abba = torch.rand(n, generator=g) < 0.5
        a, b = torch.where(abba, io, s), torch.where(abba, s, io)
        place = self.place_ids[torch.randint(len(self.place_ids), (n,), generator=g)]
        obj = self.object_ids[torch.randint(len(self.object_ids), (n,), generator=g)]

        def fill(c: Tensor) -> Tensor:
            out = t.clone()
            for slot, val in ((-1, a), (-2, b), (-3, c), (-4, place), (-5, obj)):
                out = torch.where(t == slot, val[:, None], out)
            return out

        tokens, corrupted = fill(s), fill(io)
        io_pos = torch.where(abba, (t == -1).long().argmax(1), (t == -2).long().argmax(1))
        s1_pos = torch.where(abba, (t == -2).long().argmax(1), (t == -1).long().argmax(1))
        s2_pos = (t == -3).long().argmax(1)
        key = tokens.clone()
        key[torch.arange(n), s1_pos] = third
        labels = torch.full_like(tokens, IGNORE)
        labels[:, -1] = io
        batch = TaskBatch(
            tokens=tokens, answers=io, corrupted=corrupted, corrupted_answers=s,
            target=targets.logit(io, pos=-1), source_positions=io_pos[:, None],
            info={"io": io_pos, "s1": s1_pos, "s2": s2_pos},
            **self.corruption_fields(key, {"value": s2_pos, "key": s1_pos}),
        )
        return batch, labels
