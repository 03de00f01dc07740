"""Making an organism end to end: train (or construct), evaluate, find the circuit, write the card.

Used by ``scripts/train_organisms.py`` and by the tests (with small step budgets).
"""

from __future__ import annotations

from pathlib import Path

from mechattr.organisms import circuits, edges
from mechattr.organisms.card import Card
from mechattr.organisms.corruptions import corruption_evidence
from mechattr.organisms.loading import save_weights, weights_dir
from mechattr.organisms.planted import build_planted
from mechattr.organisms.planted_backup import backup_circuit, build_planted_backup
from mechattr.organisms.planted_mlp import build_planted_mlp, mlp_circuit
from mechattr.organisms.specs import get_spec
from mechattr.organisms.training import accuracy, train
from mechattr.runtime.tl import HookedTransformer

ACC_N, ACC_SEED = 2000, 12345

FINDERS = {
    "induction": circuits.induction_circuit,
    "planted_induction": circuits.induction_circuit,
    "ioi": circuits.ablation_circuit,
    "sentiment": circuits.ablation_circuit,
    "planted_mlp": mlp_circuit,
    "planted_backup": backup_circuit,
}

BUILDERS = {"planted_induction": build_planted, "planted_mlp": build_planted_mlp, "planted_backup": build_planted_backup}

NOTES = {
    "induction": "Previous-token heads (L0H1, L0H3) write the previous token into each position; "
    "every layer-1 head is an induction head: at the last position it attends to the position "
    "after the earlier occurrence of the current token and copies that token to the logits. The "
    "induction heads are redundant (mean-ablating any one alone keeps accuracy; all four: ~0.03), "
    "and so, partly, are the previous-token heads (both together: ~0.12). For one head per role, "
    "exact by construction, use planted_induction.",
    "ioi": "What the trained model does (by ablation, not the GPT-2 IOI circuit): at the last "
    "position head L0H0 attends to the two subject tokens (S1, S2; ~0.8 of its attention) and "
    "mean-ablating it drops accuracy to chance; the other layer-0 heads attend diffusely over the "
    "sentence (names included) and are needed together (mean-ablating L0H1-3 jointly: ~0.31), "
    "L0H2 most; MLP0 is necessary (mean-ablated: ~0.2); layer-1 heads matter only jointly "
    "(~0.68) and layer 2 not at all. The picture is 'collect the names, subtract the subject' "
    "rather than name movers copying the IO; no single head moves the IO name to the end.",
    "sentiment": "By ablation and attention: L0H0 and L0H2 attend from the polarity word to the "
    "word before it (~0.5 of their attention there when it is a negator: negation detection) and "
    "L0H2 also reads the polarity word from the final position; mean-ablating the two together "
    "leaves chance accuracy. MLP0 is necessary (mean-ablated: ~0.5). Layer-1 heads read the "
    "polarity word from the final position (L1H0 ~0.64) but are redundant one by one.",
    "planted_induction": "Weights written by mechattr.organisms.planted.build_planted; the shipped "
    "safetensors equal the construction exactly. Residual layout: TOK [0, 64), POS [64, 88), "
    "PREV [88, 152), OUT [152, 216). Heads other than the two named are exactly zero. Under the key corruption "
    "patching L0H1 alone moves the answer logit by -G(1 - 1/24) = -9.583 exactly (the induction head loses its match "
    "and attends uniformly), but noising attribution patching (AtP, gradient at the clean run) scores L0H1 ~1e-14: the "
    "clean softmaxes are saturated (attention 1 - 5e-8 on the match), so the gradient through the induction head's key "
    "vanishes. Denoising AtP (gradient at the key-corrupted run, where the induction head attends uniformly) scores "
    "L0H1 +7.99 (exact +9.583); under the value corruption both are exactly 0. On the trained induction organism "
    "noising AtP already sees L0H1/L0H3 under the key corruption.",
    "planted_mlp": "Weights written by mechattr.organisms.planted_mlp.build_planted_mlp; the shipped "
    "safetensors equal the construction exactly. Residual layout: TOK [0, 11), POS [11, 19), PREV [19, 30), "
    "MID [30, 41), OUT [41, 52). L0H2 copies the previous token into PREV; MLP0 has one unit per digit pair "
    "(a, b), 2·ReLU(PREV_a + TOK_b - 1.5), writing MID_(a+b mod 10); L1H0 moves MID from position 2 to the "
    "last position's OUT. Other heads, MLP1 and all biases but MLP0's b_in are exactly zero.",
    "planted_backup": "Weights written by mechattr.organisms.planted_backup.build_planted_backup; the shipped "
    "safetensors equal the construction exactly. Residual layout: TOK [0, 16), POS [16, 24), OUT [24, 40), "
    "FLAG [40]. Primary L0H3 attends to position 1, copies its token into OUT and sets FLAG; backup L1H1's "
    "query scores position 1 by 20·(1 - 2·FLAG) and BOS by 20·FLAG, so it copies the token only when the "
    "flag is missing (zero-ablating L0H3 alone keeps accuracy 1.0; zero-ablating both: 0). Other heads and "
    "all biases are exactly zero. The key corruption (x_1 -> BOS) reaches no head alone: patching the primary's "
    "corrupted output removes its flag, and the backup then copies the clean x_1 itself (compensation); the backup's "
    "corrupted output is 0 as on the clean run. Only both together lose the answer.",
}


