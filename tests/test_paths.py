"""Path engine: schedules, completeness at several hooks, batched engine vs a slow reference."""

from __future__ import annotations

import pytest
import torch
from conftest import RowCounter, hooked_side, make_model

from mechattr import targets
from mechattr.attribution.paths import path_integral, schedule

HOOKS = ["hook_embed", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.0.attn.hook_pattern"]


def _target():
    return targets.logit(torch.tensor([3, 4, 5]))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"])
def test_schedule_weights_sum_to_one_and_integrate_linear_exactly(method):
    a, w = schedule(16, method)
    assert a.shape == w.shape == (16,)
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    assert ((a >= 0) & (a <= 1)).all()
    exact = {"gausslegendre": 1 / 3, "riemann_trapezoid": 1 / 3}
    if method in exact:  # ∫ α² dα: GL exact, trapezoid O(1/n²)
        assert abs(float((w * a**2).sum()) - 1 / 3) < (1e-12 if method == "gausslegendre" else 2e-3)
    else:
        assert abs(float((w * a).sum()) - 0.5) < 1 / 16 + 1e-12


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="n_steps"):
        schedule(0)
    with pytest.raises(ValueError, match="known"):
        schedule(4, "simpson")


@pytest.mark.parametrize("hook", HOOKS)
def test_path_integral_completeness_at_hooks(hook, tokens):
    model = make_model()
    a, w = schedule(64)
    # a zero residual sits at LayerNorm's singularity: use a random baseline there
    base = torch.randn(3, 8, 32, generator=torch.Generator().manual_seed(2)) if "resid" in hook else None
    r = path_integral(model, tokens, _target(), hook, alphas=a, weights=w, baseline=base)
    gap = (r.f_input - r.f_baseline).abs()
    assert gap.min() > 1e-3
    assert (r.convergence_delta.abs() <= 0.01 * gap).all()
    assert r.attributions.dtype == torch.float32


def _slow_reference(model, tokens, target, hook, baseline, alphas, weights, clip=None):
    """One forward+backward per α through a replacing hook (no stacking, no start_at_layer)."""
    store = {}
    model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook: store.__setitem__("x", a.detach()))])
    x = store["x"]
    G = torch.zeros_like(x)
    for al, wk in zip(alphas.tolist(), weights.tolist()):
        act = (baseline + al * (x - baseline)).detach().requires_grad_(True)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook, act=act: act)])
        (g,) = torch.autograd.grad(target(logits).sum(), act)
        if clip is not None:
            g = g.clamp(-clip, clip)
        G += wk * g
    return x, G, (x - baseline) * G


@pytest.mark.parametrize("hook", HOOKS)
def test_path_integral_matches_slow_reference(hook, tokens):
    model = make_model()
    a, w = schedule(5, "riemann_trapezoid")
    fast = path_integral(model, tokens, _target(), hook, alphas=a, weights=w, baseline=0.1, batch_size=4)
    x, G, A = _slow_reference(model, tokens, _target(), hook, torch.full_like(fast.input_act, 0.1), a, w)
    torch.testing.assert_close(fast.input_act, x)
    torch.testing.assert_close(fast.grads, G, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.attributions, A, atol=1e-5, rtol=1e-4)


def test_grad_clip_caps_each_step_gradient(tokens):
    model = make_model()
    a, w = schedule(4, "riemann_middle")
    fast = path_integral(model, tokens, _target(), "hook_embed", alphas=a, weights=w, grad_clip=0.05)
    _, G, _ = _slow_reference(model, tokens, _target(), "hook_embed", torch.zeros_like(fast.input_act), a, w, clip=0.05)
    torch.testing.assert_close(fast.grads, G, atol=1e-6, rtol=1e-5)
    assert fast.grads.abs().max() <= 0.05 + 1e-6


