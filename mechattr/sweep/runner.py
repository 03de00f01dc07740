"""Run an analysis over a dataset into Parquet shards, resumably, on a local or a Ray executor.

One code path: stream the dataset, checking rows a chunk at a time (batched tokenizer calls;
with ``on_error="raise"`` a checking pass first, so nothing runs on a malformed dataset),
batch the good ids not yet in finished shards, and for each batch :func:`process` it (tokens
from the checker's ids, run the analysis adapter, write one shard). Only the executor differs:
``engine="local"`` runs the batches in this process; ``engine="ray"`` hands them to an
actor pool (one model replica per actor, loaded by the actor from the model spec; one GPU
each where the cluster has GPUs) with at most two batches in flight per actor, and the
actors write the shards themselves (on a multi-node cluster ``out`` must be a shared path).
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechattr.sweep import analyses as _analyses
from mechattr.sweep import shards as _shards
from mechattr.sweep import writer as _writer
from mechattr.sweep.datasets import (
    ON_ERROR,
    Example,
    Malformed,
    MalformedDataset,
    RowChecker,
    count_rows,
    detect_format,
    encode,
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


def _check_args(analysis: str, engine: str, on_error: str, batch_size: Any, options: Any, batches_per_shard: Any) -> None:
    _analyses.get(analysis)
    _writer._check_group(batches_per_shard)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict of keyword arguments for the analysis, got {type(options).__name__}")


class BatchTokenizer:
    """Tokenizes sweep batches the way :func:`mechattr.inputs.prepare_tokens` does, with one batched
    tokenizer call per column: ``[BOS] + ids`` padded on the model's padding side, and the mask.

    The rows were checked already (known words, lengths), so the per-row checks of
    ``prepare_tokens`` are not repeated. The first batch is also run through ``prepare_tokens``;
    any difference (a tokenizer that adds other special tokens, say) switches this tokenizer to
    ``prepare_tokens`` for the rest of the run, so the tokens are the same either way.
    """

    def __init__(self, model: Any) -> None:
        from mechattr.runtime.device import model_device

        self.model, self.tok = model, model.tokenizer
        cfg = model.cfg
        self.bos = self.tok.bos_token_id if bool(getattr(cfg, "default_prepend_bos", True)) else None
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.bos_token_id or 0)
        self.side = getattr(cfg, "default_padding_side", None) or self.tok.padding_side or "right"
        self.device = model_device(model)
        self.exact: bool | None = None  # None until the first batch is compared with prepare_tokens

    def _fast(self, texts: list[str], ids: list[list[int]] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = encode(self.tok, texts) if ids is None else ids
        lens = [len(x) for x in ids]
        bos = [] if self.bos is None else [int(self.bos)]
        if min(lens) == max(lens):  # no padding: one tensor from the nested lists
            tokens = torch.tensor(ids, dtype=torch.long).reshape(len(ids), lens[0])
            if bos:
                tokens = torch.cat([torch.full((len(ids), 1), bos[0], dtype=torch.long), tokens], 1)
            mask = torch.ones(tokens.shape, dtype=torch.bool)
        else:
            n = torch.tensor(lens) + len(bos)
            width = int(n.max())
            tokens = torch.full((len(ids), width), int(self.pad), dtype=torch.long)
            pos = torch.arange(width)
            mask = pos[None] < n[:, None] if self.side == "right" else pos[None] >= (width - n)[:, None]
            tokens[mask] = torch.tensor([t for x in ids for t in (*bos, *x)], dtype=torch.long)
        if int(tokens.max()) >= self.model.cfg.d_vocab:
            raise ValueError(f"token ids outside the vocabulary 0..{self.model.cfg.d_vocab - 1}")
        return tokens.to(self.device), None if bool(mask.all()) else mask.long().to(self.device)

    def _slow(self, texts: list[str], mask: torch.Tensor | None, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        from mechattr.inputs import prepare_tokens

        b = prepare_tokens(self.model, texts, mask, name=name)
        return b.tokens, b.attention_mask

    def __call__(self, texts: list[str], ids: list[list[int]] | None = None, mask: torch.Tensor | None = None,
                 name: str = "tokens") -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens, attention_mask)`` for ``texts``; ``ids``: their ids without special tokens, when known."""
        if self.exact is False:
            return self._slow(texts, mask, name)
        tokens, m = self._fast(texts, ids)
        if self.exact is None:
            ref, ref_m = self._slow(texts, mask, name)
            same = ref.shape == tokens.shape and bool((ref == tokens).all()) and (
                (ref_m is None and m is None) or (ref_m is not None and m is not None and bool((ref_m == m).all())))
            self.exact = same
            if not same:
                return ref, ref_m
        return tokens, m


