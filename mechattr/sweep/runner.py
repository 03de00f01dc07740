"""Run an analysis over a dataset into Parquet shards, resumably, on a local or a Ray executor.

One code path: read + check the dataset (malformed rows found before anything runs), plan
batches of the ids not yet in finished shards, and for each batch :func:`process` it
(tokenize, run the analysis adapter, write one shard). Only the executor differs:
``engine="local"`` runs the batches in this process; ``engine="ray"`` hands them to an
actor pool (one model replica per actor, loaded by the actor from the model spec; one GPU
each where the cluster has GPUs) with at most two batches in flight per actor, and the
actors write the shards themselves (on a multi-node cluster ``out`` must be a shared path).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechattr.sweep import analyses as _analyses
from mechattr.sweep import shards as _shards
from mechattr.sweep.datasets import (
    ON_ERROR,
    Example,
    Malformed,
    MalformedDataset,
    RowChecker,
    detect_format,
    iter_examples,
    malformed_to_json,
)

ENGINES = ("local", "ray")


@dataclass
class SweepResult:
    """What a :func:`sweep` call did: ``out``, examples run now (``n_run``), already done
    before (``n_resumed``), ``malformed`` rows (left out), wall ``seconds``, ``discarded``
    partial files from an interrupted run."""

    out: Path
    n_run: int
    n_resumed: int
    malformed: list[Malformed] = field(default_factory=list)
    seconds: float = 0.0
    discarded: list[str] = field(default_factory=list)

    @property
    def examples_per_s(self) -> float:
        return self.n_run / self.seconds if self.seconds > 0 else float("nan")

    def frame(self, columns: list[str] | None = None) -> Any:
        """All shards as one pandas DataFrame (small sweeps; use :mod:`mechattr.sweep.aggregate` for big ones)."""
        import pyarrow.dataset as ds

        return ds.dataset(_shards.shard_dir(self.out), format="parquet").to_table(columns=columns).to_pandas()


def _check_args(analysis: str, engine: str, on_error: str, batch_size: Any, options: Any) -> None:
    _analyses.get(analysis)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict of keyword arguments for the analysis, got {type(options).__name__}")


def prepare(model: Any, examples: list[Example]) -> _analyses.Prepared:
    """Tokenize a batch of checked examples (answers: given, else the model's top prediction)."""
    from mechattr import targets
    from mechattr.inputs import prepare_tokens

    tok = model.tokenizer
    clean = prepare_tokens(model, [e.prompt for e in examples])
    corrupted = None
    if all(e.corrupted is not None for e in examples):
        corrupted = prepare_tokens(model, [e.corrupted for e in examples], clean.attention_mask, name="corrupted").tokens
    given = [e.answer is not None for e in examples]
    answers = torch.zeros(len(examples), dtype=torch.long)
    for i, e in enumerate(examples):
        if e.answer is not None:
            answers[i] = tok(e.answer, add_special_tokens=False)["input_ids"][0]
    answers = answers.to(clean.tokens.device)
    if not all(given):
        with torch.no_grad():
            logits = model(clean.tokens, attention_mask=clean.attention_mask)
        last = targets.last_positions(clean.attention_mask, *clean.shape, clean.tokens.device)
        top = logits[torch.arange(len(examples), device=logits.device), last].argmax(-1)
        answers = torch.where(torch.tensor(given, device=answers.device), answers, top)
    mask = clean.attention_mask
    str_tokens = []
    for i, row in enumerate(clean.tokens.tolist()):
        keep = row if mask is None else [t for t, m in zip(row, mask[i].tolist()) if m]
        str_tokens.append(tok.convert_ids_to_tokens(keep))
    return _analyses.Prepared([e.id for e in examples], [e.line for e in examples], clean.tokens, mask, corrupted,
                              answers, given, targets.logit(answers, pos=-1), str_tokens)


def process(model: Any, analysis: str, options: dict[str, Any], out: str | Path, index: int, examples: list[Example],
            settings: dict[str, Any], max_row_values: int = _shards.MAX_ROW_VALUES) -> tuple[int, float]:
    """Run ``analysis`` on one batch and write it as shard ``index``; return ``(n_examples, seconds)``."""
    t0 = time.perf_counter()
    batch = prepare(model, examples)
    rows = _analyses.get(analysis)(model, batch, **options)
    dt = time.perf_counter() - t0
    _shards.write_shard(out, index, batch, rows, analysis=analysis, settings=settings, seconds=dt, max_row_values=max_row_values)
    return len(examples), dt


def _plan(dataset: Any, fmt: str | None, bad_lines: set[int], done: set[str], batch_size: int, start: int) -> Iterator[tuple[int, list[Example]]]:
    """Batches of the good, unfinished examples in file order; shard indices from ``start``."""
    cur: list[Example] = []
    index = start
    for ex in iter_examples(dataset, fmt=fmt):
        if isinstance(ex, Malformed) or ex.line in bad_lines or ex.id in done:
            continue
        cur.append(ex)
        if len(cur) == batch_size:
            yield index, cur
            index, cur = index + 1, []
    if cur:
        yield index, cur


def sweep(
    model: Any,
    dataset: str | Path,
    analysis: str,
    out: str | Path,
    *,
    options: dict[str, Any] | None = None,
    batch_size: int = 32,
    engine: str = "local",
    on_error: str = "skip",
    num_workers: int = 2,
    ray_address: str | None = None,
    device: str | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_row_values: int = _shards.MAX_ROW_VALUES,
) -> SweepResult:
    """Run ``analysis`` (a :mod:`mechattr.sweep.analyses` name) over ``dataset`` into Parquet shards in ``out``.

    ``model``: a spec :func:`mechattr.load_model` takes (``"organism:induction"``, a local
    directory) or, for ``engine="local"`` only, a loaded model. ``options``: keyword
    arguments of the analysis (``{"method": "ig", "n_steps": 32}``). Rerunning with the same
    arguments resumes (finished ids skipped, partial shards discarded); other arguments in a
    used ``out`` are a ``ValueError`` unless ``overwrite=True``. ``on_error``: ``"skip"``
    (malformed rows are left out and listed in ``malformed.jsonl``) or ``"raise"`` (refuse
    the dataset before running anything). Memory: one batch of examples and results at a
    time per worker, plus the set of ids (seen, finished).
    """
    from mechattr.io import versions
    from mechattr.model import load_model

    options = dict(options or {})
    _check_args(analysis, engine, on_error, batch_size, options)
    spec = str(model) if isinstance(model, (str, Path)) else None
    if engine == "ray" and spec is None:
        raise ValueError("engine='ray' needs a model spec (a name or path load_model takes): each worker loads its own replica")
    out = Path(out)
    fmt = fmt or detect_format(dataset)
    manifest = {
        "schema": _shards.SCHEMA_VERSION, "model": spec or getattr(getattr(model, "cfg", None), "model_name", type(model).__name__),
        "analysis": analysis, "options": options, "batch_size": batch_size,
        "dataset": {"path": str(Path(dataset).resolve()), "format": fmt}, "on_error": on_error, "versions": versions(),
    }
    if overwrite and out.exists():
        shutil.rmtree(out)
    old = _shards.read_manifest(out)
    if old is not None:
        _shards.check_resume(old, manifest)
    t0 = time.perf_counter()
    local_model = load_model(spec, device=device) if spec is not None else model
    checker = RowChecker(local_model.tokenizer, local_model.cfg.n_ctx, bool(getattr(local_model.cfg, "default_prepend_bos", True)))
    malformed, n_good = [], 0
    for ex in iter_examples(dataset, checker=checker, fmt=fmt):
        if isinstance(ex, Malformed):
            malformed.append(ex)
        else:
            n_good += 1
    if malformed and on_error == "raise":
        raise MalformedDataset(dataset, malformed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "malformed.jsonl").write_text(malformed_to_json(malformed))
    if old is None:
        _shards.write_manifest(out, manifest)
    discarded = _shards.clean_partial(out)
    done, start = _shards.finished_ids(out)
    todo = n_good - len(done)
    settings = {"analysis": analysis, "options": options, "batch_size": batch_size}
    tasks = _plan(dataset, fmt, {m.line for m in malformed}, done, batch_size, start)
    bar = _bar(todo, progress, analysis)
    run = _run_local if engine == "local" else _run_ray
    try:
        n_run = run(local_model if engine == "local" else spec, tasks, bar, analysis=analysis, options=options, out=out,
                    settings=settings, max_row_values=max_row_values, num_workers=num_workers, ray_address=ray_address, device=device)
    finally:
        bar.close()
    return SweepResult(out, n_run, len(done), malformed, time.perf_counter() - t0, discarded)


def _bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=max(total, 0), disable=not enabled, unit="ex", desc=f"sweep {desc}", smoothing=0.1)


