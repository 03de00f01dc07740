"""Shipped model organisms: small transformers with known circuits, their tasks and cards.

``names()`` lists them; ``load(name)`` returns a ``HookedTransformer`` on TransformerLens 3
(a ``TransformerBridge`` with the same logits on 4; eval mode, word-level tokenizer
attached) from the safetensors shipped in ``weights/``; ``task(name).sample(n,
seed)`` draws a seeded :class:`TaskBatch`; ``card(name)`` is the model card and
``circuit(name)`` its circuit as parsed components (for the planted organisms
``circuit_edges(name, ablation)`` gives it as exact graph edges, see
``mechattr.organisms.edges``); ``train(name, steps=...)`` retrains one from scratch (``scripts/train_organisms.py`` writes weights and cards). Nothing is downloaded.
"""

from __future__ import annotations

from mechattr.organisms.card import Card
from mechattr.organisms.edges import circuit_edges
from mechattr.organisms.loading import card, circuit, load, names, task, weights_dir
from mechattr.organisms.tasks import TaskBatch
from mechattr.organisms.training import train

__all__ = ["Card", "TaskBatch", "card", "circuit", "circuit_edges", "load", "names", "task", "train", "weights_dir"]
