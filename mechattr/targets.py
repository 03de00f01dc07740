"""Scalar targets: callables ``logits [batch, pos, vocab] -> [batch]`` that know where they read.

A :class:`Target` says which positions it reads (``positions``) and how it turns the logits
there into one number per example (``from_selected``), so engines can compute the final
LayerNorm and the unembedding only at those positions (:func:`run_target`). Any plain
callable on full logits also works wherever a target is accepted.

All values are computed in float32. Positions are an int (negative counts from the end),
a ``[batch]`` tensor, or ``"last"`` (the last non-pad position under the attention mask;
the last position when there is no mask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechattr.checks import check_finite, check_target_rows, check_token_ids  # noqa: F401 (re-exported)
from mechattr.positions import (  # noqa: F401,E402
    PosSpec,
    check_not_padding,
    has_right_padding,
    last_positions,
    resolve_positions,
)
from mechattr.runtime.arch import supports_start_at_layer
from mechattr.runtime.readout import (  # noqa: F401 (re-exported)
    final_logits,
    forward_to_readout,
    logits_at,
    logits_checking_readout,
    readout_live,
    unembed,
)


def _as_ids(token_ids: Any, name: str = "token_ids") -> Tensor:
    check_token_ids(token_ids, name)  # e.g. logit("t9"): a word, not an id
    t = torch.as_tensor(token_ids)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer token ids, got dtype {t.dtype}")
    if t.ndim > 1:
        raise ValueError(f"{name} must be an int or a [batch] tensor, got shape {tuple(t.shape)}")
    return t.long()


def _rows(x: Any, rows: Tensor) -> Any:
    if isinstance(x, Tensor) and x.ndim >= 1:
        return x.to(rows.device)[rows]
    return x


class Target:
    """Base class: a scalar per example read from the logits at a few positions.

    Subclasses set ``self.pos`` (and per-example tensors listed in ``_per_example``) and
    implement :meth:`from_selected`. ``k`` is the number of positions read per example.
    """

    name = "target"
    _per_example: tuple[str, ...] = ()
    k = 1

    def __init__(self, pos: PosSpec = -1) -> None:
        if isinstance(pos, Tensor):
            pos = pos.long()
        elif isinstance(pos, str) and pos != "last":
            raise ValueError(f"unknown position {pos!r}; use an int, a [batch] tensor or 'last'")
        self.pos = pos

    # -- which positions --------------------------------------------------------------
    def positions(self, batch: int, n_pos: int, attention_mask: Tensor | None = None, device: Any = "cpu") -> Int[Tensor, "batch k"]:
        p = resolve_positions(self.pos, batch, n_pos, attention_mask, torch.device(device))
        idx = p[:, None] + torch.arange(self.k, device=p.device)[None, :]
        if self.k > 1:
            check_not_padding(idx.clamp(max=n_pos - 1), attention_mask)
        return idx

    def from_selected(self, logits: Float[Tensor, "batch k vocab"]) -> Float[Tensor, " batch"]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, logits: Float[Tensor, "batch pos vocab"], attention_mask: Tensor | None = None) -> Float[Tensor, " batch"]:
        b, n, _ = logits.shape
        idx = self.positions(b, n, attention_mask, logits.device)
        sel = logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[-1]))
        return self.from_selected(sel)

    # -- stacking variants -------------------------------------------------------------
    def take(self, rows: Tensor) -> Target:
        """This target for the rows ``rows`` of a stacked batch (row r is example ``rows[r]``)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.pos = _rows(self.pos, rows)
        for attr in self._per_example:
            setattr(new, attr, _rows(getattr(self, attr), rows))
        return new

    # -- linear combinations (a * f1 + b * f2) -------------------------------------------
    def __add__(self, other: Target) -> Target:
        return LinearCombination([(1.0, self), (1.0, other)])

    def __sub__(self, other: Target) -> Target:
        return LinearCombination([(1.0, self), (-1.0, other)])

    def __mul__(self, a: float) -> Target:
        return LinearCombination([(float(a), self)])

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pos={self.pos!r})"

    def describe(self) -> dict:
        """Settings for provenance (JSON-able)."""
        d: dict[str, Any] = {"target": self.name}
        for attr in ("pos", *self._per_example):
            v = getattr(self, attr)
            d[attr] = v.tolist() if isinstance(v, Tensor) else v
        return d


