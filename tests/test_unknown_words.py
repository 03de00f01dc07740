"""Words a tokenizer does not know are a clear error listing them (an organism's word
tokenizer used to map them silently to <bos>), unless the caller opts into an unknown-token
id; the one check sits in mechattr.inputs.to_tokens, used by every entry point."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr import organisms, targets
from mechattr.inputs import prepare_tokens, to_tokens, unknown_words


@pytest.fixture(scope="module")
def ioi():
    return organisms.load("ioi", device="cpu")


GOOD = "When Mary and John went to the store , John gave a drink to"


def test_known_text_tokenizes_as_before(ioi):
    assert unknown_words(ioi.tokenizer, [GOOD]) == []
    torch.testing.assert_close(to_tokens(ioi, GOOD), ioi.to_tokens(GOOD))


def test_unknown_words_are_listed(ioi):
    with pytest.raises(ValueError, match=r"2 word\(s\) not in the model's vocabulary: 'Zork', 'quux'"):
        prepare_tokens(ioi, ["When Mary and Zork went to the store , John gave a drink to", "quux"])


@pytest.mark.parametrize("call", [
    lambda m, t: mechattr.attribute_tokens(m, t, targets.logit(3), method="saliency"),
    lambda m, t: mechattr.attribute_heads(m, t, targets.logit(3), method="dla"),
    lambda m, t: mechattr.ablation_scan(m, t, targets.logit(3)),
    lambda m, t: mechattr.attention_rollout(m, t),
    lambda m, t: mechattr.attribute_generation(m, t, max_new_tokens=1),
])
def test_every_entry_point_refuses_unknown_words(ioi, call):
    with pytest.raises(ValueError, match="not in the model's vocabulary: 'Zork'"):
        call(ioi, "When Mary and Zork went to the store , John gave a drink to")


def test_opt_in_maps_unknown_words_to_the_given_token(ioi):
    vocab = ioi.tokenizer.get_vocab()
    john = vocab["John"]
    got = prepare_tokens(ioi, "When Mary and Zork went to the store , John gave a drink to", unknown_token_id=john).tokens
    torch.testing.assert_close(got, ioi.to_tokens("When Mary and John went to the store , John gave a drink to"))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prepare_tokens(ioi, "Zork", unknown_token_id=10_000)


def test_any_hf_word_level_tokenizer_is_checked(tiny_hf_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf_dir, local_files_only=True)
    assert unknown_words(tok, ["w1 w2"]) == []
    assert unknown_words(tok, ["w1 zzz w2", "yy"]) == ["yy", "zzz"]
