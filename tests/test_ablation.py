"""Ablation (zero/mean/resample) against slow one-forward-per-component references."""

from __future__ import annotations

import pytest
import torch
from conftest import hooked_side, make_model

from mechattr import targets
from mechattr.components import MLP, Head
from mechattr.interventions import ablation_scan, run_ablated
from mechattr.interventions.result import InterventionResult


def _ref_values(model, tokens, reference, hook, mode, seed, mask=None):
    """What the documented modes write at ``hook``, computed independently."""
    ref = tokens if reference is None else reference
    _, cache = model.run_with_cache(ref, names_filter=lambda n: n == hook, attention_mask=mask if reference is None else None)
    act = cache[hook]
    if mode == "zero":
        return torch.zeros_like(act[:1])
    if mode == "mean":
        return act.mean(0, keepdim=True)
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    return act[torch.randint(ref.shape[0], (tokens.shape[0],), generator=g)]


def slow_ablated_logits(model, tokens, comps, mode, reference=None, seed=None, positions=None, mask=None):
    """One plain forward with raw hooks writing the ablation values."""
    hooks = []
    for c in comps:
        vals = _ref_values(model, tokens, reference, c.hook_name, mode, seed, mask)

        def fn(act, hook, c=c, vals=vals):
            act = act.clone()
            pos = slice(None) if positions is None else torch.tensor(positions)
            if isinstance(c, Head):
                act[:, pos, c.head] = vals.expand_as(act)[:, pos, c.head]
            else:
                act[:, pos] = vals.expand_as(act)[:, pos]
            return act

        hooks.append((c.hook_name, fn))
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks, attention_mask=mask)


def slow_scan(model, tokens, target, kind, mode, **kw):
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        clean = target(model(tokens, attention_mask=kw.get("mask"))).mean()
    comps = [Head(layer, h) for layer in range(n_l) for h in range(n_h)] if kind == "heads" else [MLP(layer) for layer in range(n_l)]
    vals = torch.stack([target(slow_ablated_logits(model, tokens, [c], mode, **kw), kw.get("mask")).mean() - clean for c in comps])
    return vals.reshape(n_l, n_h) if kind == "heads" else vals


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
@pytest.mark.parametrize("kind", ["heads", "mlps"])
def test_ablation_scan_matches_slow_reference(mode, kind, tokens, unchanged):
    model = make_model(n_layers=3)
    ref_toks = torch.randint(1, 24, (5, 8), generator=torch.Generator().manual_seed(1))
    reference = ref_toks if mode != "zero" else None
    target = targets.logit_diff(torch.tensor([3, 4, 5]), 7)
    with unchanged(model):
        fast = ablation_scan(model, tokens, target, kind=kind, mode=mode, reference=reference, seed=3, batch_size=7)
    slow = slow_scan(model, tokens, target, kind, mode, reference=reference, seed=3)
    assert fast.shape == slow.shape
    assert slow.abs().max() > 1e-3  # the ablations do something
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["mean", "resample"])
def test_ablation_scan_positions_subset_matches_slow_reference(mode, model, tokens):
    target = targets.logprob(torch.tensor([3, 4, 5]), pos=-2)
    fast = ablation_scan(model, tokens, target, mode=mode, positions=[1, -1], seed=5)
    slow = slow_scan(model, tokens, target, "heads", mode, seed=5, positions=[1, 7])
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)


