"""Seeded training of the trained organisms from scratch (CPU, minutes).

``train(name, steps=..., seed=...)`` builds the organism's architecture with
``seed``, draws training batches from its task with a generator seeded from ``seed``
(a stream disjoint from evaluation seeds, which are small ints), and minimises the mean
cross-entropy over the task's labelled positions with AdamW and a linear warmup + cosine
schedule. Deterministic on CPU for a given ``(name, steps, seed)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mechattr.organisms.specs import get_spec
from mechattr.organisms.tasks import IGNORE
from mechattr.runtime.tl import HookedTransformer, HookedTransformerConfig, require_hooked

TRAIN_SEED_OFFSET = 1_000_003  # training batches never reuse evaluation seeds


@dataclass
class TrainResult:
    """A trained model plus its recipe and the loss curve (mean loss per logged window)."""

    model: HookedTransformer
    recipe: dict
    losses: list[float] = field(default_factory=list)
    final_loss: float = float("nan")


def build_model(architecture: dict, *, seed: int = 0) -> HookedTransformer:
    """A freshly initialised ``HookedTransformer`` (CPU) from config keyword arguments.

    Initialised after ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's random
    state is untouched (TransformerLens's config ``seed`` would reseed torch, numpy and random
    globally).
    """
    require_hooked("training an organism")
    arch = {**architecture, "seed": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HookedTransformer(HookedTransformerConfig(**arch), move_to_device=False)


def train(
    name: str, *, steps: int | None = None, seed: int = 0, batch_size: int | None = None,
    lr: float | None = None, log_every: int = 100, verbose: bool = False,
) -> TrainResult:
    """Train organism ``name`` from scratch; returns the model in eval mode on CPU.

    Loss: mean token cross-entropy over positions whose label is not ``IGNORE``.
    ``steps``/``batch_size``/``lr`` default to the organism's recipe.
    """
    spec = get_spec(name)
    if spec.planted:
        raise ValueError(f"{name!r} is written analytically (planted), not trained; see mechattr.organisms.planted")
    rec = dict(spec.training)
    for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr)):
        if v is not None:
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{k} must be positive, got {v!r}")
            rec[k] = v
    rec["seed"] = seed
    model = build_model(spec.architecture, seed=seed)
    model.train()
    task = spec.make_task()
    g = torch.Generator().manual_seed(TRAIN_SEED_OFFSET + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=rec["lr"], weight_decay=rec.get("weight_decay", 0.0), betas=(0.9, 0.98))
    n_steps, warm = int(rec["steps"]), max(1, int(rec.get("warmup", 0.05) * rec["steps"]))

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, n_steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    res = TrainResult(model=model, recipe=rec)
    window: list[float] = []
    t0 = time.time()
    for step in range(n_steps):
        batch, labels = task.generate(int(rec["batch_size"]), g)
        logits = model(batch.tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == log_every or step == n_steps - 1:
            res.losses.append(sum(window) / len(window))
            if verbose:
                print(f"[{name}] step {step + 1}/{n_steps} loss {res.losses[-1]:.4f} ({time.time() - t0:.0f}s)", flush=True)
            window = []
    res.final_loss = res.losses[-1]
    rec["final_loss"] = round(res.final_loss, 5)
    rec["train_seconds"] = round(time.time() - t0, 1)
    return res


@torch.no_grad()
def accuracy(model: HookedTransformer, task, n: int = 1000, seed: int = 12345) -> float:
    """Top-1 accuracy of the answer at the last position on ``task.sample(n, seed)``."""
    b = task.sample(n, seed)
    dev = next(model.parameters()).device
    logits = model(b.tokens.to(dev))[:, -1]
    return (logits.argmax(-1).cpu() == b.answers).float().mean().item()
