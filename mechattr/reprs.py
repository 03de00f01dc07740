"""Short summaries of result objects for ``repr()`` and notebooks (``_repr_html_``).

A result's summary is a title (class and method) and a few labelled fields: shapes, the top
items with their scores, and the *names* of its settings — never a tensor or a settings
value, so ``repr()`` of a 10 000-row result is a few lines. :func:`text` renders it for the
terminal; :func:`html` as a small table with every string escaped.
"""

from __future__ import annotations

import html as _html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

MAX_FIELD = 160  # characters of one field's value
N_TOP = 3


def clip(s: Any, n: int = MAX_FIELD) -> str:
    """``str(s)`` cut to ``n`` characters (with ``…``), newlines shown as ``⏎``."""
    s = str(s).replace("\n", "⏎")
    return s if len(s) <= n else s[: n - 1] + "…"


def shape(t: Tensor | None) -> str:
    """``[4, 24] float32`` (``None`` → ``-``)."""
    if t is None:
        return "-"
    return f"[{', '.join(str(int(d)) for d in t.shape)}] {str(t.dtype).removeprefix('torch.')}"


def num(x: float) -> str:
    return f"{x:+.3g}"


def top_items(names: Sequence[str], scores: Tensor, n: int = N_TOP) -> str:
    """The ``n`` entries of largest ``|score|`` as ``name +1.23`` (NaN skipped)."""
    s = scores.detach().float().cpu().reshape(-1)
    if len(names) != s.numel():
        raise ValueError(f"{len(names)} names for {s.numel()} scores")
    ok = ~torch.isnan(s)
    order = [i for i in s.abs().masked_fill(~ok, -1.0).argsort(descending=True, stable=True).tolist() if bool(ok[i])][:n]
    return ", ".join(f"{names[i]} {num(float(s[i]))}" for i in order) or "-"


def keys(d: Mapping[str, Any] | None) -> str:
    """The names of a settings dict, comma-separated (values are left out on purpose)."""
    return ", ".join(str(k) for k in (d or {})) or "-"


def text(title: str, fields: Iterable[tuple[str, Any]]) -> str:
    """``Title`` then one indented ``label: value`` line per field (each value clipped)."""
    return "\n".join([title] + [f"  {label}: {clip(v)}" for label, v in fields])


def html(title: str, fields: Iterable[tuple[str, Any]]) -> str:
    """A small two-column HTML table (title as caption), every string escaped."""
    e = _html.escape
    rows = "".join(f"<tr><th style='text-align:left'>{e(str(k))}</th><td style='text-align:left'>{e(clip(v))}</td></tr>" for k, v in fields)
    return f"<table><caption style='text-align:left'><b>{e(title)}</b></caption>{rows}</table>"


Summary = tuple[str, list[tuple[str, Any]]]


def token_attribution(r: Any) -> Summary:
    """``TokenAttribution``: shapes, the top tokens of row 0, settings names."""
    n = r.scores.shape[0]
    fields: list[tuple[str, Any]] = [("scores", shape(r.scores) + (" (spans)" if r.spans is not None else ""))]
    if n:
        top = r.top_k(N_TOP, by_abs=True)[0]
        fields.append((f"top |score| (row 0 of {n})", ", ".join(f"{t!r}@{j} {num(v)}" for j, t, v in top) or "-"))
    if r.convergence_delta is not None and r.convergence_delta.numel():
        fields.append(("max |convergence delta|", f"{float(r.convergence_delta.abs().max()):.3g}"))
    warnings = (r.settings or {}).get("warnings")
    if warnings:
        fields.append(("warnings", "; ".join(str(w) for w in warnings)))
    fields.append(("settings", keys(r.settings)))
    return f"TokenAttribution({r.method}, {n} rows)", fields


