"""deeplift and gradient_shap: summation-to-delta, a pure-torch rescale reference, Captum's
LayerDeepLift and GradientShap on the same model and draws, option checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import hooked_side, make_model, requires_hooked
from torch import nn

from mechattr import targets
from mechattr.attribution.tokens import attribute_tokens
from mechattr.runtime.embedding import embed_tokens

TOKS = torch.tensor([[5, 9, 14, 3, 7, 2], [1, 8, 8, 20, 4, 6]])
IDS = torch.tensor([7, 3])


def _f_rows(model, emb, rows):
    """log p(IDS[row example]) at the last position, hook_embed replaced by ``emb`` (one forward)."""
    with model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: emb)]):
        logits = model(TOKS[rows, : emb.shape[1]])
    return logits[:, -1].log_softmax(-1)[torch.arange(len(rows)), IDS[rows]]


def _grad(model, emb):
    e = emb.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_f_rows(model, e, torch.arange(e.shape[0])).sum(), e)
    return g


# ------------------------------------------------------------------------------ deeplift
def test_deeplift_summation_to_delta_is_exact_when_every_nonlinearity_has_the_rule():
    """One position (attention is the identity map of V), no LayerNorm, a logit target: the only
    nonlinearities are the MLP activations, all under the rescale rule, so Σ scores = F(x) − F(x')."""
    m = make_model(seed=5, normalization_type=None)
    t = targets.logit(IDS)
    r = attribute_tokens(m, TOKS[:, :1], t, "deeplift")
    gap = r.f_input - r.f_baseline
    assert gap.abs().min() > 1e-2
    torch.testing.assert_close(r.scores.sum(-1), gap, atol=2e-5, rtol=1e-5)
    assert r.convergence_delta.abs().max() < 2e-5
    assert r.extras["rescale_layers"].tolist() == [0, 1]
    ixg = attribute_tokens(m, TOKS[:, :1], t, "input_x_gradient")  # same (zero) baseline, gradient only
    assert (ixg.scores.sum(-1) - gap).abs().max() > 10 * 2e-5  # the rule is what makes it exact


def test_deeplift_gated_mlp_rescales_the_activation_and_takes_the_gradient_of_the_product():
    """Gated MLP ``post = σ(gate) · lin``, one layer, one position, no LayerNorm, a logit target:
    everything after ``post`` is linear, σ has the rule and the product the gradient at the
    input, so the summation error is exactly the product's second-order term:
    ``(lin·Δσ + σ·Δlin) − Δ(σ·lin) = Δσ·Δlin`` (σ, lin at the input), weighted by ``∂F/∂post``."""
    m = make_model(seed=21, n_layers=1, gated_mlp=True, act_fn="silu", normalization_type=None)
    toks, t = TOKS[:, :1], targets.logit(IDS)
    runs = {}
    for name, emb in (("x", embed_tokens(m, toks)), ("b", torch.zeros(2, 1, m.cfg.d_model))):
        st = {}

        def keep(a, hook, st=st):
            st[hook.name.split(".")[-1]] = a

        hooks = [("hook_embed", lambda a, hook, e=emb: e)] + [(f"blocks.0.mlp.{h}", keep) for h in ("hook_pre", "hook_pre_linear", "hook_post")]
        with m.hooks(fwd_hooks=hooks):
            f = m(toks)[:, -1, :].gather(-1, IDS[:, None])[:, 0]
        st["g_post"] = torch.autograd.grad(f.sum(), st["hook_post"])[0]
        runs[name] = {k: v.detach() for k, v in st.items()}
    x, b = runs["x"], runs["b"]
    d_act = F.silu(x["hook_pre"]) - F.silu(b["hook_pre"])
    expected = (x["g_post"] * d_act * (x["hook_pre_linear"] - b["hook_pre_linear"])).sum((-1, -2))
    r = attribute_tokens(m, toks, t, "deeplift")
    assert r.extras["rescale_layers"].tolist() == [0]
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(r.convergence_delta, expected, atol=2e-5, rtol=1e-4)


def _gelu_grad(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


class _Rescale(torch.autograd.Function):
    """gelu(pre) whose backward multiplies by the secant (gelu(pre) − gelu(ref)) / (pre − ref)."""

    @staticmethod
    def forward(ctx, pre, ref, eps):
        ctx.save_for_backward(pre, ref)
        ctx.eps = eps
        return F.gelu(pre)

    @staticmethod
    def backward(ctx, g):
        pre, ref = ctx.saved_tensors
        d = pre - ref
        small = d.abs() < ctx.eps
        secant = (F.gelu(pre) - F.gelu(ref)) / torch.where(small, torch.ones_like(d), d)
        return g * torch.where(small, _gelu_grad(pre), secant), None, None


def _torch_model(model, emb, refs=None, eps=1e-6):
    """The HookedTransformer re-written in plain torch from its weights: ``(logits, MLP pre-activations)``;
    with ``refs`` the MLP activation is the explicit-secant rescale function."""
    cfg, P = model.cfg, emb.shape[1]

    def ln(x, w, b):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt() * w + b

    x = emb + model.W_pos[:P]
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    pres = []
    for li, blk in enumerate(model.blocks):
        h = ln(x, blk.ln1.w, blk.ln1.b)
        q, k, v = (torch.einsum("bpd,hde->bphe", h, W) + bias for W, bias in ((blk.attn.W_Q, blk.attn.b_Q), (blk.attn.W_K, blk.attn.b_K), (blk.attn.W_V, blk.attn.b_V)))
        s = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
        z = torch.einsum("bhqk,bkhe->bqhe", s.masked_fill(~causal, float("-inf")).softmax(-1), v)
        x = x + torch.einsum("bqhe,hed->bqd", z, blk.attn.W_O) + blk.attn.b_O
        pre = ln(x, blk.ln2.w, blk.ln2.b) @ blk.mlp.W_in + blk.mlp.b_in
        pres.append(pre.detach())
        post = F.gelu(pre) if refs is None else _Rescale.apply(pre, refs[li], eps)
        x = x + post @ blk.mlp.W_out + blk.mlp.b_out
    return ln(x, model.ln_final.w, model.ln_final.b) @ model.W_U + model.b_U, pres


@requires_hooked
def test_deeplift_equals_a_pure_torch_reference_with_explicit_secant_multipliers():
    m = make_model(seed=7)
    x = m.W_E[TOKS].detach()
    with torch.no_grad():
        logits, _ = _torch_model(m, x)
        torch.testing.assert_close(logits, m(TOKS), atol=1e-4, rtol=1e-4)  # the re-implementation is the model
        _, refs = _torch_model(m, torch.zeros_like(x))
    e = x.clone().requires_grad_(True)
    logits, _ = _torch_model(m, e, refs)
    (g,) = torch.autograd.grad(logits[:, -1].log_softmax(-1)[torch.arange(2), IDS].sum(), e)
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "deeplift", batch_size=1)
    torch.testing.assert_close(r.scores, (x * g).sum(-1), atol=1e-5, rtol=1e-4)
    assert (r.scores - (x * _grad(m, x)).sum(-1)).abs().max() > 1e-4  # not gradient × input


def _activations_as_gelu_modules(model):
    """Swap each MLP's functional activation (F.gelu) for an nn.GELU module Captum can hook."""
    n = 0
    for mod in model.modules():
        for name in ("act_fn", "act"):
            f = getattr(mod, name, None)
            if type(mod).__name__.endswith("MLP") and callable(f) and not isinstance(f, nn.Module):
                assert f(torch.tensor([0.7])).item() == pytest.approx(F.gelu(torch.tensor([0.7])).item())
                setattr(mod, name, nn.GELU())
                n += 1
    assert n == model.cfg.n_layers
    return model


class _LastLogProb(nn.Module):
    """F(tokens) for Captum. The model is held outside the module tree and the activation modules
    are listed once in ``acts``: a TransformerBridge reaches each MLP under two names, and
    Captum's ``model.apply`` would hook an aliased module twice (and then refuse it)."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.acts = nn.ModuleList(list({id(a): a for a in model.modules() if isinstance(a, nn.GELU)}.values()))

    def forward(self, toks):
        rows = torch.arange(toks.shape[0])
        return self.model(toks)[:, -1].log_softmax(-1)[rows, IDS[rows % len(IDS)]]


def _captum_deeplift(m, base):
    from captum.attr import LayerDeepLift

    dl = LayerDeepLift(_LastLogProb(m), m.hook_dict["hook_embed"])
    dl.eps = 1e-6  # ours: the derivative where |Δpre| < 1e-6 (Captum's default threshold is 1e-10)
    return dl.attribute(TOKS, baselines=base)


def test_deeplift_equals_captum_layer_deeplift_where_the_rule_sets_coincide(monkeypatch):
    """Captum's DeepLift puts its rules on ``nn.Module`` nonlinearities of the types in
    ``SUPPORTED_NON_LINEAR`` (ReLU, ELU, Sigmoid, Tanh, Softplus, pooling, Softmax — not GELU),
    through module hooks. TransformerLens calls the MLP activation as a function, so on an
    unmodified model Captum finds no nonlinearity and its LayerDeepLift is plain gradient ×
    (x − x') (checked first). To make the rule sets coincide, the activation becomes an
    ``nn.GELU`` module registered with Captum's own rescale rule (``nonlinear``); LayerNorm and the
    attention softmax are functional in TransformerLens, so both sides use the gradient there."""
    from captum.attr._core import deep_lift as cdl

    m = make_model(seed=9)
    base = torch.zeros_like(TOKS)  # baseline: token 0's embedding on both sides
    x, b = embed_tokens(m, TOKS), embed_tokens(m, base)
    plain = _captum_deeplift(m, base)
    torch.testing.assert_close(plain, (x - b) * _grad(m, x), atol=1e-5, rtol=1e-4)

    _activations_as_gelu_modules(m)
    monkeypatch.setitem(cdl.SUPPORTED_NON_LINEAR, nn.GELU, cdl.nonlinear)
    theirs = _captum_deeplift(m, base)
    ours = attribute_tokens(m, TOKS, targets.logprob(IDS), "deeplift", baseline=0)
    torch.testing.assert_close(ours.scores, theirs.sum(-1), atol=1e-5, rtol=1e-4)
    assert (ours.scores - plain.sum(-1)).abs().max() > 1e-4  # the rule changed the numbers


def test_deeplift_leaves_the_model_as_it_was(unchanged):
    m = make_model(seed=2)
    logits = m(TOKS).detach()
    with unchanged(m):
        attribute_tokens(m, TOKS, targets.logprob(IDS), "deeplift")
    with unchanged(m), pytest.raises(ValueError):
        attribute_tokens(m, TOKS, targets.logprob(IDS), "deeplift", eps=-1.0)
    torch.testing.assert_close(m(TOKS), logits)


def test_deeplift_options_are_checked():
    m = make_model(seed=2)
    t = targets.logprob(IDS)
    with pytest.raises(ValueError, match="eps"):
        attribute_tokens(m, TOKS, t, "deeplift", eps=-1.0)
    with pytest.raises(ValueError, match="one baseline"):
        attribute_tokens(m, TOKS, t, "deeplift", baseline=torch.zeros(2, *TOKS.shape, m.cfg.d_model))


# ------------------------------------------------------------------------------ gradient_shap
def test_gradient_shap_equals_captum_gradient_shap_on_the_same_draws():
    """Captum's draw order (GradientShap → NoiseTunnel, one partition): ``np.random.choice`` of
    the reference rows, ``torch.normal`` input noise, then ``np.random.uniform`` α, rows
    example-major. The same seeds reproduce the draws; ours take them through ``draws``."""
    from captum.attr import GradientShap

    m = make_model(seed=13)
    B, P = TOKS.shape
    D, n, R, sd = m.cfg.d_model, 5, 3, 0.05
    x = embed_tokens(m, TOKS)
    refs = 0.3 * torch.randn(R, P, D, generator=torch.Generator().manual_seed(1))

    def fwd(emb):
        return _f_rows(m, emb, torch.arange(emb.shape[0]) // n)

    np.random.seed(0)
    torch.manual_seed(0)
    index = np.random.choice(R, n * B)
    noise = torch.normal(0, torch.tensor(sd).repeat((B * n, P, D)))
    alpha = np.random.uniform(0.0, 1.0, B * n)
    np.random.seed(0)
    torch.manual_seed(0)
    theirs = GradientShap(fwd).attribute(x, baselines=refs, n_samples=n, stdevs=sd)
    draws = {"alpha": torch.tensor(alpha).view(B, n).T, "index": torch.tensor(index).view(B, n).T, "noise": noise.view(B, n, P, D).transpose(0, 1)}
    ours = attribute_tokens(m, TOKS, targets.logprob(IDS), "gradient_shap", n_samples=n, baseline=refs[:, None].expand(R, B, P, D), draws=draws, batch_size=4)
    torch.testing.assert_close(ours.scores, theirs.sum(-1), atol=1e-5, rtol=1e-4)


def test_gradient_shap_is_complete_in_expectation_over_alpha():
    """E_α[(x − x') ⊙ ∂F(x' + α(x − x'))] integrates the gradient along the line, so with the
    α draws at the midpoints of n equal cells (a stratified draw) Σ scores → F(x) − F(x')."""
    m = make_model(seed=4)
    n = 48
    alpha = ((torch.arange(n) + 0.5) / n)[:, None].expand(n, 2)
    draws = {"alpha": alpha, "index": torch.zeros(n, 2, dtype=torch.long)}
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "gradient_shap", n_samples=n, baseline="zero", draws=draws)
    gap = r.f_input - r.f_baseline
    assert (r.convergence_delta.abs() <= 0.01 * gap.abs() + 1e-4).all()
    one = attribute_tokens(m, TOKS, targets.logprob(IDS), "gradient_shap", n_samples=1, baseline="zero", draws={"alpha": alpha[:1], "index": draws["index"][:1]})
    assert (one.convergence_delta.abs() > 1e-3).any()  # one draw alone is not complete


def test_gradient_shap_draws_are_seeded():
    m = make_model(seed=4)
    t = targets.logprob(IDS)
    a = attribute_tokens(m, TOKS, t, "gradient_shap", n_samples=4, stdevs=0.1, seed=3)
    b = attribute_tokens(m, TOKS, t, "gradient_shap", n_samples=4, stdevs=0.1, seed=3)
    c = attribute_tokens(m, TOKS, t, "gradient_shap", n_samples=4, stdevs=0.1, seed=4)
    torch.testing.assert_close(a.scores, b.scores)
    assert (a.scores - c.scores).abs().max() > 1e-6
    assert a.settings["stdevs"] == 0.1 and a.settings["n_samples"] == 4


def test_gradient_shap_options_are_checked():
    m = make_model(seed=4)
    t = targets.logprob(IDS)
    for kw, msg in [({"n_samples": 0}, "n_samples"), ({"stdevs": -0.1}, "stdevs"), ({"n_references": 0}, "n_references"),
                    ({"draws": {"alpha": torch.rand(3, 2)}}, "draws"),
                    ({"n_samples": 2, "draws": {"alpha": torch.rand(3, 2), "index": torch.zeros(3, 2, dtype=torch.long)}}, "n_samples=2"),
                    ({"n_samples": 2, "n_references": 2, "draws": {"alpha": torch.rand(2, 2), "index": torch.full((2, 2), 5)}}, "index"),
                    ({"n_samples": 2, "stdevs": 0.1, "draws": {"alpha": torch.rand(2, 2), "index": torch.zeros(2, 2, dtype=torch.long)}}, "noise")]:
        with pytest.raises(ValueError, match=msg):
            attribute_tokens(m, TOKS, t, "gradient_shap", **kw)


# ------------------------------------------------------------------------------ both model kinds
PARITY = {"deeplift": {}, "gradient_shap": {"n_samples": 4, "seed": 0, "stdevs": 0.02},
          "dig": {"n_steps": 5}, "udig": {"n_steps": 5}, "sig": {"n_steps": 3}}


@pytest.mark.parametrize("method", list(PARITY))
def test_same_numbers_on_a_hooked_transformer_and_its_bridge(hf_pair, unchanged, method):
    """The tiny GPT-2 (gelu_new; on the bridge the activation is HF's module) as a
    HookedTransformer and as a TransformerBridge: the rescale sites, paths and draws agree."""
    ht, br = hf_pair
    toks = torch.tensor([[1, 5, 9, 12, 7, 30], [1, 33, 4, 18, 25, 6]])
    t = targets.logit_diff(5, 6)
    with unchanged(br):
        b = attribute_tokens(br, toks, t, method, **PARITY[method])
    assert torch.isfinite(b.scores).all() and (b.scores[:, 1:] != 0).any()
    if method == "deeplift":
        assert b.extras["rescale_layers"].tolist() == [0, 1]
    hooked_side(ht)
    with unchanged(ht):
        a = attribute_tokens(ht, toks, t, method, **PARITY[method])
    torch.testing.assert_close(a.scores, b.scores, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(a.convergence_delta, b.convergence_delta, atol=2e-4, rtol=2e-4)
