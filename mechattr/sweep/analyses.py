"""Sweep analyses: a registry name → adapter that runs one batch and returns per-example rows.

An adapter is ``fn(model, batch: Prepared, **options) -> Rows``. It calls mechattr's public
function on the batch and reshapes the answer into rows:

- ``tokens``: :func:`mechattr.attribute_tokens` (any method); one row per example with the
  scores over positions, the token strings and the completeness error.
- ``heads``: :func:`mechattr.attribute_heads` (AtP, AtP*, IG, DLA); ``edges``:
  :func:`mechattr.attribute_edges`; ``ablation_scan``, ``activation_patch``, ``path_patch``.
  These return a batch-mean, so with ``per_example=True`` (default) the function is called
  on each example alone (the row is exactly the direct call on that example; ablation with
  ``mode="mean"|"resample"`` takes the sweep batch as its reference), and with
  ``per_example=False`` once per batch: one row per batch holding the batch-mean, with the
  ids it covers (aggregates weight it by its size; exact for these linear effects' means,
  but no per-example spread).
- ``validate``: :func:`mechattr.validate` once per batch; one row per batch with the
  verdicts and the report as JSON (per-batch by design: its claims are about a batch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechattr.registry import Registry

ANALYSES: Registry = Registry("sweep analysis")


@dataclass
class Prepared:
    """A tokenized sweep batch: ``tokens``/``corrupted`` ``[n, pos]`` on the model's device,
    ``answers`` ``[n]`` (given, or the model's top prediction where ``answer_given`` is False),
    ``target`` = ``targets.logit(answers, pos=-1)``, ``str_tokens`` ``[n][pos]`` (from ``tokenizer``, on first use)."""

    ids: list[str]
    lines: list[int]
    tokens: Tensor
    attention_mask: Tensor | None
    corrupted: Tensor | None
    answers: Tensor
    answer_given: list[bool]
    target: Any
    tokenizer: Any = None
    _str_tokens: list[list[str]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def str_tokens(self) -> list[list[str]]:
        """Token strings of each example (padding left out), made on first use: one id→string lookup for the batch."""
        if self._str_tokens is None:
            ids = self.tokens.cpu()
            keep = torch.ones_like(ids, dtype=torch.bool) if self.attention_mask is None else self.attention_mask.cpu().bool()
            flat = self.tokenizer.convert_ids_to_tokens(ids[keep].tolist())
            ends = keep.sum(-1).cumsum(0).tolist()
            self._str_tokens = [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        return self._str_tokens

    def row(self, i: int) -> Prepared:
        """Example ``i`` alone, as a batch of one."""
        from mechattr import targets

        s = slice(i, i + 1)
        mask = None if self.attention_mask is None else self.attention_mask[s]
        if mask is not None and bool(mask.all()):
            mask = None
        return Prepared(self.ids[s], self.lines[s], self.tokens[s], mask,
                        None if self.corrupted is None else self.corrupted[s], self.answers[s],
                        self.answer_given[s], targets.logit(self.answers[s], pos=-1), self.tokenizer,
                        None if self._str_tokens is None else self._str_tokens[s])


@dataclass
class Rows:
    """Per-row results: ``scores`` ``[rows, ...]`` (float32, CPU), ``names`` the flattened score
    axis' labels (``None`` for positions), ``columns`` extra per-row values, ``per_batch``
    when there is one row for the whole batch."""

    scores: Tensor | None
    names: list[str] | None = None
    columns: dict[str, list[Any]] = field(default_factory=dict)
    per_batch: bool = False


def register(name: str, *, overwrite: bool = False) -> Callable:
    """Register ``fn(model, batch, **options) -> Rows`` as sweep analysis ``name``."""
    return ANALYSES.register(name, overwrite=overwrite)


def get(name: str) -> Callable:
    return ANALYSES.get(name)


def names() -> list[str]:
    return ANALYSES.names()


def _need_corrupted(batch: Prepared, name: str) -> Tensor:
    if batch.corrupted is None:
        raise ValueError(f"sweep analysis {name!r} needs a 'corrupted' column in the dataset")
    return batch.corrupted


def _cpu(t: Tensor) -> Tensor:
    return t.detach().float().cpu()


@register("tokens")
def tokens(model: Any, batch: Prepared, *, method: str = "ig", **options: Any) -> Rows:
    """Token attribution: ``scores`` ``[n, pos]`` and ``completeness_error`` (``convergence_delta``)."""
    from mechattr import attribute_tokens

    res = attribute_tokens(model, batch.tokens, batch.target, method, attention_mask=batch.attention_mask, **options)
    delta = getattr(res, "convergence_delta", None)
    cols: dict[str, list[Any]] = {"tokens": batch.str_tokens}
    cols["completeness_error"] = [None] * len(batch) if delta is None else _cpu(delta).tolist()
    return Rows(_cpu(res.scores), None, cols)


def _per_example(fn: Callable[[Prepared], tuple[Tensor, list[str]]], batch: Prepared, per_example: bool) -> Rows:
    if not isinstance(per_example, bool):
        raise ValueError(f"per_example must be True or False, got {per_example!r}")
    if not per_example:
        s, names_ = fn(batch)
        return Rows(_cpu(s)[None], names_, {"n_examples": [len(batch)]}, per_batch=True)
    outs = [fn(batch.row(i)) for i in range(len(batch))]
    return Rows(torch.stack([_cpu(s) for s, _ in outs]), outs[0][1])


def _component_names(model: Any, shape: tuple[int, ...], kind: str) -> list[str]:
    if kind == "heads" and len(shape) >= 2:
        return [f"L{i}H{j}" for i in range(shape[0]) for j in range(shape[1])]
    if kind == "mlps":
        return [f"MLP{i}" for i in range(shape[0])]
    return [str(i) for i in range(shape[0])]


@register("heads")
def heads(model: Any, batch: Prepared, *, per_example: bool = True, **options: Any) -> Rows:
    """:func:`mechattr.attribute_heads` (``kind="heads"``: scores ``[n, n_layers * n_heads]``)."""
    from mechattr import attribute_heads

    kind = options.get("kind", "heads")

    def run(b: Prepared) -> tuple[Tensor, list[str]]:
        s = attribute_heads(model, b.tokens, b.target, corrupted=b.corrupted, attention_mask=b.attention_mask, **options)
        return s.reshape(-1), _component_names(model, tuple(s.shape), kind)

    return _per_example(run, batch, per_example)


@register("edges")
def edges(model: Any, batch: Prepared, *, per_example: bool = True, **options: Any) -> Rows:
    """:func:`mechattr.attribute_edges`: scores ``[n, n_edges]``, names ``"L0H1->L1H2.k"``."""
    from mechattr import attribute_edges

    _need_corrupted(batch, "edges")

    def run(b: Prepared) -> tuple[Tensor, list[str]]:
        r = attribute_edges(model, b.tokens, b.corrupted, b.target, attention_mask=b.attention_mask, **options)
        return r.scores, [str(e) for e in r.edges]

    return _per_example(run, batch, per_example)


@register("ablation_scan")
def ablation_scan(model: Any, batch: Prepared, *, per_example: bool = True, **options: Any) -> Rows:
    """:func:`mechattr.ablation_scan`: scores ``[n, n_layers * n_heads]`` (or ``[n, n_layers]``)."""
    from mechattr import ablation_scan as scan

    kind = options.get("kind", "heads")
    if per_example and str(options.get("mode", "zero")) in ("mean", "resample") and options.get("reference") is None:
        options = {**options, "reference": batch.tokens}

    def run(b: Prepared) -> tuple[Tensor, list[str]]:
        s = scan(model, b.tokens, b.target, attention_mask=b.attention_mask, **options)
        return s.reshape(-1), _component_names(model, tuple(s.shape), kind)

    return _per_example(run, batch, per_example)


@register("activation_patch")
def activation_patch(model: Any, batch: Prepared, *, per_example: bool = True, **options: Any) -> Rows:
    """:func:`mechattr.activation_patch` (``return_result``: component names from the result)."""
    from mechattr import activation_patch as patch

    _need_corrupted(batch, "activation_patch")

    def run(b: Prepared) -> tuple[Tensor, list[str]]:
        r = patch(model, b.tokens, b.corrupted, b.target, attention_mask=b.attention_mask, return_result=True, **options)
        return r.scores.reshape(-1), _flat_names(r)

    return _per_example(run, batch, per_example)


@register("path_patch")
def path_patch(model: Any, batch: Prepared, *, senders: Any, receivers: Any, per_example: bool = True, **options: Any) -> Rows:
    """:func:`mechattr.path_patch`: scores ``[n, len(senders)]``."""
    from mechattr import path_patch as pp

    _need_corrupted(batch, "path_patch")
    recv = receivers if isinstance(receivers, str) else [tuple(r) if isinstance(r, list) else r for r in receivers]

    def run(b: Prepared) -> tuple[Tensor, list[str]]:
        r = pp(model, b.tokens, b.corrupted, b.target, senders, recv, attention_mask=b.attention_mask, return_result=True, **options)
        return r.scores.reshape(-1), _flat_names(r)

    return _per_example(run, batch, per_example)


def _flat_names(r: Any) -> list[str]:
    n = int(r.scores.numel())
    if len(r.components) == n:
        return list(r.components)
    per = n // max(len(r.components), 1)
    return [f"{c}@{p}" for c in r.components for p in range(per)]


@register("validate")
def validate(model: Any, batch: Prepared, **options: Any) -> Rows:
    """:func:`mechattr.validate` on the batch: one row with ``verdicts`` and ``report`` (JSON)."""
    from mechattr import validate as run

    rep = run(model, batch.tokens, batch.target, corrupted=batch.corrupted, attention_mask=batch.attention_mask, **options)
    d = rep.to_dict()
    cols = {"n_examples": [len(batch)], "verdicts": [json.dumps(rep.verdicts())], "report": [json.dumps(d, default=str)]}
    return Rows(None, None, cols, per_batch=True)
