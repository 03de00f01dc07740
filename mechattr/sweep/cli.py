"""``mechattr sweep``, ``mechattr sweep-data`` and ``mechattr sweep-summary``.

    mechattr sweep-data induction 2000 --out data/induction.jsonl
    mechattr sweep organism:induction data/induction.jsonl tokens --out sweeps/ig -o method=ig -o n_steps=32
    mechattr sweep organism:induction data/induction.jsonl heads --out sweeps/atp --engine ray --num-workers 2
    mechattr sweep-summary sweeps/atp          # aggregates.json + summary.html

Rerunning ``mechattr sweep`` with the same arguments resumes where it stopped. Errors (a
malformed dataset with ``--on-error raise``, a used ``--out``) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mechattr.cli import command


def parse_options(pairs: list[str] | None, raw: str | None = None) -> dict[str, Any]:
    """``["method=ig", "n_steps=32"]`` (values parsed as JSON when they are) plus a JSON object."""
    opts: dict[str, Any] = {}
    if raw:
        try:
            opts.update(json.loads(raw))
        except json.JSONDecodeError as err:
            raise ValueError(f"--options is not a JSON object: {err.msg}") from None
    for p in pairs or []:
        key, sep, val = p.partition("=")
        if not sep or not key:
            raise ValueError(f"option {p!r} is not key=value")
        try:
            opts[key] = json.loads(val)
        except json.JSONDecodeError:
            opts[key] = val
    return opts


def _sweep_args(p: argparse.ArgumentParser) -> None:
    from mechattr.sweep.analyses import names

    p.add_argument("model", help="what load_model takes: organism:<name>, a local HF directory, a cached HF name")
    p.add_argument("dataset", help="JSONL, CSV or Parquet file (or a saved HF dataset dir) with prompt[, answer, corrupted, id]")
    p.add_argument("analysis", help=f"one of {names()}")
    p.add_argument("--out", required=True, help="output directory (shards, manifest); rerun to resume")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="analysis option (JSON values), repeatable")
    p.add_argument("--options", help="analysis options as one JSON object (default: none)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per batch (memory stays bounded by it)")
    p.add_argument("--batches-per-shard", type=int, default=None,
                   help="batches per Parquet shard (default: 1 for per-example rows, 16 for one row per batch)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="one local process, or a Ray actor pool (pip install mechattr[ray])")
    p.add_argument("--num-workers", type=int, default=2, help="ray actors (one model replica each; one GPU each when present)")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--on-error", choices=["skip", "raise"], default="skip", help="malformed rows: leave out and list them, or refuse the dataset")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cpu; Ray actors get their own GPU when present)")
    p.add_argument("--overwrite", action="store_true", help="delete what is in --out first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary", action="store_true", help="write summary.html + aggregates.json when done")


@command("sweep", "run an analysis over a dataset into resumable Parquet shards (local or Ray)")
def _sweep(args: argparse.Namespace) -> int:
    from mechattr.sweep.runner import sweep

    res = sweep(args.model, args.dataset, args.analysis, args.out, options=parse_options(args.option, args.options),
                batch_size=args.batch_size, engine=args.engine, num_workers=args.num_workers, ray_address=args.ray_address,
                on_error=args.on_error, device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
                batches_per_shard=args.batches_per_shard)
    for m in res.malformed[:20]:
        print(f"skipped {m}", file=sys.stderr)
    if len(res.malformed) > 20:
        print(f"… {len(res.malformed) - 20} more in {res.out / 'malformed.jsonl'}", file=sys.stderr)
    print(f"{res.n_run} examples run, {res.n_resumed} already done, {len(res.malformed)} malformed skipped; "
          f"{res.examples_per_s:.1f} examples/s; shards in {res.out / 'shards'}")
    if args.summary and (res.n_run or res.n_resumed):
        from mechattr.sweep.aggregate import summary

        print(f"summary: {summary(res.out)}")
    return 0


_sweep.add_arguments = _sweep_args  # type: ignore[attr-defined]


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="organism task name (induction, ioi, sentiment, ...)")
    p.add_argument("n", type=int, help="number of examples")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed")


@command("sweep-data", "write an organism task sample as a JSONL sweep dataset (id, prompt, answer, corrupted)")
def _data(args: argparse.Namespace) -> int:
    from mechattr.sweep.datasets import write_organism_dataset

    path = write_organism_dataset(args.task, args.n, args.out, seed=args.seed)
    print(f"wrote {args.n} examples to {path}")
    return 0


_data.add_arguments = _data_args  # type: ignore[attr-defined]


def _summary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a sweep's output directory")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    p.add_argument("--seed", type=int, default=0, help="random seed")


@command("sweep-summary", "aggregate a sweep's shards: aggregates.json + summary.html (bootstrap CIs)")
def _summary(args: argparse.Namespace) -> int:
    from mechattr.sweep.aggregate import summary

    print(summary(args.out, n_boot=args.n_boot, seed=args.seed))
    return 0


_summary.add_arguments = _summary_args  # type: ignore[attr-defined]
