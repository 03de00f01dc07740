"""The runtime's measured query/key layout (mechattr.runtime.qk) reproduces every model's
attention pattern, or says it cannot; AtP* uses it, so it is right on GPT-Neo (no scaling,
whatever its bridge config says) and refuses models whose scores are not q·k/scale."""

from __future__ import annotations

import pytest
import torch

import mechattr
from mechattr import targets
from mechattr.runtime.qk import qk_layout
from mechattr.runtime.tl import HAS_HOOKED
from tests.archs.conftest import ARCHS

KINDS = ["bridge", "hooked"] if HAS_HOOKED else ["bridge"]
TOKS = torch.tensor([[1, 5, 9, 12, 7, 3, 5, 9], [1, 7, 4, 18, 6, 3, 11, 20]])
COR = TOKS.clone()
COR[:, 3] = 17
TGT = targets.logit_diff(torch.tensor([3, 4]), torch.tensor([5, 6]))


def _model(loaded, name, kind):
    try:
        return loaded(name, kind)
    except Exception as err:  # an architecture TransformerLens cannot build this way
        pytest.skip(f"{name} as {kind} does not load here: {type(err).__name__}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ARCHS)
def test_layout_reproduces_scores_on_fresh_input(loaded, name, kind):
    m = _model(loaded, name, kind)
    lay = qk_layout(m)
    _, cache = m.run_with_cache(TOKS)
    for layer in range(m.cfg.n_layers):
        if not lay.ok(layer):
            assert lay.reason[layer]
            continue
        q, k = cache[lay.q_hooks[layer]].double(), cache[lay.k_hooks[layer]].double()
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        p = cache[f"blocks.{layer}.attn.hook_pattern"].double()
        scores = torch.einsum("bthd,bshd->bhts", q, k) / lay.scales[layer]
        live = p > 1e-12
        ref = torch.where(live, scores, torch.full_like(scores, -torch.inf)).softmax(-1)  # softmax over the attended keys
        torch.testing.assert_close(ref[live], p[live], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gpt_neo_scores_are_unscaled(loaded, kind):
    m = _model(loaded, "gptneo", kind)
    lay = qk_layout(m)
    assert all(s == pytest.approx(1.0, rel=1e-6) for s in lay.scales)


@pytest.mark.skipif(not HAS_HOOKED, reason="HookedTransformer-only: TransformerLens 4 has none")
def test_atp_star_on_gpt_neo_bridge_equals_hooked(loaded):
    ht, br = _model(loaded, "gptneo", "hooked"), _model(loaded, "gptneo", "bridge")
    a = mechattr.attribute_heads(ht, TOKS, TGT, corrupted=COR, method="atp_star", grad_drop=False)
    b = mechattr.attribute_heads(br, TOKS, TGT, corrupted=COR, method="atp_star", grad_drop=False)
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ARCHS)
def test_atp_star_runs_or_refuses_clearly(loaded, name, kind):
    m = _model(loaded, name, kind)
    lay = qk_layout(m)
    if all(lay.ok(layer) for layer in range(m.cfg.n_layers)):
        out = torch.as_tensor(mechattr.attribute_heads(m, TOKS, TGT, corrupted=COR, method="atp_star"))
        assert out.shape == (m.cfg.n_layers, m.cfg.n_heads) and torch.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match="method='atp'"):
            mechattr.attribute_heads(m, TOKS, TGT, corrupted=COR, method="atp_star")
