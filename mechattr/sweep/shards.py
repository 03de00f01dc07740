"""Sweep output: Parquet shards (one row per example), safetensors for big tensors, a manifest, resume.

Layout of ``out/``::

    manifest.json                 model spec, analysis + options, batch size, dataset, versions
    shards/part-000042.parquet    one shard per batch, or per group of batches (written to ``.tmp`` then renamed: atomic)
    tensors/part-000042.safetensors   scores of rows too large for a Parquet list (``tensor_ref``)
    malformed.jsonl               rows left out (``on_error="skip"``), with line numbers

A shard exists only once complete, so after a crash (even SIGKILL) the finished ids are the
ids of the ``.parquet`` files; ``.tmp`` files and tensor files without their shard are
discarded on resume. Score axis labels (``names``) ride in each shard's schema metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mechattr.sweep.analyses import Prepared, Rows

SCHEMA_VERSION = 1
MAX_ROW_VALUES = 65_536

# types of the columns adapters may add (others are inferred)
_EXTRA_TYPES = {
    "tokens": pa.list_(pa.string()),
    "completeness_error": pa.float64(),
    "n_examples": pa.int64(),
    "verdicts": pa.string(),
    "report": pa.string(),
}


def shard_dir(out: str | Path) -> Path:
    return Path(out) / "shards"


def shard_name(index: int) -> str:
    return f"part-{index:06d}"


def shard_files(out: str | Path) -> list[Path]:
    """Finished shards, in name order."""
    d = shard_dir(out)
    return sorted(d.glob("part-*.parquet")) if d.exists() else []


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)``, fsync it once, rename to ``path``; a failed write leaves no ``.tmp`` behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clean_partial(out: str | Path) -> list[str]:
    """Remove ``.tmp`` files and tensor files whose shard never finished; return their names."""
    out = Path(out)
    gone = []
    for d in (out / "shards", out / "tensors"):
        for p in d.glob("*.tmp") if d.exists() else []:
            p.unlink()
            gone.append(p.name)
    done = {p.stem for p in shard_files(out)}
    for p in (out / "tensors").glob("*.safetensors") if (out / "tensors").exists() else []:
        if p.stem not in done:
            p.unlink()
            gone.append(p.name)
    return gone


def finished_ids(out: str | Path) -> tuple[set[str], int]:
    """Ids already in finished shards, and the next free shard index (reads two columns only)."""
    ids: set[str] = set()
    last = -1
    for p in shard_files(out):
        last = max(last, int(p.stem.split("-")[1]))
        t = pq.read_table(p, columns=["id", "batch_ids"])
        ids.update(t.column("id").to_pylist())
        for lst in t.column("batch_ids").to_pylist():
            ids.update(lst or [])
    return ids, last + 1


def shard_names_meta(out: str | Path) -> list[str] | None:
    """The score axis labels recorded in the first shard (``None`` when positions / none)."""
    files = shard_files(out)
    if not files:
        return None
    meta = pq.read_schema(files[0]).metadata or {}
    raw = meta.get(b"names")
    return None if raw is None else json.loads(raw)


def _repeat(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def _fixed_lists(values: Any, n: int, width: int, type_: pa.DataType) -> pa.Array:
    """``n`` lists of ``width`` items each over the flat ``values`` (no per-row Python objects)."""
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), pa.array(values, type_))


def batch_table(name: str, batch: Prepared, rows: Rows, *, analysis: str, settings: str, seconds: float,
                max_row_values: int = MAX_ROW_VALUES, key_offset: int = 0) -> tuple[pa.Table, dict[str, Any] | None]:
    """One batch's rows as an Arrow table for shard ``name``, and its big-row tensors (``None`` when none).

    Columns are built from whole arrays (the tensor's buffer, numpy, repeated scalars), not
    per-row Python objects. ``settings``: the JSON string; ``key_offset``: the row number of
    the batch's first row in the shard (keys in the shard's tensor file).
    """
    n_rows = 1 if rows.per_batch else len(batch)
    cols: dict[str, Any] = {}
    if rows.per_batch:
        cols["id"] = pa.array([batch.ids[0]], pa.string())
        cols["line"] = pa.array([batch.lines[0]], pa.int64())
        cols["batch_ids"] = pa.array([list(batch.ids)], pa.list_(pa.string()))
        cols["answer_id"] = pa.nulls(1, pa.int64())
        cols["answer_given"] = pa.array([all(batch.answer_given)], pa.bool_())
    else:
        cols["id"] = pa.array(batch.ids, pa.string())
        cols["line"] = pa.array(np.asarray(batch.lines, dtype=np.int64), pa.int64())
        cols["batch_ids"] = pa.nulls(n_rows, pa.list_(pa.string()))
        cols["answer_id"] = pa.array(batch.answers.cpu().numpy().astype(np.int64), pa.int64())
        cols["answer_given"] = pa.array(np.asarray(batch.answer_given, dtype=bool), pa.bool_())
    cols["shard"] = _repeat(name, n_rows, pa.string())
    ref: pa.Array = pa.nulls(n_rows, pa.string())
    tensors = None
    if rows.scores is not None:
        s = rows.scores.detach().float().cpu().contiguous()
        shape = list(s.shape[1:])
        per_row = int(s[0].numel()) if s.shape[0] else 0
        cols["scores_shape"] = _fixed_lists(np.tile(np.asarray(shape, np.int32), n_rows), n_rows, len(shape), pa.int32())
        if per_row > max_row_values:
            keys = [str(key_offset + i) for i in range(n_rows)]
            tensors = {k: s[i] for i, k in enumerate(keys)}
            ref = pa.array([f"tensors/{name}.safetensors#{k}" for k in keys], pa.string())
            cols["scores"] = pa.nulls(n_rows, pa.list_(pa.float32()))
        else:
            cols["scores"] = _fixed_lists(s.reshape(-1).numpy(), n_rows, per_row, pa.float32())
    else:
        cols["scores_shape"] = pa.nulls(n_rows, pa.list_(pa.int32()))
        cols["scores"] = pa.nulls(n_rows, pa.list_(pa.float32()))
    cols["tensor_ref"] = ref
    for k, v in rows.columns.items():
        cols[k] = v if isinstance(v, pa.Array) else pa.array(v, _EXTRA_TYPES.get(k))
    cols["analysis"] = _repeat(analysis, n_rows, pa.string())
    cols["settings"] = _repeat(settings, n_rows, pa.string())
    cols["time_s"] = pa.array(np.full(n_rows, seconds / n_rows), pa.float64())
    return pa.table(cols), tensors


def settings_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def write_parts(out: str | Path, index: int, parts: list[tuple[Prepared, Rows, float]], *, analysis: str,
                settings: dict[str, Any], max_row_values: int = MAX_ROW_VALUES) -> Path:
    """Write several batches' rows (``(batch, rows, seconds)``, in order) as one shard ``index``.

    Tensors first, then the Parquet file, each to ``.tmp``, fsync'd once and renamed; if the
    Parquet write fails the tensor file goes too, so nothing of the shard is left.
    """
    out = Path(out)
    name = shard_name(index)
    settings_s = settings_json(settings)
    tables, tensors, names = [], {}, None
    for batch, rows, seconds in parts:
        t, big = batch_table(name, batch, rows, analysis=analysis, settings=settings_s, seconds=seconds,
                             max_row_values=max_row_values, key_offset=sum(len(x) for x in tables))
        tables.append(t)
        tensors.update(big or {})
        names = rows.names if rows.names is not None else names
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    if names is not None:
        table = table.replace_schema_metadata({b"names": json.dumps(names).encode()})
    tensor_file = out / "tensors" / f"{name}.safetensors"
    if tensors:
        from safetensors.torch import save_file

        tensor_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(tensor_file, lambda p: save_file(tensors, str(p)))
    d = shard_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.parquet"
    try:
        _atomic_write(path, lambda p: pq.write_table(table, p))
    except BaseException:
        if tensors:
            tensor_file.unlink(missing_ok=True)
        raise
    return path


def write_shard(out: str | Path, index: int, batch: Prepared, rows: Rows, *, analysis: str, settings: dict[str, Any],
                seconds: float, max_row_values: int = MAX_ROW_VALUES) -> Path:
    """Write one batch's rows as shard ``index`` (tensors first, then the Parquet file, each atomically)."""
    return write_parts(out, index, [(batch, rows, seconds)], analysis=analysis, settings=settings, max_row_values=max_row_values)


def load_tensor(out: str | Path, ref: str) -> Any:
    """The tensor a row's ``tensor_ref`` (``tensors/<shard>.safetensors#<key>``) points to."""
    from safetensors import safe_open

    file, _, key = ref.partition("#")
    with safe_open(str(Path(out) / file), framework="pt") as f:
        return f.get_tensor(key)


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    p = Path(out) / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else None


def write_manifest(out: str | Path, manifest: dict[str, Any]) -> Path:
    p = Path(out) / "manifest.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(p, lambda t: t.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str)))
    return p


# the manifest fields that must agree for a rerun to resume (not the versions or timestamps)
RESUME_KEYS = ("schema", "model", "analysis", "options", "batch_size", "dataset", "on_error")


def check_resume(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the fields where a rerun differs from the sweep in ``out``."""
    diff = [k for k in RESUME_KEYS if json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(new.get(k), sort_keys=True, default=str)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
        raise ValueError(f"the output directory holds another sweep ({shown}); use a new out directory or overwrite=True")
