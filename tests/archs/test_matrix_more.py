"""More of the architecture matrix: path patching, mean ablation, residual and attention
attribution, DLA, rollout and comprehensiveness on every architecture, as a HookedTransformer
(TransformerLens 3, where it can build one) and as a TransformerBridge, each against a slow
reference written here with raw ``run_with_hooks`` / autograd (no mechattr code in the
references)."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr import MLP, Head
from mechattr.faithfulness import comprehensiveness
from mechattr.runtime.arch import arch
from mechattr.runtime.attention import pattern_hooks_live

from .conftest import ARCHS, GQA
from .test_matrix import CLEAN, CORR, CORRECT, KINDS, TARGET, _f, _model, _run_f, close

matrix = pytest.mark.parametrize("kind", KINDS)
arch_param = pytest.mark.parametrize("name", ARCHS)


def _probe_grads(model, tokens, names, f=lambda out: _f(out).mean(), extra=()):
    """(activation, ∂f/∂activation) at each hook in ``names``: a zero leaf is added at the
    hook (every downstream path kept). ``f`` maps logits to a scalar."""
    acts, probe = {}, {}

    def keep(name):
        def fn(act, hook):
            acts[name] = act.detach().clone()
            probe[name] = torch.zeros_like(act, requires_grad=True)
            return act + probe[name]

        return fn

    with torch.enable_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in names] + list(extra))
        grads = torch.autograd.grad(f(out), [probe[n] for n in names])
    return acts, dict(zip(names, grads))


def _cache_by_name(model, tokens, names):
    """``_cache`` keyed by the requested hook name (a bridge's ``hook.name`` may be an alias)."""
    out = {}

    def keep(name):
        def fn(act, hook):
            out[name] = act.detach().clone()

        return fn

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in names])
    return out


def _z_names(model):
    return [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]


def _frozen_sender_hooks(model, sender):
    """Run-2 hooks of textbook path patching: every head's z frozen to its clean value, the
    sender's (head z or MLP output) from the corrupted run."""
    names = _z_names(model)
    cc = _cache_by_name(model, CLEAN, names)
    xc = _cache_by_name(model, CORR, names + ([f"blocks.{sender.layer}.hook_mlp_out"] if isinstance(sender, MLP) else []))

    def freeze(layer):
        def fn(act, hook):
            out = cc[names[layer]].clone()
            if isinstance(sender, Head) and sender.layer == layer:
                out[:, :, sender.head] = xc[names[layer]][:, :, sender.head]
            return out.to(act.dtype)

        return fn

    hooks = [(names[layer], freeze(layer)) for layer in range(len(names))]
    if isinstance(sender, MLP):
        mlp = f"blocks.{sender.layer}.hook_mlp_out"
        hooks.append((mlp, lambda act, hook: xc[mlp].clone().to(act.dtype)))
    return hooks


SENDERS = [Head(0, 1), MLP(0)]


# --------------------------------------------------------------------------- path patching
@arch_param
@matrix
def test_path_patch_to_logits_matches_textbook_reference(loaded, unchanged, name, kind):
    """Receivers "logits": batch-mean F of the clean run with every head's z frozen to clean
    except the sender's (head z or MLP output from the corrupted run); MLPs recompute."""
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.path_patch(model, CLEAN, CORR, TARGET, SENDERS, "logits")
    ref = torch.stack([_run_f(model, CLEAN, _frozen_sender_hooks(model, s)).mean() for s in SENDERS])
    assert (ref - _run_f(model, CLEAN).mean()).abs().max() > 1e-6, "the senders have no effect: the check is vacuous"
    close(got, ref)


