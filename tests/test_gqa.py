"""Grouped- and multi-query attention outside the token engine: links, edge removal, k/v
patching, path patching to key/value receivers, and validate() end to end.

Models: a tiny HookedTransformer with 2 key/value heads (GQA) and with 1 (MQA), rotary and
RMSNorm (TransformerLens 3 only), and a tiny HF Llama with 2 key/value heads loaded as a
TransformerBridge (both majors). References use TransformerLens's convention written out
here: ``hook_k``/``hook_v`` hold ``n_kv`` heads and query head ``h`` reads key/value head
``h // (n_heads // n_kv)`` (``repeat_interleave``).
"""

from __future__ import annotations

import math

import pytest
import torch

from mechattr import targets
from mechattr.components import MLP, Head, parse_component
from mechattr.inputs import prepare_tokens
from mechattr.interventions import activation_patch, path_patch
from mechattr.runtime.tl import HAS_HOOKED
from mechattr.validation.claims import edge_effects, link_strength

N_LAYERS, N_HEADS, D_HEAD, VOCAB = 3, 4, 8, 40


def _hooked(n_kv: int):
    from mechattr.runtime.tl import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=N_HEADS * D_HEAD, n_ctx=16, d_head=D_HEAD, n_heads=N_HEADS, d_vocab=VOCAB,
        d_mlp=64, act_fn="silu", n_key_value_heads=n_kv, positional_embedding_type="rotary",
        normalization_type="RMS", initializer_range=0.15, seed=0,
    )
    return HookedTransformer(cfg).eval()


def _llama_dir(d):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=N_HEADS * D_HEAD, intermediate_size=64, num_hidden_layers=N_LAYERS,
                      num_attention_heads=N_HEADS, num_key_value_heads=2, max_position_embeddings=24,
                      initializer_range=0.15, bos_token_id=1, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w1", eos_token="w1", pad_token="w2", unk_token="w0").save_pretrained(d)
    return d


@pytest.fixture(scope="module", params=["ht_gqa", "ht_mqa", "bridge_gqa"])
def gqa_model(request, tmp_path_factory):
    if request.param.startswith("ht"):
        if not HAS_HOOKED:
            pytest.skip("HookedTransformer needs TransformerLens 3")
        return _hooked(2 if request.param == "ht_gqa" else 1)
    from mechattr import load_model

    return load_model(_llama_dir(tmp_path_factory.mktemp("tiny_llama_gqa")), device="cpu", bridge=True)


def _pair(seed=0, batch=3, n=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, n), generator=g), torch.randint(3, VOCAB, (batch, n), generator=g)


def _kv(model, layer, h):
    """TransformerLens's map, from the hook's shape: query head h reads kv head h // group."""
    _, cache = model.run_with_cache(torch.tensor([[3, 4]]), names_filter=lambda n: n == f"blocks.{layer}.attn.hook_k")
    n_kv = cache[f"blocks.{layer}.attn.hook_k"].shape[2]
    return h // (model.cfg.n_heads // n_kv)


def _target():
    return targets.logit_diff(torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))


# ----------------------------------------------------------------------------- links / edges
def test_gqa_model_groups_heads(gqa_model):
    assert _kv(gqa_model, 0, N_HEADS - 1) < N_HEADS - 1


def test_link_strength_matches_reference_under_gqa(gqa_model, unchanged):
    m = gqa_model
    tokens, _ = _pair()
    batch = prepare_tokens(m, tokens)
    q, s = torch.tensor([6, 5, 4]), torch.tensor([1, 3, 0])
    with unchanged(m):
        got = link_strength(m, batch, q, s)
    _, cache = m.run_with_cache(tokens)
    assert got.shape == (N_LAYERS, N_HEADS)
    for layer in range(N_LAYERS):
        pat, v = cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_v"]
        wo = m.blocks[layer].attn.W_O
        for h in range(N_HEADS):
            kv = _kv(m, layer, h)
            ref = torch.stack([pat[b, h, q[b], s[b]] * (v[b, s[b], kv] @ wo[h]).norm() for b in range(3)]).mean()
            assert got[layer, h].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("layer,head", [(1, 3), (2, 0), (0, 2)])
