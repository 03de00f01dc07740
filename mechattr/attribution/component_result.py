"""``ComponentAttribution``: the opt-in result object of head / MLP / neuron / residual
attribution (``return_result=True``), holding the scores and every setting that made them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor


@dataclass
class ComponentAttribution:
    """Scores plus provenance.

    ``scores``: ``[n_layers, n_heads]`` (heads), ``[n_layers]`` (mlps), ``[n_layers, d_mlp]``
    (neurons) or ``[n_layers + 1, pos]`` (resid); with ``per_position`` a trailing ``pos``
    axis. ``convergence_delta``: for ``ig``, ``Σ scores − (F(x) − F(baseline))`` (per row
    for resid, a scalar otherwise). ``meta``: method, kind, target, n_steps, versions.
    ``parts``: for signed ``atp_star``, the query / key / value node estimates (``"q"``,
    ``"k"``, ``"v"``, each shaped like ``scores``; they sum to ``scores``).
    """

    scores: Tensor
    kind: str
    method: str
    per_position: bool = False
    convergence_delta: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Tensor] | None = None

    def __repr__(self) -> str:
        from mechattr import reprs

        return reprs.text(*reprs.component_attribution(self))

    def _repr_html_(self) -> str:
        """A small escaped HTML table (shapes, top items, settings names) for notebooks."""
        from mechattr import reprs

        return reprs.html(*reprs.component_attribution(self))

    def row_names(self) -> list[str]:
        n = self.scores.shape[0]
        if self.kind == "resid":
            return [f"resid_pre{i}" for i in range(n - 1)] + ["resid_final"] if self.meta.get("include_final", True) else [f"resid_pre{i}" for i in range(n)]
        return [f"L{i}" if self.kind != "mlps" else f"MLP{i}" for i in range(n)]

    def to_frame(self):
        """Long-format ``pandas.DataFrame`` with one row per score."""
        import pandas as pd

        s = self.scores.detach().float().cpu()
        rows = []
        for idx in zip(*[t.flatten().tolist() for t in _grid(s.shape)]):
            rec: dict[str, Any] = {"layer": idx[0]}
            rest = list(idx[1:])
            if self.kind == "heads":
                rec["head"] = rest.pop(0)
                rec["component"] = f"L{idx[0]}H{rec['head']}"
            elif self.kind == "neurons":
                rec["neuron"] = rest.pop(0)
                rec["component"] = f"L{idx[0]}N{rec['neuron']}"
            elif self.kind == "mlps":
                rec["component"] = f"MLP{idx[0]}"
            else:
                rec["component"] = self.row_names()[idx[0]]
            if rest:
                rec["pos"] = rest.pop(0)
            rec["score"] = float(s[idx])
            rows.append(rec)
        return pd.DataFrame(rows)

    def plot(self, str_tokens: list[str] | None = None, *, title: str | None = None):
        """Plotly heatmap: layer × head (heads), layer × position (resid / per-position)."""
        from mechattr.report import figures

        t = title or f"{self.kind} attribution ({self.method})"
        s = self.scores.detach().float().cpu()
        if self.kind == "heads" and not self.per_position:
            return figures.layer_head_heatmap(s, title=t, zlabel=self.method)
        if self.kind == "heads":
            s = s.flatten(0, 1)
            names = [f"L{i}H{j}" for i in range(self.scores.shape[0]) for j in range(self.scores.shape[1])]
            return figures.layer_pos_heatmap(s, str_tokens, title=t, row_names=names)
        if s.ndim == 1:
            s = s[None]
            return figures.layer_pos_heatmap(s, None, title=t, row_names=["score"])
        return figures.layer_pos_heatmap(s, str_tokens if self.kind in ("resid", "mlps") else None, title=t, row_names=self.row_names() if self.kind != "neurons" else None)

    def save(self, path: str | Path) -> Path:
        """Write scores + settings as JSON or safetensors (by suffix)."""
        from mechattr.io import save_result

        meta = {"kind": self.kind, "method": self.method, "per_position": self.per_position, **self.meta}
        tensors = {"scores": self.scores, "convergence_delta": self.convergence_delta}
        tensors.update({f"part_{k}": v for k, v in (self.parts or {}).items()})
        return save_result(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> ComponentAttribution:
        from mechattr.io import load_result

        t, meta = load_result(path)
        kind, method, pp = meta.pop("kind"), meta.pop("method"), bool(meta.pop("per_position", False))
        meta.pop("schema_version", None)
        parts = {k[5:]: v for k, v in t.items() if k.startswith("part_")}
        return cls(t["scores"], kind, method, pp, t.get("convergence_delta"), meta, parts or None)


def _grid(shape: tuple[int, ...]) -> list[Tensor]:
    import torch

    return list(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"))
