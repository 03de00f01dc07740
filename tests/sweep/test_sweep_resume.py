"""Resume: SIGKILL mid-run + rerun equals an uninterrupted run; partial files are discarded; other settings refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from mechattr.sweep import shards
from mechattr.sweep.runner import sweep
from tests.sweep.conftest import SPEC
from tests.sweep.conftest import rows as _rows

KILL_SCRIPT = """
import sys
from mechattr.sweep.runner import sweep
sweep("organism:induction", sys.argv[1], "tokens", sys.argv[2], options={"method": "ig", "n_steps": 8}, batch_size=20, progress=False)
"""


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path, data):
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data[400]), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while len(shards.shard_files(out)) < 3 and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(shards.shard_files(out))
    assert 0 < n_before < 20, "the kill must land mid-run"
    res = sweep(SPEC, data[400], "tokens", out, options={"method": "ig", "n_steps": 8}, batch_size=20, progress=False)
    assert res.n_resumed == 20 * n_before and res.n_run == 400 - res.n_resumed
    sweep(SPEC, data[400], "tokens", tmp_path / "whole", options={"method": "ig", "n_steps": 8}, batch_size=20, progress=False)
    a, b = _rows(out), _rows(tmp_path / "whole")
    assert a["id"].is_unique and a["id"].tolist() == b["id"].tolist()
    cols = ["id", "line", "answer_id", "completeness_error"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert all(np.array_equal(x, y) for x, y in zip(a["scores"], b["scores"]))
    again = sweep(SPEC, data[400], "tokens", out, options={"method": "ig", "n_steps": 8}, batch_size=20, progress=False)
    assert again.n_run == 0 and again.n_resumed == 400


def test_resume_discards_partial_files(tmp_path, data):
    out = tmp_path / "o"
    sweep(SPEC, data[16], "heads", out, batch_size=8, progress=False, max_row_values=4)
    (out / "shards" / "part-000009.parquet.tmp").write_bytes(b"half a shard")
    (out / "tensors" / "part-000007.safetensors").write_bytes(b"orphan")
    res = sweep(SPEC, data[16], "heads", out, batch_size=8, progress=False, max_row_values=4)
    assert sorted(res.discarded) == ["part-000007.safetensors", "part-000009.parquet.tmp"] and res.n_run == 0


def test_rerun_with_other_settings_is_refused(tmp_path, data):
    sweep(SPEC, data[16], "tokens", tmp_path / "o", options={"method": "saliency"}, progress=False)
    with pytest.raises(ValueError, match="options"):
        sweep(SPEC, data[16], "tokens", tmp_path / "o", options={"method": "ig"}, progress=False)
    res = sweep(SPEC, data[16], "tokens", tmp_path / "o", options={"method": "ig", "n_steps": 4}, overwrite=True, progress=False)
    assert res.n_run == 16


