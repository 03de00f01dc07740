"""One padding rule for every function: negative target positions count back from each row's
last real token, so a right-padded batch gives the same numbers as its rows run unpadded;
a target that would read a pad, or a plain callable on a right-padded batch, is an error."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr import Head, targets

ROWS = [[1, 5, 9, 12, 7, 3, 5, 9], [1, 7, 4, 18, 6]]


def right_padded(rows, pad=2):
    n = max(len(r) for r in rows)
    toks = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    return toks, mask


CALLS = {
    "ig": lambda m, t, g, mask: mechattr.attribute_tokens(m, t, g, attention_mask=mask, method="ig", n_steps=8).scores,
    "saliency": lambda m, t, g, mask: mechattr.attribute_tokens(m, t, g, attention_mask=mask, method="saliency").scores,
    "occlusion": lambda m, t, g, mask: mechattr.attribute_tokens(m, t, g, attention_mask=mask, method="occlusion").scores,
}


@pytest.mark.parametrize("name", list(CALLS))
def test_right_padding_reads_last_real_token(model, name):
    tgt_ids = torch.tensor([3, 4])
    toks, mask = right_padded(ROWS)
    padded = CALLS[name](model, toks, targets.logit(tgt_ids), mask)
    for r, row in enumerate(ROWS):
        alone = CALLS[name](model, torch.tensor([row]), targets.logit(tgt_ids[r : r + 1]), None)
        torch.testing.assert_close(padded[r, : len(row)], alone[0], atol=1e-4, rtol=1e-4)


BATCH_MEAN = {  # functions returning one batch-mean grid
    "dla": lambda m, t, g, mask: mechattr.attribute_heads(m, t, g, attention_mask=mask, method="dla"),
    "ablation_scan": lambda m, t, g, mask: mechattr.ablation_scan(m, t, g, attention_mask=mask, mode="zero"),
}


@pytest.mark.parametrize("name", list(BATCH_MEAN))
def test_right_padding_batch_mean_equals_unpadded_mean(model, name):
    toks, mask = right_padded(ROWS)
    ids = torch.tensor([3, 4])
    padded = torch.as_tensor(BATCH_MEAN[name](model, toks, targets.logit(ids), mask))
    alone = torch.stack([
        torch.as_tensor(BATCH_MEAN[name](model, torch.tensor([row]), targets.logit(ids[r : r + 1]), None))
        for r, row in enumerate(ROWS)
    ])
    torch.testing.assert_close(padded, alone.mean(0), atol=1e-4, rtol=1e-4)


def test_target_at_a_pad_position_is_an_error(model):
    toks, mask = right_padded(ROWS)
    with pytest.raises(ValueError, match="padding"):
        mechattr.attribute_tokens(model, toks, targets.logit(3, pos=7), attention_mask=mask, method="saliency")


def test_plain_callable_on_right_padding_is_an_error(model):
    toks, mask = right_padded(ROWS)
    with pytest.raises(ValueError, match="right-padded"):
        mechattr.ablation_scan(model, toks, lambda logits: logits[:, -1, 3], attention_mask=mask, mode="zero")


def test_left_padding_unchanged_by_the_rule():
    m = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    p = targets.resolve_positions(-1, 2, 4, m, torch.device("cpu"))
    assert p.tolist() == [3, 3]
    r = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert targets.resolve_positions(-1, 2, 4, r, torch.device("cpu")).tolist() == [1, 3]
    assert targets.resolve_positions(-2, 2, 4, r, torch.device("cpu")).tolist() == [0, 2]
    assert Head(0, 0)  # component ids still import alongside targets
