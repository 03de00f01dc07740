"""Faithfulness metrics on hand-built cases: expected numbers from the definitions."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model

from mechattr import faithfulness as F
from mechattr import targets


def uniform_model(seed: int = 0, d_vocab: int = 12, d_model: int = 8, scale: float = 1.0):
    """1 layer, no LayerNorm, W_Q = W_K = 0: every query attends uniformly to its prefix."""
    m = make_model(n_layers=1, d_model=d_model, n_heads=2, d_head=4, d_vocab=d_vocab, n_ctx=12, attn_only=True,
                   normalization_type=None, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        m.blocks[0].attn.W_Q.zero_()  # in place (a view of the projection weight on a TransformerBridge)
        m.blocks[0].attn.W_K.zero_()
    return m.eval()


def hand_logits(m, emb: torch.Tensor, pos_ids: torch.Tensor) -> torch.Tensor:
    """Last-position logits of ``uniform_model`` for token embeddings ``emb [n, d]`` at position ids."""
    a = m.blocks[0].attn
    x = emb + m.W_pos[pos_ids]
    attn = sum(((x @ a.W_V[h] + a.b_V[h]).mean(0)) @ a.W_O[h] for h in range(m.cfg.n_heads))
    resid = x[-1] + attn + a.b_O
    return resid @ m.W_U + m.b_U


def test_comp_suff_logodds_match_hand_computation():
    m = uniform_model()
    tokens = torch.tensor([[3, 5, 7, 1, 9, 2, 4, 6, 8, 10]])
    ans = 4
    scores = torch.tensor([[0.1, 5.0, 0.2, 0.3, 4.0, -1.0, 0.0, 0.5, 0.4, 0.6]])
    # 10 removable positions (no tokenizer, so no BOS); k = 0.2 -> the top 2: positions 1 and 4
    top = [1, 4]
    e = m.W_E[tokens[0]].clone()
    pos = torch.arange(10)
    p = lambda emb: hand_logits(m, emb, pos).softmax(-1)[ans].item()  # noqa: E731
    p_full = p(e)
    e_without = e.clone()
    e_without[top] = 0
    e_only = torch.zeros_like(e)
    e_only[top] = e[top]
    r = F.faithfulness(m, tokens, targets.logit(ans), scores, k=0.2, n_draws=0)
    assert r.settings["n_top"] == [2]
    assert r.comprehensiveness.item() == pytest.approx(p_full - p(e_without), abs=1e-5)
    assert r.sufficiency.item() == pytest.approx(p_full - p(e_only), abs=1e-5)
    assert r.log_odds.item() == pytest.approx(math.log(p(e_without)) - math.log(p_full), abs=1e-4)
    # the single-metric entry points agree
    assert F.comprehensiveness(m, tokens, targets.logit(ans), scores).item() == pytest.approx(r.comprehensiveness.item(), abs=1e-6)
    assert F.sufficiency(m, tokens, targets.logit(ans), scores).item() == pytest.approx(r.sufficiency.item(), abs=1e-6)
    # (float32: the two entry points may unembed through different kernels, rounding apart by ~1e-7 relative)
    assert F.log_odds(m, tokens, targets.logit(ans), scores).item() == pytest.approx(r.log_odds.item(), rel=1e-6, abs=1e-6)


def test_delete_removal_is_a_shorter_sequence():
    m = uniform_model(seed=1)
    tokens = torch.tensor([[3, 5, 7, 1, 9, 2, 4, 6]])
    ans = 2
    scores = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]])  # top 2 of 8 -> positions 3, 1
    kept = torch.tensor([3, 7, 9, 2, 4, 6])
    p = lambda toks: hand_logits(m, m.W_E[toks], torch.arange(len(toks))).softmax(-1)[ans].item()  # noqa: E731
    r = F.faithfulness(m, tokens, targets.logit(ans), scores, k=0.2, removal="delete", n_draws=0)
    assert r.comprehensiveness.item() == pytest.approx(p(tokens[0]) - p(kept), abs=1e-5)
    assert r.sufficiency.item() == pytest.approx(p(tokens[0]) - p(torch.tensor([5, 1])), abs=1e-5)


def test_delete_reads_target_at_moved_position():
    """A target at an interior position reads the same token after earlier tokens are deleted."""
    m = make_model(seed=3)
    tokens = torch.tensor([[2, 5, 7, 1, 9, 3, 4, 6]])
    tgt = targets.logit(4, pos=5)
    scores = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0]])  # pos 7 is after the target: never removed
    r = F.faithfulness(m, tokens, tgt, scores, k=1 / 6, removal="delete", n_draws=0)
    ref = torch.tensor([[2, 7, 1, 9, 3, 4, 6]])
    with torch.no_grad():
        p_ref = m(ref)[0, 4].softmax(-1)[4].item()
        p_full = m(tokens)[0, 5].softmax(-1)[4].item()
    assert r.comprehensiveness.item() == pytest.approx(p_full - p_ref, abs=1e-5)


def test_pad_and_mask_removal_equal_token_substitution():
    m = make_model(seed=2)
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    scores = torch.arange(10.0)[None]  # top 2 -> positions 9, 8
    r = F.faithfulness(m, tokens, targets.logit(3), scores, removal="pad", replacement_id=1, n_draws=0)
    sub = tokens.clone()
    sub[0, [8, 9]] = 1
    with torch.no_grad():
        p = lambda t: m(t)[0, -1].softmax(-1)[3].item()  # noqa: E731
        assert r.comprehensiveness.item() == pytest.approx(p(tokens) - p(sub), abs=1e-5)
    r2 = F.faithfulness(m, tokens, targets.logit(3), scores, removal="mask", replacement_id=1, n_draws=0)
    assert torch.allclose(r.comprehensiveness, r2.comprehensiveness)
    with pytest.raises(ValueError, match="pad token"):
        F.faithfulness(m, tokens, targets.logit(3), scores, removal="pad", n_draws=0)


def test_bos_and_padding_never_removed(tiny_hf_dir):
    from mechattr import load_model
    from mechattr.inputs import prepare_tokens

    m = load_model(tiny_hf_dir, device="cpu")
    tok = torch.tensor([[1, 5, 6, 7, 8], [2, 2, 1, 9, 10]])  # BOS = 1, left padding with 2
    batch = prepare_tokens(m, tok, torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]))
    rem = F.removable_mask(m, batch, targets.logit(3))
    real = batch.attention_mask.bool()
    bos_pos = real.long().argmax(-1)
    assert not rem[0, bos_pos[0]] and not rem[1, bos_pos[1]]
    assert not (rem & ~real).any()
    assert rem.sum().item() == 4 + 2
    huge = torch.zeros(batch.shape)
    huge[0, bos_pos[0]] = 100.0
    huge[1, : bos_pos[1] + 1] = 100.0  # pads and BOS score highest
    top = F.top_mask(huge, rem, torch.tensor([1, 1]))
    assert (top & ~rem).sum() == 0 and top.sum() == 2


def test_random_ranking_scores_near_control_and_occlusion_beats_it():
    m = uniform_model(seed=4, d_vocab=16, d_model=16, scale=0.4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (6, 10), generator=g)
    ans = torch.randint(0, 16, (6,), generator=g)
    tgt = targets.logit(ans)
    rand = F.faithfulness(m, tokens, tgt, torch.rand(6, 10, generator=g), n_draws=30, seed=1)
    c = rand.control["comprehensiveness"].mean(-1)
    z = (rand.comprehensiveness.mean() - c.mean()) / c.std()
    assert abs(z) < 3
    # leave-one-out drop of p(ŷ) (slow loop) is a faithful ranking for top-k removal
    with torch.no_grad():
        base = m(tokens)[:, -1].softmax(-1).gather(1, ans[:, None])[:, 0]
        occ = torch.zeros(6, 10)
        for j in range(10):
            def hook(act, hook, j=j):
                act = act.clone()
                act[:, j] = 0
                return act
            with m.hooks([("hook_embed", hook)]):
                occ[:, j] = base - m(tokens)[:, -1].softmax(-1).gather(1, ans[:, None])[:, 0]
    good = F.faithfulness(m, tokens, tgt, occ, n_draws=30, seed=1, k=0.1)
    s = good.summary()["comprehensiveness"]
    assert s["beats_control"] and s["value"] > s["control_p95"]
    assert F.faithfulness(m, tokens, tgt, -occ, n_draws=30, seed=1, k=0.1).summary()["comprehensiveness"]["value"] < s["control_p5"]


def test_control_deterministic_under_seed(model, tokens):
    tgt = targets.logit(torch.tensor([1, 2, 3]))
    s = torch.randn(3, 8)
    a = F.faithfulness(model, tokens, tgt, s, n_draws=4, seed=7)
    b = F.faithfulness(model, tokens, tgt, s, n_draws=4, seed=7)
    c = F.faithfulness(model, tokens, tgt, s, n_draws=4, seed=8)
    assert all(torch.equal(a.control[k], b.control[k]) for k in a.control)
    assert not torch.equal(a.control["comprehensiveness"], c.control["comprehensiveness"])


def test_chunked_batches_equal_unchunked_and_model_unchanged(model, tokens, unchanged):
    tgt = targets.logit(torch.tensor([1, 2, 3]))
    s = torch.randn(3, 8)
    with unchanged(model):
        a = F.faithfulness(model, tokens, tgt, s, n_draws=3)
        b = F.faithfulness(model, tokens, tgt, s, n_draws=3, batch_size=5)
        with pytest.raises(ValueError):
            F.faithfulness(model, tokens, tgt, s, removal="blank")
    for k in ("comprehensiveness", "sufficiency", "log_odds"):
        assert torch.allclose(getattr(a, k), getattr(b, k), atol=1e-6)
        assert torch.allclose(a.control[k], b.control[k], atol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"removal": "blank"}, "unknown removal operator 'blank'; allowed"),
        ({"k": 0}, r"k must be a fraction in \(0, 1\]"),
        ({"k": 1.5}, r"k must be a fraction in \(0, 1\]"),
        ({"n_draws": -1}, "n_draws must be an int"),
        ({"scores": torch.zeros(3, 7)}, r"scores has shape \(3, 7\) but tokens are \(3, 8\)"),
        ({"scores": torch.full((3, 8), float("nan"))}, "NaN"),
        ({"label": "best"}, "label must be"),
    ],
)
def test_bad_input_raises_clear_error(model, tokens, kw, match):
    kw = dict(kw)
    scores = kw.pop("scores", torch.zeros(3, 8))
    with pytest.raises(ValueError, match=match):
        F.faithfulness(model, tokens, targets.logit(1), scores, **kw)


def test_deletion_insertion_endpoints_and_auc(model, tokens):
    tgt = targets.logit(torch.tensor([1, 2, 3]))
    s = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    c = F.deletion_insertion(model, tokens, tgt, s, n_steps=4, n_draws=2)
    full = F.faithfulness(model, tokens, tgt, s, n_draws=0).p_full
    assert torch.allclose(c.deletion[0], full, atol=1e-6) and torch.allclose(c.insertion[-1], full, atol=1e-6)
    assert torch.allclose(c.deletion[-1], c.insertion[0], atol=1e-6)  # everything removed
    y = c.deletion.mean(-1)
    manual = sum((y[i] + y[i + 1]) / 2 * 0.25 for i in range(4))
    assert c.summary()["deletion"]["auc"] == pytest.approx(float(manual), abs=1e-6)
    assert c.control_deletion.shape == (2, 5, 3)
    # deletion of the top 2 of 8 at f = 0.25 equals comprehensiveness at k = 0.25
    comp = F.faithfulness(model, tokens, tgt, s, k=0.25, n_draws=0).comprehensiveness
    assert torch.allclose(full - c.deletion[1], comp, atol=1e-6)


def test_delete_on_left_padded_rows_equals_the_unpadded_shorter_sequence():
    m = make_model(seed=6)
    tokens = torch.tensor([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    tgt = targets.logit(torch.tensor([2, 2]), pos="last")
    scores = torch.tensor([[0.0, 0.0, 0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 9.0, 0.0]])  # k=0.25 -> 1 of 4 / 2 of 6
    r = F.faithfulness(m, tokens, tgt, scores, k=0.25, removal="delete", n_draws=0, attention_mask=mask)
    with torch.no_grad():
        p = lambda t: m(torch.tensor([t]))[0, -1].softmax(-1)[2].item()  # noqa: E731
        expect0 = p([5, 6, 7, 8]) - p([5, 7, 8])
        # row 1: 6 removable, top 2 = position 4 (9.0) then position 0 (first of the ties)
        expect1 = p([3, 4, 5, 6, 7, 8]) - p([4, 5, 6, 8])
    assert r.comprehensiveness.tolist() == pytest.approx([expect0, expect1], abs=1e-5)


def test_delete_with_a_logit_difference_target_reads_the_moved_position():
    m = make_model(seed=7)
    tokens = torch.tensor([[2, 5, 7, 1, 9, 3]])
    tgt = targets.logit_diff(4, 6, pos=4)
    scores = torch.tensor([[0.0, 0.0, 8.0, 0.0, 0.0, 0.0]])
    r = F.faithfulness(m, tokens, tgt, scores, k=0.2, removal="delete", n_draws=0)  # top 1 of 5: position 2
    with torch.no_grad():
        p_full = m(tokens)[0, 4].softmax(-1)[4].item()
        p_del = m(torch.tensor([[2, 5, 1, 9, 3]]))[0, 3].softmax(-1)[4].item()
    assert r.comprehensiveness.item() == pytest.approx(p_full - p_del, abs=1e-5)  # ŷ = the correct token
