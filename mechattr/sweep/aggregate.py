"""Aggregates of a sweep, computed from its shards without loading them whole.

- :func:`component_means`: per head / edge / component, the mean over examples with a
  bootstrap confidence interval. Shards are streamed one record batch at a time and the
  bootstrap is the *Poisson bootstrap* (each example enters each replicate with weight
  ``w ~ Poisson(1)``; Hanley & MacGibbon 2006, Chamandy et al. 2012), so memory is
  ``n_boot × n_components`` whatever the number of examples. Per-batch rows
  (``per_example=False``) count with weight ``n_examples``.
- :func:`by_position` and :func:`by_token`: token attribution scores grouped by position
  and by token string, with DuckDB over the Parquet files (mean, standard deviation, count,
  normal-approximation 95% interval ``mean ± 1.96·sd/√n``).
- :func:`summary`: ``summary.html`` (plotly) + ``aggregates.json`` beside the shards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mechattr.sweep import shards as _shards


def _files(out: str | Path) -> list[Path]:
    files = _shards.shard_files(out)
    if not files:
        raise ValueError(f"no finished shards in {str(out)!r} (run mechattr.sweep first)")
    return files


def _glob(out: str | Path) -> str:
    _files(out)
    return str(_shards.shard_dir(out) / "part-*.parquet").replace("'", "''")


def iter_scores(out: str | Path, batch_rows: int = 4096) -> Any:
    """Yield ``(scores [rows, k] float64, weights [rows])`` one record batch at a time, in shard order."""
    import pyarrow.parquet as pq

    for f in _files(out):
        pf = pq.ParquetFile(f)
        cols = [c for c in ("scores", "tensor_ref", "n_examples") if c in pf.schema_arrow.names]
        for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
            d = rb.to_pydict()
            rows = []
            for s, ref in zip(d["scores"], d["tensor_ref"]):
                rows.append(s if s is not None else (_shards.load_tensor(out, ref).reshape(-1).tolist() if ref else None))
            if any(r is None for r in rows):
                raise ValueError(f"shard {f.name} has rows without scores (analysis 'validate'?): nothing to average")
            w = d.get("n_examples") or [1] * len(rows)
            yield np.asarray(rows, dtype=np.float64), np.asarray([1 if x is None else x for x in w], dtype=np.float64)


def component_means(out: str | Path, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> Any:
    """Per score entry: ``mean`` over examples, Poisson-bootstrap ``ci_low``/``ci_high``, ``n``.

    Returns a pandas DataFrame (``component``, ``mean``, ``ci_low``, ``ci_high``, ``n``);
    ``component`` from the shards' names (``L0H1``, ``L0H1->L1H2.k``) or the index.
    """
    import pandas as pd

    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    rng = np.random.default_rng(seed)
    tot = wsum = boot = bw = None
    for x, w in iter_scores(out):
        if tot is None:
            k = x.shape[1]
            tot, wsum = np.zeros(k), 0.0
            boot, bw = np.zeros((n_boot, k)), np.zeros(n_boot)
        pw = rng.poisson(1.0, size=(n_boot, x.shape[0])) * w[None]
        tot += (w[:, None] * x).sum(0)
        wsum += float(w.sum())
        boot += pw @ x
        bw += pw.sum(1)
    mean = tot / wsum
    reps = boot / np.maximum(bw, 1)[:, None]
    lo, hi = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    names = _shards.shard_names_meta(out) or [str(i) for i in range(len(mean))]
    return pd.DataFrame({"component": names, "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(wsum)})


def _duck(sql: str) -> Any:
    import duckdb

    con = duckdb.connect()
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def _stats(expr: str) -> str:
    return (f"avg({expr}) AS mean, stddev_samp({expr}) AS sd, count(*) AS n, "
            f"avg({expr}) - 1.96 * coalesce(stddev_samp({expr}), 0) / sqrt(count(*)) AS ci_low, "
            f"avg({expr}) + 1.96 * coalesce(stddev_samp({expr}), 0) / sqrt(count(*)) AS ci_high")


def by_position(out: str | Path, *, from_end: bool = False) -> Any:
    """Token attribution by position (0 = first token; ``from_end``: -1 = last token)."""
    pos = "i - len(scores) - 1" if from_end else "i - 1"
    sql = (f"SELECT {pos} AS pos, {_stats('scores[i]')} FROM "
           f"(SELECT scores, generate_subscripts(scores, 1) AS i FROM read_parquet('{_glob(out)}') WHERE scores IS NOT NULL) "
           f"GROUP BY pos ORDER BY pos")
    return _duck(sql)


def by_token(out: str | Path, *, min_count: int = 1) -> Any:
    """Token attribution by token string (needs the ``tokens`` column: the ``tokens`` analysis)."""
    sql = (f"SELECT tok AS token, {_stats('s')} FROM "
           f"(SELECT unnest(tokens) AS tok, unnest(scores) AS s FROM read_parquet('{_glob(out)}') "
           f"WHERE scores IS NOT NULL AND len(scores) = len(tokens)) "
           f"GROUP BY tok HAVING count(*) >= {int(min_count)} ORDER BY mean DESC")
    return _duck(sql)


def completeness(out: str | Path) -> dict[str, float]:
    """Mean and max ``|completeness_error|`` and the number of rows that report one."""
    df = _duck(f"SELECT avg(abs(completeness_error)) AS mean_abs, max(abs(completeness_error)) AS max_abs, "
               f"count(completeness_error) AS n FROM read_parquet('{_glob(out)}')")
    r = df.iloc[0]
    return {"mean_abs": float(r["mean_abs"]) if r["n"] else math.nan, "max_abs": float(r["max_abs"]) if r["n"] else math.nan, "n": int(r["n"])}


def summary(out: str | Path, *, n_boot: int = 1000, seed: int = 0, top: int = 30) -> Path:
    """Write ``aggregates.json`` and ``summary.html`` (plotly, offline) into ``out``; return the page's path."""
    import plotly.graph_objects as go

    out = Path(out)
    man = _shards.read_manifest(out) or {}
    analysis = man.get("analysis")
    figs, data = [], {"manifest": man}
    if analysis == "tokens":
        pos, tok = by_position(out), by_token(out)
        data.update(by_position=pos.to_dict("records"), by_token=tok.head(top).to_dict("records"), completeness=completeness(out))
        figs.append(go.Figure(go.Scatter(x=pos["pos"], y=pos["mean"], mode="lines+markers",
                                         error_y=dict(type="data", symmetric=False, array=pos["ci_high"] - pos["mean"], arrayminus=pos["mean"] - pos["ci_low"])),
                              layout=dict(title="mean attribution by position", xaxis_title="position", yaxis_title="score")))
        t = tok.head(top)
        figs.append(go.Figure(go.Bar(x=t["token"], y=t["mean"]), layout=dict(title=f"top {top} tokens by mean attribution")))
    elif analysis != "validate":
        cm = component_means(out, n_boot=n_boot, seed=seed)
        data["components"] = cm.to_dict("records")
        c = cm.reindex(cm["mean"].abs().sort_values(ascending=False).index).head(top)
        figs.append(go.Figure(go.Bar(x=c["component"], y=c["mean"],
                                     error_y=dict(type="data", symmetric=False, array=c["ci_high"] - c["mean"], arrayminus=c["mean"] - c["ci_low"])),
                              layout=dict(title=f"{analysis}: mean effect with {n_boot}-replicate bootstrap 95% CI (top {top} by |mean|)")))
    (out / "aggregates.json").write_text(json.dumps(data, indent=1, default=str))
    head = f"<h1>sweep: {analysis} on {man.get('model')}</h1><pre>{json.dumps(man.get('options'), default=str)}</pre>"
    body = "".join(f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, f in enumerate(figs))
    page = out / "summary.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>sweep summary</title></head><body>{head}{body}</body></html>")
    return page