def component_names(kind: str, shape_: Sequence[int], row_names: Sequence[str]) -> list[str]:
    """One name per entry of a component score grid (``L1H2``, ``MLP0``, ``L0N7``, ``resid_pre1@3``)."""
    import itertools

    names = []
    for idx in itertools.product(*[range(int(d)) for d in shape_]):
        if kind == "heads":
            base, rest = f"L{idx[0]}H{idx[1]}", idx[2:]
        elif kind == "neurons":
            base, rest = f"L{idx[0]}N{idx[1]}", idx[2:]
        else:
            base, rest = row_names[idx[0]], idx[1:]
        names.append(base + "".join(f"@{p}" for p in rest))
    return names


def component_attribution(r: Any) -> Summary:
    """``ComponentAttribution``: kind, shape, the top components, settings names."""
    s = r.scores.detach()
    fields: list[tuple[str, Any]] = [("kind", r.kind), ("scores", shape(s) + (" (per position)" if r.per_position else ""))]
    fields.append(("top |score|", top_items(component_names(r.kind, s.shape, r.row_names()), s)))
    if r.convergence_delta is not None and r.convergence_delta.numel():
        fields.append(("max |convergence delta|", f"{float(r.convergence_delta.abs().max()):.3g}"))
    if r.parts:
        fields.append(("parts", ", ".join(r.parts)))
    fields.append(("settings", keys(r.meta)))
    return f"ComponentAttribution({r.method}, {r.kind})", fields


def generation_attribution(r: Any) -> Summary:
    """``GenerationAttribution``: matrix shape, the generated tokens, each step's top context token."""
    m = r.matrix.detach().float()
    fields: list[tuple[str, Any]] = [("matrix", shape(m) + f" (prompt {r.n_prompt} tokens)"),
                                     ("generated", " ".join(repr(g) for g in r.generated))]
    tops = []
    for i in range(min(m.shape[0], N_TOP)):
        j = int(m[i].abs().argmax())
        tops.append(f"{r.generated[i]!r} <- {r.context[j]!r}@{j} {num(float(m[i, j]))}")
    if tops:
        fields.append(("top context token per step", "; ".join(tops) + (" …" if m.shape[0] > N_TOP else "")))
    fields.append(("settings", keys(r.settings)))
    return f"GenerationAttribution({r.method}, {m.shape[0]} generated)", fields


def intervention_result(r: Any) -> Summary:
    """``InterventionResult``: axes and shape, the top components, baselines, settings names."""
    s = r.scores.detach()
    names = list(r.components)
    if "pos" in r.axes and s.ndim >= 1 and len(names) * s.shape[-1] == s.numel():
        names = [f"{c}@{p}" for c in names for p in range(s.shape[-1])]
    fields: list[tuple[str, Any]] = [("scores", f"{shape(s)} ({' × '.join(r.axes)})")]
    # patching returns patched target values: rank by the change from the unpatched run
    base_name = {"denoise": "corrupted", "noise": "clean"}.get(r.settings.get("direction")) or ("clean" if r.method == "path_patch" else None)
    base = r.settings.get(base_name) if base_name else None
    ok = len(names) == s.numel()
    if isinstance(base, (int, float)) and ok:
        fields.append((f"top |score − {base_name}|", top_items(names, s.float() - float(base))))
    else:
        fields.append(("top |score|", top_items(names, s) if ok else "-"))
    base = [f"{k} {num(float(r.settings[k]))}" for k in ("clean", "corrupted") if isinstance(r.settings.get(k), (int, float))]
    if base:
        fields.append(("unpatched target", ", ".join(base)))
    fields.append(("settings", keys(r.settings)))
    return f"InterventionResult({r.method})", fields


def edge_scores(r: Any) -> Summary:
    """``EdgeScores``: number of edges, the top edges, settings names."""
    fields: list[tuple[str, Any]] = [("scores", f"{shape(r.scores)} ({len(r.edges)} edges)")]
    if r.per_position is not None:
        fields.append(("per_position", shape(r.per_position)))
    fields.append(("top |score|", ", ".join(f"{e} {num(v)}" for e, v in r.top(N_TOP)) or "-"))
    fields.append(("settings", keys(r.settings)))
    return f"EdgeScores({r.method}, {len(r.edges)} edges)", fields
