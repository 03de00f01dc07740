"""The bridge readout: a bridge's forward ends at the unembedding's input and only the
positions a target reads are unembedded — the same numbers as full logits, measured to
apply per model (not on logit soft-capping)."""

from __future__ import annotations

import torch

import mechattr
from mechattr import targets
from mechattr.runtime import readout
from mechattr.runtime.readout import forward_to_readout, readout_live

TOKS = torch.tensor([[1, 5, 9, 12, 7, 3, 5, 9], [1, 7, 4, 18, 6, 3, 11, 2]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])  # right padding
TGT = targets.logit_diff(torch.tensor([3, 4]), torch.tensor([5, 6]))


def test_readout_applies_to_a_plain_bridge_and_matches_full_logits(hf_bridge, unchanged):
    # no_grad: run_target is the engines' unguarded inner call; with gradients on, its output's
    # graph (which the bridge's per-forward caches share) is the caller's
    with unchanged(hf_bridge), torch.no_grad():
        first = targets.run_target(hf_bridge, TOKS, TGT, attention_mask=MASK)  # measures the readout
        assert readout_live(hf_bridge) is True
        fast = targets.run_target(hf_bridge, TOKS, TGT, attention_mask=MASK)
    with torch.no_grad():
        full = TGT(hf_bridge(TOKS, attention_mask=MASK), MASK)
    torch.testing.assert_close(fast, full.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first, full.float(), atol=1e-5, rtol=1e-5)


def test_readout_stops_before_the_unembedding(hf_bridge):
    fired = []
    with hf_bridge.hooks(fwd_hooks=[("unembed.hook_out", lambda a, hook: fired.append(a.shape))]):
        x = forward_to_readout(hf_bridge, TOKS)
    assert not fired and x.shape == (2, 8, hf_bridge.cfg.d_model)


def test_gradient_methods_agree_with_and_without_the_readout(hf_bridge, monkeypatch):
    ig = mechattr.attribute_tokens(hf_bridge, TOKS, TGT, attention_mask=MASK, method="ig", n_steps=8)
    scan = mechattr.ablation_scan(hf_bridge, TOKS, TGT, attention_mask=MASK, mode="zero")
    monkeypatch.setattr(readout, "readout_live", lambda m: False)
    monkeypatch.setattr(targets, "readout_live", lambda m: False)
    ig2 = mechattr.attribute_tokens(hf_bridge, TOKS, TGT, attention_mask=MASK, method="ig", n_steps=8)
    scan2 = mechattr.ablation_scan(hf_bridge, TOKS, TGT, attention_mask=MASK, mode="zero")
    torch.testing.assert_close(ig.scores, ig2.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.as_tensor(scan), torch.as_tensor(scan2), atol=1e-5, rtol=1e-5)


def test_readout_refused_where_logits_are_post_processed(hf_bridge):
    """A model that changes its logits after the unembedding (as logit soft-capping does;
    here its forward is wrapped to squash them) gets full logits, never the shortcut."""
    from mechattr.runtime.readout import _LIVE

    _LIVE.pop(hf_bridge, None)
    orig = hf_bridge.forward
    try:
        hf_bridge.forward = lambda *a, **k: torch.tanh(orig(*a, **k) / 3) * 3
        got = targets.run_target(hf_bridge, TOKS, TGT, attention_mask=MASK)
        assert readout_live(hf_bridge) is False
        again = targets.run_target(hf_bridge, TOKS, TGT, attention_mask=MASK)
        with torch.no_grad():
            ref = TGT(hf_bridge(TOKS, attention_mask=MASK), MASK).float()
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(again, ref)
    finally:
        del hf_bridge.forward
        _LIVE.pop(hf_bridge, None)


def test_no_extra_forward_for_user_hooks(hf_bridge):
    """Measuring the readout costs no forward of its own: a user's hook fires once per call."""
    from mechattr.runtime.readout import _LIVE

    _LIVE.pop(hf_bridge, None)
    calls = []
    hf_bridge.blocks[0].hook_resid_pre.add_hook(lambda x, hook: calls.append(1))
    try:
        targets.run_target(hf_bridge, TOKS, TGT)
        targets.run_target(hf_bridge, TOKS, TGT)
    finally:
        hf_bridge.reset_hooks()
    assert calls == [1, 1]
