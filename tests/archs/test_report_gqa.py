"""`mechattr report` runs end to end on a grouped-query-attention model, as a
HookedTransformer (TransformerLens 3) and as a TransformerBridge, with the same verdicts,
and leaves no process-wide setting changed."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mechattr.report.cli import run_report
from mechattr.runtime.tl import HAS_HOOKED

PROMPTS = ["w1 w5 w9 w12 w7 w3 w5", "w1 w7 w4 w18 w6 w3 w7"]
CORRUPT = ["w1 w5 w9 w13 w7 w3 w5", "w1 w7 w4 w19 w6 w3 w7"]


def _verdicts(out):
    rep = json.loads((out / "report.json").read_text())
    return [(c["id"], c["verdict"]) for c in rep["claims"]]


def test_report_on_gqa_model(arch_dir, tmp_path):
    d = arch_dir("llama_gqa")
    threads, env = torch.get_num_threads(), dict(os.environ)
    kinds = [True, False] if HAS_HOOKED else [True]
    got = {}
    for bridge in kinds:
        out = tmp_path / f"bridge{bridge}"
        run_report(model=str(d), out=out, prompts=PROMPTS, corrupt=CORRUPT, methods="ig,saliency", quiet=True,
                   threads=1, bridge=bridge, n_draws=8)
        assert (out / "report.html").exists()
        got[bridge] = _verdicts(out)
        arch = json.loads((out / "report.json").read_text())["settings"]["architecture"]
        assert arch["attention"] == "GQA" and arch["kind"] == ("bridge" if bridge else "hooked")
        assert "GQA" in (out / "report.html").read_text()
        assert got[bridge] and all(v in {"confirmed", "not confirmed", "underpowered", "redundant"} or isinstance(v, str) for _, v in got[bridge])
    assert torch.get_num_threads() == threads and dict(os.environ) == env
    if len(got) == 2:
        assert got[True] == got[False]


def test_report_refuses_unknown_bridge_model(tmp_path):
    with pytest.raises(Exception, match="config.json|not a local directory"):
        run_report(model=str(tmp_path), out=tmp_path / "o", prompts=PROMPTS, quiet=True)