@arch_param
@matrix
@pytest.mark.parametrize("w", ["q", "k", "v"])
def test_path_patch_to_receiver_input_matches_textbook_reference(loaded, unchanged, name, kind, w):
    """Receiver ``(L, h, w)`` (L the last layer, w = q|k|v): run 2 as for logits, caching
    ``blocks.L.hook_resid_pre``; run 3 is the clean run with head h's ``hook_w`` replaced by
    ``ln1(resid₂) @ W_w[h] + b_w[h]``; the batch-mean F of run 3. Parallel attention/MLP
    blocks (GPT-J, Pythia, Phi) feed attention ``ln1(resid_pre)`` too, so the form applies
    there; checked per model: where the clean ``hook_w`` is not that projection, skip.

    Grouped-query k/v (``hook_k``/``hook_v`` hold ``n_kv_heads`` heads): one query head's own
    k/v input is not a slice of the hook, so the receivers are *every* query head of h's
    group (``h // group``, HF's ``repeat_kv``), which together equal replacing the whole kv
    head — that slice is what the reference replaces."""
    model = _model(loaded, name, kind)
    L, h = model.cfg.n_layers - 1, 2
    blk = model.blocks[L]
    resid, site = f"blocks.{L}.hook_resid_pre", f"blocks.{L}.attn.hook_{w}"
    base = _cache_by_name(model, CLEAN, [resid, site])
    n_at = base[site].shape[2]
    group = model.cfg.n_heads // n_at
    idx = h // group  # == h unless grouped k/v
    receivers = [(L, g, w) for g in range(idx * group, (idx + 1) * group)]
    assert (n_at != model.cfg.n_heads) == (w != "q" and name in GQA)

    def project(r):
        W, b = getattr(blk.attn, f"W_{w.upper()}"), getattr(blk.attn, f"b_{w.upper()}")  # b: None without bias
        i = h if W.shape[0] == model.cfg.n_heads else idx  # bridges keep k/v weights per kv head
        return blk.ln1(r) @ W[i] + (0.0 if b is None else b[i])

    with torch.no_grad():
        same = torch.allclose(project(base[resid]).float(), base[site][:, :, idx].float(), atol=1e-5, rtol=1e-4)
    if not same:
        pytest.skip(f"{name}/{kind}: hook_{w} is not ln1(resid_pre) @ W_{w.upper()} + b_{w.upper()} here (e.g. a q/k-norm or a fused projection), so the textbook run 3 does not apply")
    with unchanged(model):
        got = mechattr.path_patch(model, CLEAN, CORR, TARGET, SENDERS, receivers)
    refs = []
    for s in SENDERS:
        store = {}
        hooks = _frozen_sender_hooks(model, s) + [(resid, lambda act, hook, store=store: store.__setitem__("r", act.detach().clone()))]
        with torch.no_grad():
            model.run_with_hooks(CLEAN, fwd_hooks=hooks)

            def patch(act, hook, store=store):
                act = act.clone()
                act[:, :, idx] = project(store["r"]).to(act.dtype)
                return act

            refs.append(_run_f(model, CLEAN, [(site, patch)]).mean())
    ref = torch.stack(refs)
    assert (ref - _run_f(model, CLEAN).mean()).abs().max() > 1e-7, f"the senders have no effect through {w}: the check is vacuous"
    close(got, ref)


# --------------------------------------------------------------------------- ablation
@arch_param
@matrix
def test_run_ablated_mean_matches_batch_mean_hook(loaded, unchanged, name, kind):
    """``mode="mean"``: head (0, 1)'s z is its mean over the batch at each position."""
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.run_ablated(model, CLEAN, [Head(0, 1)], mode="mean")
    hook = "blocks.0.attn.hook_z"
    mean_z = _cache_by_name(model, CLEAN, [hook])[hook][:, :, 1].mean(0, keepdim=True)

    def fn(act, hook):
        act = act.clone()
        act[:, :, 1] = mean_z.expand_as(act[:, :, 1]).to(act.dtype)
        return act

    with torch.no_grad():
        ref = model.run_with_hooks(CLEAN, fwd_hooks=[(hook, fn)]).float()
        assert (ref - model(CLEAN).float()).abs().max() > 1e-6, "mean ablation had no effect: the check is vacuous"
    close(got, ref)


# --------------------------------------------------------------------------- residual attribution
@arch_param
@matrix
def test_attribute_resid_grad_x_act_matches_autograd(loaded, unchanged, name, kind):
    """Row l < n_layers: Σ_{batch, d_model} x · ∂F̄/∂x at ``blocks.l.hook_resid_pre``; last
    row the same at the final ``hook_resid_post``; F̄ the batch-mean target."""
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.attribute_resid(model, CLEAN, TARGET, method="grad_x_act")
    n_l = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_l)] + [f"blocks.{n_l - 1}.hook_resid_post"]
    acts, grads = _probe_grads(model, CLEAN, names)
    ref = torch.stack([(acts[n].float() * grads[n].float()).sum((0, 2)) for n in names])
    close(got, ref)


