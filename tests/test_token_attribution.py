"""attribute_tokens: IG axioms, Captum cross-checks, batch invariance, robustness, guard."""

from __future__ import annotations

import pytest
import torch
from conftest import hooked_side, make_model, requires_cuda, requires_hooked

from mechattr import targets
from mechattr.attribution.tokens import attribute_tokens, method_names

ALL = method_names()
FAST = {"n_steps": 8}


def _opts(method):
    opts = {} if method in ("saliency", "input_x_gradient", "occlusion", "attention", "rollout", "flow") else dict(FAST)
    if method == "rpi":
        opts["n_baselines"] = 2
    if method == "expected_gradients":
        opts["n_samples"] = 8
    return opts


def test_ig_completeness_64_gauss_legendre(tokens):
    model = make_model(seed=3)
    t = targets.logprob(torch.tensor([3, 4, 5]))
    r = attribute_tokens(model, tokens, t, "ig", n_steps=64)
    gap = (r.f_input - r.f_baseline).abs()
    assert (gap > 1e-2).all()
    assert ((r.scores.sum(-1) - (r.f_input - r.f_baseline)).abs() <= 0.01 * gap).all()
    torch.testing.assert_close(r.convergence_delta, r.scores.sum(-1) - (r.f_input - r.f_baseline))


def test_ig_linearity_in_the_target(tokens):
    model = make_model(seed=1)
    t1, t2 = targets.logit(torch.tensor([3, 4, 5])), targets.logprob(7, pos=-2)
    a1 = attribute_tokens(model, tokens, t1, "ig", n_steps=16).scores
    a2 = attribute_tokens(model, tokens, t2, "ig", n_steps=16).scores
    both = attribute_tokens(model, tokens, 2.0 * t1 + (-0.5) * t2, "ig", n_steps=16).scores
    torch.testing.assert_close(both, 2.0 * a1 - 0.5 * a2, atol=1e-5, rtol=1e-4)


@requires_hooked  # folds LayerNorm with HookedTransformer.load_and_process_state_dict
def test_ig_implementation_invariance_under_layernorm_folding(tokens):
    from mechattr.runtime.tl import HookedTransformer

    model = make_model(seed=2)
    folded = HookedTransformer(model.cfg.copy() if hasattr(model.cfg, "copy") else model.cfg)
    folded.load_and_process_state_dict(model.state_dict(), fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    folded.eval()
    assert folded.cfg.normalization_type == "LNPre"
    assert not torch.equal(folded.blocks[0].attn.W_Q, model.blocks[0].attn.W_Q)
    t = targets.logprob(torch.tensor([3, 4, 5]))
    a = attribute_tokens(model, tokens, t, "ig", n_steps=32)
    b = attribute_tokens(folded, tokens, t, "ig", n_steps=32)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-3)


def test_ig_implementation_invariance_hooked_vs_bridge(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    toks = torch.tensor([[1, 5, 9, 12, 7, 5, 9], [1, 30, 22, 4, 8, 30, 22]])
    t = targets.logprob(torch.tensor([12, 4]))
    for method in ("ig", "occlusion", "attention", "aieg"):
        a = attribute_tokens(ht, toks, t, method, n_steps=16)
        b = attribute_tokens(br, toks, t, method, n_steps=16)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-3)


def test_ig_sensitivity_single_differing_token_gets_all_the_credit():
    model = make_model(seed=4)
    x = torch.tensor([[3, 9, 4, 12, 7, 5]])
    x2 = x.clone()
    x2[0, 2] = 17
    t = targets.logit(6)
    r = attribute_tokens(model, x, t, "ig", baseline=x2, n_steps=64)
    gap = float(r.f_input[0] - r.f_baseline[0])
    assert abs(gap) > 1e-3
    assert abs(float(r.scores[0, 2])) > 0.5 * abs(gap)
    others = torch.cat([r.scores[0, :2], r.scores[0, 3:]])
    assert torch.equal(others, torch.zeros_like(others))


