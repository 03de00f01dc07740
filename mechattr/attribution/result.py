"""``TokenAttribution``: token scores plus every setting that made them.

Tensors are float32 on CPU. ``scores [batch, n_features]`` (features = tokens, or spans
after :meth:`TokenAttribution.aggregate`); pad positions are 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechattr.inputs import Batch
from mechattr.io import load_result, save_result, versions

_SPECIAL_PREFIXES = (" ", "Ġ", "▁", "\n", "Ċ")


def str_tokens_of(model: Any, batch: Batch) -> list[list[str]]:
    """Token strings per row (``"<id>"`` when the model has no tokenizer)."""
    toks = batch.tokens.cpu()
    if getattr(model, "tokenizer", None) is None:
        return [[f"<{int(t)}>" for t in row] for row in toks]
    return [[str(s) for s in model.to_str_tokens(row)] for row in toks]


def word_spans(strs: list[str], real: Tensor, special: Tensor) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of words: a word starts at a token beginning with whitespace
    (or ``Ġ``/``▁``), at a special token, or after one; pad positions belong to none. A row
    with no whitespace-marked token (a word-level tokenizer) has one word per token."""
    spans: list[tuple[int, int]] = []
    prev_special = True
    marked = any(s.startswith(_SPECIAL_PREFIXES) for i, s in enumerate(strs) if bool(real[i]) and not bool(special[i]))
    for i, s in enumerate(strs):
        if not bool(real[i]):
            prev_special = True
            continue
        sp = bool(special[i])
        if sp or prev_special or not marked or s.startswith(_SPECIAL_PREFIXES) or not spans or spans[-1][1] != i:
            spans.append((i, i + 1))
        else:
            spans[-1] = (spans[-1][0], i + 1)
        prev_special = sp
    return spans


def span_masks(segments: Any, strs: list[list[str]], real: Tensor, exclude: Tensor) -> Tensor:
    """``[n_spans, batch, pos]`` bool masks from ``"words"`` or a list of ``(start, end)``."""
    b, p = real.shape
    if isinstance(segments, str):
        if segments != "words":
            raise ValueError(f"segments must be 'words' or a list of (start, end) spans; got {segments!r}")
        per_row = [word_spans(strs[i], real[i].cpu(), (exclude[i] & real[i]).cpu()) for i in range(b)]
    else:
        try:
            spans = [(int(s), int(e)) for s, e in segments]
        except (TypeError, ValueError):
            raise ValueError(f"segments must be 'words' or a list of (start, end) spans; got {segments!r}") from None
        if not spans or any(not 0 <= s < e <= p for s, e in spans):
            raise ValueError(f"each span needs 0 ≤ start < end ≤ {p} (half-open, positions of the padded batch); got {spans}")
        per_row = [spans] * b
    n = max(len(r) for r in per_row)
    out = torch.zeros(n, b, p, dtype=torch.bool)
    for i, row in enumerate(per_row):
        for j, (s, e) in enumerate(row):
            out[j, i, s:e] = True
    return out.to(real.device) & real[None]


