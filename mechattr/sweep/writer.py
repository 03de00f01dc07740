"""Sweep shard writing off the main thread, and reading/checking the dataset ahead of it.

:class:`ShardWriter` groups finished batches into shards and writes them on a background
thread (Arrow table, Parquet, one fsync per file, rename), so the analysis of the next batch
runs while a shard is written. The queue holds at most ``max_queued`` shards (plus the one
being written and the batches still being grouped), so memory stays bounded; a write error
is raised in the caller's thread at its next :meth:`ShardWriter.add` or at
:meth:`ShardWriter.close`, and the failed shard leaves no file (``shards.write_parts``
writes ``.tmp`` and renames, and removes its ``.tmp`` and tensor file when a write fails).
A shard is visible only once complete, as with a synchronous write, so resume is unchanged.

:func:`prefetch` runs an iterator (the dataset reader and row checker) on a background
thread, at most ``depth`` items ahead of its consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechattr.sweep import shards as _shards
from mechattr.sweep.analyses import Prepared, Rows

# batches grouped into one shard when an analysis writes one row per batch (per_example=False,
# validate): a one-row Parquet file per batch costs more to write and list than the row itself
PER_BATCH_GROUP = 16
_DONE = object()


def _check_group(batches_per_shard: Any) -> None:
    if batches_per_shard is not None and (not isinstance(batches_per_shard, int) or isinstance(batches_per_shard, bool)
                                          or batches_per_shard < 1):
        raise ValueError(f"batches_per_shard must be a positive int or None (one per batch for per-example rows, "
                         f"{PER_BATCH_GROUP} for per-batch rows), got {batches_per_shard!r}")


class ShardWriter:
    """Writes sweep batches into shards, several batches per shard, on a background thread.

    ``add(index, batch, rows, seconds)`` hands over one analysed batch (``index``: its batch
    number); a shard is named after the first batch it holds, so with one batch per shard the
    files are exactly those of a synchronous write. ``batches_per_shard``: ``None`` = 1 for
    per-example rows and :data:`PER_BATCH_GROUP` for per-batch rows. ``background=False``
    writes in the caller's thread. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, out: str | Path, *, analysis: str, settings: dict[str, Any], max_row_values: int = _shards.MAX_ROW_VALUES,
                 batches_per_shard: int | None = None, background: bool = True, max_queued: int = 1) -> None:
        _check_group(batches_per_shard)
        self.out, self.group = Path(out), batches_per_shard
        self.kw = {"analysis": analysis, "settings": settings, "max_row_values": max_row_values}
        self.pending: list[tuple[int, Prepared, Rows, float]] = []
        self.error: BaseException | None = None
        self.written: list[Path] = []
        self._q: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._q = queue.Queue(maxsize=max_queued)
            self._thread = threading.Thread(target=self._loop, name="mechattr-sweep-writer", daemon=True)
            self._thread.start()

    def _write(self, job: list[tuple[int, Prepared, Rows, float]]) -> None:
        self.written.append(_shards.write_parts(self.out, job[0][0], [(b, r, s) for _, b, r, s in job], **self.kw))

    def _loop(self) -> None:
        q = self._q
        while True:
            job = q.get()  # type: ignore[union-attr]
            if job is _DONE:
                return
            if self.error is None:  # after an error the rest is dropped: the caller raises it
                try:
                    self._write(job)
                except BaseException as err:  # noqa: BLE001  (re-raised in the caller's thread)
                    self.error = err

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _submit(self) -> None:
        job, self.pending = self.pending, []
        if not job:
            return
        if self._q is None:
            try:
                self._write(job)
            except BaseException as err:
                self.error = err
                raise
        else:
            self._q.put(job)  # blocks while max_queued shards wait: bounded memory

    def add(self, index: int, batch: Prepared, rows: Rows, seconds: float) -> None:
        """Queue one analysed batch; raises a previous shard's write error."""
        self._raise()
        self.pending.append((index, batch, rows, seconds))
        if len(self.pending) >= (self.group or (PER_BATCH_GROUP if rows.per_batch else 1)):
            self._submit()

    def close(self) -> None:
        """Write the batches still grouped, wait for every write, raise a write error."""
        try:
            if self.error is None:
                self._submit()
        finally:
            self.pending = []
            if self._thread is not None and self._thread.is_alive():
                self._q.put(_DONE)  # type: ignore[union-attr]
                self._thread.join()
        self._raise()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the run failed: still write its finished batches, and let the run's error through
            self.close()
        except BaseException:  # noqa: BLE001, S110
            pass


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Yield ``items`` as a background thread produces them, at most ``depth`` ahead; its errors are
    raised here. Closing this generator early stops the thread (and closes ``items``)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put((True, x)):
                    return
        except BaseException as err:  # noqa: BLE001  (re-raised in the consumer)
            failure.append(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            put((False, None))

    thread = threading.Thread(target=run, name="mechattr-sweep-reader", daemon=True)
    thread.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                break
            yield x
        if failure:
            raise failure[0]
    finally:
        stop.set()
        thread.join()