def _captum_forward(model, ids):
    def f(tok):
        lg = model(tok)
        return lg[torch.arange(tok.shape[0]), -1, ids.repeat(tok.shape[0] // ids.shape[0])]  # steps stacked

    return f


@pytest.mark.parametrize("quad", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_ig_equals_captum_layer_integrated_gradients(tokens, quad):
    from captum.attr import LayerIntegratedGradients

    model = make_model(seed=5)
    ids = torch.tensor([3, 4, 5])
    ours = attribute_tokens(model, tokens, targets.logit(ids), "ig", baseline=0, n_steps=32, quadrature=quad)
    lig = LayerIntegratedGradients(_captum_forward(model, ids), model.embed)
    ref, delta = lig.attribute(tokens, baselines=torch.zeros_like(tokens), n_steps=32, method=quad, return_convergence_delta=True)
    # Captum's trapezoid weights are 1/n (ends 1/2n), summing to (n-1)/n; ours are the trapezoid
    # rule's 1/(n-1), so the two differ exactly by that factor (ours keeps completeness).
    scale = 31 / 32 if quad == "riemann_trapezoid" else 1.0
    torch.testing.assert_close(ours.scores * scale, ref.sum(-1).float(), atol=1e-4, rtol=0)
    if quad != "riemann_trapezoid":
        torch.testing.assert_close(ours.convergence_delta, delta.float(), atol=1e-4, rtol=0)


def test_input_x_gradient_equals_captum(tokens):
    from captum.attr import LayerGradientXActivation

    model = make_model(seed=5)
    ids = torch.tensor([3, 4, 5])
    ours = attribute_tokens(model, tokens, targets.logit(ids), "input_x_gradient")
    ref = LayerGradientXActivation(_captum_forward(model, ids), model.embed).attribute(tokens)
    torch.testing.assert_close(ours.scores, ref.sum(-1).float(), atol=1e-5, rtol=0)


def _padded(ex, other, side, pad=0):
    n = max(ex.shape[0], other.shape[0])
    rows, masks = [], []
    for r in (other, ex):
        k = n - r.shape[0]
        p = torch.full((k,), pad)
        rows.append(torch.cat([p, r]) if side == "left" else torch.cat([r, p]))
        m = torch.cat([torch.zeros(k), torch.ones(r.shape[0])]) if side == "left" else torch.cat([torch.ones(r.shape[0]), torch.zeros(k)])
        masks.append(m)
    return torch.stack(rows), torch.stack(masks).long()


@pytest.mark.parametrize("method", ALL)
def test_every_method_is_batch_invariant_under_left_and_right_padding(method):
    model = make_model(seed=6)
    ex = torch.tensor([5, 9, 14, 3, 7])
    other = torch.tensor([11, 2, 19, 8, 6, 4, 13, 10])
    alone = attribute_tokens(model, ex[None], targets.logprob(7, pos="last"), method, seed=3, **_opts(method))
    for side in ("left", "right"):
        toks, mask = _padded(ex, other, side)
        r = attribute_tokens(model, toks, targets.logprob(7, pos="last"), method, seed=3, attention_mask=mask, **_opts(method))
        real = mask[1].bool()
        torch.testing.assert_close(r.scores[1, real], alone.scores[0], atol=2e-5, rtol=1e-4)
        assert torch.equal(r.scores[1, ~real], torch.zeros(int((~real).sum())))
        if alone.convergence_delta is not None:
            torch.testing.assert_close(r.convergence_delta[1], alone.convergence_delta[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ALL)
def test_every_method_is_finite_with_extreme_logits_and_leaves_model_unchanged(method, unchanged):
    model = make_model(seed=7)
    with torch.no_grad():
        model.unembed.W_U.mul_(3e3)
    toks = torch.tensor([[5, 9, 14, 3, 7, 2], [1, 8, 8, 20, 4, 6]])
    t = targets.logprob(torch.tensor([7, 3]))
    with unchanged(model):
        lp = model(toks)[:, -1].log_softmax(-1)
        assert lp.min() < -1e3  # extreme
        r = attribute_tokens(model, toks, t, method, seed=0, **_opts(method))
        assert torch.isfinite(r.scores).all()
        assert r.scores.dtype == torch.float32
        if r.convergence_delta is not None:
            assert torch.isfinite(r.convergence_delta).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ALL)
def test_every_method_is_finite_in_half_precision_on_cpu(method, dtype, unchanged):
    """Half-precision models (CPU kernels) give finite float32 scores; the model keeps its dtype."""
    model = make_model(seed=7).to(dtype, print_details=False)
    toks = torch.tensor([[5, 9, 14, 3, 7, 2], [1, 8, 8, 20, 4, 6]])
    with unchanged(model):
        r = attribute_tokens(model, toks, targets.logprob(torch.tensor([7, 3])), method, seed=0, **_opts(method))
    assert torch.isfinite(r.scores).all() and r.scores.dtype == torch.float32
    assert next(model.parameters()).dtype == dtype


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ALL)
def test_every_method_is_finite_in_half_precision_on_gpu(method, dtype):
    model = make_model(seed=7).to("cuda").to(dtype)
    toks = torch.tensor([[5, 9, 14, 3, 7, 2], [1, 8, 8, 20, 4, 6]])
    r = attribute_tokens(model, toks, targets.logprob(torch.tensor([7, 3])), method, seed=0, **_opts(method))
    assert torch.isfinite(r.scores).all() and r.scores.dtype == torch.float32


def test_model_unchanged_after_exception_inside_a_method(tokens, unchanged):
    model = make_model()
    calls = []

    def bad_target(logits):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("target failed mid-path")
        return logits[:, -1, 0]

    with unchanged(model):
        with pytest.raises(RuntimeError, match="mid-path"):
            attribute_tokens(model, tokens, bad_target, "ig", n_steps=4, batch_size=3)


def test_bad_input_raises_clear_value_errors(tokens, unchanged):
    model = make_model()
    t = targets.logit(3)
    with unchanged(model):
        with pytest.raises(ValueError, match="known: .*'ig'"):
            attribute_tokens(model, tokens, t, "integrated")
        with pytest.raises(ValueError, match="n_steps"):
            attribute_tokens(model, tokens, t, "ig", n_steps=0)
        with pytest.raises(ValueError, match="NaN"):
            attribute_tokens(model, tokens, lambda lg: lg[:, -1, 0] / 0 * 0, "ig", n_steps=2)
        with pytest.raises(ValueError, match="baseline"):
            attribute_tokens(model, tokens, t, "ig", baseline=torch.zeros(2, 5, 7))
        with pytest.raises(ValueError, match="unknown baseline"):
            attribute_tokens(model, tokens, t, "ig", baseline="noise")
        with pytest.raises(ValueError, match="pad token|no pad"):
            attribute_tokens(model, tokens, t, "ig", baseline="pad")
        with pytest.raises(ValueError, match="options"):
            attribute_tokens(model, tokens, t, "ig", steps=3)
        with pytest.raises(ValueError, match="reduction"):
            attribute_tokens(model, tokens, t, "occlusion", reduction="l2")
        with pytest.raises(ValueError, match="reduction"):
            attribute_tokens(model, tokens, t, "ig", reduction="abs")
        with pytest.raises(ValueError, match="vocabulary"):
            attribute_tokens(model, tokens + 100, t, "ig")
        with pytest.raises(ValueError, match="batch_size"):
            attribute_tokens(model, tokens, t, "ig", batch_size=-1)
