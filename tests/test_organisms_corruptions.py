"""The organism tasks' two corruptions: "value" (today's ``corrupted``) and "key" (the key/query path).

Generator properties are checked over several seeds and sizes (a small hand-rolled
property test: the rule is re-derived from the task definition here, not read back from
the generator); model properties compare each trained/planted organism's answer logit
under the key corruption with what its documented mechanism predicts.
"""

from __future__ import annotations

import random

import pytest
import torch

import mechattr
from mechattr import organisms
from mechattr.components import Head, parse_component
from mechattr.organisms.planted import GAIN
from mechattr.organisms.planted_mlp import lookup

NAMES = ["induction", "planted_induction", "ioi", "sentiment", "planted_mlp", "planted_backup"]
# the answer's own source position (source_positions[:, col]) that the key corruption must keep
KEEPS_SOURCE = {"induction": 0, "planted_induction": 0, "ioi": 0, "sentiment": 0, "planted_mlp": 1}
DRAWS = [(n, seed) for n, seed in zip(random.Random(11).choices([1, 3, 17, 64], k=6), random.Random(12).sample(range(10**6), 6))]


def changed(a, b):
    """Per row, the sorted positions where ``a`` and ``b`` differ."""
    return [sorted(torch.nonzero(r).flatten().tolist()) for r in a != b]


def declared(where):
    return [sorted(p for p in r.tolist() if p >= 0) for r in where]


@pytest.mark.parametrize("name", NAMES)
def test_every_task_exposes_value_and_key_corruptions_with_notes(name):
    b = organisms.task(name).sample(8, seed=0)
    assert set(b.corruptions) == {"value", "key"} == set(b.corruption_notes) == set(b.corruption_positions)
    assert b.corruptions["value"] is b.corrupted  # "value" is today's corruption, unchanged
    assert all(isinstance(v, str) and len(v) > 40 for v in b.corruption_notes.values())
    for k, c in b.corruptions.items():
        assert c.shape == b.tokens.shape and c.dtype == b.tokens.dtype, k
    moved = b.to("cpu")
    assert torch.equal(moved.corruptions["key"], b.corruptions["key"]) and moved.corruptions["value"] is moved.corrupted


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n,seed", DRAWS)
def test_each_corruption_changes_exactly_its_declared_positions(name, n, seed):
    task = organisms.task(name)
    b = task.sample(n, seed)
    for k in ("value", "key"):
        assert changed(b.tokens, b.corruptions[k]) == declared(b.corruption_positions[k]), k
    again = task.sample(n, seed)  # seeded: the same batch, corruptions included
    assert all(torch.equal(again.corruptions[k], b.corruptions[k]) for k in b.corruptions)


@pytest.mark.parametrize("name", sorted(KEEPS_SOURCE))
@pytest.mark.parametrize("n,seed", DRAWS[:3])
def test_key_corruption_keeps_the_answer_source_token(name, n, seed):
    b = organisms.task(name).sample(n, seed)
    rows, src = torch.arange(n), b.source_positions[:, KEEPS_SOURCE[name]]
    assert torch.equal(b.corruptions["key"][rows, src], b.tokens[rows, src])


@pytest.mark.parametrize("name", ["induction", "planted_induction"])
@pytest.mark.parametrize("n,seed", DRAWS)
def test_induction_key_corruption_leaves_no_earlier_match_for_the_query(name, n, seed):
    b = organisms.task(name).sample(n, seed)
    key = b.corruptions["key"]
    for r in range(n):
        clean, row, q = b.tokens[r].tolist(), key[r].tolist(), int(b.tokens[r, -1])
        ans, (pos,) = int(b.answers[r]), declared(b.corruption_positions["key"][r : r + 1])[0]
        assert clean[pos] == q and row[pos] not in clean  # the earlier occurrence became an unused token
        assert q in clean[:-1] and q not in row[:-1]  # no key's previous token matches the query any more
        assert ans in row  # the answer is still there, nothing points at it