def _gather_tok(x: Float[Tensor, "batch vocab"], ids: Tensor) -> Tensor:
    ids = ids.to(x.device)
    if ids.ndim == 0:
        return x[:, ids]
    if ids.shape[0] != x.shape[0]:
        raise ValueError(f"token_ids has {ids.shape[0]} entries but the batch has {x.shape[0]} rows")
    return x.gather(-1, ids[:, None])[:, 0]


def _check_vocab(ids: Tensor, vocab: int) -> None:
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"target token id out of range: vocabulary has ids 0..{vocab - 1}, got {ids.tolist()}")


class _TokenTarget(Target):
    _per_example = ("token_ids",)

    def __init__(self, token_ids: Any, pos: PosSpec = -1) -> None:
        super().__init__(pos)
        self.token_ids = _as_ids(token_ids)

    def _values(self, x: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        return x

    def from_selected(self, logits: Float[Tensor, "batch k vocab"]) -> Float[Tensor, " batch"]:
        x = logits[:, 0].float()
        _check_vocab(self.token_ids, x.shape[-1])
        return _gather_tok(self._values(x), self.token_ids)


class Logit(_TokenTarget):
    """The logit of ``token_ids`` at ``pos``."""

    name = "logit"


class LogProb(_TokenTarget):
    """``log softmax(logits)[token]`` at ``pos``."""

    name = "logprob"

    def _values(self, x: Tensor) -> Tensor:
        return x.log_softmax(-1)


class Prob(_TokenTarget):
    """``softmax(logits)[token]`` at ``pos``."""

    name = "prob"

    def _values(self, x: Tensor) -> Tensor:
        return x.softmax(-1)


class LogitDiff(Target):
    """``logit[correct] − logit[incorrect]`` at ``pos``."""

    name = "logit_diff"
    _per_example = ("correct", "incorrect")

    def __init__(self, correct: Any, incorrect: Any, pos: PosSpec = -1) -> None:
        super().__init__(pos)
        self.correct = _as_ids(correct, "correct")
        self.incorrect = _as_ids(incorrect, "incorrect")

    def from_selected(self, logits: Float[Tensor, "batch k vocab"]) -> Float[Tensor, " batch"]:
        x = logits[:, 0].float()
        _check_vocab(torch.cat([self.correct.flatten(), self.incorrect.flatten()]), x.shape[-1])
        return _gather_tok(x, self.correct) - _gather_tok(x, self.incorrect)


class SequenceLogProb(Target):
    """Sum of log-probs of a multi-token answer: ``Σ_i log p(answer_i | prefix)``.

    The answer tokens must be present in the input right after ``pos`` (the position of the
    last prompt token): logits at ``pos + i`` predict ``answer[:, i]``. ``pos`` defaults to
    ``-(n + 1)``, i.e. the answer is the last ``n`` tokens of each row.
    """

    name = "sequence_logprob"
    _per_example = ("answer",)

    def __init__(self, answer: Any, pos: PosSpec | None = None) -> None:
        check_token_ids(answer, "answer")
        a = torch.as_tensor(answer)
        if a.is_floating_point() or a.dtype == torch.bool:
            raise ValueError(f"answer must be integer token ids, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[-1] == 0:
            raise ValueError(f"answer must be [n] or [batch, n] with n ≥ 1, got shape {tuple(a.shape)}")
        self.answer = a.long()
        self.k = a.shape[-1]
        if pos is None:
            pos = -(self.k + 1)
        elif isinstance(pos, str) and pos == "last":
            raise ValueError("SequenceLogProb reads the answer tokens after pos; give pos as an int or tensor")
        super().__init__(pos)

    def positions(self, batch: int, n_pos: int, attention_mask: Tensor | None = None, device: Any = "cpu") -> Tensor:
        p = resolve_positions(self.pos, batch, n_pos, attention_mask, torch.device(device))
        end = last_positions(attention_mask, batch, n_pos, p.device)
        if (p + self.k > end).any():
            raise ValueError(f"the {self.k}-token answer after position {self.pos} runs past the input's last real token")
        return p[:, None] + torch.arange(self.k, device=p.device)[None, :]

    def from_selected(self, logits: Float[Tensor, "batch k vocab"]) -> Float[Tensor, " batch"]:
        lp = logits.float().log_softmax(-1)
        ans = self.answer.to(lp.device)
        _check_vocab(ans, lp.shape[-1])
        if ans.shape[0] == 1 and lp.shape[0] != 1:
            ans = ans.expand(lp.shape[0], -1)
        return lp.gather(-1, ans[:, :, None])[:, :, 0].sum(-1)


class LinearCombination(Target):
    """``Σ_i a_i · f_i`` for targets ``f_i`` (reads the union of their positions)."""

    name = "linear_combination"

    def __init__(self, terms: Sequence[tuple[float, Target]]) -> None:
        flat: list[tuple[float, Target]] = []
        for a, t in terms:
            if isinstance(t, LinearCombination):
                flat += [(a * b, s) for b, s in t.terms]
            else:
                flat.append((a, t))
        self.terms = flat
        self.pos = -1
        self.k = sum(t.k for _, t in flat)

    def positions(self, batch: int, n_pos: int, attention_mask: Tensor | None = None, device: Any = "cpu") -> Tensor:
        return torch.cat([t.positions(batch, n_pos, attention_mask, device) for _, t in self.terms], 1)

    def from_selected(self, logits: Tensor) -> Tensor:
        out, i = 0.0, 0
        for a, t in self.terms:
            out = out + a * t.from_selected(logits[:, i : i + t.k])
            i += t.k
        return out

    def take(self, rows: Tensor) -> Target:
        return LinearCombination([(a, t.take(rows)) for a, t in self.terms])

    def describe(self) -> dict:
        return {"target": self.name, "terms": [[a, t.describe()] for a, t in self.terms]}


class Custom(Target):
    """Wrap ``fn(selected_logits [batch, k, vocab]) -> [batch]`` reading ``positions``."""

    name = "custom"

    def __init__(self, fn: Callable[[Tensor], Tensor], pos: PosSpec = -1, k: int = 1) -> None:
        super().__init__(pos)
        self.fn, self.k = fn, k

    def from_selected(self, logits: Tensor) -> Tensor:
        return self.fn(logits.float())


# ---------------------------------------------------------------------------- constructors
def logit(token_ids: Any, pos: PosSpec = -1) -> Logit:
    """Target: the logit of ``token_ids`` (int or ``[batch]``) at ``pos``."""
    return Logit(token_ids, pos)


def logprob(token_ids: Any, pos: PosSpec = -1) -> LogProb:
    """Target: log-probability of ``token_ids`` at ``pos``."""
    return LogProb(token_ids, pos)


def prob(token_ids: Any, pos: PosSpec = -1) -> Prob:
    """Target: probability of ``token_ids`` at ``pos``."""
    return Prob(token_ids, pos)


def logit_diff(correct: Any, incorrect: Any, pos: PosSpec = -1) -> LogitDiff:
    """Target: ``logit[correct] − logit[incorrect]`` at ``pos``."""
    return LogitDiff(correct, incorrect, pos)


def sequence_logprob(answer: Any, pos: PosSpec | None = None) -> SequenceLogProb:
    """Target: summed log-prob of a multi-token answer (see :class:`SequenceLogProb`)."""
    return SequenceLogProb(answer, pos)


continuation_logprob = sequence_logprob


# ---------------------------------------------------------------------------- evaluation
def target_values(target: Callable, logits: Tensor, attention_mask: Tensor | None = None, *, n_examples: int | None = None) -> Float[Tensor, " rows"]:
    """Evaluate ``target`` on full logits of a stacked batch (rows variant-major).

    ``rows = V · n_examples``; row ``r`` belongs to example ``r % n_examples``. A
    :class:`Target` is indexed with :meth:`Target.take`; a plain callable is called on each
    variant's ``[n_examples]`` block.
    """
    rows = logits.shape[0]
    n = n_examples or rows
    if isinstance(target, Target) and rows == n:
        check_target_rows(target, n)
    if rows % n:
        raise ValueError(f"{rows} stacked rows are not a multiple of {n} examples")
    if isinstance(target, Target):
        t = target if rows == n else target.take(torch.arange(rows, device=logits.device) % n)
        mask = attention_mask if attention_mask is None or attention_mask.shape[0] == rows else attention_mask.repeat(rows // n, 1)
        return t(logits, mask).float()
    if has_right_padding(attention_mask):
        raise ValueError(
            "a plain callable target reads the full logits, so on a right-padded batch it may read "
            "a pad position; use a mechattr.targets target (negative positions count from each "
            "row's last real token) or pad on the left"
        )
    out = [torch.as_tensor(target(logits[i : i + n])) for i in range(0, rows, n)]
    vals = torch.cat([o.reshape(-1) for o in out]).float()
    if vals.shape[0] != rows:
        raise ValueError(f"target must return one value per example ([batch]); got {tuple(out[0].shape)} for {n} examples")
    return vals


def run_target(
    model: Any,
    inp: Tensor,
    target: Callable,
    *,
    attention_mask: Tensor | None = None,
    start_at_layer: int | None = None,
    n_examples: int | None = None,
) -> Float[Tensor, " rows"]:
    """Forward ``inp`` (tokens, or a residual with ``start_at_layer``) and evaluate ``target``.

    For a :class:`Target` the unembedding (and, on a HookedTransformer, the final norm) is
    computed only at the positions the target reads — on a bridge where
    :func:`mechattr.runtime.readout.readout_live` says that reproduces its logits.
    ``attention_mask`` is per example
    (``[n_examples, pos]``) or per row. Rows are variant-major (see :func:`target_values`).
    """
    rows, n_pos = inp.shape[0], inp.shape[1]
    n = n_examples or rows
    if rows == n:
        check_target_rows(target, n)
    mask_rows = None
    if attention_mask is not None:
        mask_rows = attention_mask if attention_mask.shape[0] == rows else attention_mask.repeat(rows // n, 1)
    kw: dict[str, Any] = {}
    if mask_rows is not None:
        kw["attention_mask"] = mask_rows
    if start_at_layer is not None:
        kw["start_at_layer"] = start_at_layer
    if isinstance(target, Target) and supports_start_at_layer(model):
        resid = model(inp, stop_at_layer=model.cfg.n_layers, **kw)
        t = target if rows == n else target.take(torch.arange(rows, device=resid.device) % n)
        idx = t.positions(rows, n_pos, mask_rows, resid.device)
        return t.from_selected(logits_at(model, resid, idx)).float()
    if isinstance(target, Target) and start_at_layer is None:  # a bridge (or other model)
        t = target if rows == n else target.take(torch.arange(rows, device=inp.device) % n)
        idx = t.positions(rows, n_pos, mask_rows, inp.device)
        if readout_live(model):  # no unembedding of the positions the target does not read
            resid = forward_to_readout(model, inp, **kw)
            sel = resid.gather(1, idx[:, :, None].expand(-1, -1, resid.shape[-1]))
            return t.from_selected(unembed(model, sel)).float()
        logits = logits_checking_readout(model, inp, idx, **kw)
        return t.from_selected(logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[-1]))).float()
    logits = model(inp, **kw)
    return target_values(target, logits, attention_mask, n_examples=n)
