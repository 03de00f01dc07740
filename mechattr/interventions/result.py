"""Intervention results: the scores tensor plus the component names and settings that made it.

The contract functions (``ablation_scan``, ``activation_patch``, ``path_patch``) return a
plain tensor; pass ``return_result=True`` to get an :class:`InterventionResult` instead,
which adds ``.to_frame()``, ``.plot()`` and ``.save()`` / :meth:`InterventionResult.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechattr.io import load_result, save_result, versions


@dataclass
class InterventionResult:
    """``scores`` with one entry per component (and position); ``axes`` names its axes.

    ``components``: component names in row-major order of the leading axes (``"L3H5"``,
    ``"MLP2"``, ``"resid_pre3"``). ``settings``: method, mode/site/direction, seed,
    baselines (``clean`` / ``corrupted`` batch-mean targets where defined) and versions.
    """

    scores: Tensor
    components: list[str]
    axes: tuple[str, ...]
    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        from mechattr import reprs

        return reprs.text(*reprs.intervention_result(self))

    def _repr_html_(self) -> str:
        """A small escaped HTML table (shapes, top items, settings names) for notebooks."""
        from mechattr import reprs

        return reprs.html(*reprs.intervention_result(self))

    def to_frame(self) -> Any:
        """A pandas DataFrame with one row per score (component, position, score)."""
        import pandas as pd

        s = self.scores.detach().float().cpu()
        rows = []
        if "pos" in self.axes:
            flat = s.reshape(-1, s.shape[-1])
            for name, r in zip(self.components, flat):
                rows += [{"component": name, "pos": p, "score": float(v)} for p, v in enumerate(r)]
        else:
            rows = [{"component": n, "score": float(v)} for n, v in zip(self.components, s.reshape(-1))]
        return pd.DataFrame(rows)

    def plot(self, title: str | None = None) -> Any:
        """Plotly figure: layer × head heatmap (heads), layer × position, or per component."""
        from mechattr.report import figures

        s = self.scores.detach().float().cpu()
        title = title or f"{self.method} ({self.settings.get('site') or self.settings.get('mode') or ''})"
        if self.axes == ("layer", "head"):
            return figures.layer_head_heatmap(s, title=title, zlabel=self.method)
        if self.axes[-1] == "pos":
            return figures.layer_pos_heatmap(s.reshape(-1, s.shape[-1]), title=title, row_names=self.components)
        grid = _head_grid(self.components, s)
        if grid is not None:
            return figures.layer_head_heatmap(grid, title=title, zlabel=self.method)
        return figures.layer_pos_heatmap(s.reshape(-1, 1), title=title, row_names=self.components)

    def save(self, path: str | Path) -> Path:
        """Write to ``.json`` or ``.safetensors`` (see :mod:`mechattr.io`)."""
        meta = {"kind": "InterventionResult", "components": self.components, "axes": list(self.axes),
                "method": self.method, "settings": self.settings, "versions": versions()}
        return save_result(path, {"scores": self.scores}, meta)

    @classmethod
    def load(cls, path: str | Path) -> InterventionResult:
        """Read back what :meth:`save` wrote."""
        tensors, meta = load_result(path)
        return cls(tensors["scores"], list(meta["components"]), tuple(meta["axes"]), meta["method"], dict(meta.get("settings", {})))


def _head_grid(names: list[str], s: Tensor) -> Tensor | None:
    """Scatter per-head scores into a ``[layer, head]`` grid (NaN elsewhere), if all are heads."""
    from mechattr.components import Head, parse_component

    try:
        comps = [parse_component(n) for n in names]
    except (ValueError, TypeError):
        return None
    if not comps or not all(isinstance(c, Head) for c in comps):
        return None
    grid = torch.full((max(c.layer for c in comps) + 1, max(c.head for c in comps) + 1), float("nan"))  # type: ignore[union-attr]
    for c, v in zip(comps, s.reshape(-1)):
        grid[c.layer, c.head] = v  # type: ignore[union-attr]
    return grid
