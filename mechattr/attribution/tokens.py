"""Token attribution: which input tokens made the model produce the target?

:func:`attribute_tokens` scores every input token for a scalar target with one of the
methods in :data:`METHODS` (gradient methods run on the path engine at ``hook_embed``;
positional embeddings stay fixed). Methods live in ``gradient_methods.py`` and
``other_methods.py``; this module holds the shared context, the registry and the entry
point. Results are :class:`~mechattr.attribution.result.TokenAttribution` (CPU, float32).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution import baselines as _bl
from mechattr.attribution.paths import PathIntegral, path_integral
from mechattr.checks import check_target_arg
from mechattr.inputs import Batch, prepare_tokens
from mechattr.model import model_guard
from mechattr.registry import Registry
from mechattr.runtime.chunks import check_batch_size
from mechattr.runtime.memory import memory_budget
from mechattr.targets import Target, check_target_rows, last_positions


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: ``fn(ctx, **options) -> MethodOutput``.

    ``per_dim``: the method returns ``[batch, pos, d_model]`` (reduced by ``reduction``),
    else ``[batch, pos]``. ``reduction``: its default (``"sum"`` signed, ``"l2"`` unsigned).
    """

    fn: Callable
    per_dim: bool = True
    reduction: str | None = "sum"
    default_steps: int | None = None
    cite: str = ""
    #: what to do when ``convergence_delta`` is large (default: the path-integral advice)
    delta_advice: str | None = None

    def __call__(self, ctx: Any, **options: Any) -> Any:
        return self.fn(ctx, **options)


METHODS: Registry[MethodSpec] = Registry("token attribution method")
REDUCTIONS = ("sum", "l2")


@dataclass
class MethodOutput:
    """What a method returns: ``attr`` ``[batch, pos, d_model]`` or ``[batch, pos]``."""

    attr: Tensor
    delta: Tensor | None = None
    f_input: Tensor | None = None
    f_baseline: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    windows: Tensor | None = None


@dataclass
class Ctx:
    """Everything a method needs: validated inputs, masks, embeddings and settings."""

    model: Any
    batch: Batch
    target: Callable
    real: Tensor  # [batch, pos] bool: not padding
    exclude: Tensor  # [batch, pos] bool: padding, BOS, excluded tokens (score 0)
    embeds: Tensor  # [batch, pos, d_model] clean hook_embed
    baseline_spec: Any
    n_steps: int | None
    batch_size: int | None
    seed: int | None
    target_pos: Tensor  # [batch] position the target reads (first one)
    segments: Tensor | None = None  # [n_seg, batch, pos] bool, for occlusion of spans

    @property
    def tokens(self) -> Tensor:
        return self.batch.tokens

    def baseline(self, n: int = 1, spec: Any = "__ctx__") -> Tensor:
        """Baseline embeddings ``[R, batch, pos, d_model]`` (excluded positions keep x)."""
        spec = self.baseline_spec if isinstance(spec, str) and spec == "__ctx__" else spec
        return _bl.embedding_baseline(self.model, spec, self.embeds, self.tokens, self.real, self.exclude, n=n, seed=self.seed)

    def integrate(self, alphas: Any, weights: Any, baseline: Tensor, **kw: Any) -> PathIntegral:
        """The path engine at ``hook_embed`` on these inputs."""
        return path_integral(self.model, self.batch, self.target, "hook_embed", baseline=baseline, alphas=alphas, weights=weights, batch_size=self.batch_size, **kw)

    def steps(self, default: int) -> int:
        return self.n_steps if self.n_steps is not None else default


def register(name: str, *, per_dim: bool = True, reduction: str | None = "sum", default_steps: int | None = None, cite: str = "",
             delta_advice: str | None = None, overwrite: bool = False) -> Callable:
    """Decorator: add a token attribution method to :data:`METHODS`."""

    def deco(fn: Callable) -> Callable:
        METHODS.register(name, MethodSpec(fn, per_dim, reduction, default_steps, cite, delta_advice), overwrite=overwrite)
        return fn

    return deco