@dataclass
class TokenAttribution:
    """Token attribution result (CPU, float32).

    ``scores [batch, n]`` (n = pos, or spans after aggregation); ``str_tokens`` per row;
    ``method``, ``settings`` (baseline, n_steps, seed, reduction, target, method options);
    ``convergence_delta [batch]`` = Σ scores − (F(x) − F(x')) for path methods (else None);
    ``f_input``/``f_baseline [batch]``; ``extras`` (e.g. RPI's maps); ``spans`` masks
    ``[n, batch, pos]`` after aggregation; ``token_scores`` the per-token scores.
    """

    scores: Tensor
    tokens: Tensor
    str_tokens: list[list[str]]
    method: str
    settings: dict[str, Any]
    attention_mask: Tensor | None = None
    convergence_delta: Tensor | None = None
    f_input: Tensor | None = None
    f_baseline: Tensor | None = None
    excluded: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    spans: Tensor | None = None
    token_scores: Tensor | None = None
    versions: dict[str, str] = field(default_factory=versions)

    @classmethod
    def build(cls, **kw: Any) -> TokenAttribution:
        """Construct with every tensor moved to CPU (floats as float32)."""

        def cpu(x: Any) -> Any:
            if isinstance(x, Tensor):
                x = x.detach().cpu()
                return x.float() if x.is_floating_point() else x
            return x

        kw = {k: cpu(v) for k, v in kw.items()}
        kw["extras"] = {k: cpu(v) for k, v in (kw.get("extras") or {}).items()}
        return cls(**kw)

    def __repr__(self) -> str:
        from mechattr import reprs

        return reprs.text(*reprs.token_attribution(self))

    def _repr_html_(self) -> str:
        """A small escaped HTML table (shapes, top items, settings names) for notebooks."""
        from mechattr import reprs

        return reprs.html(*reprs.token_attribution(self))

    # ------------------------------------------------------------------ views
    def aggregate(self, spans: Tensor, windows: Tensor | None = None) -> TokenAttribution:
        """One score per span ``spans [n, batch, pos]``: sum of token scores (root of the sum of
        squares for ``reduction="l2"``, which is the norm over the span's dimensions);
        ``windows [batch, n]`` replaces that with a per-span score (occlusion of the span)."""
        m = spans.cpu().float()
        if windows is not None:
            agg = windows.detach().cpu().float()
        elif self.settings.get("reduction") == "l2":
            agg = torch.einsum("nbp,bp->bn", m, self.scores.pow(2)).sqrt()
        else:
            agg = torch.einsum("nbp,bp->bn", m, self.scores)
        agg = agg * (m.sum(-1).T > 0)
        strs = [["".join(t for t, keep in zip(self.str_tokens[i], spans[j, i].tolist()) if keep) for j in range(spans.shape[0])] for i in range(len(self.str_tokens))]
        return TokenAttribution(
            scores=agg, tokens=self.tokens, str_tokens=strs, method=self.method, settings=self.settings,
            attention_mask=self.attention_mask, convergence_delta=self.convergence_delta, f_input=self.f_input,
            f_baseline=self.f_baseline, excluded=self.excluded, extras=self.extras, spans=spans.cpu(),
            token_scores=self.scores, versions=self.versions,
        )

    def _valid(self) -> Tensor:
        if self.spans is not None:
            return self.spans.any(-1).T
        ok = torch.ones_like(self.scores, dtype=torch.bool)
        if self.attention_mask is not None:
            ok &= self.attention_mask.bool()
        if self.excluded is not None:
            ok &= ~self.excluded
        return ok

    def top_k(self, k: int, *, by_abs: bool = False) -> list[list[tuple[int, str, float]]]:
        """Per row, the ``k`` highest-scoring features as ``(index, token, score)`` (excluded and
        pad positions skipped; ``by_abs`` ranks by ``|score|``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int ≥ 1, got {k!r}")
        key = self.scores.abs() if by_abs else self.scores
        key = key.masked_fill(~self._valid(), float("-inf"))
        out = []
        for i in range(key.shape[0]):
            order = key[i].argsort(descending=True)[: min(k, int(self._valid()[i].sum()))]
            out.append([(int(j), self.str_tokens[i][j], float(self.scores[i, j])) for j in order])
        return out

    def to_frame(self):
        """Long pandas frame: ``example, position, token, score`` (+ ``method``)."""
        import pandas as pd

        valid = self._valid()
        rows = [
            {"example": i, "position": j, "token": self.str_tokens[i][j], "score": float(self.scores[i, j]), "method": self.method}
            for i in range(self.scores.shape[0])
            for j in range(self.scores.shape[1])
            if j < len(self.str_tokens[i]) and (self.attention_mask is None or self.spans is not None or bool(self.attention_mask[i, j]))
            and (bool(valid[i, j]) or self.spans is None)
        ]
        return pd.DataFrame(rows, columns=["example", "position", "token", "score", "method"])

    def plot(self, *, title: str | None = None):
        """Plotly heatmap of the scores with the (escaped) token strings."""
        from mechattr.report.figures import token_heatmap

        return token_heatmap(self.scores, self.str_tokens, title=title or f"token attribution ({self.method})")

    # ------------------------------------------------------------------ persistence
    _TENSORS = ("scores", "tokens", "attention_mask", "convergence_delta", "f_input", "f_baseline", "excluded", "spans", "token_scores")

    def save(self, path: str | Path) -> Path:
        """Save as JSON (or ``.safetensors``) via :func:`mechattr.io.save_result`."""
        tensors = {k: getattr(self, k) for k in self._TENSORS}
        tensors.update({f"extras.{k}": v for k, v in self.extras.items() if isinstance(v, Tensor)})
        meta = {"kind": "TokenAttribution", "method": self.method, "settings": self.settings, "str_tokens": self.str_tokens, "versions": self.versions}
        return save_result(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> TokenAttribution:
        """Read what :meth:`save` wrote."""
        tensors, meta = load_result(path)
        if meta.get("kind") != "TokenAttribution":
            raise ValueError(f"{path} does not hold a TokenAttribution (kind={meta.get('kind')!r})")
        extras = {k.removeprefix("extras."): v for k, v in tensors.items() if k.startswith("extras.")}
        kw = {k: tensors.get(k) for k in cls._TENSORS}
        for k in ("excluded", "spans"):
            if kw[k] is not None:
                kw[k] = kw[k].bool()
        return cls(**kw, str_tokens=meta["str_tokens"], method=meta["method"], settings=meta["settings"], extras=extras, versions=meta.get("versions", {}))
