"""Faithfulness of a token attribution: comprehensiveness, sufficiency, log-odds, controls.

Definitions (per example; the reported number is the mean over the batch, ``1/N Σ_i``):

- comprehensiveness (DeYoung et al. 2020, ERASER):
  ``comp = p(ŷ|x) − p(ŷ|x without top-k%)`` — higher is better;
- sufficiency (DeYoung et al. 2020): ``suff = p(ŷ|x) − p(ŷ|top-k% only)`` — lower is better;
- log-odds (Shrikumar et al. 2017, as in the AIEG paper's appendix A.4):
  ``LO = log p(ŷ|x^(k)) − log p(ŷ|x)`` with the top-k% removed — lower is better.

(Appendix A.4 of the AIEG paper writes Comp with the opposite sign yet calls higher better;
we follow DeYoung et al.) ``top-k%`` are the ``max(1, ceil(k · n_i))`` highest-scoring of the
``n_i`` removable positions of example ``i`` (:func:`~mechattr.faithfulness.removal.removable_mask`:
never BOS or padding); "removed" is the removal operator (default ``zero``: zero token
embedding, "zero padding"); "top-k% only" removes every *other* removable position.
``ŷ`` is the target's token (``label="target"``) or the model's prediction at the target's
read position (``label="predicted"``). The random control scores ``n_draws`` seeded random
rankings the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechattr.faithfulness.removal import (
    parse_removal,
    perturbed_values,
    removable_mask,
    target_read_positions,
)
from mechattr.inputs import Batch, prepare_tokens
from mechattr.model import model_guard
from mechattr.targets import LogitDiff, LogProb, _TokenTarget, check_target_rows


# --------------------------------------------------------------------------- validation
def check_k(k: Any) -> float:
    """Raise ``ValueError`` unless ``0 < k <= 1``."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < float(k) <= 1:
        raise ValueError(f"k must be a fraction in (0, 1] (e.g. 0.2 for top-20%), got {k!r}")
    return float(k)


def check_scores(scores: Any, batch: Batch, removable: Tensor | None = None, name: str = "scores") -> Tensor:
    """``scores`` as a float ``[batch, pos]`` tensor matching the tokens, finite where it matters."""
    s = getattr(scores, "scores", scores)
    if not isinstance(s, Tensor):
        try:
            s = torch.as_tensor(s)
        except Exception:
            raise TypeError(f"{name} must be a [batch, pos] tensor, got {type(scores).__name__}") from None
    if s.ndim == 1:
        s = s[None]
    if tuple(s.shape) != batch.shape:
        raise ValueError(f"{name} has shape {tuple(s.shape)} but tokens are {batch.shape} ([batch, pos])")
    s = s.detach().float().to(batch.tokens.device)
    bad = ~torch.isfinite(s)
    if removable is not None:
        bad = bad & removable
    if bool(bad.any()):
        raise ValueError(f"{name} holds NaN/inf at (row, pos) {bad.nonzero().tolist()[:5]}")
    return s


