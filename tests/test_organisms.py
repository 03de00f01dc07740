"""Organisms: API, tasks, accuracy, ground-truth sources and the documented circuits.

Ablations here are written with raw TransformerLens hooks on ``hook_z`` (independently of
mechattr.organisms.analysis and of mechattr.interventions).
"""

from __future__ import annotations

import pytest
import torch

from mechattr import organisms, targets
from mechattr.components import Head
from mechattr.organisms.tasks import TaskBatch

INDUCTION_LIKE = ["induction", "planted_induction"]
ALL = ["induction", "ioi", "planted_backup", "planted_induction", "planted_mlp", "sentiment"]
SHIPPED = [n for n in ALL if n in organisms.names()]
EVAL_SEED = 2024  # not the card's seeds (12345, 777) and not a training stream


@pytest.fixture(scope="module")
def models():
    return {n: organisms.load(n, device="cpu") for n in SHIPPED}


def mean_ablate(model, tokens, heads, mode="mean"):
    """Logits with ``heads`` replaced at hook_z by their batch mean per position (or zero)."""
    by_layer = {}
    for h in heads:
        by_layer.setdefault(h.layer, []).append(h.head)

    def hook_for(idx):
        def hook(z, hook):
            z = z.clone()
            z[:, :, idx] = 0.0 if mode == "zero" else z[:, :, idx].mean(0, keepdim=True)
            return z
        return hook

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{lay}.attn.hook_z", hook_for(idx)) for lay, idx in by_layer.items()])


def acc(logits, answers):
    return (logits[:, -1].argmax(-1) == answers).float().mean().item()


# ----------------------------------------------------------------------------- API
def test_names_lists_shipped_organisms():
    assert {"induction", "planted_induction"} <= set(organisms.names())
    assert organisms.names() == sorted(organisms.names())
    assert set(organisms.names()) <= set(ALL)


@pytest.mark.parametrize("fn", [organisms.load, organisms.task, organisms.card, organisms.circuit])
def test_unknown_name_raises_listing_known(fn):
    with pytest.raises(ValueError, match="unknown organism 'nope'.*induction"):
        fn("nope")


def test_docs_page_is_rendered_from_the_shipped_cards():
    from pathlib import Path

    from mechattr.organisms.docs import render

    page = Path(__file__).resolve().parents[1] / "docs" / "organisms.md"
    assert page.read_text() == render([organisms.card(n) for n in organisms.names()])
    for n in organisms.names():
        md = organisms.weights_dir().parent / "cards" / f"{n}.md"
        assert md.read_text() == organisms.card(n).to_markdown()


def test_load_model_organism_prefix():
    from mechattr import load_model

    m = load_model("organism:planted_induction", device="cpu")
    assert not m.training and m.cfg.n_layers == 2
    with pytest.raises(ValueError, match="known"):
        load_model("organism:nope", device="cpu")


@pytest.mark.parametrize("name", SHIPPED)
def test_load_eval_mode_tokenizer_and_card(name, models):
    m, c = models[name], organisms.card(name)
    assert not m.training and m.tokenizer is not None
    assert m.tokenizer.bos_token_id == 0
    t = organisms.task(name)
    words = t.vocab[1:6]
    text = " ".join(words)
    toks = m.to_tokens(text)
    assert toks[0].tolist() == [0] + [t.vocab.index(w) for w in words]
    assert m.to_str_tokens(text) == ["<bos>", *words]
    assert c.name == name and c.architecture["d_vocab"] == m.cfg.d_vocab == len(t.vocab)
    assert c.accuracy >= 0.98
    md = c.to_markdown()
    assert f"## {name}" in md and all(comp in md for comps in c.circuit.values() for comp in comps)
    circ = organisms.circuit(name)
    assert set(circ) == set(c.circuit) and all(isinstance(x, Head) or x.__class__.__name__ == "MLP" for v in circ.values() for x in v)
    assert organisms.Card.from_dict(c.to_dict()) == c


def test_load_leaves_global_random_state_untouched():
    """No reseeding of torch/numpy (TransformerLens's config seed would). Python's ``random``
    is not checked: beartype's runtime checks under pytest draw from it."""
    import numpy as np

    organisms.load("induction", device="cpu")  # first call: third-party lazy imports may draw at import time
    states = (torch.random.get_rng_state(), np.random.get_state()[1].copy())
    organisms.load("induction", device="cpu")
    organisms.task("induction").sample(8, 0)
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert (states[1] == np.random.get_state()[1]).all()


