"""IG says when it is not to be trusted: a convergence delta on every path method, a
warning (and a record in the result) when |δ| exceeds 5 % of the gap, and a default
baseline that is well-posed for the model's positional scheme and norm."""

from __future__ import annotations

import warnings

import pytest
import torch

import mechattr
from mechattr import targets
from mechattr.convergence import CONVERGENCE_RTOL, ConvergenceWarning, convergence_report
from mechattr.runtime.arch import arch
from mechattr.runtime.embedding import vocab_embeddings

TOKS = torch.tensor([[1, 5, 9, 12, 7, 3, 5, 9], [1, 7, 4, 18, 6, 3, 11, 2]])
TGT = targets.logit_diff(torch.tensor([3, 4]), torch.tensor([5, 6]))


def test_report_judges_delta_against_the_gap():
    assert convergence_report(torch.tensor([0.01]), torch.tensor([1.0]), "x")["ok"]
    with pytest.warns(ConvergenceWarning, match="not converged"):
        r = convergence_report(torch.tensor([0.2, 0.0]), torch.tensor([1.0, 1.0]), "x")
    assert not r["ok"] and r["max_rel_delta"] == pytest.approx(0.2)


@pytest.mark.parametrize("n_steps", [1, 64])
def test_token_ig_records_completeness_consistent_with_delta(model, n_steps):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = mechattr.attribute_tokens(model, TOKS, TGT, method="ig", n_steps=n_steps)
    c = res.settings["completeness"]
    gap = (res.f_input - res.f_baseline).abs()
    expect = bool((res.convergence_delta.abs() <= CONVERGENCE_RTOL * gap + c["atol"]).all())
    assert c["ok"] == expect
    assert any(issubclass(x.category, ConvergenceWarning) for x in w) == (not expect)


def test_attention_ig_delta_matches_reference(attn_model):
    m = attn_model
    attr, delta = mechattr.attribute_attention(m, TOKS, TGT, method="ig", n_steps=32, return_delta=True)
    assert delta.shape == (TOKS.shape[0], m.cfg.n_layers)
    with torch.no_grad():
        full = TGT(m(TOKS))
        for layer in range(m.cfg.n_layers):
            zero = TGT(m.run_with_hooks(TOKS, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", lambda a, hook: torch.zeros_like(a))]))
            ref = attr[:, layer].flatten(1).sum(-1) - (full - zero)
            torch.testing.assert_close(delta[:, layer], ref, atol=1e-4, rtol=1e-4)
    plain = mechattr.attribute_attention(m, TOKS, TGT, method="grad_x_attn", return_delta=True)
    assert plain[1] is None


def test_resid_ig_records_completeness(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = mechattr.attribute_resid(model, TOKS, TGT, method="ig", n_steps=2, return_result=True)
    c = res.meta["completeness"] if hasattr(res, "meta") else res.settings["completeness"]
    assert set(c) >= {"ok", "max_abs_delta", "max_rel_delta"}
    assert c["max_abs_delta"] == pytest.approx(float(res.convergence_delta.abs().max()), rel=1e-5, abs=1e-7)


def test_default_baseline_follows_the_positional_scheme(model):
    assert arch(model).positional == "standard"
    res = mechattr.attribute_tokens(model, TOKS[:1], TGT.take(torch.tensor([0])), method="ig", n_steps=8)
    assert res.settings["baseline"] == "zero"


def test_default_baseline_on_rotary_model_is_the_mean_embedding(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=1, pad_token_id=2)).save_pretrained(tmp_path)
    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w1", eos_token="w1", pad_token="w2", unk_token="w0").save_pretrained(tmp_path)
    m = mechattr.load_model(tmp_path, device="cpu", bridge=True)
    assert arch(m).positional == "rotary" and arch(m).default_token_baseline == "mean"
    t = TOKS[:1, :6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = mechattr.attribute_tokens(m, t, TGT.take(torch.tensor([0])), method="ig", n_steps=16)
    assert res.settings["baseline"] == "mean"
    # F(baseline) is the target with every real token's hook_embed at the mean token embedding
    mu = vocab_embeddings(m).mean(0)

    def put(act, hook):
        act = act.clone()
        act[:, 1:] = mu  # BOS is excluded by default and keeps its embedding
        return act

    with torch.no_grad():
        ref = TGT.take(torch.tensor([0]))(m.run_with_hooks(t, fwd_hooks=[("hook_embed", put)]))
    torch.testing.assert_close(res.f_baseline, ref.float(), atol=1e-4, rtol=1e-4)
