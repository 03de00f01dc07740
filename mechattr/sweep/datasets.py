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
from dataclasses import asdict, dataclass, field
from itertools import chain
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
    # token ids found by the checker (prompt, answer, corrupted; no special tokens), kept for the run
    ids: tuple[list[int], list[int] | None, list[int] | None] | None = field(default=None, compare=False, repr=False)


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


def count_rows(path: str | Path, fmt: str | None = None) -> int:
    """Rows in the dataset, cheaply (JSONL: non-blank lines; CSV: records; Parquet: metadata): the progress total."""
    p = Path(path)
    fmt = fmt or detect_format(p)
    if fmt == "jsonl":
        with open(p, "rb") as f:
            return sum(1 for raw in f if raw.strip())
    if fmt == "csv":
        with open(p, encoding="utf-8", newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(p).metadata.num_rows)
    import datasets as hf

    return len(hf.load_from_disk(str(p)))


def _text(rec: dict[str, Any], key: str) -> str | None:
    v = rec.get(key)
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def _word_vocab(tokenizer: Any) -> tuple[dict[str, int], tuple[str, ...]] | None:
    """``(vocab, added tokens)`` when the tokenizer is a plain whitespace word-level one (the organisms):
    then a text's ids are its whitespace-separated words looked up in the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "WordLevel" or backend.normalizer is not None:
        return None
    if type(backend.pre_tokenizer).__name__ != "WhitespaceSplit":
        return None
    return backend.get_vocab(), tuple(tokenizer.get_added_vocab())


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, as ``tokenizer(texts, add_special_tokens=False)``.

    One batched call of the Rust tokenizer (``encode_batch_fast``: no offsets); for a plain
    word-level vocabulary a dictionary lookup per word (texts with unknown words or added
    tokens go through the tokenizer).
    """
    if not texts:
        return []
    word = _word_vocab(tokenizer)
    if word is not None:
        vocab, added = word
        joined = "\n".join(texts)
        added = tuple(a for a in added if a in joined)  # added tokens present anywhere in the batch
        out: list[list[int] | None] = []
        look = vocab.__getitem__
        for t in texts:
            try:
                out.append(None if added and any(a in t for a in added) else list(map(look, t.split())))
            except KeyError:
                out.append(None)
        rest = [i for i, x in enumerate(out) if x is None]
        if rest:
            for i, ids in zip(rest, _encode(tokenizer, [texts[i] for i in rest])):
                out[i] = ids
        return out  # type: ignore[return-value]
    return _encode(tokenizer, texts)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "split_special_tokens", False):
        run = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        return [e.ids for e in run(list(texts), add_special_tokens=False)]
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _unknown_ids(tokenizer: Any) -> set[int]:
    """Ids an unknown word can become (the word-level model's unk token, the tokenizer's own
    unknown token unless it doubles as BOS/EOS/pad); a row holding none has no unknown word."""
    ids: set[int] = set()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordLevel":
        unk = getattr(backend.model, "unk_token", None)
        i = backend.token_to_id(unk) if unk else None
        if i is not None:
            ids.add(int(i))
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        ids.add(int(unk))
    return ids