def _run_local(model: Any, tasks: Iterator[tuple[int, list[Example]]], bar: Any, *, analysis: str, options: dict[str, Any],
               out: Path, settings: dict[str, Any], max_row_values: int, **_: Any) -> int:
    n_run = 0
    for index, examples in tasks:
        n, _dt = process(model, analysis, options, out, index, examples, settings, max_row_values)
        n_run += n
        bar.update(n)
    return n_run


class SweepWorker:
    """A Ray actor: loads its own model replica from the spec and processes batches into shards."""

    def __init__(self, spec: str, device: str | None, threads: int, analysis: str, options: dict[str, Any], out: str,
                 settings: dict[str, Any], max_row_values: int) -> None:
        from mechattr.model import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(spec, device=device)
        self.args = (analysis, options, out)
        self.settings, self.max_row_values = settings, max_row_values

    def run(self, index: int, examples: list[Example]) -> tuple[int, float]:
        analysis, options, out = self.args
        return process(self.model, analysis, options, out, index, examples, self.settings, self.max_row_values)


def _run_ray(spec: str, tasks: Iterator[tuple[int, list[Example]]], bar: Any, *, analysis: str, options: dict[str, Any], out: Path,
             settings: dict[str, Any], max_row_values: int, num_workers: int, ray_address: str | None, device: str | None) -> int:
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError("engine='ray' needs Ray: pip install 'mechattr[ray]'") from None
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 and device in (None, "cuda") else 0
        Actor = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus)(SweepWorker)
        dev = device or ("cuda" if gpus else "cpu")
        actors = [Actor.remote(spec, dev, 0 if gpus else 1, analysis, options, str(out.resolve()), settings, max_row_values)
                  for _ in range(num_workers)]
        n_run, inflight = 0, {}
        idle = [a for a in actors for _ in range(2)]  # two batches queued per actor
        for index, examples in tasks:
            if not idle:
                n_run += _collect(ray, inflight, idle, bar)
            actor = idle.pop(0)
            inflight[actor.run.remote(index, examples)] = actor
        while inflight:
            n_run += _collect(ray, inflight, idle, bar)
        return n_run
    finally:
        if started:
            ray.shutdown()


def _collect(ray: Any, inflight: dict[Any, Any], idle: list[Any], bar: Any) -> int:
    ready, _ = ray.wait(list(inflight), num_returns=1)
    n = 0
    for ref in ready:
        idle.append(inflight.pop(ref))
        k, _dt = ray.get(ref)
        bar.update(k)
        n += k
    return n