def test_ablation_scan_with_padding_and_plain_callable_target(model):
    tokens = torch.randint(1, 24, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    target = targets.logit(5, pos="last")
    fast = ablation_scan(model, tokens, target, mode="mean", attention_mask=mask)
    slow = slow_scan(model, tokens, target, "heads", "mean", mask=mask)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)
    plain = ablation_scan(model, tokens, lambda logits: logits[:, -1, 5], mode="zero")
    torch.testing.assert_close(plain, slow_scan(model, tokens, lambda lg, m=None: lg[:, -1, 5], "heads", "zero"), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_run_ablated_matches_slow_reference(mode, model, tokens, unchanged):
    comps = [Head(0, 1), Head(1, 3), MLP(0)]
    with unchanged(model):
        fast = run_ablated(model, tokens, ["L0H1", (1, 3), "MLP0"], mode=mode, seed=2, positions=[0, 5])
    slow = slow_ablated_logits(model, tokens, comps, mode, seed=2, positions=[0, 5])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (fast - model(tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("which", [0, 1])
def test_ablation_on_hooked_and_bridge(hf_pair, which, unchanged):
    model = hooked_side(hf_pair[which])
    tokens = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    target = targets.logit(torch.tensor([5, 6]))
    with unchanged(model):
        fast = ablation_scan(model, tokens, target, mode="mean")
        fast_mlp = ablation_scan(model, tokens, target, kind="mlps", mode="resample", seed=1)
        logits = run_ablated(model, tokens, ["L1H2"], mode="zero")
    torch.testing.assert_close(fast, slow_scan(model, tokens, target, "heads", "mean"), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast_mlp, slow_scan(model, tokens, target, "mlps", "resample", seed=1), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits, slow_ablated_logits(model, tokens, [Head(1, 2)], "zero"), atol=1e-5, rtol=1e-5)


def test_ablation_scan_same_on_hooked_and_bridge(hf_pair):
    hooked_side(hf_pair[0])
    tokens = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    target = targets.logit(torch.tensor([5, 6]))
    a, b = (ablation_scan(m, tokens, target, mode="zero") for m in hf_pair)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ablation_result_frame_plot_save(model, tokens, tmp_path):
    res = ablation_scan(model, tokens, targets.logit(3), mode="zero", return_result=True)
    assert isinstance(res, InterventionResult) and res.scores.shape == (2, 4)
    df = res.to_frame()
    assert list(df["component"][:2]) == ["L0H0", "L0H1"] and len(df) == 8
    assert df["score"].tolist() == pytest.approx(res.scores.reshape(-1).tolist())
    assert res.plot() is not None
    back = InterventionResult.load(res.save(tmp_path / "r.json"))
    torch.testing.assert_close(back.scores, res.scores)
    assert back.settings["mode"] == "zero" and back.components == res.components


def test_ablation_bad_input_raises_and_leaves_model(model, attn_model, tokens, unchanged):
    t = targets.logit(3)
    with unchanged(model):
        with pytest.raises(ValueError, match="unknown mode"):
            ablation_scan(model, tokens, t, mode="shuffle")
        with pytest.raises(ValueError, match="positions"):
            ablation_scan(model, tokens, t, mode="mean", reference=tokens[:, :5])
        with pytest.raises(ValueError, match="unknown kind"):
            ablation_scan(model, tokens, t, kind="neurons")
        with pytest.raises(ValueError, match="out of range"):
            run_ablated(model, tokens, ["L0H9"])
        with pytest.raises(ValueError, match="out of range"):
            run_ablated(model, tokens, ["L5H0"])
        with pytest.raises(ValueError, match="no components"):
            run_ablated(model, tokens, [])
        with pytest.raises(ValueError, match="positions"):
            run_ablated(model, tokens, ["L0H0"], positions=[8])
        with pytest.raises(ValueError, match="attention-only"):
            ablation_scan(attn_model, tokens, t, kind="mlps")

        def boom(logits):
            raise RuntimeError("target failed")

        with pytest.raises(RuntimeError, match="target failed"):
            ablation_scan(model, tokens, boom)


@pytest.mark.parametrize("call", ["scan", "patch", "path_patch"])
def test_nan_target_is_a_clear_error(model, tokens, call, unchanged):
    import mechattr

    def nan_target(lg):
        return lg[:, -1, 0] * float("nan")

    cor = tokens.flip(0)
    fns = {
        "scan": lambda: mechattr.ablation_scan(model, tokens, nan_target),
        "patch": lambda: mechattr.activation_patch(model, tokens, cor, nan_target),
        "path_patch": lambda: mechattr.path_patch(model, tokens, cor, nan_target, ["L0H1"], "logits"),
    }
    with unchanged(model), pytest.raises(ValueError, match="NaN or infinite"):
        fns[call]()