@pytest.mark.parametrize("n,seed", DRAWS)
def test_ioi_key_corruption_replaces_s1_by_a_name_not_in_the_sentence(n, seed):
    task = organisms.task("ioi")
    b = task.sample(n, seed)
    names = set(task.name_ids.tolist())
    for r in range(n):
        clean, row = b.tokens[r].tolist(), b.corruptions["key"][r].tolist()
        s1, s2, io = (int(b.info[k][r]) for k in ("s1", "s2", "io"))
        assert clean[s1] == clean[s2] and row[s1] in names and row[s1] not in clean
        assert row[s2] not in row[:s2] and row[io] == int(b.answers[r])  # S2 repeats nothing; IO kept


def sentiment_label(task, row):
    """The task's rule, re-derived: ``pos`` iff (positive word) XOR (a negator right before it)."""
    pol = set(task.positive.tolist()) | set(task.negative.tolist())
    (p,) = [i for i, t in enumerate(row) if t in pol]
    negated = p >= 2 and row[p - 1] in set(task.negators.tolist())
    return task.pos_id if (row[p] in set(task.positive.tolist())) ^ negated else task.neg_id


@pytest.mark.parametrize("n,seed", DRAWS)
def test_sentiment_key_corruption_toggles_the_negation_and_flips_the_label(n, seed):
    task = organisms.task("sentiment")
    b = task.sample(n, seed)
    for r in range(n):
        row, p = b.corruptions["key"][r].tolist(), int(b.info["polarity"][r])
        assert sentiment_label(task, b.tokens[r].tolist()) == int(b.answers[r])
        flipped = sentiment_label(task, row) != int(b.answers[r])
        assert flipped == (p >= 2)  # toggled unless only BOS precedes the polarity word


# ----------------------------------------------------------------------------- models
def answer_logit(model, tokens, answers):
    with torch.no_grad():
        return model(tokens)[torch.arange(len(answers)), -1, answers]


@pytest.fixture(scope="module")
def batches():
    return {name: organisms.task(name).sample(64, seed=5) for name in NAMES}


@pytest.mark.parametrize("name", ["induction", "sentiment"])
def test_trained_key_corruption_removes_most_of_the_answer_logit(name, batches):
    """Induction: no key matches the query, nothing is copied; sentiment: the label flips."""
    b, m = batches[name], organisms.load(name)
    clean, value, key = (answer_logit(m, t, b.answers).mean() for t in (b.tokens, b.corrupted, b.corruptions["key"]))
    assert clean - key > 0.5 * (clean - value) > 0


def test_ioi_key_corruption_makes_io_and_the_new_name_interchangeable(batches):
    """Without a repeated name the subject cannot be told from the IO: the IO's lead over the
    third name (large on clean rows, where that name is absent) shrinks towards 0."""
    b, m = batches["ioi"], organisms.load("ioi")
    third = b.corruptions["key"][torch.arange(len(b)), b.info["s1"]]
    with torch.no_grad():
        lc, lk = m(b.tokens)[:, -1], m(b.corruptions["key"])[:, -1]
    rows = torch.arange(len(b))
    lead_clean = (lc[rows, b.answers] - lc[rows, third]).mean()
    lead_key = (lk[rows, b.answers] - lk[rows, third]).mean()
    assert lead_clean > 0 and abs(lead_key) < 0.25 * lead_clean
    assert lk[rows, b.answers].mean() < lc[rows, b.answers].mean()


def test_planted_key_corruptions_give_the_mechanisms_exact_logits(batches):
    """planted_induction: no key matches, attention is uniform over n_ctx positions holding the
    answer once -> G/n_ctx; planted_mlp: the sum is x_1' + x_2 -> that answer gets G, the old 0;
    planted_backup: BOS carries no value or flag -> every logit 0."""
    b, m = batches["planted_induction"], organisms.load("planted_induction")
    torch.testing.assert_close(answer_logit(m, b.corruptions["key"], b.answers), torch.full((len(b),), GAIN / m.cfg.n_ctx))
    b, m = batches["planted_mlp"], organisms.load("planted_mlp")
    k = b.corruptions["key"]
    new = lookup(k[:, 1], k[:, 2])
    assert (new != b.answers).all()
    torch.testing.assert_close(answer_logit(m, k, new), torch.full((len(b),), GAIN))
    torch.testing.assert_close(answer_logit(m, k, b.answers), torch.zeros(len(b)))
    b, m = batches["planted_backup"], organisms.load("planted_backup")
    with torch.no_grad():
        torch.testing.assert_close(m(b.corruptions["key"])[:, -1], torch.zeros(len(b), m.cfg.d_vocab))


