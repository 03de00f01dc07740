"""Path patching (Wang et al. 2022) against a slow textbook reference with raw hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import hooked_side, make_model

from mechattr import targets
from mechattr.components import MLP, Head, parse_component
from mechattr.interventions import activation_patch, path_patch
from mechattr.runtime import blocks as lastblock_mod


def _pair(seed=0, batch=3, n=8, vocab=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, n), generator=g), torch.randint(1, vocab, (batch, n), generator=g)


def slow_path_patch(model, clean, corrupted, target, sender, receivers, mask=None):
    """Textbook path patching, one sender, with raw hooks: (2) run clean with every head's z
    frozen to clean but the sender's from corrupted, caching each receiver layer's residual;
    (3) run clean with each receiver head's q/k/v replaced by its own projection
    ``ln1(resid₂) W^h + b^h`` of that residual (what the split q/k/v input would see)."""
    sender = parse_component(sender)
    n_layers = model.cfg.n_layers
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    with torch.no_grad():
        _, cc = model.run_with_cache(clean, attention_mask=mask)
        _, xc = model.run_with_cache(corrupted, attention_mask=mask)

    def freeze_z(layer):
        def fn(act, hook):
            out = cc[z_names[layer]].clone()
            if isinstance(sender, Head) and layer == sender.layer:
                out[:, :, sender.head] = xc[z_names[layer]][:, :, sender.head]
            return out

        return fn

    hooks = [(z_names[layer], freeze_z(layer)) for layer in range(n_layers)]
    if isinstance(sender, MLP):
        hooks.append((sender.hook_name, lambda act, hook: xc[sender.hook_name].clone()))
    with torch.no_grad():
        if receivers == "logits":
            return target(model.run_with_hooks(clean, fwd_hooks=hooks, attention_mask=mask), mask).mean()
        layers = sorted({layer for layer, _, _ in receivers})
        store = {}
        def keep(layer):
            return lambda act, hook: store.__setitem__(layer, act.clone())

        grab = [(f"blocks.{layer}.hook_resid_pre", keep(layer)) for layer in layers]
        model.run_with_hooks(clean, fwd_hooks=hooks + grab, attention_mask=mask)

        def projected(layer, h, w):
            blk = model.blocks[layer]
            W, b = getattr(blk.attn, f"W_{w.upper()}")[h], getattr(blk.attn, f"b_{w.upper()}")[h]
            return blk.ln1(store[layer]) @ W + b

        def patch(layer, w):
            def fn(act, hook):
                act = act.clone()
                for lay, h, kind in receivers:
                    if (lay, kind) == (layer, w):
                        act[:, :, h] = projected(lay, h, kind).to(act.dtype)
                return act

            return fn

        sites = sorted({(layer, w) for layer, _, w in receivers})
        logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_{w}", patch(layer, w)) for layer, w in sites], attention_mask=mask)
        return target(logits, mask).mean()


CASES = [
    (["L0H0", "L0H3", "MLP0", "L1H1", "MLP1"], "logits"),
    (["L0H1", "MLP0", "L1H2"], [(2, 1, "q")]),
    (["L0H2", "MLP1"], [(2, 0, "k"), (2, 3, "v")]),
    (["L0H0", "L0H2"], [(1, 2, "q"), (2, 1, "v"), (2, 1, "k")]),
]


@pytest.mark.parametrize("senders,receivers", CASES)
@pytest.mark.parametrize("fast", [True, False])
def test_path_patch_matches_slow_reference(senders, receivers, fast, monkeypatch, unchanged):
    model = make_model(n_layers=3)
    clean, corrupted = _pair()
    target = targets.logit_diff(torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    if not fast:  # the generic hooked-forward path (what bridges use)
        monkeypatch.setattr(lastblock_mod, "supported", lambda m: False)
    with unchanged(model):
        ours = path_patch(model, clean, corrupted, target, senders, receivers, batch_size=6)
    ref = torch.stack([slow_path_patch(model, clean, corrupted, target, s, receivers) for s in senders])
    with torch.no_grad():
        assert (ref - target(model(clean)).mean()).abs().max() > 1e-3
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_path_patch_attn_only_and_plain_target(attn_model):
    clean, corrupted = _pair(seed=2)
    target = targets.logprob(torch.tensor([1, 2, 3]), pos=3)
    senders = ["L0H0", "L0H1", "L0H3"]
    for receivers in ("logits", [(1, 2, "q"), (1, 0, "k")], [(1, 2, "q"), (1, 3, "q")]):
        ours = path_patch(attn_model, clean, corrupted, target, senders, receivers)
        ref = torch.stack([slow_path_patch(attn_model, clean, corrupted, target, s, receivers) for s in senders])
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    model = make_model(n_layers=2)

    def plain(lg, mask=None):
        return lg[:, -1, 4] - lg[:, 2, 5]

    ours = path_patch(model, clean, corrupted, plain, ["L0H1", "MLP0"], "logits")
    ref = torch.stack([slow_path_patch(model, clean, corrupted, plain, s, "logits") for s in ["L0H1", "MLP0"]])
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_path_patch_with_padding_matches_slow_reference(fast, model, monkeypatch):
    clean, corrupted = _pair(seed=4)
    mask = torch.ones_like(clean)
    mask[0, :3] = 0  # left padding
    target = targets.logit(torch.tensor([3, 9, 4]), pos="last")
    if not fast:
        monkeypatch.setattr(lastblock_mod, "supported", lambda m: False)
    for receivers in ("logits", [(1, 0, "k"), (1, 2, "q")], [(1, 1, "q")]):
        ours = path_patch(model, clean, corrupted, target, ["L0H1", "MLP0", "L0H3"], receivers, attention_mask=mask)
        ref = torch.stack([slow_path_patch(model, clean, corrupted, target, s, receivers, mask) for s in ["L0H1", "MLP0", "L0H3"]])
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_path_patch_last_layer_sender_to_logits_equals_noising_patch(model):
    clean, corrupted = _pair(seed=1)
    target = targets.logit(torch.tensor([3, 9, 4]))
    last = model.cfg.n_layers - 1
    pp = path_patch(model, clean, corrupted, target, [Head(last, h) for h in range(model.cfg.n_heads)], "logits")
    noise = activation_patch(model, clean, corrupted, target, site="head_out", direction="noise")
    torch.testing.assert_close(pp, noise[last], atol=2e-5, rtol=1e-4)


def test_path_patch_bridge_equals_hooked(hf_pair, unchanged):
    ht, br = hf_pair
    hooked_side(ht)
    clean, corrupted = _pair(seed=3, batch=2, n=6, vocab=40)
    target = targets.logit_diff(5, 6)
    for receivers in ("logits", [(1, 0, "q"), (1, 2, "k")]):
        with unchanged(br):
            b = path_patch(br, clean, corrupted, target, ["L0H1", "L0H2", "MLP0"], receivers)
        h = path_patch(ht, clean, corrupted, target, ["L0H1", "L0H2", "MLP0"], receivers)
        ref = torch.stack([slow_path_patch(ht, clean, corrupted, target, s, receivers) for s in ["L0H1", "L0H2", "MLP0"]])
        torch.testing.assert_close(h, ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(b, ref, atol=1e-4, rtol=1e-4)


def test_path_patch_result(model):
    clean, corrupted = _pair()
    res = path_patch(model, clean, corrupted, targets.logit(3), ["L0H1", "MLP0"], "logits", return_result=True)
    assert res.components == ["L0H1", "MLP0"] and res.scores.shape == (2,)
    assert list(res.to_frame()["component"]) == ["L0H1", "MLP0"]
    assert res.plot() is not None


def test_path_patch_bad_input(model, unchanged):
    clean, corrupted = _pair()
    t = targets.logit(3)
    with unchanged(model):
        with pytest.raises(ValueError, match="not after sender"):
            path_patch(model, clean, corrupted, t, ["L1H0"], [(1, 2, "q")])
        with pytest.raises(ValueError, match="not after sender"):
            path_patch(model, clean, corrupted, t, ["L0H0", "MLP1"], [(1, 2, "q")])
        with pytest.raises(ValueError, match="one of"):
            path_patch(model, clean, corrupted, t, ["L0H0"], [(1, 2, "o")])
        with pytest.raises(ValueError, match="out of range"):
            path_patch(model, clean, corrupted, t, ["L0H0"], [(1, 7, "q")])
        with pytest.raises(ValueError, match="unknown receivers"):
            path_patch(model, clean, corrupted, t, ["L0H0"], "resid")
        with pytest.raises(ValueError, match="no receivers"):
            path_patch(model, clean, corrupted, t, ["L0H0"], [])
        with pytest.raises(ValueError, match="no components"):
            path_patch(model, clean, corrupted, t, [], "logits")
        with pytest.raises(ValueError, match="same shape"):
            path_patch(model, clean, corrupted[:, :4], t, ["L0H0"], "logits")


def test_interventions_restore_model_when_target_raises(model, unchanged):
    clean, corrupted = _pair()

    def boom(logits):
        raise RuntimeError("target failed")

    for call in (
        lambda: path_patch(model, clean, corrupted, boom, ["L0H0"], [(1, 1, "q")]),
        lambda: path_patch(model, clean, corrupted, boom, ["L0H0"], "logits"),
        lambda: activation_patch(model, clean, corrupted, boom, site="pattern"),
    ):
        with unchanged(model), pytest.raises(RuntimeError, match="target failed"):
            call()
