"""Activation patching: equal to TransformerLens's get_act_patch_* and to slow raw-hook references."""

from __future__ import annotations

import pytest
import torch
from conftest import hooked_side, make_model
from transformer_lens import patching

from mechattr import targets
from mechattr.interventions import activation_patch
from mechattr.interventions.result import InterventionResult

HOOK = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
        "head_out": "attn.hook_z", "head_q": "attn.hook_q", "head_k": "attn.hook_k",
        "head_v": "attn.hook_v", "pattern": "attn.hook_pattern"}
TL = {
    ("resid_pre", True): patching.get_act_patch_resid_pre,
    ("attn_out", True): patching.get_act_patch_attn_out,
    ("mlp_out", True): patching.get_act_patch_mlp_out,
    ("head_out", False): patching.get_act_patch_attn_head_out_all_pos,
    ("head_out", True): patching.get_act_patch_attn_head_out_by_pos,
    ("head_q", False): patching.get_act_patch_attn_head_q_all_pos,
    ("head_q", True): patching.get_act_patch_attn_head_q_by_pos,
    ("head_k", False): patching.get_act_patch_attn_head_k_all_pos,
    ("head_k", True): patching.get_act_patch_attn_head_k_by_pos,
    ("head_v", False): patching.get_act_patch_attn_head_v_all_pos,
    ("head_v", True): patching.get_act_patch_attn_head_v_by_pos,
    ("pattern", False): patching.get_act_patch_attn_head_pattern_all_pos,
    ("pattern", True): patching.get_act_patch_attn_head_pattern_by_pos,
}


def _pair(seed=0, batch=3, n=8, vocab=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, n), generator=g), torch.randint(1, vocab, (batch, n), generator=g)


def slow_patch(model, run, source, target, site, per_position, mask=None):
    """One forward per (layer, head, pos) with a raw hook copying the source activation."""
    n_l, n_h, n_pos = model.cfg.n_layers, model.cfg.n_heads, run.shape[1]
    per_head = site.startswith("head") or site == "pattern"
    _, cache = model.run_with_cache(source, attention_mask=mask)
    out = []
    for layer in range(n_l):
        name = f"blocks.{layer}.{HOOK[site]}"
        for h in range(n_h) if per_head else [None]:
            for p in range(n_pos) if per_position else [None]:
                def fn(act, hook, h=h, p=p):
                    act = act.clone()
                    src = cache[hook.name]
                    if site == "pattern":
                        sel = (slice(None), h) if p is None else (slice(None), h, p)
                    elif per_head:
                        sel = (slice(None), slice(None) if p is None else p, h)
                    else:
                        sel = (slice(None),) if p is None else (slice(None), p)
                    act[sel] = src[sel]
                    return act

                with torch.no_grad():
                    logits = model.run_with_hooks(run, fwd_hooks=[(name, fn)], attention_mask=mask)
                out.append(target(logits, mask).mean())
    shape = [n_l] + ([n_h] if per_head else []) + ([n_pos] if per_position else [])
    return torch.stack(out).reshape(shape)


