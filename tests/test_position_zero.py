"""A target read at a position where every token up to it is excluded (position 0 = BOS)
gets all-zero token scores by construction: that is said, not returned silently."""

from __future__ import annotations

import warnings

import pytest
import torch

import mechattr
from mechattr import organisms, targets


@pytest.fixture(scope="module")
def induction():
    return organisms.load("induction", device="cpu")


def test_position_zero_target_warns_and_records(induction):
    toks = organisms.task("induction").sample(2, seed=0).tokens
    with pytest.warns(UserWarning, match="every score there is 0 by construction"):
        r = mechattr.attribute_tokens(induction, toks, targets.logit(3, pos=0), method="saliency")
    assert torch.equal(r.scores, torch.zeros_like(r.scores))
    assert r.settings["warnings"] and "rows [0, 1]" in r.settings["warnings"][0]


def test_later_position_or_bos_included_does_not_warn(induction):
    toks = organisms.task("induction").sample(2, seed=0).tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = mechattr.attribute_tokens(induction, toks, targets.logit(3, pos=1), method="saliency")
        r0 = mechattr.attribute_tokens(induction, toks, targets.logit(3, pos=0), method="saliency", exclude_bos=False)
    assert "warnings" not in r.settings and "warnings" not in r0.settings
