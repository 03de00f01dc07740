"""The model guard, loading (offline), and HookedTransformer/TransformerBridge agreement."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import hooked_side, requires_hooked, snapshot

from mechattr import ModelNotFoundError, load_model, model_guard, targets
from mechattr.model import check_model, tl_flags
from mechattr.runtime.tl import is_hooked


def test_guard_restores_after_success(model, tokens, unchanged):
    model.train()
    model.cfg.use_attn_result = False
    p = next(model.parameters())
    p.grad = torch.ones_like(p)  # a user's pre-existing grad must survive bit-identical
    with unchanged(model):
        with model_guard(model):
            assert not model.training
            assert not any(q.requires_grad for q in model.parameters())
            model.blocks[0].attn.hook_z.add_hook(lambda x, hook: x * 2)
            if is_hooked(model):  # HookedTransformer-only flags and start_at_layer
                model.set_use_split_qkv_input(True)
                model.set_use_attn_result(True)
                emb = model.embed(tokens).detach().requires_grad_(True)
                out = model(emb, start_at_layer=0).sum()
            else:
                model.hook_embed.add_hook(lambda x, hook: x.detach().requires_grad_(True))
                out = model(tokens).sum()
            out.backward()
    assert model.training


def test_guard_restores_after_exception_in_hook(model, tokens, unchanged):
    def bad_hook(x, hook):
        raise RuntimeError("boom")

    with unchanged(model):
        with pytest.raises(RuntimeError, match="boom"):
            with model_guard(model):
                model.set_use_hook_mlp_in(True)
                model.blocks[1].hook_resid_pre.add_hook(bad_hook)
                model.blocks[0].attn.hook_pattern.add_hook(lambda x, hook: x, dir="bwd")
                model(tokens)


def test_guard_keeps_user_hooks(model, tokens):
    calls = []
    model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: calls.append(1))
    before = snapshot(model)["hooks"]
    with model_guard(model):
        model.blocks[0].hook_resid_post.add_hook(lambda x, hook: x)
    assert snapshot(model)["hooks"] == before
    model(tokens)
    assert calls == [1]
    model.reset_hooks()


def test_guard_nested(model, tokens, unchanged):
    with unchanged(model):
        with model_guard(model):
            model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: x)
            with model_guard(model):
                model.blocks[1].hook_resid_pre.add_hook(lambda x, hook: x)
            # the inner guard removed only its own hook
            assert sum(len(m._forward_hooks) for m in model.modules()) == 1


@requires_hooked  # the native bridge's attention has no per-head result hook
def test_tl_flags_restores(model):
    with tl_flags(model, use_attn_result=True):
        assert model.cfg.use_attn_result
    assert not model.cfg.use_attn_result


def test_tl_flags_rejects_unknown(model):
    with pytest.raises(ValueError, match="unknown TransformerLens flag"):
        with tl_flags(model, use_magic=True):
            pass


def test_load_model_missing_is_fast_and_clear(tmp_path):
    t = time.time()
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        load_model("definitely-not-a-model/xyz-123", device="cpu")
    assert time.time() - t < 10
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(tmp_path, device="cpu", dtype="float13")


def test_check_model_rejects_other_modules():
    with pytest.raises(TypeError, match="HookedTransformer"):
        check_model(torch.nn.Linear(2, 2))


def test_load_model_local_dir_matches_hf(tiny_hf_dir, hf_model):
    """The model we load (HookedTransformer on TL 3, TransformerBridge on TL 4) equals the raw
    HF model up to the softmax-invariant centring."""
    from transformers import AutoModelForCausalLM

    ht = hf_model
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_hf_dir), local_files_only=True).eval()
    toks = torch.tensor([[1, 5, 6, 7, 8, 9, 5, 6]])
    with torch.no_grad():
        a = ht(toks).log_softmax(-1)
        b = hf(toks).logits.log_softmax(-1)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert ht.to_str_tokens(toks[0])[:3] == ["w1", "w5", "w6"]


def test_hooked_and_bridge_give_same_targets(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    toks = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 9, 8, 7, 6, 5]])
    for t in (targets.logit(torch.tensor([3, 4])), targets.logprob(7), targets.logit_diff(3, 4), targets.prob(5, pos=2)):
        with torch.no_grad():
            a = targets.run_target(ht, toks, t)
            b = targets.run_target(br, toks, t)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bridge_guard_restores(hf_pair, unchanged):
    _, br = hf_pair
    toks = torch.tensor([[1, 5, 6, 7]])
    with unchanged(br):
        with pytest.raises(RuntimeError, match="boom"):
            with model_guard(br):
                br.blocks[0].hook_resid_pre.add_hook(lambda x, hook: (_ for _ in ()).throw(RuntimeError("boom")))
                br(toks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_model_cuda_default(tiny_hf_dir):
    m = load_model(tiny_hf_dir)
    assert next(m.parameters()).device.type == "cuda"


def test_load_model_organism_matches_organisms_load_and_dtype():
    from mechattr import organisms

    a = load_model("organism:induction", device="cpu")
    b = organisms.load("induction", device="cpu")
    toks = organisms.task("induction").sample(4, seed=0).tokens
    with torch.no_grad():
        torch.testing.assert_close(a(toks), b(toks))
    assert next(load_model("organism:induction", device="cpu", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    from mechattr.runtime.tl import TL_MAJOR

    if TL_MAJOR < 4:  # the TL-checkpoint converter the bridge needs arrived in TransformerLens 4
        with pytest.raises(RuntimeError, match="transformer-lens>=4"):
            load_model("organism:induction", bridge=True)
    else:
        br = load_model("organism:induction", device="cpu", bridge=True)
        with torch.no_grad():  # same shipped weights, no processing: the same logits
            torch.testing.assert_close(br(toks), b(toks), atol=1e-5, rtol=1e-5)


def test_guard_keeps_transformer_lens_own_lazily_wired_bridge_hooks(tiny_hf_dir):
    """A bridge wires TransformerLens's own capture hooks on its first forward and never
    re-adds them; a guard around that first forward must not strip them."""
    from mechattr.model import model_guard
    from mechattr.runtime.hooks import library_hook_ids

    br = load_model(tiny_hf_dir, device="cpu", bridge=True)
    with model_guard(br):
        br(torch.tensor([[1, 5, 9, 3]]))
    owned = library_hook_ids(br)
    present = {k for m in br.modules() for d in (m._forward_pre_hooks, m._forward_hooks) for k in d}
    assert owned and owned <= present