# --------------------------------------------------------------------------- DLA
@arch_param
@matrix
def test_attribute_heads_dla_is_linearised_direct_effect(loaded, unchanged, name, kind):
    """DLA of head h (layer l) = Σ_{batch, pos} (z_h @ W_O[h]) · ∂F̄/∂r with ``r`` the final
    residual ``blocks.{L-1}.hook_resid_post`` and the final norm's scale frozen at its clean
    value (``ln_final.hook_scale`` detached): the head's write, centred (LayerNorm) and divided
    by the cached scale, through the rest of the readout, as TransformerLens's
    ``apply_ln_to_stack`` + ``logit_attrs`` for a logit target."""
    model = _model(loaded, name, kind)
    if arch(model).logit_soft_cap is not None:
        pytest.skip("final logit soft-capping: the logit is not linear in the normalised residual, DLA is only a local linearisation of tanh")
    with unchanged(model):
        got = mechattr.attribute_heads(model, CLEAN, TARGET, method="dla")
    n_l = model.cfg.n_layers
    final = f"blocks.{n_l - 1}.hook_resid_post"
    frozen = [("ln_final.hook_scale", lambda act, hook: act.detach())]
    _, grads = _probe_grads(model, CLEAN, [final], extra=frozen)
    g = grads[final].float()
    z = _cache_by_name(model, CLEAN, _z_names(model))
    ref = torch.zeros(n_l, model.cfg.n_heads)
    for layer, zn in enumerate(_z_names(model)):
        W_O = model.blocks[layer].attn.W_O.detach().float()  # [head, d_head, d_model]
        for h in range(model.cfg.n_heads):
            ref[layer, h] = ((z[zn][:, :, h].float() @ W_O[h]) * g).sum()
    assert ref.abs().max() > 1e-6
    close(got, ref)


# --------------------------------------------------------------------------- rollout
@arch_param
@matrix
def test_attention_rollout_matches_definition(loaded, unchanged, name, kind):
    """R = Â_{L-1} ⋯ Â_0, Â_l = rows-renormalised 0.5·mean_h(A_l) + 0.5·I (Abnar & Zuidema 2020)."""
    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.attention_rollout(model, CLEAN)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    pats = _cache_by_name(model, CLEAN, names)
    n = CLEAN.shape[1]
    R = torch.eye(n).expand(CLEAN.shape[0], n, n)
    for nm in names:
        a = 0.5 * pats[nm].float().mean(1) + 0.5 * torch.eye(n)
        a = a / a.sum(-1, keepdim=True)
        R = a @ R
    close(got, R)


# --------------------------------------------------------------------------- faithfulness
@arch_param
@matrix
def test_comprehensiveness_matches_zeroed_embeddings(loaded, unchanged, name, kind):
    """comp = p(correct | x) − p(correct | x with the top ceil(0.2·8) = 2 scored tokens' hook_embed
    set to 0) at the last position (no BOS among the tokens: every position is removable)."""
    model = _model(loaded, name, kind)
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(CLEAN.shape, generator=g)
    with unchanged(model):
        got = comprehensiveness(model, CLEAN, TARGET, scores)
    k = 2
    top = scores.argsort(-1, descending=True)[:, :k]
    drop = torch.zeros(CLEAN.shape, dtype=torch.bool)
    drop[torch.arange(CLEAN.shape[0])[:, None], top] = True

    def zero(act, hook):
        return act.masked_fill(drop[:, :, None].to(act.device), 0.0)

    rows = torch.arange(CLEAN.shape[0])

    def p(logits):
        return logits[:, -1].float().softmax(-1)[rows, CORRECT]

    with torch.no_grad():
        ref = p(model(CLEAN)) - p(model.run_with_hooks(CLEAN, fwd_hooks=[("hook_embed", zero)]))
    assert ref.abs().max() > 1e-7
    close(got, ref)


