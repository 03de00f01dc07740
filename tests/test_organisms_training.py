"""Training code stays alive (small budgets), is deterministic, validates; full retrain is slow."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import requires_hooked

from mechattr import organisms
from mechattr.organisms.training import accuracy, train


@requires_hooked  # training builds a HookedTransformer
def test_training_small_budget_reaches_sensible_loss():
    """300 steps take the induction loss clearly below the uniform guess log(63)."""
    res = train("induction", steps=300, seed=1, log_every=50)
    uniform = math.log(63)
    assert res.losses[0] > 0.9 * uniform  # starts near chance
    assert res.final_loss < 0.85 * uniform, res.losses
    assert res.recipe["steps"] == 300 and res.recipe["seed"] == 1


@requires_hooked  # training builds a HookedTransformer
def test_ioi_training_small_budget_learns_to_answer_with_a_name():
    """40 steps take the IOI loss below log(#names): the model already answers with names."""
    from mechattr.organisms.ioi import NAMES

    res = train("ioi", steps=40, seed=1, batch_size=64, lr=3e-3, log_every=10)
    assert res.losses[0] > math.log(len(NAMES))
    assert res.final_loss < 0.8 * math.log(len(NAMES)), res.losses


@requires_hooked  # training builds a HookedTransformer
def test_training_is_deterministic():
    a = train("induction", steps=3, seed=7, batch_size=8)
    b = train("induction", steps=3, seed=7, batch_size=8)
    c = train("induction", steps=3, seed=8, batch_size=8)
    pa, pb, pc = (dict(r.model.named_parameters()) for r in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(pa[k], pc[k]) for k in pa)


def test_train_validates():
    with pytest.raises(ValueError, match="known"):
        train("nope", steps=1)
    with pytest.raises(ValueError, match="planted"):
        train("planted_induction", steps=1)
    with pytest.raises(ValueError, match="steps must be positive"):
        train("induction", steps=0)


def _slow_requested(config) -> bool:
    return os.environ.get("MECHATTR_SLOW") == "1" or config.getoption("markexpr", "").strip() == "slow"


@pytest.mark.slow
@requires_hooked
@pytest.mark.parametrize("name", [n for n in ("induction", "ioi", "sentiment") if n in organisms.names()])
def test_full_retraining_reproduces_card(name, request):
    """Full retraining (minutes; run with ``-m slow`` or MECHATTR_SLOW=1) matches the card."""
    if not _slow_requested(request.config):
        pytest.skip("full retraining: run with -m slow or MECHATTR_SLOW=1")
    from mechattr.organisms.build import make

    card = organisms.card(name)
    model, new = make(name, seed=card.training["seed"])
    assert new.accuracy >= 0.98
    assert abs(new.accuracy - card.accuracy) < 0.02
    assert new.circuit == card.circuit
    assert accuracy(model, organisms.task(name), n=500, seed=99) >= 0.97