def prepare(model: Any, examples: list[Example], tokenize: BatchTokenizer | None = None) -> _analyses.Prepared:
    """Tokenize a batch of checked examples (answers: given, else the model's top prediction)."""
    from mechattr import targets

    tokenize = tokenize or BatchTokenizer(model)
    known = all(e.ids is not None for e in examples)  # the checker's ids
    col = lambda k: [e.ids[k] for e in examples] if known else None  # type: ignore[index]  # noqa: E731
    tokens, mask = tokenize([e.prompt for e in examples], col(0))
    corrupted = None
    if all(e.corrupted is not None for e in examples):
        corrupted, _ = tokenize([e.corrupted for e in examples], col(2), mask, name="corrupted")  # type: ignore[misc]
    given = [e.answer is not None for e in examples]
    answers = torch.zeros(len(examples), dtype=torch.long)
    if any(given):
        ids = [e.ids[1] for e in examples if e.answer is not None] if known else encode(  # type: ignore[index]
            model.tokenizer, [e.answer for e in examples if e.answer is not None])
        answers[torch.tensor(given)] = torch.tensor([x[0] for x in ids], dtype=torch.long)
    answers = answers.to(tokens.device)
    if not all(given):
        with torch.no_grad():
            logits = model(tokens, attention_mask=mask)
        last = targets.last_positions(mask, *tokens.shape, tokens.device)
        top = logits[torch.arange(len(examples), device=logits.device), last].argmax(-1)
        answers = torch.where(torch.tensor(given, device=answers.device), answers, top)
    return _analyses.Prepared([e.id for e in examples], [e.line for e in examples], tokens, mask, corrupted,
                              answers, given, targets.logit(answers, pos=-1), tokenizer=model.tokenizer)


def process(model: Any, analysis: str, options: dict[str, Any], out: str | Path, index: int, examples: list[Example],
            settings: dict[str, Any], max_row_values: int = _shards.MAX_ROW_VALUES,
            tokenize: BatchTokenizer | None = None, writer: _writer.ShardWriter | None = None) -> tuple[int, float]:
    """Run ``analysis`` on batch ``index`` and write it (as shard ``index``, or through ``writer``,
    which groups batches and writes on its own thread); return ``(n_examples, seconds)``."""
    t0 = time.perf_counter()
    batch = prepare(model, examples, tokenize)
    rows = _analyses.get(analysis)(model, batch, **options)
    dt = time.perf_counter() - t0
    if writer is None:
        _shards.write_shard(out, index, batch, rows, analysis=analysis, settings=settings, seconds=dt, max_row_values=max_row_values)
    else:
        writer.add(index, batch, rows, dt)
    return len(examples), dt


def _plan(dataset: Any, fmt: str | None, checker: RowChecker, done: set[str], batch_size: int, start: int,
          malformed: list[Malformed], bar: Any) -> Iterator[tuple[int, list[Example]]]:
    """Batches of the good, unfinished examples in file order (checked as they stream, with their
    token ids); shard indices from ``start``; malformed rows go to ``malformed``."""
    cur: list[Example] = []
    index = start
    for ex in iter_examples(dataset, checker=checker, fmt=fmt):
        if isinstance(ex, Malformed):
            malformed.append(ex)
            bar.total = max(bar.total - 1, bar.n)
            continue
        if ex.id in done:
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
    batches_per_shard: int | None = None,
) -> SweepResult:
    """Run ``analysis`` (a :mod:`mechattr.sweep.analyses` name) over ``dataset`` into Parquet shards in ``out``.

    ``model``: a spec :func:`mechattr.load_model` takes (``"organism:induction"``, a local
    directory) or, for ``engine="local"`` only, a loaded model. ``options``: keyword
    arguments of the analysis (``{"method": "ig", "n_steps": 32}``). Rerunning with the same
    arguments resumes (finished ids skipped, partial shards discarded); other arguments in a
    used ``out`` are a ``ValueError`` unless ``overwrite=True``. ``on_error``: ``"skip"``
    (malformed rows are left out and listed in ``malformed.jsonl``) or ``"raise"`` (refuse
    the dataset before running anything). ``batches_per_shard``: batches per Parquet shard
    (``None``: one for per-example rows, 16 for per-batch rows). The dataset is read and
    checked on a background thread (two batches ahead) and shards are written on another (one
    shard queued), so both overlap the analysis. Memory: a few batches of examples and results
    per worker, plus the set of ids (seen, finished).
    """
    from mechattr.io import versions
    from mechattr.model import load_model

    options = dict(options or {})
    _check_args(analysis, engine, on_error, batch_size, options, batches_per_shard)
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
    # the reader thread checks rows with its own tokenizer copy: a Rust tokenizer used from two threads at once can
    # fail ("Already borrowed"); without a copy the rows are read and checked in this thread
    own = _copy(local_model.tokenizer)
    checker = RowChecker(local_model.tokenizer if own is None else own, local_model.cfg.n_ctx, bool(getattr(local_model.cfg, "default_prepend_bos", True)))
    if on_error == "raise":  # refuse before anything runs: a checking pass of its own
        bad = [ex for ex in iter_examples(dataset, checker=checker, fmt=fmt) if isinstance(ex, Malformed)]
        if bad:
            raise MalformedDataset(dataset, bad)
    out.mkdir(parents=True, exist_ok=True)
    if old is None:
        _shards.write_manifest(out, manifest)
    discarded = _shards.clean_partial(out)
    done, start = _shards.finished_ids(out)
    settings = {"analysis": analysis, "options": options, "batch_size": batch_size}
    bar = _bar(count_rows(dataset, fmt) - len(done), progress, analysis)
    malformed: list[Malformed] = []
    run = _run_local if engine == "local" else _run_ray
    try:
        plan = _plan(dataset, fmt, checker, done, batch_size, start, malformed, bar)
        with closing(_writer.prefetch(plan) if own is not None else plan) as tasks:
            n_run = run(local_model if engine == "local" else spec, tasks, bar, analysis=analysis, options=options, out=out,
                        settings=settings, max_row_values=max_row_values, num_workers=num_workers, ray_address=ray_address,
                        device=device, batches_per_shard=batches_per_shard)
    finally:
        bar.close()
    (out / "malformed.jsonl").write_text(malformed_to_json(malformed))
    return SweepResult(out, n_run, len(done), malformed, time.perf_counter() - t0, discarded)