def check_count(n: Any, name: str, lo: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < lo:
        raise ValueError(f"{name} must be an int ≥ {lo}, got {n!r}")
    return n


# --------------------------------------------------------------------------- ŷ
def label_target(model: Any, batch: Batch, target: Any, label: Any = "target") -> LogProb:
    """``log p(ŷ)`` at the target's read position, as a :class:`~mechattr.targets.LogProb`.

    ``label="target"``: ŷ is the target's token (``correct`` for a logit difference), or the
    prediction when the target names no token; ``"predicted"``: the argmax at the read
    position; an int / ``[batch]`` tensor: those ids.
    """
    pos = target_read_positions(target, batch)
    if isinstance(label, str):
        if label not in ("target", "predicted"):
            raise ValueError(f"label must be 'target', 'predicted' or token ids, got {label!r}")
        if label == "target" and isinstance(target, _TokenTarget):
            return LogProb(target.token_ids.to(pos.device), pos)
        if label == "target" and isinstance(target, LogitDiff):
            return LogProb(target.correct.to(pos.device), pos)
        with torch.no_grad():
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        ids = logits[torch.arange(pos.shape[0], device=pos.device), pos].argmax(-1)
        return LogProb(ids, pos)
    return LogProb(label, pos)


# --------------------------------------------------------------------------- rankings
def top_mask(scores: Float[Tensor, "batch pos"], removable: Bool[Tensor, "batch pos"], n: Tensor) -> Bool[Tensor, "batch pos"]:
    """The ``n[i]`` highest-scoring removable positions of each row (ties: lower position first)."""
    s = torch.where(removable, scores, torch.tensor(-math.inf, device=scores.device))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    return (rank < n[:, None]) & removable


def n_top(removable: Tensor, k: float) -> Tensor:
    """``max(1, ceil(k · n_i))`` per row."""
    n = removable.sum(-1).float()
    return torch.clamp(torch.ceil(k * n - 1e-9), min=1).long()


def random_scores(shape: tuple[int, int], seed: int, draws: int, device: Any) -> Float[Tensor, "draws batch pos"]:
    """``draws`` seeded random rankings (uniform scores)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand((draws, *shape), generator=g).to(device)


# --------------------------------------------------------------------------- result
@dataclass
class FaithfulnessResult:
    """Comp/Suff/LO per example for one attribution, and the same for random rankings.

    ``comprehensiveness``, ``sufficiency``, ``log_odds``, ``p_full`` ``[batch]``;
    ``control`` maps each metric to ``[n_draws, batch]`` (random rankings).
    """

    comprehensiveness: Tensor
    sufficiency: Tensor
    log_odds: Tensor
    p_full: Tensor
    control: dict[str, Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    HIGHER_BETTER = {"comprehensiveness": True, "sufficiency": False, "log_odds": False}

    def summary(self) -> dict[str, dict[str, float | bool | None]]:
        """Per metric: batch mean, control mean/std/5th/95th percentile of batch means, and
        ``beats_control`` (above the control's 95th percentile, or below its 5th when lower
        is better)."""
        out: dict[str, dict[str, Any]] = {}
        for name, hib in self.HIGHER_BETTER.items():
            v = float(getattr(self, name).mean())
            row: dict[str, Any] = {"value": v}
            c = self.control.get(name)
            if c is not None and c.numel():
                means = c.mean(-1)
                row.update(
                    control_mean=float(means.mean()),
                    control_std=float(means.std()) if means.numel() > 1 else 0.0,
                    control_p5=float(torch.quantile(means, 0.05)),
                    control_p95=float(torch.quantile(means, 0.95)),
                )
                row["beats_control"] = v > row["control_p95"] if hib else v < row["control_p5"]
            out[name] = row
        return out


# --------------------------------------------------------------------------- entry points
def _setup(model: Any, tokens: Any, target: Any, scores: Any, k: Any, removal: Any, attention_mask: Any, bos: Any):
    k = check_k(k)
    op = parse_removal(removal)
    batch = prepare_tokens(model, tokens, attention_mask)
    check_target_rows(target, batch.shape[0])
    removable = removable_mask(model, batch, target, bos=bos)
    s = check_scores(scores, batch, removable) if scores is not None else None
    return k, op, batch, removable, s


def faithfulness(
    model: Any,
    tokens: Any,
    target: Any,
    scores: Any,
    *,
    k: float | int = 0.2,
    removal: Any = "zero",
    n_draws: int = 20,
    seed: int = 0,
    label: Any = "target",
    attention_mask: Any = None,
    batch_size: int | None = None,
    replacement_id: int | None = None,
    bos: Any = "auto",
) -> FaithfulnessResult:
    """Comprehensiveness, sufficiency and log-odds of ``scores`` at top-``k`` (default 20%)
    with a random-ranking control of ``n_draws`` seeded draws (``n_draws=0``: none).

    ``scores``: ``[batch, pos]`` (or a result with ``.scores``). All ``3 + 2·n_draws``
    perturbed variants run stacked along the batch dimension in chunks of ``batch_size``.
    See the module docstring for the definitions.
    """
    n_draws = check_count(n_draws, "n_draws", lo=0)
    with model_guard(model), torch.no_grad():
        k, op, batch, removable, s = _setup(model, tokens, target, scores, k, removal, attention_mask, bos)
        lt = label_target(model, batch, target, label)
        n = n_top(removable, k)
        rankings = torch.cat([s[None], random_scores(batch.shape, seed, n_draws, s.device)]) if n_draws else s[None]
        tops = torch.stack([top_mask(r, removable, n) for r in rankings])  # [1+D, b, p]
        keep = torch.cat([torch.ones_like(tops[:1]), ~tops, ~(removable & ~tops)])
        lp = perturbed_values(model, batch, lt, keep, op, batch_size=batch_size, replacement_id=replacement_id)
        m = 1 + n_draws
        full, without, only = lp[0], lp[1 : 1 + m], lp[1 + m :]
        p = full.exp()
        comp = p - without.exp()
        suff = p - only.exp()
        lo = without - full
        settings = {"k": k, "removal": op.value, "n_draws": n_draws, "seed": seed,
                    "label": label if isinstance(label, str) else "ids", "n_top": n.tolist()}
        control = {"comprehensiveness": comp[1:], "sufficiency": suff[1:], "log_odds": lo[1:]} if n_draws else {}
        return FaithfulnessResult(comp[0].cpu(), suff[0].cpu(), lo[0].cpu(), p.cpu(),
                                  {a: b.cpu() for a, b in control.items()}, settings)


def comprehensiveness(model: Any, tokens: Any, target: Any, scores: Any, *, k: float | int = 0.2, removal: Any = "zero", **kw: Any) -> Float[Tensor, " batch"]:
    """``p(ŷ|x) − p(ŷ|x without top-k%)`` per example (DeYoung et al. 2020); higher is better."""
    return faithfulness(model, tokens, target, scores, k=k, removal=removal, n_draws=0, **kw).comprehensiveness


def sufficiency(model: Any, tokens: Any, target: Any, scores: Any, *, k: float | int = 0.2, removal: Any = "zero", **kw: Any) -> Float[Tensor, " batch"]:
    """``p(ŷ|x) − p(ŷ|top-k% only)`` per example (DeYoung et al. 2020); lower is better."""
    return faithfulness(model, tokens, target, scores, k=k, removal=removal, n_draws=0, **kw).sufficiency


def log_odds(model: Any, tokens: Any, target: Any, scores: Any, *, k: float | int = 0.2, removal: Any = "zero", **kw: Any) -> Float[Tensor, " batch"]:
    """``log p(ŷ|x^(k)) − log p(ŷ|x)``, top-k% removed (Shrikumar et al. 2017); lower is better."""
    return faithfulness(model, tokens, target, scores, k=k, removal=removal, n_draws=0, **kw).log_odds

