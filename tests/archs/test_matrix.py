"""Every public method on every architecture, as a HookedTransformer (TransformerLens 3, where
it can build one) and as a TransformerBridge, against slow references written here with raw
``run_with_hooks`` / autograd (no mechattr code in the references)."""

from __future__ import annotations

import warnings

import pytest
import torch

import mechattr
from mechattr import targets
from mechattr.runtime.attention import pattern_hooks_live
from mechattr.runtime.tl import HAS_HOOKED, is_bridge, is_hooked

from .conftest import ARCHS, VOCAB

KINDS = ["hooked", "bridge"]
CORRECT, INCORRECT = torch.tensor([5, 9]), torch.tensor([7, 11])


def _model(loaded, name, kind):
    if kind == "hooked" and not HAS_HOOKED:
        pytest.skip("TransformerLens 4 has no HookedTransformer")
    m = loaded(name, kind)
    if kind == "hooked" and not is_hooked(m):
        pytest.skip(f"TransformerLens cannot build a HookedTransformer for {name}: load_model gave the bridge (tested as 'bridge')")
    assert is_hooked(m) if kind == "hooked" else is_bridge(m)
    return m


def _tokens(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (2, 8), generator=g)  # no BOS (1) / pad (2): every position is scored


CLEAN, CORR = _tokens(0), _tokens(1)
TARGET = targets.logit_diff(CORRECT, INCORRECT, pos=-1)


def _f(logits):
    """The target written out: logit[correct] - logit[incorrect] at the last position, [batch]."""
    last = logits[:, -1].float()
    rows = torch.arange(last.shape[0])
    return last[rows, CORRECT[: last.shape[0]]] - last[rows, INCORRECT[: last.shape[0]]]


def close(actual, expected, rtol=1e-4):
    """Equal to 1e-4 relative to the reference's scale (float32)."""
    actual, expected = torch.as_tensor(actual).float().cpu(), torch.as_tensor(expected).float().cpu()
    atol = rtol * float(expected.abs().max()) + 1e-6
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _embed_grad(model, tokens, **kw):
    """(hook_embed activation, d sum F / d activation), by autograd through run_with_hooks."""
    store = {}

    def keep(act, hook):
        act = act.detach().requires_grad_(True)
        store["e"] = act
        return act

    with torch.enable_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", keep)], **kw)
        (g,) = torch.autograd.grad(_f(out).sum(), store["e"])
    return store["e"].detach(), g


def _run_f(model, tokens, hooks=(), **kw):
    with torch.no_grad():
        return _f(model.run_with_hooks(tokens, fwd_hooks=list(hooks), **kw))


def _cache(model, tokens, names):
    out = {}

    def keep(act, hook):
        out[hook.name] = act.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    return out


def _replace_head(values, h):
    def fn(act, hook):
        act = act.clone()
        if values is None:
            act[:, :, h] = 0.0
        else:
            act[:, :, h] = values[:, :, h]
        return act

    return fn


def _replace_pattern_head(values, h):
    def fn(act, hook):
        act = act.clone()
        act[:, h] = values[:, h]
        return act

    return fn


TWO_HEADS = [(0, 1), (1, 2)]
matrix = pytest.mark.parametrize("kind", KINDS)
arch_param = pytest.mark.parametrize("name", ARCHS)


# --------------------------------------------------------------------------- loading
@arch_param
@matrix
def test_loads_and_matches_hf(loaded, arch_dir, name, kind):
    """The loaded model's log-probs equal the HF model's (folding/centring only shift logits)."""
    from transformers import AutoModelForCausalLM

    model = _model(loaded, name, kind)
    hf = AutoModelForCausalLM.from_pretrained(str(arch_dir(name)), local_files_only=True).eval()
    with torch.no_grad():
        ref = hf(CLEAN).logits.log_softmax(-1)
        out = model(CLEAN).float().log_softmax(-1)
    close(out, ref, rtol=1e-4)


# --------------------------------------------------------------------------- token attribution
@arch_param
@matrix
def test_input_x_gradient_is_grad_times_input(loaded, unchanged, name, kind):
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.attribute_tokens(model, CLEAN, TARGET, method="input_x_gradient", reduction="sum").scores
    e, g = _embed_grad(model, CLEAN)
    close(got, (g * e).sum(-1))


@arch_param
@matrix
def test_ig_completeness(loaded, unchanged, name, kind):
    """Σ_pos IG = F(x) − F(x') up to the returned convergence delta, and that delta is small.

    Baseline: the mean token embedding (each token's ``hook_embed`` value, averaged over the
    vocabulary) — the zero embedding sits at the RMSNorm/LayerNorm singularity of models
    without additive positions, where 32 steps cannot integrate the path."""
    model = _model(loaded, name, kind)
    with unchanged(model):
        res = mechattr.attribute_tokens(model, CLEAN, TARGET, method="ig", n_steps=32, baseline="mean")
    ids = torch.arange(model.cfg.d_vocab)[:, None]
    mean_e = _cache(model, ids, ["hook_embed"])["hook_embed"].mean(0)  # [1, d_model]
    f_x = _run_f(model, CLEAN)
    f_b = _run_f(model, CLEAN, [("hook_embed", lambda act, hook: mean_e.expand_as(act).to(act.dtype))])
    delta = res.convergence_delta.float().cpu()
    close(res.scores.sum(-1).float().cpu() - delta, f_x - f_b)
    assert (delta.abs() <= 0.05 * (f_x - f_b).abs() + 1e-3).all(), (delta, f_x - f_b)


