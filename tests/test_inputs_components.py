"""Input validation and component ids."""

from __future__ import annotations

import pytest
import torch

from mechattr import MLP, Head, parse_component, parse_components, prepare_tokens
from mechattr.components import all_heads, check_layer, hook_name
from mechattr.inputs import prepare_pair


def test_prepare_tokens_valid(model, tokens):
    b = prepare_tokens(model, tokens)
    assert b.tokens.dtype == torch.long and b.attention_mask is None
    assert prepare_tokens(model, tokens[0]).tokens.shape == (1, 8)
    mask = torch.ones_like(tokens)
    mask[0, :2] = 0
    assert prepare_tokens(model, tokens, mask).attention_mask is not None


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(2, 3), "integer token ids"),
        (torch.zeros(2, 3, 4, dtype=torch.long), r"\[batch, pos\]"),
        (torch.zeros(0, 3, dtype=torch.long), "empty"),
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
        (torch.zeros(1, 17, dtype=torch.long), "n_ctx=16"),
        (torch.tensor([[1, 24]]), "outside the vocabulary"),
        (torch.tensor([[-1, 2]]), "outside the vocabulary"),
        ([], "empty"),
    ],
)
def test_prepare_tokens_bad_input(model, bad, match):
    with pytest.raises(ValueError, match=match):
        prepare_tokens(model, bad)


def test_prepare_tokens_bad_mask(model, tokens):
    with pytest.raises(ValueError, match="does not match"):
        prepare_tokens(model, tokens, torch.ones(3, 7))
    with pytest.raises(ValueError, match="only 0 and 1"):
        prepare_tokens(model, tokens, torch.full((3, 8), 2))
    with pytest.raises(ValueError, match="no real token"):
        prepare_tokens(model, tokens, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="no tokenizer"):
        prepare_tokens(model, "hello")


def test_prepare_pair_shape_mismatch(model, tokens):
    with pytest.raises(ValueError, match="same shape"):
        prepare_pair(model, tokens, tokens[:, :5])


def test_strings_with_padding(hf_model):
    ht = hf_model
    b = prepare_tokens(ht, ["w5 w6 w7", "w5"], padding_side="left")
    assert b.tokens.shape == (2, 4)
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    b = prepare_tokens(ht, ["w5 w6 w7", "w5"], padding_side="right")
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_parse_components(model):
    assert parse_component("L1H3") == Head(1, 3)
    assert parse_component("1.2") == Head(1, 2)
    assert parse_component((0, 1)) == Head(0, 1)
    assert parse_component("MLP1") == MLP(1)
    assert parse_components(["L0H0", "MLP0"]) == [Head(0, 0), MLP(0)]
    assert sorted([Head(1, 0), Head(0, 3)]) == [Head(0, 3), Head(1, 0)]
    assert Head(1, 2).hook_name == "blocks.1.attn.hook_z"
    assert MLP(0).hook_name == "blocks.0.hook_mlp_out"
    assert str(Head(1, 2)) == "L1H2" and len(all_heads(model)) == 8
    assert hook_name("resid_pre", 1, model) == "blocks.1.hook_resid_pre"


def test_component_range_errors(model, attn_model):
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        parse_component("L2H0", model)
    with pytest.raises(ValueError, match=r"heads 0\.\.3"):
        parse_component("L0H4", model)
    with pytest.raises(ValueError, match="attention-only"):
        parse_component("MLP0", attn_model)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_component("head five")
    with pytest.raises(ValueError, match="no components"):
        parse_components([])
    with pytest.raises(ValueError, match="out of range"):
        check_layer(model, -1)