def test_taskbatch_to_moves_tensors_and_target():
    b = organisms.task("induction").sample(4, 0).to("cpu")
    assert b.tokens.device.type == "cpu" and torch.equal(b.target.token_ids, b.answers)


def test_load_returns_independent_models():
    a = organisms.load("planted_induction", device="cpu")
    b = organisms.load("planted_induction", device="cpu")
    with torch.no_grad():
        a.blocks[0].attn.W_Q.add_(1.0)
    assert not torch.equal(a.blocks[0].attn.W_Q, b.blocks[0].attn.W_Q)
    assert torch.equal(organisms.load("planted_induction", device="cpu").blocks[0].attn.W_Q, b.blocks[0].attn.W_Q)


# ----------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("name", SHIPPED)
def test_sample_deterministic_under_seed(name):
    t = organisms.task(name)
    a, b, c = t.sample(64, 5), t.sample(64, 5), t.sample(64, 6)
    for f in ("tokens", "answers", "corrupted", "corrupted_answers", "source_positions"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("bad", [0, -1, True])
def test_sample_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="n must be a positive int"):
        organisms.task("induction").sample(bad, 0)


@pytest.mark.parametrize("name", SHIPPED)
def test_batch_fields_and_corrupted_answers_differ(name):
    t = organisms.task(name)
    b = t.sample(200, 1)
    assert isinstance(b, TaskBatch) and len(b) == 200
    n, pos = b.tokens.shape
    assert b.tokens.dtype == torch.long and b.corrupted.shape == (n, pos)
    assert b.answers.shape == b.corrupted_answers.shape == (n,)
    assert (b.answers != b.corrupted_answers).all()
    assert (b.tokens[:, 0] == 0).all() and b.tokens.max() < len(t.vocab)
    # minimal change: the corrupted row differs from the clean row in one position (planted_mlp
    # changes both summands, so that both MLP inputs carry the corruption on every row)
    assert ((b.corrupted != b.tokens).sum(1) == (2 if name == "planted_mlp" else 1)).all()
    sp = b.source_positions
    assert sp.shape[0] == n and ((sp == -1) | ((sp >= 1) & (sp < pos))).all() and (sp[:, 0] >= 0).all()
    # the target is the logit of the answer at the last position
    logits = torch.randn(n, pos, len(t.vocab))
    assert isinstance(b.target, targets.Logit)
    assert torch.equal(b.target(logits), logits[torch.arange(n), -1, b.answers])


def test_induction_batch_structure():
    b = organisms.task("induction").sample(300, 3)
    rows = torch.arange(300)
    ans_pos, occ = b.source_positions[:, 0], b.source_positions[:, 1]
    assert torch.equal(b.tokens[rows, ans_pos], b.answers)
    assert torch.equal(b.tokens[rows, occ], b.tokens[:, -1])
    assert (occ == ans_pos - 1).all()
    # the last token occurs exactly twice (earlier occurrence unique), the answer position varies
    counts = (b.tokens == b.tokens[:, -1:]).sum(1)
    assert (counts == 2).all()
    assert len(set(ans_pos.tolist())) > 5
    assert (b.corrupted_answers[:, None] != b.tokens).all()  # the new answer is unused in the row


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("name", SHIPPED)
def test_accuracy_on_fresh_samples(name, models):
    m, b = models[name], organisms.task(name).sample(1000, EVAL_SEED)
    with torch.no_grad():
        a = acc(m(b.tokens), b.answers)
        ac = acc(m(b.corrupted), b.corrupted_answers)
    assert a >= 0.98, a
    assert ac >= 0.95, ac  # the corrupted answer really is what the model predicts
    assert abs(a - organisms.card(name).accuracy) < 0.02


