"""The path engine: gradients integrated along straight paths at any hook point.

Every gradient method (saliency, input×gradient, IG, clipped IG, expected gradients, RPI,
AIEG, PS-IG, IG over internal activations) is a weighted sum of gradients taken at points
``a(α) = b + α·(x − b)`` of one activation (Sundararajan et al. 2017, eq. 1):

    G = Σ_k w_k · ∂F/∂a |_{a(α_k)},        A = (x − b) ⊙ G.

A schedule (:func:`schedule`) returns the quadrature ``(alphas, weights)``; the engine
(:func:`path_integral`) takes them precomputed, stacks ``baselines × steps × examples``
along the batch dimension (variant-major: row ``v·batch + i`` is example ``i``), and runs
them in chunks of ``batch_size`` rows per forward+backward — by default as many rows as the
memory budget allows (:func:`mechattr.runtime.chunks.grad_plan`); when one row does not fit,
one row at a time with every block after the hook recomputed in the backward (activation
checkpointing, Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.attribution.schedules import SCHEDULES, schedule
from mechattr.checks import check_target_arg
from mechattr.convergence import (  # noqa: F401
    CONVERGENCE_ATOL,
    CONVERGENCE_RTOL,
    ConvergenceWarning,
    convergence_report,
)
from mechattr.inputs import prepare_tokens
from mechattr.model import model_device, model_guard
from mechattr.runtime.arch import arch, supports_start_at_layer
from mechattr.runtime.attention import require_live
from mechattr.runtime.cache import EMBED_HOOKS, cache_activations, hook_layer
from mechattr.runtime.chunks import (
    check_batch_size,
    fanout_group,
    grad_plan,
    grad_rows,
    max_rows,
    n_read_of,
    row_chunks,
)
from mechattr.targets import Target, check_finite, check_target_rows, run_target

__all__ = ["SCHEDULES", "ConvergenceWarning", "PathIntegral", "convergence_report", "default_batch_size", "evaluate_at_hook", "hook_layer", "path_integral", "schedule"]


# ------------------------------------------------------------------------------ result
@dataclass
class PathIntegral:
    """Output of :func:`path_integral` (float32, on the model's device).

    ``grads``/``attributions`` ``[batch, *act]`` average over the R baselines;
    ``*_per_baseline`` ``[R, batch, *act]`` keep each; ``f_path [R, S, batch]`` is F at every
    path point; ``f_baseline`` ``[batch]`` the mean of ``f_baseline_per [R, batch]``.
    """

    hook_name: str
    input_act: Tensor
    baseline: Tensor
    grads: Tensor
    attributions: Tensor
    grads_per_baseline: Tensor
    attributions_per_baseline: Tensor
    f_input: Tensor
    f_baseline: Tensor | None
    f_baseline_per: Tensor | None
    f_path: Tensor
    alphas: Tensor
    weights: Tensor

    @property
    def convergence_delta(self) -> Float[Tensor, " batch"]:
        """``Σ attributions − (F(x) − F(b))`` per example (completeness error)."""
        if self.f_baseline is None:
            raise ValueError("this path integral was run with baseline_value=False: F(b) was not evaluated, so there is no convergence delta")
        return self.attributions.flatten(1).sum(-1) - (self.f_input - self.f_baseline)


# ------------------------------------------------------------------------------ plumbing
def default_batch_size(model: Any, n_pos: int, n_read: int | None = None) -> int:
    """Rows per forward+backward within the memory budget (:func:`mechattr.runtime.chunks.grad_rows`)."""
    return grad_rows(model, n_pos, n_read=n_read)


class _Plan:
    """How to run rows forward from ``hook_name``: tokens + replacing hook, or ``start_at_layer``."""

    def __init__(self, model: Any, tokens: Tensor, mask: Tensor | None, hook_name: str) -> None:
        if hook_name not in model.hook_dict:
            near = [h for h in model.hook_dict if h.split(".")[-1] == hook_name.split(".")[-1]][:5]
            raise ValueError(f"unknown hook {hook_name!r}; hooks of that kind: {near or sorted(model.hook_dict)[:8]}")
        require_live(model, [hook_name], f"a path integral at {hook_name}")
        self.model, self.tokens, self.mask, self.hook_name = model, tokens, mask, hook_name
        layer = hook_layer(hook_name)
        shortformer = arch(model).positional == "shortformer"
        self.start = layer if (layer and supports_start_at_layer(model) and not shortformer) else None
        self.direct = self.start is not None and hook_name == f"blocks.{layer}.hook_resid_pre"
        self.last_block = self._last_block_ok(layer)
        self.clean_act: Tensor | None = None
        self.resid: Tensor | None = None

    def _last_block_ok(self, layer: int | None) -> bool:
        """Whether the last block may run at the target's positions only: a standard block
        (``lastblock.supported``) and a hook before it (or its ``hook_resid_pre``)."""
        from mechattr.runtime.blocks import supported

        L = self.model.cfg.n_layers - 1
        before = layer < L if layer is not None else self.hook_name in EMBED_HOOKS
        return supported(self.model) and (before or self.direct)

    def capture(self) -> None:
        """One clean forward caching the activation (and ``resid_pre`` at the start layer),
        ending after the last block it needs (:func:`mechattr.runtime.cache.cache_activations`)."""
        resid = f"blocks.{self.start}.hook_resid_pre"
        store = cache_activations(self.model, self.tokens, [self.hook_name] + ([resid] if self.start else []), attention_mask=self.mask)
        self.clean_act = store[self.hook_name]
        self.resid = store.get(resid)

    @property
    def can_checkpoint(self) -> bool:
        """Whether the blocks after the hook can run one at a time (``start_at_layer``)."""
        return supports_start_at_layer(self.model) and arch(self.model).positional != "shortformer"

    def run(self, act: Tensor, ex: Tensor, target: Callable, n_examples: int | None, checkpoint: bool = False) -> Tensor:
        """F on rows whose activation at the hook is ``act``; ``ex [rows]`` = example of each row.
        ``checkpoint``: recompute each later block in the backward instead of keeping its tensors."""
        mask = None if self.mask is None else self.mask[ex]
        t = target.take(ex) if isinstance(target, Target) else target
        if checkpoint:
            return self._run_checkpointed(act, ex, t, mask, n_examples)
        last = self.last_block and isinstance(t, Target)
        if self.direct and not last:
            return run_target(self.model, act, t, attention_mask=mask, start_at_layer=self.start, n_examples=n_examples)

        def put(_: Tensor, hook: Any) -> Tensor:
            return act

        inp = self.tokens[ex] if self.start is None else self.resid[ex]
        hooks = [] if self.direct else [(self.hook_name, put)]
        with self.model.hooks(fwd_hooks=hooks):
            if last:
                return self._last_block_target(act if self.direct else inp, t, mask)
            return run_target(self.model, inp, t, attention_mask=mask, start_at_layer=self.start, n_examples=n_examples)

    def _run_checkpointed(self, act: Tensor, ex: Tensor, t: Callable, mask: Tensor | None, n_examples: int | None) -> Tensor:
        """The forward as segments: up to the end of the hook's block with the replacing hook
        (kept), then every later block under ``torch.utils.checkpoint`` (recomputed in the
        backward; only the residual at each boundary stays alive), then the readout."""
        from torch.utils.checkpoint import checkpoint

        model, L = self.model, self.model.cfg.n_layers
        kw: dict[str, Any] = {} if mask is None else {"attention_mask": mask}
        layer = hook_layer(self.hook_name)
        first = 0 if layer is None else layer + 1
        if self.direct:
            resid = act
            first = self.start
        else:
            def put(_: Tensor, hook: Any) -> Tensor:
                return act

            inp = self.tokens[ex] if self.start is None else self.resid[ex]
            extra = {} if self.start is None else {"start_at_layer": self.start}
            with model.hooks(fwd_hooks=[(self.hook_name, put)]):
                resid = model(inp, stop_at_layer=first, **extra, **kw)
        for k in range(first, L):
            resid = checkpoint(lambda r, k=k: model(r, start_at_layer=k, stop_at_layer=k + 1, **kw), resid, use_reentrant=False)
        return run_target(model, resid, t, attention_mask=mask, start_at_layer=L, n_examples=n_examples)

    def _last_block_target(self, inp: Tensor, t: Target, mask: Tensor | None) -> Tensor:
        """Blocks up to the last, then the last block only at the target's positions
        (``mechattr.runtime.blocks``): its queries, MLP, final LN and unembedding."""
        from mechattr.runtime.blocks import last_block_logits

        L = self.model.cfg.n_layers - 1
        kw: dict[str, Any] = {} if mask is None else {"attention_mask": mask}
        if self.start == L:
            resid = inp
        else:
            resid = self.model(inp, start_at_layer=self.start, stop_at_layer=L, **kw)
        idx = t.positions(resid.shape[0], resid.shape[1], mask, resid.device)
        return t.from_selected(last_block_logits(self.model, resid, idx, mask)).float()


def _as_grid(x: Any, name: str, R: int, batch: int, dev: torch.device) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).to(dev)
    if t.ndim == 1:
        t = t[None, :, None].expand(R, -1, batch)
    elif t.ndim == 2:
        t = t[None].expand(R, -1, -1)
    if t.ndim != 3 or t.shape[0] != R or t.shape[2] != batch or t.shape[1] < 1:
        raise ValueError(f"{name} must be [steps], [steps, batch={batch}] or [R={R}, steps, batch={batch}]; got shape {tuple(torch.as_tensor(x).shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or inf")
    return t


def _as_baseline(baseline: Any, x: Tensor) -> Tensor:
    if baseline is None:
        return torch.zeros_like(x)[None]
    b = torch.as_tensor(baseline).to(x.device, x.dtype)
    if b.ndim == x.ndim + 1:
        if b.shape[0] < 1 or any(s not in (1, t) for s, t in zip(b.shape[1:], x.shape)):
            raise ValueError(f"baseline [R, *act] must have act shape {tuple(x.shape)} (or broadcast to it); got {tuple(b.shape)}")
        b = b.expand(b.shape[0], *x.shape)
    else:
        try:
            b = torch.broadcast_to(b, x.shape)[None]
        except RuntimeError:
            raise ValueError(f"baseline shape {tuple(b.shape)} does not broadcast to the activation shape {tuple(x.shape)} (or [R, *{tuple(x.shape)}])") from None
    if not torch.isfinite(b).all():
        raise ValueError("baseline holds NaN or inf")
    return b


# ------------------------------------------------------------------------------ engine
def path_integral(
    model: Any,
    tokens: Any,
    target: Callable,
    hook_name: str,
    *,
    baseline: Any = None,
    input_act: Tensor | None = None,
    alphas: Any,
    weights: Any,
    attention_mask: Any = None,
    batch_size: int | None = None,
    grad_clip: float | tuple[float, float] | None = None,
    with_grad: bool = True,
    baseline_value: bool = True,
) -> PathIntegral:
    """Integrate ``∂F/∂a`` along ``a(α) = b + α·(x − b)`` at the activation ``hook_name``.

    Definition (IG, Sundararajan et al. 2017 eq. 1, as a quadrature): for each baseline
    ``b_r`` and step ``k``, ``G_r = Σ_k w_{r,k} · clip(∂F/∂a |_{b_r + α_{r,k}(x − b_r)})``;
    ``attributions = mean_r (x − b_r) ⊙ G_r``. ``x`` is the clean activation at
    ``hook_name`` (or ``input_act``); the forward continues from there — from
    ``start_at_layer`` for ``blocks.L.*`` hooks when the model allows it (the clean
    ``resid_pre`` at L is reused), else through a hook that replaces the activation.

    Shapes: activation ``[batch, *act]`` (e.g. ``hook_embed`` ``[batch, pos, d_model]``,
    ``attn.hook_z`` ``[batch, pos, head, d_head]``, ``attn.hook_pattern`` ``[batch, head,
    q, k]``). ``baseline``: ``None`` (zeros), anything broadcasting to ``[batch, *act]``, or
    ``[R, batch, *act]`` (R baselines, averaged: expected gradients / RPI). ``alphas`` and
    ``weights``: ``[S]``, ``[S, batch]`` (per-example) or ``[R, S, batch]`` (e.g. from
    :func:`schedule`). ``grad_clip``: θ (cap ``|∂F/∂a| ≤ θ``) or ``(θ⁻, θ⁺)``, IGCG (paper
    003, A.2). ``with_grad=False`` only evaluates ``f_path`` (grads are zeros).
    ``F(x)`` and ``F(b_r)`` are read off ``f_path`` where a step sits at α = 1 / α = 0 (no
    extra forward), else evaluated; ``baseline_value=False`` skips ``F(b)`` for callers
    that report no completeness error (``f_baseline``/``f_baseline_per`` are ``None`` and
    ``convergence_delta`` raises).
    Rows ``R·S·batch`` run in chunks of ``batch_size`` (default: :func:`default_batch_size`);
    a plain-callable target gets whole-batch blocks of rows. Returns :class:`PathIntegral`.
    """
    check_target_arg(target)
    check_batch_size(batch_size)
    with model_guard(model):
        batch = prepare_tokens(model, tokens, attention_mask)
        check_target_rows(target, batch.shape[0])
        toks, mask = batch.tokens, batch.attention_mask
        n, dev = toks.shape[0], model_device(model)
        plan = _Plan(model, toks, mask, hook_name)
        plan.capture()
        x = plan.clean_act
        if input_act is not None:
            xi = torch.as_tensor(input_act)
            if tuple(xi.shape) != tuple(x.shape):
                raise ValueError(f"input_act shape {tuple(xi.shape)} must equal the activation shape {tuple(x.shape)} at {hook_name}")
            x = xi.to(dev, x.dtype)
        b = _as_baseline(baseline, x)
        R = b.shape[0]
        al = _as_grid(alphas, "alphas", R, n, dev)
        wt = _as_grid(weights, "weights", R, n, dev)
        if al.shape != wt.shape:
            raise ValueError(f"alphas {tuple(al.shape)} and weights {tuple(wt.shape)} must have the same shape")
        S = al.shape[1]
        lo, hi = _clip_bounds(grad_clip)
        plain = not isinstance(target, Target)
        shared = _shared_path(toks, mask, x, b, al, wt, target)
        n_read = n_read_of(target) if not shared else n * n_read_of(target)
        if with_grad:
            fan = n if shared else 1
            gp = grad_plan(model, toks.shape[1], n_read=n_read, batch_size=batch_size, can_checkpoint=plan.can_checkpoint and not shared, fan_out=fan)
            size, ck = (max(1, gp.rows // fan) if batch_size else gp.rows), gp.checkpoint
        else:
            size, ck = max_rows(model, toks.shape[1], batch_size, dev, n_read=n_read), False
        if plain:  # a plain callable sees whole batches of examples
            size = max(n, size - size % n)
        G = torch.zeros((R, n, *x.shape[1:]), dtype=torch.float32, device=dev)
        f_path = torch.zeros(R, S, n, dtype=torch.float32, device=dev)
        xf, bf = x.float(), b.float()
        if shared:
            _shared_loop(plan, target, xf, bf, al, wt, G, f_path, size, with_grad, (lo, hi), x.dtype)
        else:
            _row_loop(plan, target, xf, bf, al, wt, G, f_path, size, with_grad, (lo, hi), x.dtype, ck)
        f_in, f_base = _ends_on_path(al, f_path)
        need_in, need_base = f_in is None, baseline_value and f_base is None
        if need_in or need_base:
            ends = torch.cat(([x[None]] if need_in else []) + ([b] if need_base else []))
            f_ends = _evaluate(plan, target, lambda v, e: ends[v, e], ends.shape[0], size, shared)
            check_finite(f_ends, "target at the input/baseline")
            if need_in:
                f_in, f_ends = f_ends[0], f_ends[1:]
            if need_base:
                f_base = f_ends
        if not baseline_value:
            f_base = None
        A = (xf - bf) * G
        return PathIntegral(
            hook_name=hook_name, input_act=xf.detach(), baseline=bf.detach(), grads=G.mean(0),
            attributions=A.mean(0), grads_per_baseline=G, attributions_per_baseline=A,
            f_input=f_in, f_baseline=None if f_base is None else f_base.mean(0), f_baseline_per=f_base,
            f_path=f_path, alphas=al.float(), weights=wt.float(),
        )


def _ends_on_path(al: Tensor, f_path: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """``F(x) [batch]`` and ``F(b_r) [R, batch]`` read off ``f_path [R, S, batch]`` where the
    path has a step at α = 1 (any baseline's) / at α = 0 (that baseline's) for every example;
    ``None`` where it has not (the caller evaluates those)."""
    R, S, n = al.shape
    one, zero = al == 1, al == 0
    f_in = f_base = None
    if bool(one.flatten(0, 1).any(0).all()):
        idx = one.flatten(0, 1).to(torch.uint8).argmax(0)
        f_in = f_path.flatten(0, 1).gather(0, idx[None])[0]
    if bool(zero.any(1).all()):
        idx = zero.to(torch.uint8).argmax(1)
        f_base = f_path.gather(1, idx[:, None])[:, 0]
    return f_in, f_base



def _row_loop(plan: _Plan, target: Callable, xf: Tensor, bf: Tensor, al: Tensor, wt: Tensor, G: Tensor, f_path: Tensor,
              size: int, with_grad: bool, clip: tuple, dtype: torch.dtype, ck: bool) -> None:
    """Rows ``(r, s, e)`` (variant-major), ``size`` per forward+backward; accumulates into ``G``/``f_path``."""
    R, S, n = al.shape
    dev = G.device
    plain = not isinstance(target, Target)
    rows = R * S * n
    r_of = torch.arange(rows, device=dev) // (S * n)
    s_of = torch.arange(rows, device=dev) // n % S
    e_of = torch.arange(rows, device=dev) % n
    for sl in row_chunks(rows, size):
        r, s, e = r_of[sl], s_of[sl], e_of[sl]
        a_ = al[r, s, e].float().view(-1, *([1] * (xf.ndim - 1)))
        act = (bf[r, e] + a_ * (xf[e] - bf[r, e])).to(dtype)
        with torch.enable_grad():
            act.requires_grad_(with_grad)
            f = plan.run(act, e, target, n if plain else None, ck).float()
            check_finite(f, "target along the path")
            if with_grad:
                (g,) = torch.autograd.grad(f.sum(), act)
        f_path[r, s, e] = f.detach()
        if with_grad:
            g = g.float()
            if clip[0] is not None:
                g = g.clamp(*clip)
            G.index_put_((r, e), g * wt[r, s, e].float().view_as(a_), accumulate=True)


def _shared_path(toks: Tensor, mask: Tensor | None, x: Tensor, b: Tensor, al: Tensor, wt: Tensor, target: Callable) -> bool:
    """Whether all examples walk the same path (same tokens, mask, activation, baselines and
    schedule) and differ only in what a :class:`Target` reads — e.g. the steps of a generation."""
    def same(t: Tensor | None, dim: int) -> bool:
        return t is None or bool((t == t.narrow(dim, 0, 1)).all())

    return _same_inputs(toks, mask, target) and same(x, 0) and same(b, 1) and same(al, 2) and same(wt, 2)


def _shared_loop(plan: _Plan, target: Target, xf: Tensor, bf: Tensor, al: Tensor, wt: Tensor, G: Tensor, f_path: Tensor,
                 size: int, with_grad: bool, clip: tuple, dtype: torch.dtype) -> None:
    """One forward per path point ``(r, s)`` for all ``n`` examples' targets (:class:`_FanOut`),
    and their ``n`` gradients from one batched backward (``is_grads_batched``: a vmap over the
    one-hot cotangents of the ``[rows, n]`` outputs). Same sums as :func:`_row_loop`."""
    R, S, n = al.shape
    dev = G.device
    pts = torch.arange(R * S, device=dev)
    fan, ex = _FanOut(target, n), torch.arange(n, device=dev)
    for sl in row_chunks(R * S, size):
        r, s = pts[sl] // S, pts[sl] % S
        k = r.shape[0]
        a_ = al[r, s, 0].float().view(-1, *([1] * (xf.ndim - 1)))
        act = (bf[r, 0] + a_ * (xf[0] - bf[r, 0])).to(dtype)
        zero = torch.zeros(k, dtype=torch.long, device=dev)
        with torch.enable_grad():
            act.requires_grad_(with_grad)
            f = plan.run(act, zero, fan, None).float().view(k, n)
            check_finite(f, "target along the path")
            if with_grad:
                eye = torch.eye(n, device=dev, dtype=f.dtype)[:, None, :].expand(n, k, n)
                grp = fanout_group(n, k * act.shape[1], dev)
                g = torch.cat([torch.autograd.grad(f, act, eye[j : j + grp], is_grads_batched=True, retain_graph=j + grp < n)[0]
                               for j in range(0, n, grp)])  # [n, k, *act]
        f_path[r, s] = f.detach()
        if with_grad:
            g = g.float().transpose(0, 1)  # [k, n, *act]
            if clip[0] is not None:
                g = g.clamp(*clip)
            w = wt[r, s].float().view(k, n, *([1] * (xf.ndim - 1)))
            G.index_put_((r[:, None].expand(k, n), ex[None].expand(k, n)), g * w, accumulate=True)


class _FanOut(Target):
    """The targets of ``n`` examples read from every row of one shared forward, flat
    ``[rows·n]`` (entry ``r·n + i``: example ``i``'s target on row ``r``'s logits)."""

    def __init__(self, inner: Target, n: int) -> None:
        super().__init__(-1)
        self.inner, self.n = inner, n
        self.k = n * inner.k

    def take(self, rows: Tensor) -> _FanOut:
        return self

    def positions(self, batch: int, n_pos: int, attention_mask: Tensor | None = None, device: Any = "cpu") -> Tensor:
        m = None if attention_mask is None else attention_mask[:1].expand(self.n, -1)
        idx = self.inner.positions(self.n, n_pos, m, device)  # [n, k_inner]
        return idx.reshape(1, -1).expand(batch, -1)

    def from_selected(self, logits: Tensor) -> Tensor:
        b = logits.shape[0]
        t = self.inner.take(torch.arange(self.n, device=logits.device).repeat(b))
        return t.from_selected(logits.reshape(b * self.n, -1, logits.shape[-1]))

def _clip_bounds(grad_clip: Any) -> tuple[float | None, float | None]:
    if grad_clip is None:
        return None, None
    if isinstance(grad_clip, (tuple, list)):
        if len(grad_clip) != 2:
            raise ValueError(f"grad_clip must be θ or (θ⁻, θ⁺); got {grad_clip!r}")
        lo, hi = float(grad_clip[0]), float(grad_clip[1])
    else:
        hi = float(grad_clip)
        lo = -hi
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or hi < 0:
        raise ValueError(f"grad_clip must be θ > 0 or (θ⁻ ≤ θ⁺), finite; got {grad_clip!r}")
    return lo, hi


def _evaluate(plan: _Plan, target: Callable, make_act: Callable[[Tensor, Tensor], Tensor], n_variants: int, size: int, shared: bool = False) -> Tensor:
    """F for ``n_variants × batch`` rows (variant-major) whose activation is ``make_act(v, e)``;
    ``shared``: every example has the same input, so one row per variant reads all targets."""
    n = plan.tokens.shape[0]
    if shared:
        v = torch.arange(n_variants, device=plan.tokens.device)
        zero = torch.zeros_like(v)
        with torch.no_grad():
            return torch.cat([plan.run(make_act(v[sl], zero[sl]), zero[sl], _FanOut(target, n), None).float().view(-1, n)
                              for sl in row_chunks(n_variants, size)])
    plain = not isinstance(target, Target)
    if plain:
        size = max(n, size - size % n)
    rows = torch.arange(n_variants * n, device=plan.tokens.device)
    out = []
    with torch.no_grad():
        for sl in row_chunks(rows.shape[0], size):
            v, e = rows[sl] // n, rows[sl] % n
            out.append(plan.run(make_act(v, e), e, target, n if plain else None).float())
    return torch.cat(out).view(n_variants, n)


def evaluate_at_hook(
    model: Any,
    tokens: Any,
    target: Callable,
    hook_name: str,
    make_act: Callable[[Tensor, Tensor, Tensor], Tensor],
    n_variants: int,
    *,
    attention_mask: Any = None,
    batch_size: int | None = None,
) -> Float[Tensor, "variants batch"]:
    """F for variants of one activation, stacked along the batch (no gradients).

    Row ``v·batch + i`` runs example ``i`` with the activation at ``hook_name`` replaced by
    ``make_act(x[e], v, e)`` (``x`` the clean activation, ``v``/``e`` ``[rows]`` variant and
    example indices of the chunk), in chunks of ``batch_size`` rows. Used for occlusion and
    removal metrics. Returns ``[n_variants, batch]`` float32.

    When every example has the same input (tokens, mask) and the same edited activation for
    every variant, and ``target`` is a :class:`~mechattr.targets.Target` — the steps of a
    generation — each variant runs ONCE and all examples' targets read that row (the same
    numbers as one row per example, ``batch`` times fewer forwards).
    """
    check_batch_size(batch_size)
    if isinstance(n_variants, bool) or not isinstance(n_variants, int) or n_variants < 1:
        raise ValueError(f"n_variants must be a positive int, got {n_variants!r}")
    with model_guard(model):
        batch = prepare_tokens(model, tokens, attention_mask)
        check_target_rows(target, batch.shape[0])
        plan = _Plan(model, batch.tokens, batch.attention_mask, hook_name)
        plan.capture()
        x = plan.clean_act
        n, pos = batch.shape
        make = lambda v, e: make_act(x[e], v, e)  # noqa: E731
        shared = _same_inputs(batch.tokens, batch.attention_mask, target) and _same_edits(make, n_variants, n, x.device)
        n_read = n_read_of(_FanOut(target, n) if shared else target)
        size = max_rows(model, pos, batch_size, x.device, n_read=n_read)
        vals = _evaluate(plan, target, make, n_variants, size, shared=shared)
        return check_finite(vals, "target")


def same_rows(toks: Tensor, mask: Tensor | None) -> bool:
    """Several rows with identical tokens and attention mask (e.g. the steps of a generation)."""
    return toks.shape[0] > 1 and bool((toks == toks[:1]).all()) and (mask is None or bool((mask == mask[:1]).all()))


def _same_inputs(toks: Tensor, mask: Tensor | None, target: Callable) -> bool:
    """Identical rows (:func:`same_rows`) and a target that can fan out over them."""
    return isinstance(target, Target) and same_rows(toks, mask)


def _same_edits(make: Callable[[Tensor, Tensor], Tensor], n_variants: int, n: int, device: torch.device,
                max_elems: int = 1 << 24) -> bool:
    """Whether ``make(v, e)`` equals ``make(v, 0)`` for every variant and example (checked in chunks of variants)."""
    zero = torch.zeros(1, dtype=torch.long, device=device)
    first = make(zero, zero)
    per = max(1, max_elems // max(1, first[0].numel() * n))
    for sl in row_chunks(n_variants, per):
        v = torch.arange(sl.start, sl.stop, device=first.device)
        vv, ee = v.repeat_interleave(n), torch.arange(n, device=first.device).repeat(v.numel())
        a = make(vv, ee).view(v.numel(), n, *first.shape[1:])
        if not bool((a == a[:, :1]).all()):
            return False
    return True
