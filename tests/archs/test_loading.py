"""load_model: independent of the directory's name, fills config gaps, falls back to the bridge."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from mechattr.runtime.loading import LoadError, load_model
from mechattr.runtime.tl import HAS_HOOKED, is_bridge, is_hooked

from .conftest import VOCAB


def _hf_logprobs(path, tokens):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        return hf(tokens).logits.log_softmax(-1)


TOKS = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bridge", [False, True])
def test_directory_name_plays_no_part(arch_dir, bridge):
    """A GPT-2 saved under a path containing "llama" and "gemma" loads as that GPT-2."""
    d = arch_dir("gpt2_misleading_path")
    assert "llama" in str(d) and "gemma" in str(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback: it is a plain GPT-2
        model = load_model(d, device="cpu", bridge=bridge)
    assert is_bridge(model) if (bridge or not HAS_HOOKED) else is_hooked(model)
    with torch.no_grad():
        out = model(TOKS).log_softmax(-1)
    torch.testing.assert_close(out, _hf_logprobs(d, TOKS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bridge", [False, True])
def test_missing_n_ctx_is_taken_from_n_positions(arch_dir, bridge):
    d = arch_dir("gpt2_no_n_ctx")
    assert "n_ctx" not in json.loads((d / "config.json").read_text())
    model = load_model(d, device="cpu", bridge=bridge)
    assert model.cfg.n_ctx == json.loads((d / "config.json").read_text())["n_positions"]
    with torch.no_grad():
        out = model(TOKS).log_softmax(-1)
    torch.testing.assert_close(out, _hf_logprobs(d, TOKS), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_HOOKED, reason="TransformerLens 4 always returns the bridge")
def test_falls_back_to_bridge_with_a_warning_where_tl_cannot_build_hooked(arch_dir):
    """TransformerLens 3 builds Gemma configs from hard-coded official names only."""
    with pytest.warns(UserWarning, match="cannot build a HookedTransformer.*TransformerBridge"):
        model = load_model(arch_dir("gemma"), device="cpu")
    assert is_bridge(model)


def test_both_failing_raises_one_error_naming_both(arch_dir, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(arch_dir("gpt2"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    cfg["model_type"] = "no_such_model"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((LoadError, ValueError, KeyError)) as err:
        load_model(d, device="cpu")
    if HAS_HOOKED:
        assert isinstance(err.value, LoadError)
        assert "HookedTransformer" in str(err.value) and "TransformerBridge" in str(err.value)


def test_loading_leaves_the_directory_untouched(arch_dir):
    d = arch_dir("gpt2_no_n_ctx")
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    load_model(d, device="cpu")
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