def card_heads(name, role):
    return [parse_component(c) for c in organisms.card(name).circuit[role]]


def test_planted_key_corruption_reaches_the_previous_token_head_under_patching(batches):
    """Patching the previous-token head's corrupted output into the clean run: under the value
    corruption it changes nothing (exactly), under the key corruption the induction head loses
    its match: the answer logit falls from G to G/n_ctx."""
    b, m = batches["planted_induction"], organisms.load("planted_induction")
    (prev,) = card_heads("planted_induction", "previous_token")
    eff = {}
    for k, c in b.corruptions.items():
        r = mechattr.activation_patch(m, b.tokens, c, b.target, direction="noise", return_result=True)
        eff[k] = float(r.scores[prev.layer, prev.head]) - float(r.settings["clean"])
    assert eff["value"] == 0.0
    assert eff["key"] == pytest.approx(-GAIN * (1 - 1 / m.cfg.n_ctx), rel=1e-4)


def test_atp_sees_the_trained_previous_token_heads_only_under_the_key_corruption(batches):
    b, m = batches["induction"], organisms.load("induction")
    prev = card_heads("induction", "previous_token")
    s = {k: mechattr.attribute_heads(m, b.tokens, b.target, corrupted=c) for k, c in b.corruptions.items()}
    for h in prev:
        assert abs(s["key"][h.layer, h.head]) > 5 * abs(s["value"][h.layer, h.head]) + 0.05, h
    others = [abs(float(s["key"][0, i])) for i in range(m.cfg.n_heads) if Head(0, i) not in prev]
    assert min(abs(float(s["key"][h.layer, h.head])) for h in prev) > max(others)


def test_planted_previous_token_head_is_seen_by_denoising_atp_under_the_key_corruption_only(batches):
    """Noising AtP (gradient at the clean run) cannot see the planted previous-token head under
    either corruption: the clean attention is 1 − O(e^-20) on the match, so the gradient through
    the induction head's key is ~1e-8. Denoising AtP (gradient at the corrupted run, where under
    the key corruption the induction head has lost its match and attends uniformly) scores it
    well above 0 under the key corruption and exactly 0 under the value corruption, where the
    key the induction head matches is untouched. The induction head itself is ±G either way."""
    b, m = batches["planted_induction"], organisms.load("planted_induction")
    (prev,), (ind,) = card_heads("planted_induction", "previous_token"), card_heads("planted_induction", "induction")
    for k, c in b.corruptions.items():
        noising = mechattr.attribute_heads(m, b.tokens, b.target, corrupted=c)
        denoising = mechattr.attribute_heads(m, c, b.target, corrupted=b.tokens)
        assert abs(float(noising[prev.layer, prev.head])) < 1e-6 * abs(float(noising[ind.layer, ind.head])), k
        assert float(denoising[ind.layer, ind.head]) > 0.9 * GAIN, k
        if k == "value":
            assert float(denoising[prev.layer, prev.head]) == 0.0
        else:
            assert float(denoising[prev.layer, prev.head]) > 0.5 * GAIN


@pytest.mark.parametrize("name", NAMES)
def test_cards_document_both_corruptions_as_the_task_describes_them(name):
    card, task = organisms.card(name), organisms.task(name)
    assert set(card.corruptions) == {"value", "key"}
    for k, c in card.corruptions.items():
        assert c["changes"] == task.corruption_notes[k]
        assert f"| `{k}` | {c['changes']}" in card.to_markdown()
    if name == "planted_induction":  # the measured reach matches the mechanism
        (prev,) = card.circuit["previous_token"]
        assert prev in card.corruptions["key"]["reaches"] and prev not in card.corruptions["value"]["reaches"]