# --------------------------------------------------------------------------- attention attribution
@arch_param
@matrix
def test_attribute_attention_grad_x_attn_matches_autograd(loaded, unchanged, name, kind):
    """``[batch, layer, head, q, k]`` = A ⊙ ∂F_b/∂A at ``hook_pattern`` (each example's own
    target); refused with a ValueError naming hook_pattern where edits there are lost."""
    model = _model(loaded, name, kind)
    if not pattern_hooks_live(model):
        with unchanged(model), pytest.raises(ValueError, match="hook_pattern"):
            mechattr.attribute_attention(model, CLEAN, TARGET, method="grad_x_attn")
        return
    with unchanged(model):
        got = mechattr.attribute_attention(model, CLEAN, TARGET, method="grad_x_attn")
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    acts, grads = _probe_grads(model, CLEAN, names, f=lambda out: _f(out).sum())
    ref = torch.stack([acts[n].float() * grads[n].float() for n in names], 1)
    assert ref.abs().max() > 1e-7
    close(got, ref)



# --------------------------------------------------------------------------- beyond the brief's list
@arch_param
@matrix
@pytest.mark.parametrize("unit", ["mlps", "neurons"])
def test_attribute_mlps_and_neurons_grad_x_act_match_autograd(loaded, unchanged, name, kind, unit):
    """MLPs: Σ_{batch, pos, d_model} a · ∂F̄/∂a at ``blocks.l.hook_mlp_out``; neurons: Σ_{batch,
    pos} a · ∂F̄/∂a at ``blocks.l.mlp.hook_post``, one score per neuron."""
    model = _model(loaded, name, kind)
    hook = "hook_mlp_out" if unit == "mlps" else "mlp.hook_post"
    names = [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers)]
    with unchanged(model):
        fn = mechattr.attribute_mlps if unit == "mlps" else mechattr.attribute_neurons
        got = fn(model, CLEAN, TARGET, method="grad_x_act")
    acts, grads = _probe_grads(model, CLEAN, names)
    dims = (0, 1, 2) if unit == "mlps" else (0, 1)
    ref = torch.stack([(acts[n].float() * grads[n].float()).sum(dims) for n in names])
    assert ref.abs().max() > 1e-7
    close(got, ref)


@arch_param
@matrix
def test_attention_flow_matches_networkx_max_flow_written_here(loaded, unchanged, name, kind):
    """flow[b, k] = max-flow from (0, k) to (L, last) in the layered graph with edges
    (l, k) → (l+1, q) of capacity Â_l[q, k] (Â as in rollout), solved with networkx here."""
    import networkx as nx

    model = _model(loaded, name, kind)
    with unchanged(model):
        got = mechattr.attention_flow(model, CLEAN)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    pats = _cache_by_name(model, CLEAN, names)
    B, n, L = CLEAN.shape[0], CLEAN.shape[1], len(names)
    ref = torch.zeros(B, n)
    for b in range(B):
        G = nx.DiGraph()
        for layer, nm in enumerate(names):
            a = 0.5 * pats[nm][b].double().mean(0) + 0.5 * torch.eye(n, dtype=torch.float64)
            a = a / a.sum(-1, keepdim=True)
            for q in range(n):
                for k in range(q + 1):
                    G.add_edge((layer, k), (layer + 1, q), capacity=float(a[q, k]))
        for k in range(n):
            ref[b, k] = nx.maximum_flow_value(G, (0, k), (L, n - 1))
    close(got, ref, rtol=1e-4)


@arch_param
@matrix
def test_sufficiency_matches_keeping_only_the_top_tokens(loaded, unchanged, name, kind):
    """suff = p(correct | x) − p(correct | x with every token but the top ceil(0.2·8) = 2 scored
    ones at a zero hook_embed), at the last position."""
    from mechattr.faithfulness import sufficiency

    model = _model(loaded, name, kind)
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(CLEAN.shape, generator=g)
    with unchanged(model):
        got = sufficiency(model, CLEAN, TARGET, scores)
    top = scores.argsort(-1, descending=True)[:, :2]
    keep = torch.zeros(CLEAN.shape, dtype=torch.bool)
    keep[torch.arange(CLEAN.shape[0])[:, None], top] = True

    def zero(act, hook):
        return act.masked_fill(~keep[:, :, None].to(act.device), 0.0)

    rows = torch.arange(CLEAN.shape[0])

    def p(logits):
        return logits[:, -1].float().softmax(-1)[rows, CORRECT]

    with torch.no_grad():
        ref = p(model(CLEAN)) - p(model.run_with_hooks(CLEAN, fwd_hooks=[("hook_embed", zero)]))
    assert ref.abs().max() > 1e-7
    close(got, ref)
