"""Sweeps give the same per-example numbers as calling the functions directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechattr
from mechattr import organisms, targets
from mechattr.runtime.tl import HAS_HOOKED
from mechattr.sweep import aggregate
from mechattr.sweep.runner import sweep
from tests.sweep.conftest import SPEC
from tests.sweep.conftest import direct_batch as _direct_batch
from tests.sweep.conftest import rows as _rows


def test_sweep_2000_prompts_equals_direct_call_per_example(tmp_path, model, data):
    res = sweep(SPEC, data[2000], "tokens", tmp_path / "o", options={"method": "input_x_gradient"}, batch_size=250, progress=False)
    assert res.n_run == 2000 and not res.malformed
    df = _rows(tmp_path / "o")
    b = _direct_batch(2000)
    direct = mechattr.attribute_tokens(model, b.tokens, b.target, method="input_x_gradient").scores
    order = np.argsort([f"induction-3-{i}" for i in range(2000)])
    assert df["id"].tolist() == [f"induction-3-{i}" for i in order]
    got = torch.tensor(np.stack(df["scores"].to_numpy()))
    torch.testing.assert_close(got, direct[torch.as_tensor(order)].float(), rtol=1e-5, atol=1e-5)
    assert df["answer_id"].tolist() == b.answers[torch.as_tensor(order)].tolist()


@pytest.mark.parametrize("analysis,options,call", [
    ("heads", {}, lambda m, b: mechattr.attribute_heads(m, b.tokens, b.target, corrupted=b.corrupted).reshape(-1)),
    ("edges", {"method": "eap"}, lambda m, b: mechattr.attribute_edges(m, b.tokens, b.corrupted, b.target, method="eap").scores),
    ("activation_patch", {}, lambda m, b: mechattr.activation_patch(m, b.tokens, b.corrupted, b.target).reshape(-1)),
    ("path_patch", {"senders": ["L0H1", "L0H2"], "receivers": "logits"},
     lambda m, b: mechattr.path_patch(m, b.tokens, b.corrupted, b.target, ["L0H1", "L0H2"], "logits").reshape(-1)),
    ("ablation_scan", {"mode": "zero"}, lambda m, b: mechattr.ablation_scan(m, b.tokens, b.target, mode="zero").reshape(-1)),
])
def test_batch_mean_analyses_per_example_rows_equal_direct_calls(tmp_path, model, data, analysis, options, call):
    if analysis == "edges" and not HAS_HOOKED:
        pytest.skip("the organisms load as native bridges on TransformerLens 4: no split q/k/v inputs for edges")
    sweep(SPEC, data[16], analysis, tmp_path / "o", options=options, batch_size=8, progress=False)
    df = _rows(tmp_path / "o")
    full = _direct_batch(16)
    for _, r in df.iterrows():
        i = int(r["id"].rsplit("-", 1)[1])
        one = organisms.TaskBatch(full.tokens[i:i + 1], full.answers[i:i + 1], full.corrupted[i:i + 1], full.corrupted_answers[i:i + 1],
                                  targets.logit(full.answers[i:i + 1], pos=-1), full.source_positions[i:i + 1])
        torch.testing.assert_close(torch.tensor(r["scores"]), call(model, one).float().cpu(), rtol=1e-5, atol=1e-5)


def test_per_batch_rows_weight_to_the_dataset_mean(tmp_path, data):
    sweep(SPEC, data[16], "heads", tmp_path / "pb", options={"per_example": False}, batch_size=8, progress=False)
    sweep(SPEC, data[16], "heads", tmp_path / "pe", batch_size=8, progress=False)
    pb = _rows(tmp_path / "pb")
    assert len(pb) == 2 and sorted(sum(pb["batch_ids"].map(list), [])) == sorted(f"induction-3-{i}" for i in range(16))
    a, b = aggregate.component_means(tmp_path / "pb", n_boot=20), aggregate.component_means(tmp_path / "pe", n_boot=20)
    assert a["component"].tolist() == [f"L{i}H{j}" for i in range(2) for j in range(4)]
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-4, atol=1e-5)


