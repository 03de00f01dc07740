"""Generation attribution shares one forward per path point across the generated steps.

Properties: the ``[n_generated, n_context]`` matrix of ``attribute_generation`` equals the
per-step loop reference written here (one ``attribute_tokens`` call per generated token on
its own prefix) for gradient methods, with baselines, clipping and a memory budget; and the
model runs one row per path point for all steps instead of one per step (rows counted at
a hook), while rows that do not share their input still take the per-row path.
"""

from __future__ import annotations

import pytest
import torch
from conftest import RowCounter, make_model

from mechattr import targets
from mechattr.attribution.paths import path_integral
from mechattr.attribution.tokens import attribute_generation, attribute_tokens

PROMPT = torch.tensor([5, 9, 14, 3, 8])
CONT = torch.tensor([7, 2, 11, 4, 6, 1])


def _per_step_reference(model, method, **kw):
    """One attribute_tokens call per generated token: row i attributes logprob(CONT[i]) read
    at the last position of the prefix PROMPT + CONT[:i]."""
    full = torch.cat([PROMPT, CONT])
    P, G = len(PROMPT), len(CONT)
    out = torch.zeros(G, P + G - 1)
    delta = torch.zeros(G)
    for i in range(G):
        r = attribute_tokens(model, full[: P + i][None], targets.logprob(int(CONT[i])), method, **kw)
        out[i, : P + i] = r.scores[0]
        if r.convergence_delta is not None:
            delta[i] = r.convergence_delta[0]
    return out, delta


@pytest.mark.parametrize(("method", "kw"), [
    ("ig", {"n_steps": 12}),
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("ig_clipped", {"n_steps": 6}),
    ("ig", {"n_steps": 8, "baseline": 3}),
])
def test_shared_generation_matrix_equals_per_step_loop(method, kw, unchanged):
    model = make_model(seed=11, n_ctx=32)
    with unchanged(model):
        g = attribute_generation(model, PROMPT, CONT, method=method, **kw)
    ref, delta = _per_step_reference(model, method, **kw)
    torch.testing.assert_close(g.matrix, ref, atol=3e-5, rtol=1e-4)
    if g.convergence_delta is not None:
        torch.testing.assert_close(g.convergence_delta, delta, atol=3e-5, rtol=1e-4)
    assert ref[:, len(PROMPT):].abs().sum() > 0  # earlier generations do get scores


def test_shared_generation_runs_one_row_per_path_point_not_one_per_step():
    model = make_model(seed=12, n_ctx=32)
    S = 10
    with RowCounter(model) as c:
        shared = attribute_generation(model, PROMPT, CONT, method="ig", n_steps=S)
    with RowCounter(model) as c2:
        attribute_generation(model, PROMPT, CONT, method="ig", n_steps=2 * S)
    # S more path points cost S more rows (one per point for all G steps), not G·S
    assert c2.rows - c.rows == S
    # a tight budget: smaller chunks, same numbers
    tight = attribute_generation(model, PROMPT, CONT, method="ig", n_steps=S, max_memory="300kB")
    torch.testing.assert_close(tight.matrix, shared.matrix, atol=1e-5, rtol=1e-5)


def test_rows_with_different_inputs_still_get_their_own_gradients():
    """Same tokens but different baselines per example: not shareable, so per-row — and the
    fan-out must not be used (its result would be the first example's path for all)."""
    model = make_model(seed=13, n_ctx=32)
    toks = PROMPT[None].expand(3, -1)
    target = targets.logit(torch.tensor([1, 2, 3]))
    emb = model.embed(toks).detach()
    for base in (torch.stack([torch.zeros_like(emb[0]), 0.5 * emb[1], -emb[2]]),  # per example: not shared
                 0.3 * emb):  # the same for all: shared
        together = path_integral(model, toks, target, "hook_embed", baseline=base, alphas=[0.25, 0.75], weights=[0.5, 0.5])
        for i in range(3):
            alone = path_integral(model, toks[i : i + 1], target.take(torch.tensor([i])), "hook_embed", baseline=base[i : i + 1],
                                  alphas=[0.25, 0.75], weights=[0.5, 0.5])
            torch.testing.assert_close(together.attributions[i], alone.attributions[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.f_path[:, :, i], alone.f_path[:, :, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.f_baseline[i], alone.f_baseline[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("method", "kw"), [
    ("occlusion", {}),
    ("occlusion", {"baseline": 3}),
    ("attention", {}),
    ("rollout", {}),
])
def test_forward_only_methods_share_each_variant_across_steps(method, kw, unchanged):
    """Occlusion / attention / rollout of a generation equal the per-step loop, and each
    variant (window, or the one pattern forward) runs once for all steps, not once per step."""
    model = make_model(seed=14, n_ctx=32)
    with unchanged(model), RowCounter(model) as c:
        g = attribute_generation(model, PROMPT, CONT, method=method, **kw)
    ref, _ = _per_step_reference(model, method, **kw)
    torch.testing.assert_close(g.matrix, ref, atol=3e-5, rtol=1e-4)
    assert ref.abs().sum() > 0
    n_ctx = len(PROMPT) + len(CONT) - 1
    # occlusion: the clean row + one per window (≤ n_ctx) + the step scores' forward; attention: 2 forwards
    limit = 2 * n_ctx + 2 if method == "occlusion" else 2
    assert c.rows <= limit, (c.rows, limit)
    with RowCounter(model) as c_sep:
        _per_step_reference(model, method, **kw)
    assert c_sep.rows > 2 * c.rows


def test_variants_that_differ_per_example_are_not_shared():
    """evaluate_at_hook: identical tokens but edits that differ per example run per row."""
    from mechattr.attribution.paths import evaluate_at_hook

    model = make_model(seed=15, n_ctx=32)
    toks = PROMPT[None].expand(3, -1)
    target = targets.logit(torch.tensor([1, 2, 3]))
    scale = torch.tensor([0.0, 0.5, 1.0])

    def make(x, v, e):  # variant v scales position v by a per-example factor
        out = x.clone()
        out[torch.arange(len(v)), v] *= scale[e].to(x.dtype)[:, None]
        return out

    together = evaluate_at_hook(model, toks, target, "hook_embed", make, 4)
    for i in range(3):
        alone = evaluate_at_hook(model, toks[i : i + 1], target.take(torch.tensor([i])), "hook_embed",
                                 lambda x, v, e, i=i: make(x, v, torch.full_like(e, i)), 4)
        torch.testing.assert_close(together[:, i], alone[:, 0], atol=1e-5, rtol=1e-5)
