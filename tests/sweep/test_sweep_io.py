"""Sweep datasets (organism export, malformed rows), big tensors, aggregates from disk, the public API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mechattr
from mechattr import organisms
from mechattr.inputs import prepare_tokens
from mechattr.sweep import aggregate, shards
from mechattr.sweep.datasets import MalformedDataset, write_organism_dataset
from mechattr.sweep.runner import sweep
from tests.sweep.conftest import SPEC
from tests.sweep.conftest import rows as _rows


@pytest.mark.parametrize("task", ["induction", "ioi", "sentiment"])
def test_organism_dataset_prompts_tokenize_back_to_the_task_batch(tmp_path, task):
    path = write_organism_dataset(task, 6, tmp_path / "d.jsonl", seed=1)
    m = mechattr.load_model(f"organism:{task}", device="cpu")
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    b = organisms.task(task).sample(6, seed=1)
    assert torch.equal(prepare_tokens(m, [r["prompt"] for r in recs]).tokens.cpu(), b.tokens)
    assert torch.equal(prepare_tokens(m, [r["corrupted"] for r in recs]).tokens.cpu(), b.corrupted)
    assert [organisms.task(task).token_id(r["answer"]) for r in recs] == b.answers.tolist()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_rows_are_reported_with_line_numbers_and_skipped_or_refused(tmp_path, data):
    good = data[16].read_text().splitlines()[:4]
    bad = _write(tmp_path / "bad.jsonl", [
        good[0],
        json.dumps({"id": "x1", "answer": "t3"}),                                            # 2: no prompt
        json.dumps({**json.loads(good[1]), "answer": "t3 t4"}),                               # 3: two-token answer
        good[2],
        json.dumps({**json.loads(good[3]), "id": json.loads(good[0])["id"]}),                 # 5: repeated id
        "{not json",                                                                          # 6
        json.dumps({"id": "x2", "prompt": "t1 zebra t2", "answer": "t3"}),                     # 7: unknown word
        json.dumps({"id": "x3", "prompt": "t1 t2 t3", "answer": "t4", "corrupted": "t1 t2"}),  # 8: corrupted length
    ])
    with pytest.raises(MalformedDataset, match="line 2") as err:
        sweep(SPEC, bad, "tokens", tmp_path / "r", options={"method": "saliency"}, on_error="raise", progress=False)
    assert [m.line for m in err.value.rows] == [2, 3, 5, 6, 7, 8]
    assert not (tmp_path / "r" / "shards").exists()
    res = sweep(SPEC, bad, "tokens", tmp_path / "s", options={"method": "saliency"}, on_error="skip", progress=False)
    assert [m.line for m in res.malformed] == [2, 3, 5, 6, 7, 8]
    assert "not a single token" in str(res.malformed[1]) and "repeated" in str(res.malformed[2])
    logged = [json.loads(x)["line"] for x in (tmp_path / "s" / "malformed.jsonl").read_text().splitlines()]
    assert logged == [2, 3, 5, 6, 7, 8]
    assert sorted(_rows(tmp_path / "s")["line"]) == [1, 4]


def test_big_scores_go_to_safetensors_and_aggregate_reads_them(tmp_path, data):
    sweep(SPEC, data[16], "heads", tmp_path / "big", batch_size=8, progress=False, max_row_values=4)
    sweep(SPEC, data[16], "heads", tmp_path / "small", batch_size=8, progress=False)
    big = _rows(tmp_path / "big")
    assert big["scores"].isna().all() and big["tensor_ref"].str.startswith("tensors/").all()
    t = shards.load_tensor(tmp_path / "big", big["tensor_ref"][0])
    np.testing.assert_allclose(t.numpy(), _rows(tmp_path / "small")["scores"][0])
    np.testing.assert_allclose(aggregate.component_means(tmp_path / "big", n_boot=10)["mean"],
                               aggregate.component_means(tmp_path / "small", n_boot=10)["mean"], rtol=1e-6)


def test_aggregates_match_pandas_on_the_loaded_table(tmp_path, data):
    out = tmp_path / "o"
    sweep(SPEC, data[400], "tokens", out, options={"method": "input_x_gradient"}, batch_size=64, progress=False)
    df = _rows(out)
    long = pd.DataFrame({"token": np.concatenate(df["tokens"].to_numpy()), "s": np.concatenate(df["scores"].to_numpy()),
                         "pos": np.concatenate([np.arange(len(s)) for s in df["scores"]])})
    tok = aggregate.by_token(out).set_index("token")
    ref = long.groupby("token")["s"].agg(["mean", "count"])
    np.testing.assert_allclose(tok.loc[ref.index, "mean"], ref["mean"], rtol=1e-5, atol=1e-6)
    assert (tok.loc[ref.index, "n"] == ref["count"]).all()
    pos = aggregate.by_position(out).set_index("pos")
    np.testing.assert_allclose(pos["mean"], long.groupby("pos")["s"].mean(), rtol=1e-5, atol=1e-6)
    assert aggregate.completeness(out)["n"] == 0  # input_x_gradient reports no completeness error
    page = aggregate.summary(out)
    assert page.exists() and "plotly" in page.read_text()[:200000].lower()


def test_bootstrap_ci_brackets_the_mean_and_matches_the_normal_interval_width(tmp_path, data):
    sweep(SPEC, data[400], "tokens", tmp_path / "o", batch_size=200, progress=False, options={"method": "input_x_gradient"})
    cm = aggregate.component_means(tmp_path / "o", n_boot=400)
    assert ((cm["ci_low"] <= cm["mean"] + 1e-9) & (cm["mean"] <= cm["ci_high"] + 1e-9)).all()
    ref = np.stack(_rows(tmp_path / "o")["scores"].to_numpy())
    np.testing.assert_allclose(cm["mean"], ref.mean(0), rtol=1e-5, atol=1e-6)
    normal = 2 * 1.96 * ref.std(0, ddof=1) / np.sqrt(len(ref))
    ratio = (cm["ci_high"] - cm["ci_low"]).to_numpy()[1:] / normal[1:]  # position 0 (BOS) is always 0
    assert ((ratio > 0.75) & (ratio < 1.25)).all(), ratio


def test_mechattr_sweep_is_callable_and_a_package(tmp_path, data):
    res = mechattr.sweep(SPEC, data[16], "tokens", tmp_path / "o", options={"method": "saliency"}, progress=False)
    assert res.n_run == 16 and callable(mechattr.sweep) and mechattr.sweep.aggregate is aggregate


def test_cli_sweep_data_sweep_and_summary(tmp_path, capsys):
    from mechattr.cli import main

    d = tmp_path / "d.jsonl"
    assert main(["sweep-data", "induction", "12", "--out", str(d)]) == 0
    assert main(["sweep", SPEC, str(d), "tokens", "--out", str(tmp_path / "o"), "-o", "method=ig", "-o", "n_steps=4",
                 "--batch-size", "5", "--no-progress", "--summary"]) == 0
    assert "12 examples run" in capsys.readouterr().out and (tmp_path / "o" / "summary.html").exists()
    assert main(["sweep", SPEC, str(d), "tokens", "--out", str(tmp_path / "o"), "-o", "method=saliency", "--no-progress"]) == 2
    assert main(["sweep", SPEC, str(d), "nope", "--out", str(tmp_path / "p"), "--no-progress"]) == 2


def test_bad_arguments_raise_value_errors_naming_them(tmp_path, data):
    for kw, msg in [({"engine": "dask"}, "engine"), ({"on_error": "ignore"}, "on_error"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ValueError, match=msg):
            sweep(SPEC, data[16], "tokens", tmp_path / "o", progress=False, **kw)
    with pytest.raises(ValueError, match="known"):
        sweep(SPEC, data[16], "nope", tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="format"):
        sweep(SPEC, tmp_path / "x.txt", "tokens", tmp_path / "o", progress=False)
