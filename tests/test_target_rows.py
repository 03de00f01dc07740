"""No silent wrong numbers from a target built for another batch: every public function
that takes a target refuses one whose per-example tensors have neither 1 nor batch rows
(a 16-row target on a 4-row batch used to read answers[0:4])."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr import Head, targets
from mechattr import faithfulness as F
from mechattr.targets import check_target_rows

TOKS = torch.tensor([[1, 5, 9, 12, 7, 3, 5, 9], [1, 7, 4, 18, 6, 3, 11, 2]])
COR = TOKS.clone()
COR[:, 3] = 17
SCORES = torch.arange(8.0).expand(2, 8)

CALLS = {
    "attribute_tokens:ig": lambda m, t: mechattr.attribute_tokens(m, TOKS, t, method="ig", n_steps=2),
    "attribute_tokens:saliency": lambda m, t: mechattr.attribute_tokens(m, TOKS, t, method="saliency"),
    "attribute_tokens:occlusion": lambda m, t: mechattr.attribute_tokens(m, TOKS, t, method="occlusion"),
    "attribute_heads:atp": lambda m, t: mechattr.attribute_heads(m, TOKS, t, corrupted=COR),
    "attribute_heads:dla": lambda m, t: mechattr.attribute_heads(m, TOKS, t, method="dla"),
    "attribute_resid": lambda m, t: mechattr.attribute_resid(m, TOKS, t, method="grad_x_act"),
    "attribute_attention": lambda m, t: mechattr.attribute_attention(m, TOKS, t),
    "ablation_scan": lambda m, t: mechattr.ablation_scan(m, TOKS, t, mode="zero"),
    "activation_patch": lambda m, t: mechattr.activation_patch(m, TOKS, COR, t, site="head_out"),
    "path_patch": lambda m, t: mechattr.path_patch(m, TOKS, COR, t, [Head(0, 1)], "logits"),
    "comprehensiveness": lambda m, t: F.comprehensiveness(m, TOKS, t, SCORES),
    "deletion_insertion": lambda m, t: F.deletion_insertion(m, TOKS, t, SCORES, n_draws=0, n_steps=2),
}


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("kind", ["ids", "logit_diff", "combination"])
def test_target_built_for_another_batch_is_refused(model, unchanged, name, kind):
    four = torch.tensor([3, 4, 5, 6])  # built for 4 examples; the batch has 2
    t = {"ids": targets.logit(four), "logit_diff": targets.logit_diff(four, four + 1),
         "combination": targets.logit(7) - targets.logprob(four)}[kind]
    with unchanged(model), pytest.raises(ValueError, match="rows but the batch has 2 examples"):
        CALLS[name](model, t)


@pytest.mark.parametrize("name", list(CALLS))
def test_target_for_this_batch_or_shared_is_accepted(model, name):
    CALLS[name](model, targets.logit(torch.tensor([3, 4])))
    CALLS[name](model, targets.logit(3))


def test_check_names_the_sizes_and_ignores_plain_callables():
    with pytest.raises(ValueError, match="token_ids has 3 rows but the batch has 2"):
        check_target_rows(targets.logit(torch.tensor([1, 2, 3])), 2)
    check_target_rows(lambda logits: logits[:, -1, 0], 2)
    check_target_rows(targets.logit(torch.tensor([1, 2, 3])).take(torch.tensor([0, 2])), 2)