def make(name: str, *, steps: int | None = None, seed: int = 0, verbose: bool = False) -> tuple[HookedTransformer, Card]:
    """Train (or construct) organism ``name``; returns the model (CPU, eval) and its card."""
    spec = get_spec(name)
    if spec.planted:
        builder = BUILDERS[name]
        model = builder()
        training = {"method": f"analytic construction ({builder.__module__}.{builder.__name__}); not trained"}
    else:
        res = train(name, steps=steps, seed=seed, verbose=verbose)
        model, training = res.model.eval(), res.recipe
    return model, make_card(name, model, training)


def recard(name: str) -> tuple[HookedTransformer, Card]:
    """Re-evaluate the shipped weights of ``name`` (accuracy, circuit) keeping its training record."""
    from mechattr.organisms.loading import card, load

    model = load(name, device="cpu")
    return model, make_card(name, model, card(name).training)


def make_card(name: str, model: HookedTransformer, training: dict) -> Card:
    """Evaluate ``model`` on fresh samples, find its circuit, and write it all into a card."""
    spec = get_spec(name)
    task = spec.make_task()
    acc = accuracy(model, task, n=ACC_N, seed=ACC_SEED)
    circuit, evidence = FINDERS[name](model, task)
    card = Card(
        name=name, description=spec.description, architecture=dict(spec.architecture), training=training,
        accuracy=round(acc, 4), circuit=circuit, notes=" ".join(n for n in (NOTES.get(name, ""), edges.NOTES.get(name, "")) if n),
        accuracy_eval={"n": ACC_N, "seed": ACC_SEED, "metric": "top-1 answer at the last position"},
        evidence={**evidence, **edges.card_evidence(name)},
        corruptions=corruption_evidence(model, task, circuits.EVAL_N, circuits.EVAL_SEED),
    )
    return card


def write(model: HookedTransformer, card: Card, directory: Path | None = None) -> list[Path]:
    """Write ``<name>.safetensors`` and ``<name>.json`` (and ``cards/<name>.md`` in the package)."""
    d = directory or weights_dir()
    paths = [save_weights(model, card.name, d), card.save(d / f"{card.name}.json")]
    md = (d.parent / "cards") if directory is None else d
    md.mkdir(parents=True, exist_ok=True)
    (md / f"{card.name}.md").write_text(card.to_markdown())
    paths.append(md / f"{card.name}.md")
    return paths