def _load_methods() -> None:
    import mechattr.attribution.context_mixing  # noqa: F401  (value_zeroing, alti)
    import mechattr.attribution.discrete_paths  # noqa: F401  (dig, udig, sig)
    import mechattr.attribution.gradient_methods  # noqa: F401
    import mechattr.attribution.other_methods  # noqa: F401
    import mechattr.attribution.reagent  # noqa: F401  (reagent)
    import mechattr.attribution.reference_methods  # noqa: F401  (deeplift, gradient_shap)
    import mechattr.attribution.shapley_methods  # noqa: F401  (shapley_sampling, kernel_shap, lime, exact_shapley)


def method_names() -> list[str]:
    """Names of the registered methods."""
    _load_methods()
    return METHODS.names()


def target_positions(target: Callable, batch: Batch, target_pos: Any = None) -> Tensor:
    """``[batch]`` position the target reads (its first one); plain callables: ``target_pos``
    or the last real position."""
    b, p = batch.tokens.shape
    dev = batch.tokens.device
    if target_pos is not None:
        from mechattr.targets import resolve_positions

        return resolve_positions(target_pos, b, p, batch.attention_mask, dev)
    if isinstance(target, Target):
        return target.positions(b, p, batch.attention_mask, dev)[:, 0].long()
    return last_positions(batch.attention_mask, b, p, dev)


def _exclusions(model: Any, batch: Batch, exclude_bos: bool, exclude_tokens: Any) -> tuple[Tensor, Tensor]:
    real = batch.mask_or_ones().bool()
    excl = ~real
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    if exclude_bos and bos is not None:
        first = real.long().argmax(-1)
        rows = torch.arange(batch.tokens.shape[0], device=real.device)
        is_bos = batch.tokens[rows, first] == bos
        excl[rows[is_bos], first[is_bos]] = True
    if exclude_tokens is not None:
        ids = torch.as_tensor(exclude_tokens).reshape(-1).to(batch.tokens.device)
        if ids.is_floating_point():
            raise ValueError(f"exclude_tokens must be token ids (ints), got dtype {ids.dtype}")
        excl |= torch.isin(batch.tokens, ids) & real
    return real, excl


def _check_options(name: str, fn: Callable, options: dict) -> None:
    params = inspect.signature(fn).parameters
    allowed = [k for k in params if k != "ctx"]
    bad = [k for k in options if k not in allowed]
    if bad:
        raise ValueError(f"method {name!r} got unknown option(s) {bad}; its options: {allowed}")


