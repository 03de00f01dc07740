"""One scoped hook install/remove for every model kind."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from mechattr.runtime.tl import is_hooked


@contextlib.contextmanager
def hooked(model: Any, fwd_hooks: Sequence[tuple[str, Callable]], bwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Iterator[None]:
    """``model.hooks(fwd_hooks=..., bwd_hooks=...)``, cheaper on a HookedTransformer.

    TransformerLens's context manager visits every hook point of the model on exit (more
    time than a small forward); on a HookedTransformer we add the hooks to their hook
    points and remove exactly those, in ``finally``. Other models (bridges, whose hook
    names may be aliases), backward hooks, or unknown names go through ``model.hooks``.
    """
    hook_dict = getattr(model, "hook_dict", None)
    names = [n for n, _ in [*fwd_hooks, *bwd_hooks]]
    if bwd_hooks or not is_hooked(model) or not isinstance(hook_dict, dict) or any(n not in hook_dict for n in names):
        with model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
            yield
        return
    added = []
    try:
        for name, fn in fwd_hooks:
            hp = hook_dict[name]
            hp.add_hook(fn, dir="fwd")
            added.append((hp, hp.fwd_hooks[-1]))
        yield
    finally:
        for hp, handle in reversed(added):
            handle.hook.remove()
            hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]



def model_modules(model: Any) -> list[Any]:
    """Every module a call may touch: ``model.modules()`` and, on a TransformerBridge, the
    wrapped Hugging Face model's, which it keeps outside its module tree (``original_model``
    in ``__dict__``) while ``bridge.train()``/``eval()`` still propagate to it — a guard that
    restores only the tree would leave the HF model's own ``training`` flags changed."""
    seen: dict[int, Any] = {id(m): m for m in model.modules()}
    original = getattr(model, "__dict__", {}).get("original_model")
    if isinstance(original, torch.nn.Module):
        for m in original.modules():
            seen.setdefault(id(m), m)
    return list(seen.values())


def tensor_attrs(modules: Sequence[Any]) -> list[dict[str, torch.Tensor]]:
    """Per module, the tensors it holds as plain attributes (a bridge's per-forward caches,
    e.g. the joint-QKV attention's last ``_pattern``): the snapshot :func:`release_graphs` needs."""
    return [{k: v for k, v in vars(m).items() if isinstance(v, torch.Tensor)} for m in modules]


def release_graphs(modules: Sequence[Any], before: list[dict[str, torch.Tensor]]) -> None:
    """Drop the autograd graphs a call left on ``modules``' plain tensor attributes.

    A bridge caches tensors of its last forward on its modules; after a differentiated
    forward they carry ``grad_fn`` and keep that forward's whole graph (every saved
    activation) alive until the next forward. Each such attribute the call replaced gets
    its value from before the call back; one the call created is kept detached."""
    for m, old in zip(modules, before):
        d = vars(m)
        for k, v in list(d.items()):
            if isinstance(v, torch.Tensor) and v.grad_fn is not None and old.get(k) is not v:
                d[k] = old[k] if k in old else v.detach()


def library_hook_ids(model: Any, modules: Sequence[Any] | None = None) -> set[int]:
    """Ids of the torch hooks the libraries under the model install for themselves, lazily on
    its first forward: TransformerLens's bridge captures (the blocks' ``_capture_hook_handles``:
    split-qkv, ``hook_mlp_in``, scaled contributions) and transformers' output-capturing
    hooks. They belong to the model, not to a mechattr call: a scope that removes the hooks
    added while it ran must leave these (neither library re-adds them)."""
    ids: set[int] = set()
    for m in model_modules(model) if modules is None else modules:
        for name, val in vars(m).items():
            if name.endswith("_hook_handles") and isinstance(val, list):
                ids.update(int(getattr(h, "id", -1)) for h in val)
        for d in (m._forward_hooks, m._forward_pre_hooks):
            ids.update(k for k, fn in d.items() if str(getattr(fn, "__module__", "") or "").startswith("transformers."))
    return ids


class _Stop(Exception):
    """Raised from a hook to end a forward pass there."""


def forward_until(model: Any, inp: Any, hook_name: str, **kw: Any) -> Any:
    """The activation at ``hook_name`` of ``model(inp, **kw)``, ending the forward there (no
    later layer runs); gradients flow through it. ``ValueError`` if the hook never fires."""
    store: dict[str, Any] = {}

    def grab(act: Any, hook: Any = None) -> Any:
        store["x"] = act
        raise _Stop

    try:
        with hooked(model, [(hook_name, grab)]):
            model(inp, **kw)
    except _Stop:
        pass
    if "x" not in store:
        raise ValueError(f"the model has no hook point {hook_name!r} (it never fired)")
    return store["x"]