def _copy(tokenizer: Any) -> Any:
    try:
        return copy.deepcopy(tokenizer)
    except Exception:  # noqa: BLE001  (a tokenizer that cannot be copied: read in the main thread)
        return None


def _bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=max(total, 0), disable=not enabled, unit="ex", desc=f"sweep {desc}", smoothing=0.1)


def _run_local(model: Any, tasks: Iterator[tuple[int, list[Example]]], bar: Any, *, analysis: str, options: dict[str, Any],
               out: Path, settings: dict[str, Any], max_row_values: int, batches_per_shard: int | None, **_: Any) -> int:
    n_run, tokenize = 0, BatchTokenizer(model)
    with _writer.ShardWriter(out, analysis=analysis, settings=settings, max_row_values=max_row_values,
                             batches_per_shard=batches_per_shard) as writer:
        for index, examples in tasks:
            n, _dt = process(model, analysis, options, out, index, examples, settings, max_row_values, tokenize, writer)
            n_run += n
            bar.update(n)
    return n_run


class SweepWorker:
    """A Ray actor: loads its own model replica from the spec and processes batches into shards
    (written on the actor's writer thread; :meth:`close` writes what it still groups)."""

    def __init__(self, spec: str, device: str | None, threads: int, analysis: str, options: dict[str, Any], out: str,
                 settings: dict[str, Any], max_row_values: int, batches_per_shard: int | None = None) -> None:
        from mechattr.model import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(spec, device=device)
        self.tokenize = BatchTokenizer(self.model)
        self.args = (analysis, options, out)
        self.settings, self.max_row_values = settings, max_row_values
        self.writer = _writer.ShardWriter(out, analysis=analysis, settings=settings, max_row_values=max_row_values,
                                          batches_per_shard=batches_per_shard)

    def run(self, index: int, examples: list[Example]) -> tuple[int, float]:
        analysis, options, out = self.args
        return process(self.model, analysis, options, out, index, examples, self.settings, self.max_row_values, self.tokenize,
                       self.writer)

    def close(self) -> None:
        self.writer.close()


def _run_ray(spec: str, tasks: Iterator[tuple[int, list[Example]]], bar: Any, *, analysis: str, options: dict[str, Any], out: Path,
             settings: dict[str, Any], max_row_values: int, num_workers: int, ray_address: str | None, device: str | None,
             batches_per_shard: int | None) -> int:
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
        actors = [Actor.remote(spec, dev, 0 if gpus else 1, analysis, options, str(out.resolve()), settings, max_row_values,
                               batches_per_shard) for _ in range(num_workers)]
        n_run, inflight = 0, {}
        idle = [a for a in actors for _ in range(2)]  # two batches queued per actor
        for index, examples in tasks:
            if not idle:
                n_run += _collect(ray, inflight, idle, bar)
            actor = idle.pop(0)
            inflight[actor.run.remote(index, examples)] = actor
        while inflight:
            n_run += _collect(ray, inflight, idle, bar)
        ray.get([a.close.remote() for a in actors])  # the shards still grouped; raises an actor's write error
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
