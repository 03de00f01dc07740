"""Sweep datasets: prompts with optional answer / corrupted / id, read lazily and checked row by row.

A dataset is a JSONL, CSV or Parquet file, or a HuggingFace ``datasets`` dataset saved with
``save_to_disk`` (a directory). Columns: ``prompt`` (required), ``answer`` (a single token;
without it the target is the model's own top prediction at the last position),
``corrupted`` (a prompt of the same token length, for patching and AtP) and ``id``
(default: the row's line number). Rows stream one at a time; only the set of ids seen is
kept in memory (to refuse repeats).

A malformed row (no prompt, an answer that is not exactly one token, words the tokenizer
does not know, a corrupted prompt of another length, a repeated id, unparseable JSON) is a
:class:`Malformed` with its line number: ``on_error="skip"`` leaves it out and reports it
(``malformed.jsonl`` beside the shards), ``on_error="raise"`` refuses the whole dataset
before any analysis runs. It is never attributed silently with a wrong target.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ON_ERROR = ("skip", "raise")
FORMATS = ("jsonl", "csv", "parquet", "hf")


@dataclass(frozen=True)
class Example:
    """One dataset row: ``id`` (str), ``prompt``, optional ``answer`` and ``corrupted``, and ``line``
    (1-based line in a JSONL/CSV file, counting the CSV header; 1-based row for Parquet/HF)."""

    id: str
    prompt: str
    answer: str | None
    corrupted: str | None
    line: int


@dataclass(frozen=True)
class Malformed:
    """A row that cannot be used: its ``line``, its ``id`` (if any) and the ``reason``."""

    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f" (id {self.id!r})" if self.id is not None else "") + f": {self.reason}"


class MalformedDataset(ValueError):
    """Raised with ``on_error="raise"``; ``.rows`` lists every :class:`Malformed` row."""

    def __init__(self, path: Any, rows: list[Malformed]) -> None:
        self.rows = rows
        shown = "; ".join(str(r) for r in rows[:10]) + (f"; … {len(rows) - 10} more" if len(rows) > 10 else "")
        super().__init__(f"{len(rows)} malformed row(s) in {path}: {shown} (on_error='skip' leaves them out)")


def detect_format(path: str | Path) -> str:
    """``jsonl`` | ``csv`` | ``parquet`` | ``hf`` from the path (a directory is a saved HF dataset)."""
    p = Path(path)
    if p.is_dir():
        return "hf"
    suffix = p.suffix.lower()
    for fmt, sufs in (("jsonl", (".jsonl", ".json", ".ndjson")), ("csv", (".csv",)), ("parquet", (".parquet", ".pq"))):
        if suffix in sufs:
            return fmt
    raise ValueError(f"cannot tell the format of {str(path)!r}: use .jsonl, .csv, .parquet or a saved HF dataset directory")


def read_records(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield ``(line, record, error)`` lazily; ``record`` is ``None`` when the row cannot be parsed."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"dataset {str(path)!r} does not exist")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {list(FORMATS)}")
    if fmt == "jsonl":
        with open(p, encoding="utf-8") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError as err:
                    yield i, None, f"not valid JSON ({err.msg})"
                    continue
                yield (i, rec, None) if isinstance(rec, dict) else (i, None, f"a JSON {type(rec).__name__}, not an object")
    elif fmt == "csv":
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for rec in reader:
                yield reader.line_num, {k: (v if v != "" else None) for k, v in rec.items() if k is not None}, None
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                i += 1
                yield i, rec, None
    else:
        import datasets as hf

        for i, rec in enumerate(hf.load_from_disk(str(p)), 1):
            yield i, dict(rec), None


def _text(rec: dict[str, Any], key: str) -> str | None:
    v = rec.get(key)
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


class RowChecker:
    """Checks rows against a tokenizer: one-token answers, known words, matching corrupted length."""

    def __init__(self, tokenizer: Any, n_ctx: int | None = None, prepend_bos: bool = True) -> None:
        self.tok, self.n_ctx, self.bos = tokenizer, n_ctx, int(bool(prepend_bos))

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def problem(self, ex: Example) -> str | None:
        """Why ``ex`` cannot be used, or ``None``."""
        from mechattr.inputs import unknown_words

        texts = [t for t in (ex.prompt, ex.answer, ex.corrupted) if t is not None]
        unknown = unknown_words(self.tok, texts)
        if unknown:
            return f"word(s) not in the model's vocabulary: {', '.join(map(repr, unknown[:5]))}"
        n = len(self._ids(ex.prompt))
        if n == 0:
            return "prompt has no tokens"
        if self.n_ctx is not None and n + self.bos > self.n_ctx:
            return f"prompt has {n + self.bos} tokens, more than the model's n_ctx={self.n_ctx}"
        if ex.answer is not None and len(a := self._ids(ex.answer)) != 1:
            return f"answer {ex.answer!r} is {len(a)} tokens, not a single token"
        if ex.corrupted is not None and (m := len(self._ids(ex.corrupted))) != n:
            return f"corrupted prompt has {m} tokens, the prompt {n} (they must match)"
        return None


def iter_examples(
    path: str | Path,
    *,
    checker: RowChecker | None = None,
    fmt: str | None = None,
    prompt_key: str = "prompt",
) -> Iterator[Example | Malformed]:
    """Stream :class:`Example` s and :class:`Malformed` rows (in file order) from ``path``."""
    seen: set[str] = set()
    for line, rec, err in read_records(path, fmt):
        if rec is None:
            yield Malformed(line, None, err or "unreadable row")
            continue
        rid = _text(rec, "id")
        rid = str(line) if rid is None else rid
        prompt = _text(rec, prompt_key)
        if prompt is None or not prompt.strip():
            yield Malformed(line, rid, f"missing {prompt_key!r}")
            continue
        if rid in seen:
            yield Malformed(line, rid, f"id {rid!r} repeated")
            continue
        seen.add(rid)
        ex = Example(rid, prompt, _text(rec, "answer"), _text(rec, "corrupted"), line)
        why = checker.problem(ex) if checker is not None else None
        yield ex if why is None else Malformed(line, rid, why)


def malformed_to_json(rows: list[Malformed]) -> str:
    return "".join(json.dumps(asdict(r)) + "\n" for r in rows)


def write_organism_dataset(task: str, n: int, path: str | Path, *, seed: int = 0, chunk: int = 10_000) -> Path:
    """Write ``n`` examples of an organism task to JSONL: ``id``, ``prompt``, ``answer``, ``corrupted``.

    Prompts are the task's token words joined by spaces without the leading ``<bos>`` (the
    model prepends it), so ``prepare_tokens(model, prompt)`` gives back the task's tokens.
    Chunks of ``chunk`` rows are drawn with seeds ``seed, seed + 1, …`` (bounded memory);
    ids are ``"{task}-{seed}-{i}"``.
    """
    from mechattr import organisms
    from mechattr.organisms.tasks import check_sample_args

    check_sample_args(n, seed)
    t = organisms.task(task)
    vocab = t.vocab
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    words = lambda row: " ".join(vocab[i] for i in row[1:])  # noqa: E731
    with open(out, "w", encoding="utf-8") as f:
        done = 0
        while done < n:
            k = min(chunk, n - done)
            b = t.sample(k, seed=seed + done // chunk)
            for j in range(k):
                rec = {"id": f"{task}-{seed}-{done + j}", "prompt": words(b.tokens[j].tolist()),
                       "answer": vocab[int(b.answers[j])], "corrupted": words(b.corrupted[j].tolist())}
                f.write(json.dumps(rec) + "\n")
            done += k
    return out