def attribute_tokens(
    model: Any,
    tokens: Any,
    target: Callable,
    method: str = "ig",
    *,
    baseline: Any = None,
    n_steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    attention_mask: Any = None,
    reduction: str | None = None,
    exclude_bos: bool = True,
    exclude_tokens: Any = None,
    segments: Any = None,
    target_pos: Any = None,
    max_memory: Any = None,
    **method_kwargs: Any,
):
    """Score each input token for ``target``: ``TokenAttribution.scores [batch, pos]``.

    Attribution is to the token embeddings (``hook_embed``); positional embeddings stay
    fixed. Gradient methods give ``[batch, pos, d_model]`` reduced by ``reduction``:
    ``"sum"`` (signed, default; completeness holds for it) or ``"l2"`` (unsigned norm;
    ``saliency``'s default). Path methods report ``convergence_delta [batch] = Σ_pos
    scores − (F(x) − F(x'))`` (from the signed sum). ``baseline``: see
    :mod:`mechattr.attribution.baselines` (default: zero embedding). Padding and, when the
    tokenizer defines one and a row starts with it, the BOS token (``exclude_bos``), and
    ``exclude_tokens`` ids keep their embedding in the baseline and score 0. ``segments``:
    ``"words"`` or a list of ``(start, end)`` spans → one score per span (sum of its tokens'
    scores; root-sum-square for ``"l2"``; occlusion removes a span at once).
    ``target_pos``: where ``attention``/``aieg``/``rollout``/``flow`` read attention (default:
    the target's first position, or the last real token for plain callables).
    ``max_memory``: working-memory budget for the chunks (bytes or ``"2GB"``; default: the
    ``mechattr.memory_budget(...)`` in force, else a fraction of free memory; see
    :mod:`mechattr.runtime.memory`); ``batch_size`` overrides it.
    Methods: :func:`method_names`; their options in their docstrings.
    """
    from mechattr.attribution.result import TokenAttribution, span_masks

    _load_methods()
    spec = METHODS.get(method)
    check_target_arg(target)
    _check_options(method, spec.fn, method_kwargs)
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be an int ≥ 1, got {n_steps!r}")
    check_batch_size(batch_size)
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {list(REDUCTIONS)} (or None for the method's default)")
    if reduction is not None and not spec.per_dim:
        raise ValueError(f"method {method!r} gives one score per token; reduction={reduction!r} does not apply (use None)")
    red = (reduction or spec.reduction) if spec.per_dim else None
    budget = nullcontext() if max_memory is None else memory_budget(max_memory)  # checks max_memory
    with model_guard(model), budget:
        batch = prepare_tokens(model, tokens, attention_mask)
        check_target_rows(target, batch.shape[0])
        real, excl = _exclusions(model, batch, exclude_bos, exclude_tokens)
        from mechattr.attribution.result import str_tokens_of

        strs = str_tokens_of(model, batch)
        spans = span_masks(segments, strs, real, excl) if segments is not None else None
        embeds = _clean_embeds(model, batch)
        tpos = target_positions(target, batch, target_pos)
        ctx = Ctx(model, batch, target, real, excl, embeds, baseline, n_steps, batch_size, seed, tpos, spans)
        nothing = _nothing_to_attribute(tpos, excl, real)
        out = spec.fn(ctx, **method_kwargs)
        attr = out.attr.float()
        if spec.per_dim:
            attr = attr * (~excl)[..., None]
            scores = attr.norm(dim=-1) if red == "l2" else attr.sum(-1)
        else:
            scores = attr * (~excl)
        settings = {
            "baseline": _bl.describe(_bl.default_spec(model) if baseline is None else baseline), "n_steps": n_steps if n_steps is not None else spec.default_steps,
            "batch_size": batch_size, "seed": seed, "reduction": red, "exclude_bos": exclude_bos,
            "exclude_tokens": None if exclude_tokens is None else torch.as_tensor(exclude_tokens).reshape(-1).tolist(),
            "target": target.describe() if isinstance(target, Target) else getattr(target, "__name__", "callable"),
            "segments": segments if isinstance(segments, (str, type(None))) else [list(s) for s in segments],
            **{k: v for k, v in method_kwargs.items() if isinstance(v, (int, float, str, bool, type(None), tuple, list))},
        }
        if out.delta is not None and out.f_input is not None and out.f_baseline is not None:
            from mechattr.convergence import convergence_report

            settings["completeness"] = convergence_report(out.delta, out.f_input - out.f_baseline, f"attribute_tokens(method={method!r})",
                                                         advice=spec.delta_advice)
        if nothing:
            msg = (f"rows {nothing[:10]}: the target reads position(s) at or before which every token is "
                   f"excluded (BOS, padding, exclude_tokens), so every score there is 0 by construction, "
                   f"not a finding; read a later position or set exclude_bos=False")
            warnings.warn(msg, UserWarning, stacklevel=2)
            settings["warnings"] = [msg]
        res = TokenAttribution.build(
            scores=scores, tokens=batch.tokens, attention_mask=batch.attention_mask, str_tokens=strs,
            method=method, settings=settings, convergence_delta=out.delta, f_input=out.f_input,
            f_baseline=out.f_baseline, extras=out.extras, excluded=excl,
        )
        if spans is not None:
            res = res.aggregate(spans, windows=out.windows)
        return res


def _nothing_to_attribute(tpos: Tensor, excl: Tensor, real: Tensor) -> list[int]:
    """Rows whose target position sees no attributable token (all excluded up to it)."""
    upto = torch.arange(excl.shape[1], device=excl.device)[None] <= tpos.to(excl.device)[:, None]
    free = (upto & real.bool() & ~excl.bool()).any(-1)
    return (~free).nonzero().flatten().tolist()


def _clean_embeds(model: Any, batch: Batch) -> Tensor:
    """The clean activation at ``hook_embed`` ``[batch, pos, d_model]``; the forward ends there."""
    from mechattr.runtime.cache import cache_activations

    return cache_activations(model, batch.tokens, ["hook_embed"], attention_mask=batch.attention_mask)["hook_embed"]


from mechattr.attribution.generation import attribute_generation  # noqa: E402

__all__ = ["attribute_tokens", "attribute_generation", "method_names", "METHODS", "register", "Ctx", "MethodOutput"]
