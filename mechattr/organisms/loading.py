"""Loading shipped organisms: weights (safetensors) + card (JSON) + tokenizer, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mechattr.components import MLP, Head, parse_component
from mechattr.organisms.card import Card
from mechattr.organisms.specs import SPECS, get_spec
from mechattr.organisms.tasks import Task
from mechattr.organisms.vocab import word_tokenizer
from mechattr.runtime.device import default_device
from mechattr.runtime.loading import native_bridge
from mechattr.runtime.tl import (
    HAS_HOOKED,
    HookedTransformer,
    HookedTransformerConfig,
)


def weights_dir() -> Path:
    """The package folder holding ``<name>.safetensors`` and ``<name>.json``."""
    return Path(__file__).parent / "weights"


def names() -> list[str]:
    """Names of the organisms whose weights and card are shipped (sorted)."""
    d = weights_dir()
    return [n for n in SPECS.names() if (d / f"{n}.safetensors").exists() and (d / f"{n}.json").exists()]


def _check_name(name: Any) -> str:
    known = names()
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown organism {name!r}; known: {known}")
    return name


def task(name: str) -> Task:
    """The task generator of organism ``name`` (``.sample(n, seed) -> TaskBatch``)."""
    if not isinstance(name, str) or name not in SPECS:
        raise ValueError(f"unknown organism {name!r}; known: {SPECS.names()}")
    return get_spec(name).make_task()


def card(name: str) -> Card:
    """The model card of organism ``name`` (architecture, training, accuracy, circuit)."""
    return Card.load(weights_dir() / f"{_check_name(name)}.json")


def circuit(name: str) -> dict[str, list[Head | MLP]]:
    """The card's circuit with components parsed: role -> ``[Head(l, h) | MLP(l), ...]``."""
    return {role: [parse_component(c) for c in comps] for role, comps in card(name).circuit.items()}


def load(name: str, *, device: str | torch.device | None = None, bridge: bool | None = None) -> Any:
    """Organism ``name`` in eval mode with its tokenizer attached.

    A ``HookedTransformer`` where TransformerLens has one (3.x), else — or with
    ``bridge=True`` — a ``TransformerBridge`` in compatibility mode built offline from the
    card's architecture (``TransformerBridge.boot_native``) with the same shipped weights
    and no weight processing, so it computes the same logits as the HookedTransformer.
    Built from the card's ``architecture`` and the shipped safetensors (every parameter
    must be present); ``device`` defaults to CUDA when available, else CPU. Each call
    returns a new model; the global random state is left untouched.
    """
    from safetensors.torch import load_file

    c = card(name)
    dev = torch.device(device) if device is not None else default_device()
    vocab = task(name).vocab
    if c.architecture.get("d_vocab") != len(vocab):
        raise ValueError(f"card of {name!r} says d_vocab={c.architecture.get('d_vocab')} but the task has {len(vocab)} words")
    state = load_file(str(weights_dir() / f"{name}.safetensors"))
    use_bridge = (not HAS_HOOKED) if bridge is None else bool(bridge)
    if use_bridge:
        return _load_bridge(name, c.architecture, state, vocab, dev)
    # no seed and no random init: loading must not touch the global RNGs (all weights are copied)
    arch = {**c.architecture, "seed": None, "init_weights": False}
    model = HookedTransformer(HookedTransformerConfig(**arch), tokenizer=word_tokenizer(vocab), move_to_device=False)
    params = dict(model.named_parameters())
    _check_state(name, state, {k: p.shape for k, p in params.items()})
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])
    return model.to(dev, print_details=False).eval()


def _check_state(name: str, state: dict, shapes: dict) -> None:
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise ValueError(f"weights of {name!r} do not match its architecture: missing {missing}, unexpected {extra}")
    for k, shape in shapes.items():
        if state[k].shape != shape:
            raise ValueError(f"weights of {name!r}: {k} has shape {tuple(state[k].shape)}, expected {tuple(shape)}")


def _load_bridge(name: str, architecture: dict, state: dict, vocab: Any, dev: torch.device) -> Any:
    """The organism as a TransformerBridge around TransformerLens's native model."""
    arch = {k: v for k, v in architecture.items() if k != "seed"}
    try:
        return native_bridge(arch, state, tokenizer=word_tokenizer(vocab), device=dev)
    except ValueError as err:
        raise ValueError(f"weights of {name!r} do not fit the bridge: {err}") from None


def save_weights(model: HookedTransformer, name: str, directory: Path | None = None) -> Path:
    """Write the model's parameters as ``<name>.safetensors`` (no buffers, no pickle)."""
    from safetensors.torch import save_file

    d = directory or weights_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.named_parameters()}, str(path))
    return path