class RowChecker:
    """Checks rows against a tokenizer: one-token answers, known words, matching corrupted length.

    :meth:`problems` checks a chunk of rows with one batched tokenizer call; the exact
    unknown-word check (:func:`mechattr.inputs.unknown_words`) runs only on rows whose ids hold
    a token an unknown word maps to.
    """

    def __init__(self, tokenizer: Any, n_ctx: int | None = None, prepend_bos: bool = True) -> None:
        self.tok, self.n_ctx, self.bos = tokenizer, n_ctx, int(bool(prepend_bos))
        self.unk = _unknown_ids(tokenizer)

    def problem(self, ex: Example) -> str | None:
        """Why ``ex`` cannot be used, or ``None``."""
        return self.problems([ex])[0]

    def problems(self, examples: list[Example]) -> list[str | None]:
        """Why each example cannot be used (``None`` where it can)."""
        return [w for w, _ in self.check(examples)]

    def check(self, examples: list[Example]) -> list[tuple[str | None, Any]]:
        """``(why or None, (prompt ids, answer ids, corrupted ids))`` for each example."""
        from mechattr.inputs import unknown_words

        texts, where = [], []
        for e in examples:
            where.append(len(texts))
            texts.extend(t for t in (e.prompt, e.answer, e.corrupted) if t is not None)
        try:
            ids = encode(self.tok, texts)
        except Exception:  # e.g. a word-level vocabulary without an unknown token: row by row, unknown words first
            if len(examples) > 1:
                return [self.check([e])[0] for e in examples]
            unknown = unknown_words(self.tok, texts)
            if unknown:
                return [(f"word(s) not in the model's vocabulary: {', '.join(map(repr, unknown[:5]))}", None)]
            raise
        out: list[tuple[str | None, Any]] = []
        maybe_unknown = bool(self.unk) and not self.unk.isdisjoint(chain.from_iterable(ids))  # one pass over the chunk
        for e, k in zip(examples, where):
            p = ids[k]
            a = ids[k + 1] if e.answer is not None else None
            c = ids[k + 1 + (e.answer is not None)] if e.corrupted is not None else None
            if maybe_unknown and not (self.unk.isdisjoint(p) and self.unk.isdisjoint(a or ()) and self.unk.isdisjoint(c or ())):
                unknown = unknown_words(self.tok, [t for t in (e.prompt, e.answer, e.corrupted) if t is not None])
                if unknown:
                    out.append((f"word(s) not in the model's vocabulary: {', '.join(map(repr, unknown[:5]))}", None))
                    continue
            out.append((self._lengths(e, len(p), a, c), (p, a, c)))
        return out

    def _lengths(self, e: Example, n: int, a: list[int] | None, c: list[int] | None) -> str | None:
        if n == 0:
            return "prompt has no tokens"
        if self.n_ctx is not None and n + self.bos > self.n_ctx:
            return f"prompt has {n + self.bos} tokens, more than the model's n_ctx={self.n_ctx}"
        if a is not None and len(a) != 1:
            return f"answer {e.answer!r} is {len(a)} tokens, not a single token"
        if c is not None and len(c) != n:
            return f"corrupted prompt has {len(c)} tokens, the prompt {n} (they must match)"
        return None


def iter_examples(
    path: str | Path,
    *,
    checker: RowChecker | None = None,
    fmt: str | None = None,
    prompt_key: str = "prompt",
    chunk: int = 1024,
) -> Iterator[Example | Malformed]:
    """Stream :class:`Example` s and :class:`Malformed` rows (in file order) from ``path``.

    With a ``checker``, rows are checked ``chunk`` at a time (batched tokenizer calls) and each
    good :class:`Example` carries the token ids found (``ids``), so the run does not tokenize
    again; the order of what is yielded is the file order either way.
    """
    seen: set[str] = set()
    pending: list[Example | Malformed] = []

    def flush() -> Iterator[Example | Malformed]:
        todo = [x for x in pending if isinstance(x, Example)]
        why = iter(checker.check(todo) if checker is not None and todo else [(None, None)] * len(todo))
        for x in pending:
            if isinstance(x, Malformed):
                yield x
            else:
                w, ids = next(why)
                if w is None:
                    object.__setattr__(x, "ids", ids)  # the checker's ids (not compared, not shown): no second Example
                    yield x
                else:
                    yield Malformed(x.line, x.id, w)
        pending.clear()

    n_ex = 0
    for line, rec, err in read_records(path, fmt):
        if rec is None:
            pending.append(Malformed(line, None, err or "unreadable row"))
            continue
        rid = rec.get("id")
        rid = str(line) if rid is None else rid if isinstance(rid, str) else str(rid)
        prompt = rec.get(prompt_key)
        prompt = prompt if prompt is None or isinstance(prompt, str) else str(prompt)
        if prompt is None or not prompt.strip():
            pending.append(Malformed(line, rid, f"missing {prompt_key!r}"))
            continue
        if rid in seen:
            pending.append(Malformed(line, rid, f"id {rid!r} repeated"))
            continue
        seen.add(rid)
        pending.append(Example(rid, prompt, _text(rec, "answer"), _text(rec, "corrupted"), line))
        n_ex += 1
        if n_ex % chunk == 0 or checker is None:
            yield from flush()
    yield from flush()


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
