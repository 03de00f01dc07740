"""Sweep output: Parquet shards (one row per example), safetensors for big tensors, a manifest, resume.

Layout of ``out/``::

    manifest.json                 model spec, analysis + options, batch size, dataset, versions
    shards/part-000042.parquet    one shard per batch (written to ``.tmp`` then renamed: atomic)
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
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def write_shard(out: str | Path, index: int, batch: Prepared, rows: Rows, *, analysis: str, settings: dict[str, Any],
                seconds: float, max_row_values: int = MAX_ROW_VALUES) -> Path:
    """Write one batch's rows as shard ``index`` (tensors first, then the Parquet file, each atomically)."""
    out = Path(out)
    name = shard_name(index)
    n_rows = 1 if rows.per_batch else len(batch)
    cols: dict[str, Any] = {}
    if rows.per_batch:
        cols["id"] = pa.array([batch.ids[0]], pa.string())
        cols["line"] = pa.array([batch.lines[0]], pa.int64())
        cols["batch_ids"] = pa.array([list(batch.ids)], pa.list_(pa.string()))
        cols["answer_id"] = pa.array([None], pa.int64())
        cols["answer_given"] = pa.array([all(batch.answer_given)], pa.bool_())
    else:
        cols["id"] = pa.array(batch.ids, pa.string())
        cols["line"] = pa.array(batch.lines, pa.int64())
        cols["batch_ids"] = pa.array([None] * n_rows, pa.list_(pa.string()))
        cols["answer_id"] = pa.array(batch.answers.cpu().numpy(), pa.int64())
        cols["answer_given"] = pa.array(batch.answer_given, pa.bool_())
    cols["shard"] = pa.array([name] * n_rows, pa.string())
    ref: list[str | None] = [None] * n_rows
    if rows.scores is not None:
        s = rows.scores.detach().float().cpu().contiguous()
        per_row = int(s[0].numel()) if s.shape[0] else 0
        cols["scores_shape"] = pa.array([list(s.shape[1:])] * n_rows, pa.list_(pa.int32()))
        if per_row > max_row_values:
            from safetensors.torch import save_file

            (out / "tensors").mkdir(parents=True, exist_ok=True)
            keys = [str(i) for i in range(n_rows)]
            _atomic_write(out / "tensors" / f"{name}.safetensors",
                          lambda p: save_file({k: s[i] for i, k in enumerate(keys)}, str(p)))
            ref = [f"tensors/{name}.safetensors#{k}" for k in keys]
            cols["scores"] = pa.array([None] * n_rows, pa.list_(pa.float32()))
        else:
            offsets = pa.array(range(0, n_rows * per_row + 1, per_row) if per_row else [0] * (n_rows + 1), pa.int32())
            cols["scores"] = pa.ListArray.from_arrays(offsets, pa.array(s.reshape(-1).numpy(), pa.float32()))
    else:
        cols["scores_shape"] = pa.array([None] * n_rows, pa.list_(pa.int32()))
        cols["scores"] = pa.array([None] * n_rows, pa.list_(pa.float32()))
    cols["tensor_ref"] = pa.array(ref, pa.string())
    for k, v in rows.columns.items():
        cols[k] = v if isinstance(v, pa.Array) else pa.array(v, _EXTRA_TYPES.get(k))
    cols["analysis"] = pa.array([analysis] * n_rows, pa.string())
    cols["settings"] = pa.array([json.dumps(settings, sort_keys=True, default=str)] * n_rows, pa.string())
    cols["time_s"] = pa.array([seconds / n_rows] * n_rows, pa.float64())
    table = pa.table(cols)
    if rows.names is not None:
        table = table.replace_schema_metadata({b"names": json.dumps(rows.names).encode()})
    d = shard_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.parquet"
    _atomic_write(path, lambda p: pq.write_table(table, p))
    return path


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
