"""The background shard writer and dataset prefetch: errors reach the caller, no partial shard, bounded queue, grouped shards."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import torch

from mechattr.sweep import shards, writer
from mechattr.sweep.analyses import Prepared, Rows
from mechattr.sweep.runner import sweep
from tests.sweep.conftest import rows as _rows

SAL = {"method": "saliency"}


def _failing_write_table(monkeypatch, fail_at: int) -> list[int]:
    """Make the ``fail_at``-th Parquet write (0-based) write half a file and raise, as a full disk would."""
    real, calls = shards.pq.write_table, []

    def write_table(table, where, **kw):
        calls.append(len(calls))
        if len(calls) - 1 == fail_at:
            with open(where, "wb") as f:
                f.write(b"PAR1 half a shard")
            raise OSError(28, "No space left on device (test)")
        return real(table, where, **kw)

    monkeypatch.setattr(shards.pq, "write_table", write_table)
    return calls


@pytest.mark.parametrize("max_row_values", [shards.MAX_ROW_VALUES, 4])  # scores in Parquet / in a safetensors file
def test_write_error_on_the_writer_thread_is_raised_by_sweep_and_leaves_no_partial_shard(tmp_path, model, data, monkeypatch,
                                                                                         max_row_values):
    out = tmp_path / "o"
    calls = _failing_write_table(monkeypatch, fail_at=2)
    with pytest.raises(OSError, match="No space left"):
        sweep(model, data[16], "tokens", out, options=SAL, batch_size=2, progress=False, max_row_values=max_row_values)
    assert len(calls) == 3  # the writer stopped at the error: nothing after it was written
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == ["part-000000.parquet", "part-000001.parquet"]  # the failed shard: no file, no .tmp
    tensors = sorted(p.name for p in (out / "tensors").iterdir()) if (out / "tensors").exists() else []
    assert tensors == ([] if max_row_values > 4 else ["part-000000.safetensors", "part-000001.safetensors"])
    assert sorted(_rows(out)["id"]) == sorted(f"induction-3-{i}" for i in range(4))
    monkeypatch.undo()
    res = sweep(model, data[16], "tokens", out, options=SAL, batch_size=2, progress=False, max_row_values=max_row_values)
    assert res.n_resumed == 4 and res.n_run == 12 and not res.discarded
    sweep(model, data[16], "tokens", tmp_path / "whole", options=SAL, batch_size=2, progress=False, max_row_values=max_row_values)
    cols = ["id", "line", "answer_id", "shard", "tensor_ref"]
    pd.testing.assert_frame_equal(_rows(out)[cols], _rows(tmp_path / "whole")[cols])


def test_writer_queue_is_bounded_while_writes_are_slow(monkeypatch, tmp_path):
    written, added, most = [], [], [0]

    def slow_write(out, index, parts, **kw):
        time.sleep(0.05)
        written.append(index)
        return tmp_path / str(index)

    monkeypatch.setattr(shards, "write_parts", slow_write)
    w = writer.ShardWriter(tmp_path, analysis="x", settings={}, max_queued=1)
    empty = Prepared([], [], torch.zeros(0, 1), None, None, torch.zeros(0), [], None)
    for i in range(8):
        w.add(i, empty, Rows(None), 0.0)
        added.append(i)
        most[0] = max(most[0], len(added) - len(written))
    w.close()
    assert written == list(range(8))
    assert most[0] <= 2  # one shard being written + one queued: add() waited instead of piling batches up
    assert most[0] >= 2  # and it did run behind (the writes were slow), so the bound was exercised


def test_per_batch_rows_are_grouped_into_shards_named_by_their_first_batch(tmp_path, model, data):
    opts = {"per_example": False}
    for group in (None, 1, 3):
        sweep(model, data[16], "heads", tmp_path / str(group), options=opts, batch_size=2, progress=False, batches_per_shard=group)
    files = {g: [p.name for p in shards.shard_files(tmp_path / str(g))] for g in (None, 1, 3)}
    assert files[None] == ["part-000000.parquet"]  # 8 one-row batches: one shard (auto: 16 per shard)
    assert files[1] == [f"part-{i:06d}.parquet" for i in range(8)]
    assert files[3] == ["part-000000.parquet", "part-000003.parquet", "part-000006.parquet"]
    cols = ["id", "line", "batch_ids", "n_examples", "scores"]
    ref = _rows(tmp_path / "1")[cols].map(lambda v: list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
    for g in (None, 3):
        got = _rows(tmp_path / str(g))[cols].map(lambda v: list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
        pd.testing.assert_frame_equal(got, ref)
    res = sweep(model, data[16], "heads", tmp_path / "3", options=opts, batch_size=2, progress=False, batches_per_shard=3)
    assert res.n_run == 0 and res.n_resumed == 16  # grouped shards resume like single ones
    with pytest.raises(ValueError, match="batches_per_shard"):
        sweep(model, data[16], "heads", tmp_path / "bad", batch_size=2, progress=False, batches_per_shard=0)


def test_prefetch_yields_in_order_raises_the_producers_error_and_stops_when_closed():
    def items(n, fail=False):
        yield from range(n)
        if fail:
            raise KeyError("bad row")

    assert list(writer.prefetch(items(50))) == list(range(50))
    got = []
    with pytest.raises(KeyError, match="bad row"):
        for x in writer.prefetch(items(5, fail=True)):
            got.append(x)
    assert got == list(range(5))
    before = threading.active_count()
    gen = writer.prefetch(items(10**6))
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before
