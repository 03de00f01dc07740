"""Token-id baselines and pad/mask removal live in the space attribution happens in: a token's
``hook_embed`` value on this model, whatever the embedding does (scale, LayerNorm)."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr import targets
from mechattr.runtime.embedding import embed_tokens, vocab_embeddings


def _hook_embed(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "hook_embed")
    return cache["hook_embed"]


def test_embed_tokens_equals_hook_embed_of_a_real_forward(model, unchanged):
    toks = torch.tensor([[1, 5, 9, 12, 7, 3]])
    with unchanged(model):
        got = embed_tokens(model, toks)
    torch.testing.assert_close(got, _hook_embed(model, toks))
    assert vocab_embeddings(model).shape == (model.cfg.d_vocab, model.cfg.d_model)


def test_embed_tokens_rejects_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        embed_tokens(model, torch.tensor([model.cfg.d_vocab]))


@pytest.fixture(scope="module")
def scaled_embedding_bridge(tmp_path_factory):
    """A tiny Gemma (embeddings × √d_model inside the HF module) as a bridge: its
    ``hook_embed`` value of a token is not the ``W_E`` row."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_gemma")
    torch.manual_seed(0)
    cfg = GemmaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=8, max_position_embeddings=32, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    GemmaForCausalLM(cfg).eval().save_pretrained(d)
    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w1", eos_token="w1", pad_token="w2", unk_token="w0").save_pretrained(d)
    return mechattr.load_model(d, device="cpu", bridge=True)


def test_token_baseline_is_the_hook_embed_value_on_a_scaled_embedding(scaled_embedding_bridge):
    m = scaled_embedding_bridge
    toks = torch.tensor([[1, 5, 9, 12, 7, 3]])
    tgt = targets.logit(4)
    # occlusion with a token baseline == F(x) - F(x with that position's hook_embed replaced by
    # the baseline token's hook_embed taken from a real forward of that token)
    occ = mechattr.attribute_tokens(m, toks, tgt, method="occlusion", baseline=6).scores
    base_vec = _hook_embed(m, torch.tensor([[6, 6, 6, 6, 6, 6]]))[0, 0]
    f = lambda logits: tgt(logits)  # noqa: E731
    with torch.no_grad():
        full = f(m(toks))
        for p in range(1, toks.shape[1]):
            def put(act, hook, p=p):
                act = act.clone()
                act[:, p] = base_vec
                return act
            ref = full - f(m.run_with_hooks(toks, fwd_hooks=[("hook_embed", put)]))
            torch.testing.assert_close(occ[0, p], ref[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base_vec, m.W_E[6].to(base_vec.dtype), atol=1e-3)  # W_E row is not the baseline
