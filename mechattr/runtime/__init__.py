"""The runtime: the only code that knows what model it is talking to.

- :mod:`~mechattr.runtime.tl` — which TransformerLens is installed (3.x or 4.x), its names;
- :mod:`~mechattr.runtime.arch` — the architecture description (:func:`arch`), once per model;
- :mod:`~mechattr.runtime.hooks` — one scoped hook install/remove;
- :mod:`~mechattr.runtime.cache` — one activation cache;
- :mod:`~mechattr.runtime.chunks` — one chunking policy (``batch_size`` → rows);
- :mod:`~mechattr.runtime.readout` — final norm + unembedding where a target reads;
- :mod:`~mechattr.runtime.blocks` — partial blocks (the HookedTransformer fast paths);
- :mod:`~mechattr.runtime.loading` — loading models offline;
- :mod:`~mechattr.runtime.device` — the device policy.

Attribution and interventions import the runtime and never each other.
"""

from mechattr.runtime.arch import Arch, arch, supports_start_at_layer
from mechattr.runtime.cache import cache_activations, cache_pair, hook_layer
from mechattr.runtime.chunks import check_batch_size, grad_rows, max_rows, row_chunks
from mechattr.runtime.hooks import hooked
from mechattr.runtime.readout import final_logits, logits_at, unembed
from mechattr.runtime.tl import TL_MAJOR, TL_VERSION, is_bridge, is_hooked

__all__ = [
    "TL_MAJOR",
    "TL_VERSION",
    "Arch",
    "arch",
    "cache_activations",
    "cache_pair",
    "check_batch_size",
    "final_logits",
    "grad_rows",
    "hook_layer",
    "hooked",
    "is_bridge",
    "is_hooked",
    "logits_at",
    "max_rows",
    "row_chunks",
    "supports_start_at_layer",
    "unembed",
]