def test_edge_effects_match_per_edge_reference_under_gqa(gqa_model, layer, head, unchanged):
    m = gqa_model
    tokens, _ = _pair(1)
    batch = prepare_tokens(m, tokens)
    t = _target()
    q = torch.tensor([6, 6, 5])
    src = torch.tensor([[1, 2, 0], [4, 0, 3]])
    with unchanged(m):
        got = edge_effects(m, batch, t, layer, head, q, src)
    kv = _kv(m, layer, head)
    with torch.no_grad():
        _, cache = m.run_with_cache(tokens)
        clean = t(m(tokens)).mean()
        pat, v = cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_v"]
        for i in range(src.shape[0]):

            def cut(z, hook, i=i):
                z = z.clone()
                for b in range(3):
                    sb = src[i, b]
                    z[b, q[b], head] -= pat[b, head, q[b], sb] * v[b, sb, kv]
                return z

            ref = t(m.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", cut)])).mean() - clean
            assert got[i].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- activation patching
@pytest.mark.parametrize("site", ["head_k", "head_v"])
def test_activation_patch_kv_site_is_the_kv_head(gqa_model, site, unchanged):
    m = gqa_model
    clean, corrupted = _pair(2)
    t = _target()
    with unchanged(m):
        got = activation_patch(m, clean, corrupted, t, site=site)
    hook = "hook_k" if site == "head_k" else "hook_v"
    with torch.no_grad():
        _, cc = m.run_with_cache(clean)
        n_kv = cc[f"blocks.0.attn.{hook}"].shape[2]
        assert got.shape == (N_LAYERS, n_kv)
        for layer in range(N_LAYERS):
            for kv in range(n_kv):
                name = f"blocks.{layer}.attn.{hook}"

                def put(act, hook, name=name, kv=kv):
                    act = act.clone()
                    act[:, :, kv] = cc[name][:, :, kv]
                    return act

                ref = t(m.run_with_hooks(corrupted, fwd_hooks=[(name, put)])).mean()
                assert got[layer, kv].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- path patching
def _rope(x, cos_sin):
    """Rotate-half rotary embedding of ``x`` ``[b, pos, head, d]`` (GPT-NeoX / Llama)."""
    cos, sin = cos_sin
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[None, :, None] + rot * sin[None, :, None]


def _cos_sin(n_pos, d, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    f = torch.outer(torch.arange(n_pos).float(), inv)
    emb = torch.cat([f, f], -1)
    return emb.cos(), emb.sin()


def slow_path_patch_kv(model, clean, corrupted, target, sender, receivers, *, whole_kv_head=False):
    """Path patching of one sender by hand: run 2 with every head's z frozen (sender's from
    corrupted), caching the receivers' q/k/v; run 3 with each receiver head's z recomputed
    by hand from its own query, keys and values, where its patched input comes from run 2
    (keys through the rotary embedding), its siblings untouched. ``whole_kv_head``: the
    other definition (patch hook_k/v of the shared head for the whole group), for contrast."""
    sender = parse_component(sender)
    n_pos = clean.shape[1]
    cs = _cos_sin(n_pos, D_HEAD)
    kv_of = {h: _kv(model, 0, h) for h in range(N_HEADS)}
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, xc = model.run_with_cache(corrupted)
        for layer in range(N_LAYERS):  # the hand-written rotary reproduces the model's
            torch.testing.assert_close(_rope(cc[f"blocks.{layer}.attn.hook_k"], cs), cc[f"blocks.{layer}.attn.hook_rot_k"], rtol=1e-4, atol=1e-5)

        def freeze(name):
            def fn(act, hook):
                out = cc[name].clone()
                if isinstance(sender, Head) and name == sender.hook_name:
                    out[:, :, sender.head] = xc[name][:, :, sender.head]
                return out

            return fn

        hooks = [(f"blocks.{layer}.attn.hook_z", freeze(f"blocks.{layer}.attn.hook_z")) for layer in range(N_LAYERS)]
        if isinstance(sender, MLP):
            hooks.append((sender.hook_name, lambda act, hook: xc[sender.hook_name].clone()))
        run2: dict = {}
        grab = []
        for layer, _, w in receivers:
            name = f"blocks.{layer}.attn.hook_{w}"
            grab.append((name, lambda act, hook, name=name: run2.__setitem__(name, act.clone())))
        model.run_with_hooks(clean, fwd_hooks=hooks + grab)

        st: dict = {}
        hooks3 = []
        for layer in sorted({r[0] for r in receivers}):
            pre = f"blocks.{layer}.attn."
            mine = [r for r in receivers if r[0] == layer]

            def patch_q(act, hook, pre=pre, mine=mine):
                act = act.clone()
                for _, h, w in mine:
                    if w == "q":
                        act[:, :, h] = run2[pre + "hook_q"][:, :, h]
                return act

            def keep(key, pre=pre):
                return lambda act, hook: st.__setitem__(pre + key, act.clone())

            def patch_kv(w, pre=pre, mine=mine):
                def fn(act, hook):
                    act = act.clone()
                    for _, h, ww in mine:
                        if ww == w:
                            kv = kv_of[h]
                            act[:, :, kv] = run2[pre + "hook_" + w][:, :, kv]
                    return act

                return fn

            def z_by_hand(z, hook, pre=pre, mine=mine):
                z = z.clone()
                for h in sorted({r[1] for r in mine if r[2] != "q"}):
                    kv = kv_of[h]
                    ws = {r[2] for r in mine if r[1] == h}
                    k = _rope(run2[pre + "hook_k"], cs)[:, :, kv] if "k" in ws else st[pre + "hook_rot_k"][:, :, kv]
                    v = run2[pre + "hook_v"][:, :, kv] if "v" in ws else st[pre + "hook_v"][:, :, kv]
                    scores = torch.einsum("bqd,bkd->bqk", st[pre + "hook_rot_q"][:, :, h], k) / math.sqrt(D_HEAD)
                    scores = scores.masked_fill(torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1), float("-inf"))
                    z[:, :, h] = torch.einsum("bqk,bkd->bqd", scores.softmax(-1), v)
                return z

            hooks3 += [(pre + "hook_q", patch_q), (pre + "hook_rot_q", keep("hook_rot_q")), (pre + "hook_rot_k", keep("hook_rot_k")),
                       (pre + "hook_v", keep("hook_v"))]
            if whole_kv_head:
                hooks3 += [(pre + "hook_k", patch_kv("k")), (pre + "hook_v", patch_kv("v"))]
            else:
                hooks3.append((pre + "hook_z", z_by_hand))
        return target(model.run_with_hooks(clean, fwd_hooks=hooks3)).mean()


KV_CASES = [
    [(1, 3, "k")],
    [(1, 2, "v")],
    [(2, 1, "k"), (2, 0, "v"), (1, 3, "q")],
    [(2, 0, "k"), (2, 1, "k"), (2, 0, "v")],
    [(1, 1, "k"), (1, 1, "v"), (2, 3, "k"), (2, 2, "v")],
]


@pytest.mark.parametrize("receivers", KV_CASES)
def test_path_patch_kv_receivers_match_slow_reference(gqa_model, receivers, unchanged):
    m = gqa_model
    clean, corrupted = _pair(3)
    t = _target()
    senders = ["L0H1", "L0H2", "MLP0"]
    with unchanged(m):
        got = path_patch(m, clean, corrupted, t, senders, receivers)
        got_small = path_patch(m, clean, corrupted, t, senders, receivers, batch_size=3)
    ref = torch.stack([slow_path_patch_kv(m, clean, corrupted, t, s, receivers) for s in senders])
    torch.testing.assert_close(got, ref.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_small, got, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["k", "v"])
def test_path_patch_kv_receiver_leaves_siblings_clean(gqa_model, which, unchanged):
    """A k/v receiver is one query head's input: patching it is not patching the shared
    key/value head (which moves every sibling), and patching every sibling of the group is."""
    m = gqa_model
    clean, corrupted = _pair(4)
    t = _target()
    layer, h = 2, 1
    kv = _kv(m, layer, h)
    group = [g for g in range(N_HEADS) if _kv(m, layer, g) == kv]
    assert len(group) > 1
    with unchanged(m):
        one = path_patch(m, clean, corrupted, t, ["L0H0", "L1H3"], [(layer, h, which)])
        allg = path_patch(m, clean, corrupted, t, ["L0H0", "L1H3"], [(layer, g, which) for g in group])
    whole = torch.stack([slow_path_patch_kv(m, clean, corrupted, t, s, [(layer, g, which) for g in group], whole_kv_head=True)
                         for s in ["L0H0", "L1H3"]]).float()
    clean_t = t(m(clean)).mean()
    torch.testing.assert_close(allg, whole, rtol=1e-4, atol=1e-5)  # the whole group = the kv head
    assert ((one - whole).abs() > 1e-4 * (whole - clean_t).abs().max()).all()  # one head is not the group


def test_path_patch_bad_receiver_under_gqa(gqa_model):
    clean, corrupted = _pair()
    with pytest.raises(ValueError, match="out of range"):
        path_patch(gqa_model, clean, corrupted, _target(), ["L0H0"], [(1, N_HEADS, "k")])
    with pytest.raises(ValueError, match="one of"):
        path_patch(gqa_model, clean, corrupted, _target(), ["L0H0"], [(1, 0, "kv")])


# ----------------------------------------------------------------------------- validate
def test_validate_runs_under_gqa(gqa_model, unchanged):
    from mechattr import validate

    m = gqa_model
    tokens, corrupted = _pair(5, batch=3, n=8)
    with unchanged(m):
        rep = validate(m, tokens, targets.logit(torch.tensor([3, 4, 5])), corrupted=corrupted, methods=("saliency",),
                       n_draws=4, curve_steps=3, curve_draws=2, top_links=2, ablation_modes=("zero",))
    assert rep.skipped == []
    for key in ("atp", "path_patch", "links"):
        grid = torch.as_tensor(rep.heads[key])
        assert grid.shape == (N_LAYERS, N_HEADS) and torch.isfinite(grid).all(), key
    kinds = {c.kind for c in rep.claims}
    assert "link" in kinds and "head" in kinds
    for c in rep.claims:
        for test in c.tests:
            assert math.isfinite(test.effect) and all(math.isfinite(x) for x in test.controls)


def test_path_patch_kv_receivers_right_padded_batch_equals_rows_alone(gqa_model):
    """Padding: a right-padded batch gives the mean of each example's own path patching."""
    m = gqa_model
    clean, corrupted = _pair(6, batch=2, n=7)
    lengths = [7, 5]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    clean, corrupted = clean.masked_fill(mask == 0, 2), corrupted.masked_fill(mask == 0, 2)
    ans, wrong = torch.tensor([3, 4]), torch.tensor([6, 7])
    recv = [(1, 3, "k"), (2, 0, "v"), (2, 1, "k")]
    senders = ["L0H1", "MLP0"]
    got = path_patch(m, clean, corrupted, targets.logit_diff(ans, wrong), senders, recv, attention_mask=mask)
    alone = torch.stack([
        path_patch(m, clean[b : b + 1, :n], corrupted[b : b + 1, :n], targets.logit_diff(ans[b : b + 1], wrong[b : b + 1]), senders, recv)
        for b, n in enumerate(lengths)
    ]).mean(0)
    torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)