def test_chunking_and_plain_callable_target_do_not_change_results(tokens):
    model = make_model()
    a, w = schedule(6)
    ref = path_integral(model, tokens, _target(), "blocks.1.attn.hook_z", alphas=a, weights=w)
    for bs in (1, 5, 1000):
        r = path_integral(model, tokens, _target(), "blocks.1.attn.hook_z", alphas=a, weights=w, batch_size=bs)
        torch.testing.assert_close(r.attributions, ref.attributions, atol=1e-6, rtol=1e-5)
    ids = torch.tensor([3, 4, 5])
    plain = path_integral(model, tokens, lambda lg: lg[torch.arange(3), -1, ids], "blocks.1.attn.hook_z", alphas=a, weights=w, batch_size=4)
    torch.testing.assert_close(plain.attributions, ref.attributions, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(plain.f_input, ref.f_input)


def test_multiple_baselines_average_single_baseline_runs(tokens):
    model = make_model()
    a, w = schedule(8)
    g = torch.Generator().manual_seed(1)
    bs = 0.3 * torch.randn(3, 3, 8, 32, generator=g)
    multi = path_integral(model, tokens, _target(), "hook_embed", baseline=bs, alphas=a, weights=w)
    singles = [path_integral(model, tokens, _target(), "hook_embed", baseline=b, alphas=a, weights=w) for b in bs]
    for r, s in enumerate(singles):
        torch.testing.assert_close(multi.attributions_per_baseline[r], s.attributions, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(multi.f_baseline_per[r], s.f_baseline)
    torch.testing.assert_close(multi.attributions, torch.stack([s.attributions for s in singles]).mean(0), atol=1e-6, rtol=1e-5)


def test_per_example_alphas(tokens):
    model = make_model()
    a, w = schedule(4)
    per = torch.stack([a, a.flip(0), a], 1)  # [S, batch]
    wper = torch.stack([w, w.flip(0), w], 1)
    r = path_integral(model, tokens, _target(), "hook_embed", alphas=per, weights=wper)
    ref = path_integral(model, tokens, _target(), "hook_embed", alphas=a, weights=w)
    torch.testing.assert_close(r.attributions, ref.attributions, atol=1e-6, rtol=1e-5)
    assert torch.equal(r.f_path[0, :, 1], ref.f_path[0, :, 1].flip(0))


def test_bridge_and_hooked_transformer_agree_at_internal_hooks(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    toks = torch.tensor([[1, 5, 9, 12, 7, 5, 9], [1, 30, 22, 4, 8, 30, 22]])
    t = targets.logprob(torch.tensor([12, 4]))
    a, w = schedule(8)
    for hook in ("hook_embed", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"):
        r1 = path_integral(ht, toks, t, hook, alphas=a, weights=w)
        r2 = path_integral(br, toks, t, hook, alphas=a, weights=w)
        torch.testing.assert_close(r1.attributions, r2.attributions, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(r1.f_input, r2.f_input, atol=1e-4, rtol=1e-4)


def test_path_integral_rejects_bad_input_and_leaves_model_unchanged(tokens, unchanged):
    model = make_model()
    a, w = schedule(4)
    t = _target()
    with unchanged(model):
        with pytest.raises(ValueError, match="baseline"):
            path_integral(model, tokens, t, "hook_embed", baseline=torch.zeros(5, 7), alphas=a, weights=w)
        with pytest.raises(ValueError, match="alphas"):
            path_integral(model, tokens, t, "hook_embed", alphas=torch.zeros(4, 2), weights=w)
        with pytest.raises(ValueError, match="unknown hook"):
            path_integral(model, tokens, t, "blocks.9.attn.hook_z", alphas=a, weights=w)
        with pytest.raises(ValueError, match="batch_size"):
            path_integral(model, tokens, t, "hook_embed", alphas=a, weights=w, batch_size=0)
        with pytest.raises(ValueError, match="NaN"):
            path_integral(model, tokens, lambda lg: lg[:, -1, 0] * float("nan"), "hook_embed", alphas=a, weights=w)
        with pytest.raises(RuntimeError, match="boom"):
            path_integral(model, tokens, lambda lg: (_ for _ in ()).throw(RuntimeError("boom")), "hook_embed", alphas=a, weights=w)
        path_integral(model, tokens, t, "blocks.1.attn.hook_z", alphas=a, weights=w)


def test_endpoints_on_the_path_are_read_off_it_not_rerun(tokens):
    """A schedule with steps at α = 1 and α = 0 (trapezoid) gives F(x) and F(b) from its own
    path points: same values as a separate evaluation, two batches of rows fewer."""
    model = make_model()
    B = tokens.shape[0]
    a, w = torch.linspace(0, 1, 5), torch.tensor([0.5, 1, 1, 1, 0.5]) / 4
    inner_a, inner_w = a[1:-1], w[1:-1]  # no endpoint on the path: both evaluated
    with RowCounter(model) as on_path:
        r = path_integral(model, tokens, _target(), "hook_embed", alphas=a, weights=w)
    with RowCounter(model) as off_path:
        r_in = path_integral(model, tokens, _target(), "hook_embed", alphas=inner_a, weights=inner_w)
    with torch.no_grad():
        fx = _target()(model(tokens))
        fb = _target()(model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda act, hook: torch.zeros_like(act))]))
    torch.testing.assert_close(r.f_input, fx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.f_baseline, fb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_in.f_input, fx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_in.f_baseline, fb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.f_path[:, 1:-1], r_in.f_path, atol=1e-5, rtol=1e-5)
    # rows: the path's own, plus (off the path only) one row per example for each endpoint
    assert on_path.rows == 5 * B, on_path.rows
    assert off_path.rows == 3 * B + 2 * B, off_path.rows
    # per-example α with α = 1 only for some examples: F(x) evaluated for all, same values
    al = torch.stack([torch.tensor([0.3, 1.0])] + [torch.tensor([0.3, 0.6])] * (B - 1), 1)
    r_mix = path_integral(model, tokens, _target(), "hook_embed", alphas=al, weights=torch.full_like(al, 0.5))
    torch.testing.assert_close(r_mix.f_input, fx, atol=1e-5, rtol=1e-5)


def test_baseline_value_false_skips_f_of_the_baseline(tokens):
    model = make_model()
    with RowCounter(model) as c:
        r = path_integral(model, tokens, _target(), "hook_embed", alphas=[1.0], weights=[1.0], baseline_value=False)
    assert c.rows == tokens.shape[0]  # one forward row per example: the gradient's, which also gives F(x)
    full = path_integral(model, tokens, _target(), "hook_embed", alphas=[1.0], weights=[1.0])
    torch.testing.assert_close(r.attributions, full.attributions)
    torch.testing.assert_close(r.f_input, full.f_input)
    assert r.f_baseline is None and r.f_baseline_per is None
    with pytest.raises(ValueError, match="baseline_value=False"):
        _ = r.convergence_delta