@pytest.mark.parametrize("name", SHIPPED)
def test_source_positions_carry_the_answer(name, models):
    """Replacing the token at a source position by another word changes the prediction."""
    m, t = models[name], organisms.task(name)
    b = t.sample(300, EVAL_SEED + 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pred = m(b.tokens)[:, -1].argmax(-1)
        for k in range(b.source_positions.shape[1]):
            sp = b.source_positions[:, k]
            rows = torch.nonzero(sp >= 0)[:, 0]
            new = b.tokens.clone()
            new[rows, sp[rows]] = replacement_tokens(name, t, b.tokens[rows], k, g)
            changed = (m(new[rows])[:, -1].argmax(-1) != pred[rows]).float().mean().item()
            assert changed >= 0.8, (k, changed)


def replacement_tokens(name, t, rows_tokens, k, g):
    """A different word for source column ``k`` of each row that should change the answer.

    induction: any token absent from the row; ioi: a name absent from the row; sentiment:
    the polarity word becomes one of the opposite polarity, the negator becomes filler.
    """
    out = []
    for row in rows_tokens.tolist():
        if name in INDUCTION_LIKE or name in ("planted_backup", "planted_mlp"):
            pool = [x for x in range(1, len(t.vocab)) if x not in row]
        elif name == "ioi":
            pool = [x for x in t.groups["names"] if x not in row]
        elif k == 0:
            pos = set(t.groups["positive"])
            pool = t.groups["negative"] if any(x in pos for x in row) else t.groups["positive"]
        else:
            pool = t.groups["filler"]
        out.append(pool[int(torch.randint(len(pool), (1,), generator=g))])
    return torch.tensor(out)


# ----------------------------------------------------------------------------- circuits
@pytest.mark.parametrize("name", SHIPPED)
def test_documented_heads_are_necessary(name, models):
    """Mean- or zero-ablating the card's heads destroys accuracy; mean-ablating any other single head does not."""
    m, b = models[name], organisms.task(name).sample(300, EVAL_SEED + 2)
    circ = organisms.circuit(name)
    heads = sorted({h for v in circ.values() for h in v if isinstance(h, Head)})
    assert heads
    chance = 1.0 / len(organisms.task(name).vocab) if name in INDUCTION_LIKE else 0.5
    destroyed = chance + (0.1 if name in INDUCTION_LIKE else 0.15)
    for mode in ("mean", "zero"):
        assert acc(mean_ablate(m, b.tokens, heads, mode), b.answers) <= destroyed, mode
    # the card's circuit is defined by mean ablation (zero ablation is off-distribution under LN)
    for layer in range(m.cfg.n_layers):
        for h in range(m.cfg.n_heads):
            if Head(layer, h) not in heads:
                assert acc(mean_ablate(m, b.tokens, [Head(layer, h)]), b.answers) >= 0.9, (layer, h)


@pytest.mark.parametrize("name", SHIPPED)
def test_documented_mlps_are_necessary(name, models):
    """Mean-ablating (hook_mlp_out, batch mean per position) a card's MLP lowers accuracy; others do not."""
    m, b = models[name], organisms.task(name).sample(300, EVAL_SEED + 5)
    if m.cfg.attn_only:
        assert "mlp" not in organisms.card(name).circuit
        return
    named = {c.layer for v in organisms.circuit(name).values() for c in v if not isinstance(c, Head)}
    for layer in range(m.cfg.n_layers):

        def hook(x, hook):
            return x.mean(0, keepdim=True).expand_as(x)

        with torch.no_grad():
            a = acc(m.run_with_hooks(b.tokens, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", hook)]), b.answers)
        assert (a <= 0.8) if layer in named else (a >= 0.9), (layer, a)


@pytest.mark.parametrize("name", INDUCTION_LIKE)
def test_induction_roles_each_necessary(name, models):
    """Each role alone (previous-token heads; induction heads) is needed."""
    m, b = models[name], organisms.task(name).sample(500, EVAL_SEED + 3)
    for role, heads in organisms.circuit(name).items():
        assert heads
        assert acc(mean_ablate(m, b.tokens, heads), b.answers) <= 0.3, role
    c = organisms.circuit(name)
    assert all(h.layer == 0 for h in c["previous_token"]) and all(h.layer == 1 for h in c["induction"])


@pytest.mark.parametrize("name", INDUCTION_LIKE)
def test_induction_attention_patterns(name, models):
    """Previous-token heads attend i -> i-1; induction heads attend last -> answer's earlier position."""
    m, b = models[name], organisms.task(name).sample(300, EVAL_SEED + 4)
    with torch.no_grad():
        _, cache = m.run_with_cache(b.tokens)
    rows = torch.arange(300)
    for h in organisms.circuit(name)["previous_token"]:
        assert cache["pattern", 0][:, h.head].diagonal(offset=-1, dim1=-2, dim2=-1).mean() > 0.5
    for h in organisms.circuit(name)["induction"]:
        assert cache["pattern", 1][rows, h.head, -1, b.source_positions[:, 0]].mean() > 0.5