@pytest.mark.parametrize("site,per_position", sorted(TL))
def test_activation_patch_equals_transformer_lens(site, per_position, unchanged):
    model = make_model(n_layers=3)
    clean, corrupted = _pair()
    target = targets.logit_diff(torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    with unchanged(model):
        ours = activation_patch(model, clean, corrupted, target, site=site, per_position=per_position, batch_size=10)
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        ref = TL[(site, per_position)](model, corrupted, cache, lambda logits: target(logits).mean())
    if per_position and site.startswith("head"):
        ref = ref.permute(0, 2, 1)  # TL: [layer, pos, head]; ours: [layer, head, pos]
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("site", list(HOOK))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_activation_patch_matches_slow_reference(site, direction):
    model = make_model(n_layers=2, seed=1)
    clean, corrupted = _pair(seed=3, batch=2, n=6)
    target = targets.logprob(torch.tensor([3, 4]), pos=-2)
    ours = activation_patch(model, clean, corrupted, target, site=site, direction=direction)
    run, src = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    torch.testing.assert_close(ours, slow_patch(model, run, src, target, site, False), atol=2e-5, rtol=1e-4)
    if site in ("head_q", "pattern", "resid_pre"):
        ours = activation_patch(model, clean, corrupted, target, site=site, direction=direction, per_position=True, batch_size=5)
        torch.testing.assert_close(ours, slow_patch(model, run, src, target, site, True), atol=2e-5, rtol=1e-4)


def test_activation_patch_padding_and_plain_target(model):
    clean, corrupted = _pair(seed=4)
    mask = torch.ones_like(clean)
    mask[1, :2] = 0
    t = targets.logit(torch.tensor([1, 2, 3]), pos="last")
    ours = activation_patch(model, clean, corrupted, t, site="head_out", attention_mask=mask)
    torch.testing.assert_close(ours, slow_patch(model, corrupted, clean, t, "head_out", False, mask), atol=2e-5, rtol=1e-4)
    for site in ("head_k", "pattern"):  # entering blocks at cached q, k, v, with padding
        ours = activation_patch(model, clean, corrupted, t, site=site, attention_mask=mask, direction="noise")
        torch.testing.assert_close(ours, slow_patch(model, clean, corrupted, t, site, False, mask), atol=2e-5, rtol=1e-4)
    for site in ("mlp_out", "head_q"):
        plain = activation_patch(model, clean, corrupted, lambda lg: lg[:, -1, 4] - lg[:, 3, 2], site=site)
        ref = slow_patch(model, corrupted, clean, lambda lg, m=None: lg[:, -1, 4] - lg[:, 3, 2], site, False)
        torch.testing.assert_close(plain, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("which", [0, 1])
def test_activation_patch_hooked_and_bridge(hf_pair, which, unchanged):
    model = hooked_side(hf_pair[which])
    clean, corrupted = _pair(seed=5, batch=2, n=6, vocab=40)
    t = targets.logit_diff(5, 6)
    with unchanged(model):
        ours = activation_patch(model, clean, corrupted, t, site="head_out")
        ours_q = activation_patch(model, clean, corrupted, t, site="head_q", per_position=True, direction="noise")
    torch.testing.assert_close(ours, slow_patch(model, corrupted, clean, t, "head_out", False), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours_q, slow_patch(model, clean, corrupted, t, "head_q", True), atol=2e-5, rtol=1e-4)


def test_activation_patch_result(model, tmp_path):
    clean, corrupted = _pair()
    t = targets.logit(3)
    res = activation_patch(model, clean, corrupted, t, site="head_out", per_position=True, return_result=True)
    assert isinstance(res, InterventionResult) and res.axes == ("layer", "head", "pos")
    with torch.no_grad():
        assert res.settings["clean"] == pytest.approx(float(t(model(clean)).mean()), abs=1e-5)
        assert res.settings["corrupted"] == pytest.approx(float(t(model(corrupted)).mean()), abs=1e-5)
    df = res.to_frame()
    assert len(df) == 2 * 4 * 8 and set(df.columns) == {"component", "pos", "score"}
    assert res.plot() is not None
    back = InterventionResult.load(res.save(tmp_path / "r.safetensors"))
    torch.testing.assert_close(back.scores, res.scores)


def test_activation_patch_bad_input(model, attn_model, unchanged):
    clean, corrupted = _pair()
    t = targets.logit(3)
    with unchanged(model):
        with pytest.raises(ValueError, match="same shape"):
            activation_patch(model, clean, corrupted[:, :6], t)
        with pytest.raises(ValueError, match="same shape"):
            activation_patch(model, clean, corrupted[:2], t)
        with pytest.raises(ValueError, match="unknown site"):
            activation_patch(model, clean, corrupted, t, site="head_result")
        with pytest.raises(ValueError, match="unknown direction"):
            activation_patch(model, clean, corrupted, t, direction="forward")
        with pytest.raises(ValueError, match="batch_size"):
            activation_patch(model, clean, corrupted, t, batch_size=0)
    with pytest.raises(ValueError, match="attention-only"):
        activation_patch(attn_model, clean, corrupted, t, site="mlp_out")


def test_activation_patch_grouped_query_attention_equals_transformer_lens():
    model = make_model(n_layers=2, n_key_value_heads=2)
    clean, corrupted = _pair(seed=6)
    t = targets.logit(torch.tensor([1, 2, 3]))
    _, cache = model.run_with_cache(clean)
    for site, fn in (("head_k", patching.get_act_patch_attn_head_k_all_pos), ("head_out", patching.get_act_patch_attn_head_out_all_pos)):
        ours = activation_patch(model, clean, corrupted, t, site=site)
        with torch.no_grad():
            ref = fn(model, corrupted, cache, lambda lg: t(lg).mean())
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_activation_patch_multi_position_targets_equal_transformer_lens(model):
    clean, corrupted = _pair(seed=7)
    _, cache = model.run_with_cache(clean)
    for t in (targets.logit(3, pos=-1) - targets.logprob(torch.tensor([4, 5, 6]), pos=2), targets.sequence_logprob(clean[:, -3:])):
        for site, fn in (("head_out", patching.get_act_patch_attn_head_out_all_pos), ("pattern", patching.get_act_patch_attn_head_pattern_all_pos)):
            ours = activation_patch(model, clean, corrupted, t, site=site)
            with torch.no_grad():
                ref = fn(model, corrupted, cache, lambda lg, t=t: t(lg).mean())
            torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
