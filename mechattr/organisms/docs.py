"""Rendering the organisms' documentation page from their cards."""

from __future__ import annotations

from collections.abc import Sequence

from mechattr.organisms.card import Card

HEADER = """# Model organisms

Small transformers shipped inside mechattr (`mechattr/organisms/weights/`), trained by us
(or, for the `planted_*` organisms, written by hand) on tasks whose mechanism is known. They are
the ground truth for tests, demos and faithfulness tables. Nothing is downloaded.

```python
from mechattr import organisms
model = organisms.load("induction")            # HookedTransformer (TL 3) or TransformerBridge (TL 4), eval mode, tokenizer attached
batch = organisms.task("induction").sample(256, seed=0)
batch.tokens, batch.answers, batch.corrupted, batch.corrupted_answers
batch.corruptions                              # {"value": batch.corrupted, "key": ...} (see below)
batch.corruption_notes, batch.corruption_positions  # what each changes; [n, k] changed positions (-1 = pad)
batch.target                                   # targets.logit(answers, pos=-1)
batch.source_positions                         # [n, k] input positions that carry the answer (-1 = pad)
organisms.card("induction").circuit            # {"previous_token": ["L0H.."], "induction": ["L1H.."]}
organisms.circuit("induction")                 # same, as Head/MLP objects
```

Retrain from scratch (deterministic, CPU, minutes): `python scripts/train_organisms.py
[--only NAME] [--steps N] [--seed S]`. It rewrites the weights, the cards and this page.
Accuracy is top-1 of the answer at the last position on `task(name).sample(2000,
seed=12345)`; circuit evidence uses `sample(500, seed=777)`. Ablation = replacing a head's
`hook_z` (an MLP's `hook_mlp_out`) by its batch mean at each position ("mean") or by zero
("zero").

## Tasks at a glance

| organism | row | answer (last position) | `corrupted` = `corruptions["value"]` | `corruptions["key"]` | `source_positions` |
|---|---|---|---|---|---|
| `induction`, `planted_induction` | BOS + 23 tokens, distinct except that the last m (1..8) repeat an earlier segment | the token after the last token's earlier occurrence | that earlier answer token replaced by an unused token (the new answer) | the earlier occurrence of the last token replaced by an unused token: the answer stays, no key matches the query | `[answer's earlier position, earlier occurrence of the last token]` |
| `ioi` | BOS + 14-word template, names IO, S, S | IO | S2 replaced by IO (answer becomes S) | S1 replaced by a third name: S2 repeats nothing, IO and the new name are interchangeable | `[IO position]` |
| `sentiment` | BOS + 10 words + `sentiment:` | `pos` / `neg` | polarity word replaced by one of opposite polarity | the word before the polarity word toggled negator ↔ filler (answer flips; rows with the polarity word at position 1 unchanged) | `[polarity word, its negator or -1]` |
| `planted_mlp` | BOS + 7 random digits `n0`..`n9` | `(x_1 + x_2) mod 10` | `x_1` and `x_2` replaced by other digits with another sum | only `x_1` replaced (all attention is positional: no token reaches a query/key; this isolates the previous-token path) | `[1, 2]` |
| `planted_backup` | BOS + 7 random tokens | `x_1` | `x_1` replaced by another token | `x_1` replaced by BOS: removes the primary's flag, the backup's only token-dependent query input (changes the source itself) | `[1]` |

The value corruption changes what the circuit copies (its value/OV path); the key corruption
changes what the circuit's attention looks for or finds (its key/query path), so methods that
only see value paths under one corruption (attribution patching sees no previous-token head
when the matched key is unchanged) can be checked under the other. Each card lists what each
corruption reaches, by single-component activation patching. Both are built from the same
random draws (no extra ones), so `corrupted` and training batches are as before.

`batch.info` holds named positions for analyses (ioi: `io`, `s1`, `s2`; sentiment:
`polarity`, `negator`, `stray`). The planted organisms' circuits are also given as graph
edges, exactly: `organisms.circuit_edges(name, ablation=None)` (the mechanism),
`circuit_edges(name, "patch" | "zero")` (edges with a nonzero single-edge effect; every other
edge has exactly 0) and `organisms.edges.acdc_edges(name, ablation)` (what ACDC keeps at
`acdc_threshold(name)`). Every batch is unpadded (`attention_mask` is `None`) and on
CPU; `batch.to(device)` moves it.

"""


def render(cards: Sequence[Card]) -> str:
    """``docs/organisms.md``: a header, a summary table and each card."""
    lines = [HEADER, "## Summary", "", "| organism | accuracy | circuit |", "|---|---|---|"]
    for c in cards:
        circ = "; ".join(f"{r}: {', '.join(v)}" for r, v in c.circuit.items())
        lines.append(f"| `{c.name}` | {c.accuracy:.4f} | {circ} |")
    lines.append("")
    for c in cards:
        lines.append(c.to_markdown())
    return "\n".join(lines)
