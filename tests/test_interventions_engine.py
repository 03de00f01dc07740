"""The variant engine on arbitrary hooks against one plain hooked forward per variant."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, requires_hooked

from mechattr import targets
from mechattr.interventions.variants import Edit, Mode, Variant, intervene, run_variants


def _slow(model, tokens, variant, target):
    hooks = []
    for e in variant.edits:
        def fn(act, hook, e=e):
            act = act.clone()
            src = torch.zeros_like(act[:1]) if e.values is None else e.values
            act[(slice(None), *e.index)] = src.expand(act.shape[0], *src.shape[1:])[(slice(None), *e.index)]
            return act

        hooks.append((e.hook, fn))
    with torch.no_grad():
        return target(model.run_with_hooks(tokens, fwd_hooks=hooks))


def test_run_variants_matches_one_forward_per_variant(tokens, unchanged):
    model = make_model(n_layers=3)
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    B, P = tokens.shape
    variants = [
        Variant(),
        Variant((Edit("hook_embed", (2,), Mode.PATCH, rnd(B, P, 32)),)),
        Variant((Edit("blocks.1.hook_resid_mid", (slice(None), 3), Mode.MEAN, rnd(1, P, 32)),)),
        Variant((Edit("blocks.0.mlp.hook_post", (), Mode.ZERO), Edit("blocks.2.attn.hook_v", (slice(None), 1), Mode.PATCH, rnd(B, P, 4, 8)))),
        Variant((Edit("blocks.2.attn.hook_attn_scores", (0, slice(None), 0), Mode.ZERO),)),
        Variant((Edit("blocks.2.ln2.hook_normalized", (-1,), Mode.RESAMPLE, rnd(B, P, 32)),)),
        Variant((Edit("blocks.2.attn.hook_pattern", (3, 5), Mode.PATCH, rnd(B, 4, P, P).softmax(-1)),)),
        Variant((Edit("blocks.1.attn.hook_q", (slice(2, 5), 0), Mode.PATCH, rnd(B, P, 4, 8)),
                 Edit("blocks.1.hook_mlp_out", (slice(None), slice(0, 4)), Mode.ZERO))),
        Variant((Edit("blocks.2.hook_resid_pre", (4,), Mode.PATCH, rnd(B, P, 32)),)),
    ]
    lost = [v for v in variants if any(_edit_lost(model, e.hook) for e in v.edits)]
    for v in lost:  # edits this model would silently drop are refused, not computed
        with pytest.raises(ValueError, match="silently"):
            run_variants(model, tokens, [v], targets.logit(torch.tensor([1, 2, 3])))
    variants = [v for v in variants if v not in lost]
    for target in (targets.logit(torch.tensor([1, 2, 3])), targets.logprob(4, pos=5)):
        with unchanged(model):
            fast = run_variants(model, tokens, variants, target, batch_size=2 * B)
        slow = torch.stack([_slow(model, tokens, v, target) for v in variants])
        torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)


def _edit_lost(model, hook):
    from mechattr.runtime.attention import pattern_hooks_live, resid_mid_live

    if hook.endswith("hook_attn_scores"):
        return not pattern_hooks_live(model, scores=True)
    if hook.endswith("hook_pattern"):
        return not pattern_hooks_live(model)
    return hook.endswith("hook_resid_mid") and not resid_mid_live(model)


def test_intervene_modes_write_the_documented_values():
    act = torch.ones(4, 3, 2)
    intervene(act, slice(0, 2), Edit("h", (1,), Mode.ZERO))
    assert act[:2, 1].eq(0).all() and act[:2, [0, 2]].eq(1).all() and act[2:].eq(1).all()
    vals = torch.arange(6.0).reshape(2, 3, 1).expand(2, 3, 2)
    intervene(act, slice(2, 4), Edit("h", (slice(None),), Mode.PATCH, vals))
    assert torch.equal(act[2:], vals)
    intervene(act, slice(0, 2), Edit("h", (0,), Mode.MEAN, vals.mean(0, keepdim=True)))
    assert torch.equal(act[:2, 0], vals.mean(0)[0].expand(2, 2))


def test_edit_requires_values_unless_zero():
    with pytest.raises(ValueError, match="values"):
        Edit("blocks.0.attn.hook_z", (), Mode.PATCH)
    with pytest.raises(ValueError, match="values"):
        Edit("blocks.0.attn.hook_z", (), Mode.ZERO, torch.zeros(1))


@requires_hooked  # runtime.blocks: the HookedTransformer start_at_layer fast path
def test_run_blocks_equals_the_hooked_forward_with_its_hook_points():
    from mechattr.runtime import blocks as lastblock

    model = make_model(n_layers=3)
    g = torch.Generator().manual_seed(1)
    resid = torch.randn(3, 7, model.cfg.d_model, generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    for m in (None, mask):
        kw = {} if m is None else {"attention_mask": m}
        seen: dict[str, list] = {"ref": [], "ours": []}
        names = lambda n: n.startswith(("blocks.1.", "blocks.2.")) and "hook_rot" not in n  # noqa: E731
        with torch.no_grad():
            with model.hooks(fwd_hooks=[(names, lambda act, hook, seen=seen: seen["ref"].append((hook.name, act.clone())))]):
                ref = model(resid, start_at_layer=1, stop_at_layer=3, **kw)
            with model.hooks(fwd_hooks=[(names, lambda act, hook, seen=seen: seen["ours"].append((hook.name, act.clone())))]):
                ours = lastblock.run_blocks(model, 1, 3, resid, m)
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)
        got = dict(seen["ours"])
        assert set(got) <= {n for n, _ in seen["ref"]}
        for n, act in seen["ref"]:
            if n in got:
                torch.testing.assert_close(got[n], act, atol=0, rtol=0)
