"""Sweep tokenization: batched, once per row (the checker's ids are the run's), the same tokens as prepare_tokens."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr.inputs import prepare_tokens
from mechattr.sweep import datasets as sd
from mechattr.sweep import runner
from mechattr.sweep.datasets import encode, write_organism_dataset

SPEC = "organism:induction"


@pytest.fixture(scope="module")
def model():
    return mechattr.load_model(SPEC, device="cpu")


def _ragged(model, n: int = 7) -> list[str]:
    words = [w for w in model.tokenizer.get_vocab() if w != "<bos>"][:12]
    return [" ".join(words[: 2 + (3 * i) % 9]) for i in range(n)]


def test_encode_equals_the_tokenizer_call_on_word_level_texts_with_unknown_words_and_added_tokens(model):
    tok = model.tokenizer
    texts = ["t1 t2  t3", " t5\tt1 ", "t5 nope t1", "<bos> t4", "t3<bos>t4", "", "t7"]
    assert encode(tok, texts) == [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def test_encode_and_checker_on_a_wordpiece_tokenizer_with_its_own_unknown_token():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "a": 2, "b": 3, "##b": 4, "c": 5}
    t = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", bos_token="[BOS]")
    texts = ["a b", "ab c", "a zz", "c"]
    assert encode(tok, texts) == [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    ex = [sd.Example(str(i), p, None, None, i + 1) for i, p in enumerate(texts)]
    why = sd.RowChecker(tok, 16).problems(ex)
    assert [w is None for w in why] == [True, True, False, True] and "'zz'" in why[2]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_tokenizer_gives_prepare_tokens_output_on_ragged_prompts(model, side):
    texts = _ragged(model)
    bt = runner.BatchTokenizer(model)
    bt.side = side
    ref = prepare_tokens(model, texts, padding_side=side)
    tokens, mask = bt._fast(texts, None)
    assert ref.attention_mask is not None and mask is not None
    assert torch.equal(tokens, ref.tokens) and torch.equal(mask, ref.attention_mask)


def test_batch_tokenizer_falls_back_to_prepare_tokens_when_its_tokens_differ(model):
    texts = _ragged(model)
    bt = runner.BatchTokenizer(model)
    bt.bos = None  # a tokenizer rule it does not know: its tokens would lack BOS
    tokens, mask = bt(texts)
    ref = prepare_tokens(model, texts)
    assert bt.exact is False and torch.equal(tokens, ref.tokens) and torch.equal(mask, ref.attention_mask)
    good = runner.BatchTokenizer(model)
    good(texts)
    assert good.exact is True


def test_sweep_tokenizes_each_text_once_with_the_checkers_ids(tmp_path, model, monkeypatch):
    path = write_organism_dataset("induction", 40, tmp_path / "d.jsonl", seed=5)
    seen: list[str] = []
    real = sd.encode

    def counting(tok, texts):
        seen.extend(texts)
        return real(tok, texts)

    def refuse(*a, **k):
        raise AssertionError("the run tokenized again")

    monkeypatch.setattr(sd, "encode", counting)
    monkeypatch.setattr(runner, "encode", refuse)
    slow = []
    real_slow = runner.BatchTokenizer._slow
    monkeypatch.setattr(runner.BatchTokenizer, "_slow", lambda self, *a: slow.append(a) or real_slow(self, *a))
    res = runner.sweep(model, path, "heads", tmp_path / "o", options={"per_example": False}, batch_size=8, progress=False)
    assert res.n_run == 40 and len(seen) == 40 * 3  # prompt, answer, corrupted: once each
    assert len(slow) == 1  # prepare_tokens only on the first batch's prompts (the check that the fast path is exact)
