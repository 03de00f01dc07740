"""The organism table: name → architecture, training recipe and task (a registry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mechattr.organisms.ioi import IOITask
from mechattr.organisms.planted import planted_config
from mechattr.organisms.planted_backup import PlantedBackupTask
from mechattr.organisms.planted_backup import config as backup_config
from mechattr.organisms.planted_mlp import PlantedMLPTask
from mechattr.organisms.planted_mlp import config as mlp_config
from mechattr.organisms.sentiment import SentimentTask
from mechattr.organisms.tasks import InductionTask, Task
from mechattr.registry import Registry


@dataclass(frozen=True)
class Spec:
    """How to make one organism: its task, architecture and (unless planted) recipe."""

    name: str
    description: str
    make_task: Callable[[], Task]
    architecture: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    planted: bool = False


SPECS: Registry[Callable[[], Spec]] = Registry("organism")

_INDUCTION_ARCH = dict(
    n_layers=2, d_model=64, n_ctx=24, d_head=16, n_heads=4, d_vocab=64, attn_only=True,
    normalization_type="LN", positional_embedding_type="standard", act_fn="relu", d_mlp=None, seed=0,
)


@SPECS.register("induction")
def _induction() -> Spec:
    return Spec(
        "induction",
        "Induction on repeated random tokens: BOS, then distinct random tokens whose last m "
        "(1..8) repeat an earlier segment at a random offset; predict the token that followed "
        "the last token's earlier occurrence. A 2-layer attention-only transformer, trained.",
        InductionTask, dict(_INDUCTION_ARCH),
        dict(steps=1500, batch_size=64, lr=3e-3, weight_decay=0.01, warmup=0.05),
    )


@SPECS.register("ioi")
def _ioi() -> Spec:
    return Spec(
        "ioi",
        "Indirect-object identification on 6 templates of 14 words (names in ABBA and BABA "
        "order, e.g. 'When Mary and John went to the store , John gave a drink to' -> Mary); "
        "a 3-layer transformer with MLPs, trained on the answer at the last position.",
        IOITask,
        dict(n_layers=3, d_model=64, n_ctx=15, d_head=16, n_heads=4, d_vocab=len(IOITask().vocab),
             d_mlp=256, act_fn="gelu", attn_only=False, normalization_type="LN",
             positional_embedding_type="standard", seed=0),
        dict(steps=800, batch_size=128, lr=1e-3, weight_decay=0.01, warmup=0.05),
    )


@SPECS.register("sentiment")
def _sentiment() -> Spec:
    return Spec(
        "sentiment",
        "Sentiment of 10 words (neutral filler, one polarity word, an optional negator right "
        "before it that flips it, an optional stray negator elsewhere that does not), read at "
        "the final 'sentiment:' token as 'pos'/'neg'; a 2-layer transformer with MLPs, trained.",
        SentimentTask,
        dict(n_layers=2, d_model=64, n_ctx=12, d_head=16, n_heads=4, d_vocab=len(SentimentTask().vocab),
             d_mlp=256, act_fn="gelu", attn_only=False, normalization_type="LN",
             positional_embedding_type="standard", seed=0),
        dict(steps=1500, batch_size=128, lr=1e-3, weight_decay=0.01, warmup=0.05),
    )


@SPECS.register("planted_induction")
def _planted() -> Spec:
    return Spec(
        "planted_induction",
        "The induction task solved by a 2-layer attention-only transformer whose weights are "
        "written analytically (mechattr.organisms.planted): one-hot TOK/POS/PREV/OUT subspaces, "
        "a positional previous-token head and a K-composing induction head; all other heads "
        "and biases are exactly zero.",
        InductionTask, planted_config(), planted=True,
    )


@SPECS.register("planted_mlp")
def _planted_mlp() -> Spec:
    return Spec(
        "planted_mlp",
        "Modular addition of the first two digits ((x_1 + x_2) mod 10, read at the last of 8 "
        "positions) solved by a 2-layer transformer with MLPs whose weights are written analytically "
        "(mechattr.organisms.planted_mlp): a positional previous-token head, an MLP0 lookup table of "
        "ReLU AND units (one per digit pair), a positional mover head; all else exactly zero.",
        PlantedMLPTask, mlp_config(), planted=True,
    )


@SPECS.register("planted_backup")
def _planted_backup() -> Spec:
    return Spec(
        "planted_backup",
        "Repeat the first token at the last of 8 positions, solved by a 2-layer attention-only "
        "transformer whose weights are written analytically (mechattr.organisms.planted_backup): a "
        "primary head copies the token and raises a flag; a backup head reads the flag and copies the "
        "token only when the flag is absent (primary ablated), else attends to a zero-value BOS.",
        PlantedBackupTask, backup_config(), planted=True,
    )


def get_spec(name: Any) -> Spec:
    """The spec of organism ``name`` (``ValueError`` listing the known names otherwise)."""
    return SPECS.get(name)()