# --------------------------------------------------------------------------- interventions
@arch_param
@matrix
def test_activation_patch_head_out_matches_per_head_reference(loaded, unchanged, name, kind):
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.activation_patch(model, CLEAN, CORR, TARGET, site="head_out")
    for layer, h in TWO_HEADS:
        hook = f"blocks.{layer}.attn.hook_z"
        clean_z = _cache(model, CLEAN, [hook])[hook]
        ref = _run_f(model, CORR, [(hook, _replace_head(clean_z, h))]).mean()
        close(got[layer, h], ref)


@arch_param
@matrix
def test_activation_patch_pattern_matches_reference_and_is_not_zero(loaded, unchanged, name, kind):
    model = _model(loaded, name, kind)
    base = _run_f(model, CORR).mean()
    if not pattern_hooks_live(model):  # TransformerLens fires hook_pattern after HF's attention: edits are lost
        hook = "blocks.0.attn.hook_pattern"
        clean_p = _cache(model, CLEAN, [hook])[hook]
        assert torch.equal(_run_f(model, CORR, [(hook, _replace_pattern_head(clean_p, 0))]).mean(), base)
        with unchanged(model), pytest.raises(ValueError, match="hook_pattern"):
            mechattr.activation_patch(model, CLEAN, CORR, TARGET, site="pattern")
        return
    with unchanged(model):
        got = mechattr.activation_patch(model, CLEAN, CORR, TARGET, site="pattern")
    for layer, h in TWO_HEADS:
        hook = f"blocks.{layer}.attn.hook_pattern"
        clean_p = _cache(model, CLEAN, [hook])[hook]
        ref = _run_f(model, CORR, [(hook, _replace_pattern_head(clean_p, h))]).mean()
        assert (ref - base).abs() > 1e-6, f"hand-patching {hook} head {h} had no effect: the edit is ignored"
        close(got[layer, h], ref)


@arch_param
@matrix
def test_ablation_scan_heads_zero_matches_per_head_reference(loaded, unchanged, name, kind):
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.ablation_scan(model, CLEAN, TARGET, kind="heads", mode="zero")
    clean = _run_f(model, CLEAN).mean()
    for layer, h in TWO_HEADS:
        hook = f"blocks.{layer}.attn.hook_z"
        ref = _run_f(model, CLEAN, [(hook, _replace_head(None, h))]).mean() - clean
        close(got[layer, h], ref)


@arch_param
@matrix
def test_atp_matches_hand_reference(loaded, unchanged, name, kind):
    """AtP = Σ_{batch,pos,d_head} (z_corr − z_clean) · ∂(mean F)/∂z at the clean run."""
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.attribute_heads(model, CLEAN, TARGET, corrupted=CORR, method="atp")
    n_l = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_l)]
    z_corr = _cache(model, CORR, names)
    z_clean, probe = {}, {}

    def keep(act, hook):  # z + 0-leaf: d/d(leaf) is dF/dz with every downstream path kept
        z_clean[hook.name] = act.detach().clone()
        probe[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + probe[hook.name]

    with torch.enable_grad():
        out = model.run_with_hooks(CLEAN, fwd_hooks=[(n, keep) for n in names])
        grads = torch.autograd.grad(_f(out).mean(), [probe[n] for n in names])
    ref = torch.stack([((z_corr[n] - z_clean[n]) * g).sum((0, 1, 3)) for n, g in zip(names, grads)])
    close(got, ref)


# --------------------------------------------------------------------------- padding
@arch_param
@pytest.mark.parametrize("method", ["ig", "saliency", "input_x_gradient"])
def test_left_padded_batch_equals_unpadded_rows(loaded, unchanged, name, method):
    """Bridges: a left-padded batch gives finite scores equal, at the real positions, to each row alone."""
    model = _model(loaded, name, "bridge")
    short = CLEAN[1, 3:]
    tokens = CLEAN.clone()
    tokens[1, :3] = 2
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    kw = {"n_steps": 8} if method == "ig" else {}
    with unchanged(model):
        padded = mechattr.attribute_tokens(model, tokens, TARGET, method=method, attention_mask=mask, **kw).scores
    assert torch.isfinite(padded).all(), padded
    t1 = targets.logit_diff(CORRECT[1:], INCORRECT[1:], pos=-1)
    alone = mechattr.attribute_tokens(model, short[None], t1, method=method, **kw).scores
    close(padded[1, 3:], alone[0], rtol=1e-3)
    row0 = mechattr.attribute_tokens(model, CLEAN[:1], targets.logit_diff(CORRECT[:1], INCORRECT[:1]), method=method, **kw).scores
    close(padded[0], row0[0], rtol=1e-3)


# --------------------------------------------------------------------------- validation
@arch_param
@matrix
def test_validate_runs_end_to_end(loaded, unchanged, request, name, kind):
    model = _model(loaded, name, kind)
    with unchanged(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = mechattr.validate(
            model, CLEAN, TARGET, corrupted=CORR, methods=("saliency",), top_heads=1, top_links=1, max_head_controls=4,
            n_draws=2, curve_steps=2, curve_draws=1, ablation_modes=("zero",), sanity_methods=(), seed=0,
        )
    assert rep is not None
