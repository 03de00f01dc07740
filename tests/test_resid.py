"""Residual-stream attribution against definitions written here."""

from __future__ import annotations

import pytest
import torch
from conftest import hooked_side

from mechattr import targets
from mechattr.attribution.components import attribute_resid


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(1, 24, (3, 8), generator=g)
    corr = clean.clone()
    corr[:, 1] = torch.randint(1, 24, (3,), generator=g)
    return clean, corr


def _names():
    return [f"blocks.{i}.hook_resid_pre" for i in range(2)] + ["blocks.1.hook_resid_post"]


def _raw_grads(model, tokens, ids):
    acts = {}

    def keep(x, hook, name):  # keyed by the name asked for: a bridge's hook.name may be an alias's target
        acts[name] = x
        return x

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x.detach().requires_grad_(True))] + [(n, lambda x, hook, n=n: keep(x, hook, n)) for n in _names()])
        f = logits[torch.arange(tokens.shape[0]), -1, ids].mean()
        grads = torch.autograd.grad(f, [acts[n] for n in _names()])
    return {n: a.detach() for n, a in acts.items()}, dict(zip(_names(), grads))


def test_grad_x_act_and_atp_equal_definitions(model, pair, unchanged):
    clean, corr = pair
    ids = torch.tensor([2, 4, 6])
    acts, grads = _raw_grads(model, clean, ids)
    _, cc = model.run_with_cache(corr)
    with unchanged(model):
        gxa = attribute_resid(model, clean, targets.logit(ids), method="grad_x_act")
        atp = attribute_resid(model, clean, targets.logit(ids), method="atp", corrupted=corr, batch_size=2)
    ref = torch.stack([(acts[n] * grads[n]).sum((0, -1)) for n in _names()])
    ref_atp = torch.stack([((cc[n] - acts[n]) * grads[n]).sum((0, -1)) for n in _names()])
    assert gxa.shape == (3, 8)
    torch.testing.assert_close(gxa, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(atp, ref_atp, atol=1e-5, rtol=1e-4)


def test_ig_rows_complete_to_corrupted_run(model, pair, unchanged):
    """Replacing a whole residual stream by the corrupted run's gives the corrupted output,
    so every row sums to mean F(clean) − mean F(corrupted)."""
    clean, corr = pair
    ids = torch.tensor([2, 4, 6])
    t = targets.logit(ids)
    with unchanged(model):
        res = attribute_resid(model, clean, t, method="ig", corrupted=corr, n_steps=24, return_result=True)
    lc, lx = model(clean), model(corr)
    gap = (lc[torch.arange(3), -1, ids] - lx[torch.arange(3), -1, ids]).mean()
    torch.testing.assert_close(res.scores.sum(-1), gap.expand(3), atol=1e-4, rtol=1e-4)
    assert res.convergence_delta.abs().max() < 1e-4
    assert res.scores[:, 0].abs().max() < 1e-6  # position 0 precedes the corrupted token
    assert res.scores[0, 2:].abs().max() < 1e-6  # embeddings differ only at the corrupted position
    zero = attribute_resid(model, clean, t, method="ig", include_final=False, n_steps=4)
    assert zero.shape == (2, 8)
    per = attribute_resid(model, clean, t, method="grad_x_act", per_example=True)
    assert per.shape == (3, 3, 8)
    torch.testing.assert_close(per.mean(0), attribute_resid(model, clean, t, method="grad_x_act"), atol=1e-6, rtol=1e-5)


def test_resid_matches_on_bridge(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    g = torch.Generator().manual_seed(5)
    clean, corr = torch.randint(3, 40, (2, 6), generator=g), torch.randint(3, 40, (2, 6), generator=g)
    t = targets.logit(torch.tensor([4, 9]))
    for method in ("grad_x_act", "atp", "ig"):
        a = attribute_resid(ht, clean, t, method=method, corrupted=corr, n_steps=4)
        b = attribute_resid(br, clean, t, method=method, corrupted=corr, n_steps=4)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_inputs_raise(model, pair, unchanged):
    clean, corr = pair
    with unchanged(model):
        with pytest.raises(ValueError, match="unknown residual attribution method"):
            attribute_resid(model, clean, targets.logit(1), method="lrp")
        with pytest.raises(ValueError, match="needs corrupted"):
            attribute_resid(model, clean, targets.logit(1), method="atp")
        with pytest.raises(ValueError, match="same shape"):
            attribute_resid(model, clean, targets.logit(1), method="atp", corrupted=corr[:2])
        with pytest.raises(ValueError, match="n_steps"):
            attribute_resid(model, clean, targets.logit(1), n_steps=0)
