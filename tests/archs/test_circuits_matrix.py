"""Circuits on every architecture: edge enumeration, EAP and exact edge patching against the
slow one-edge reference (raw ``run_with_hooks``, tests/circuits/reference.py), and the
every-edge-ablated identity — or, where TransformerLens cannot split a model's q/k/v inputs,
a clear ``SplitUnsupported`` error (never a number)."""

from __future__ import annotations

import pytest
import torch

from mechattr.circuits import attribute_edges, model_edges
from mechattr.runtime.split import SplitUnsupported, layout
from tests.circuits.reference import slow_eap_scores, slow_edge_effects

from .conftest import ARCHS
from .test_matrix import CLEAN, CORR, KINDS, TARGET, _model


def _n_edges(lay) -> int:
    """Edges by formula: per layer, q/k/v receivers read the input and every earlier head
    and MLP; the MLP also reads its own layer's heads (not under parallel attention/MLP);
    the logits read every sender."""
    L, H, K = lay.n_layers, lay.n_heads, lay.n_kv_heads
    mlp = 0 if lay.attn_only else 1
    total = 0
    for layer in range(L):
        up = 1 + layer * (H + mlp)
        total += (H + 2 * K) * up
        if mlp:
            total += up + (0 if lay.parallel else H)
    return total + 1 + L * (H + mlp)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ARCHS)
def test_edges_match_the_slow_reference(loaded, name, kind):
    m = _model(loaded, name, kind)
    es = model_edges(m)
    assert len(es) == _n_edges(layout(m))
    try:
        eap = attribute_edges(m, CLEAN, CORR, TARGET, method="eap")
    except SplitUnsupported as err:
        assert "q/k/v" in str(err) or "split" in str(err)
        return
    ref = slow_eap_scores(m, CLEAN, CORR, TARGET, es)
    torch.testing.assert_close(eap.scores, ref.float(), atol=1e-4, rtol=1e-3)
    some = es[:: max(1, len(es) // 12)]
    ex = attribute_edges(m, CLEAN, CORR, TARGET, method="exact", edges=some)
    torch.testing.assert_close(ex.scores, slow_edge_effects(m, CLEAN, CORR, TARGET, some).float(), atol=1e-4, rtol=1e-3)
