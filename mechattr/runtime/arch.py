"""The architecture description: what mechattr needs to know about a model, computed once.

:func:`arch` returns an :class:`Arch` for a HookedTransformer (TransformerLens 3) or a
TransformerBridge (TransformerLens 3 or 4). It is the one table of architecture facts —
attention kind and the query→key/value head map, positional scheme, norm kind, parallel
attention/MLP, embedding scale or LayerNorm, soft-capping, which hook names exist, and
which fast paths apply. No other module tests an architecture or a TransformerLens version.

Grouped- and multi-query attention: TransformerLens repeats each key/value head for
``n_heads // n_kv_heads`` consecutive query heads (``repeat_interleave``), so query head
``h`` reads key/value head ``h // group`` (:meth:`Arch.kv_head`); ``hook_k`` / ``hook_v``
hold ``n_kv_heads`` heads while ``hook_q``, ``hook_z`` and the pattern hold ``n_heads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechattr.runtime.memo import per_model
from mechattr.runtime.tl import TL_MAJOR, is_bridge, is_hooked


@dataclass(frozen=True)
class Arch:
    """Static architecture facts of one model (see the module docstring)."""

    kind: str  # "hooked" | "bridge"
    tl_major: int
    architecture: str  # HF class name when known, else ""
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    positional: str  # "standard" | "rotary" | "alibi" | "shortformer" | ...
    norm: str | None  # "LN" | "LNPre" | "RMS" | "RMSPre" | None
    parallel_attn_mlp: bool
    attn_only: bool
    embed_scale: float | None  # embeddings multiplied by this (Gemma: sqrt(d_model))
    embed_norm: bool  # a LayerNorm on the embeddings (Bloom)
    attn_soft_cap: float | None
    logit_soft_cap: float | None
    hook_names: frozenset

    # ------------------------------------------------------------------ attention
    @property
    def attention(self) -> str:
        """``"MHA"``, ``"GQA"`` or ``"MQA"``."""
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else "GQA"

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads (``head // group``)."""
        if not 0 <= head < self.n_heads:
            raise ValueError(f"head {head} out of range 0..{self.n_heads - 1}")
        return head // self.group

    def query_heads(self, kv_head: int) -> list[int]:
        """The query heads that read key/value head ``kv_head``."""
        if not 0 <= kv_head < self.n_kv_heads:
            raise ValueError(f"key/value head {kv_head} out of range 0..{self.n_kv_heads - 1}")
        return list(range(kv_head * self.group, (kv_head + 1) * self.group))

    def heads_at(self, hook: str) -> int:
        """Number of heads on the head axis of ``hook`` (``n_kv_heads`` for k/v)."""
        if hook.endswith(("attn.hook_k", "attn.hook_v", "hook_k_input", "hook_v_input")) and self.n_kv_heads != self.n_heads:
            return self.n_kv_heads
        return self.n_heads

    def head_index(self, hook: str, head: int) -> int:
        """Index on ``hook``'s head axis of query head ``head`` (its kv head at k/v)."""
        return self.kv_head(head) if self.heads_at(hook) != self.n_heads else head

    # ------------------------------------------------------------------ hooks / paths
    def has_hook(self, name: str) -> bool:
        return name in self.hook_names

    @property
    def start_at_layer(self) -> bool:
        """Whether ``model(resid, start_at_layer=L)`` / ``stop_at_layer`` work."""
        return self.kind == "hooked"

    @property
    def default_token_baseline(self) -> str:
        """The default baseline of token attribution at ``hook_embed``: ``"zero"`` where the
        model adds positional embeddings to the residual stream (the first norm never sees
        the zero vector, so the path from it is smooth); ``"mean"`` (the mean token
        embedding) where it does not (rotary, ALiBi, shortformer: on the zero embedding the
        first norm divides by ~0, the target is chaotic as α → 0 and IG does not converge)."""
        return "zero" if self.positional == "standard" else "mean"

    def summary(self) -> dict:
        """JSON-able description (for provenance and reports)."""
        return {
            "kind": self.kind, "transformer_lens": self.tl_major, "architecture": self.architecture,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "attention": self.attention, "positional": self.positional, "norm": self.norm,
            "parallel_attn_mlp": self.parallel_attn_mlp, "attn_only": self.attn_only,
            "embed_scale": self.embed_scale, "embed_norm": self.embed_norm,
        }


def _cap(x: Any) -> float | None:
    return float(x) if x is not None and float(x) > 0 else None


def _architecture_name(model: Any, cfg: Any) -> str:
    for key in ("original_architecture", "architecture"):
        v = getattr(cfg, key, None)
        if isinstance(v, str) and v:
            return v
    hf = getattr(model, "original_model", None)
    archs = getattr(getattr(hf, "config", None), "architectures", None)
    return archs[0] if archs else ""


def _embed_scale(model: Any, cfg: Any, name: str) -> float | None:
    if is_hooked(model):  # TransformerLens folds Gemma's sqrt(d_model) into W_E
        return None
    hf = getattr(model, "original_model", None)
    emb = getattr(getattr(hf, "model", None), "embed_tokens", None)
    scale = getattr(emb, "embed_scale", None)
    if scale is not None:
        return float(scale)
    if "Gemma" in name:
        return float(cfg.d_model) ** 0.5
    return None


def _embed_norm(model: Any, name: str) -> bool:
    if "Bloom" in name:
        return True
    return any(n.endswith(("word_embeddings_layernorm", "embed_ln", "embed.ln")) for n, _ in model.named_modules())


@per_model
def arch(model: Any) -> Arch:
    """The :class:`Arch` of ``model`` (computed once per model object)."""
    if not (is_hooked(model) or is_bridge(model)):
        raise TypeError(f"expected a transformer_lens HookedTransformer or TransformerBridge, got {type(model).__name__}")
    cfg = model.cfg
    name = _architecture_name(model, cfg)
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    if getattr(cfg, "ungroup_grouped_query_attention", False):
        n_kv = n_heads
    hook_dict = getattr(model, "hook_dict", None) or {}
    return Arch(
        kind="hooked" if is_hooked(model) else "bridge",
        tl_major=TL_MAJOR,
        architecture=name,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp) if getattr(cfg, "d_mlp", None) else None,
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        positional=str(getattr(cfg, "positional_embedding_type", "standard")),
        norm=getattr(cfg, "normalization_type", None),
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        attn_only=bool(getattr(cfg, "attn_only", False)),
        embed_scale=_embed_scale(model, cfg, name),
        embed_norm=_embed_norm(model, name),
        attn_soft_cap=_cap(getattr(cfg, "attn_scores_soft_cap", None)),
        logit_soft_cap=_cap(getattr(cfg, "output_logits_soft_cap", None)),
        hook_names=frozenset(hook_dict),
    )


def check_model(model: Any) -> None:
    """Raise ``TypeError`` unless ``model`` is a HookedTransformer or a TransformerBridge.

    A bridge must be in compatibility mode (``enable_compatibility_mode()``), since our hook
    names and weight conventions are HookedTransformer's.
    """
    from mechattr.checks import check_model_arg

    check_model_arg(model)  # a name, path, tokens or target in the model's place
    if is_hooked(model):
        return
    if is_bridge(model):
        if not getattr(model, "compatibility_mode", False):
            raise ValueError(
                "TransformerBridge must be in compatibility mode: call "
                "model.enable_compatibility_mode() first (mechattr uses HookedTransformer "
                "hook names and processed weights)"
            )
        return
    raise TypeError(
        f"expected a transformer_lens HookedTransformer or TransformerBridge, got {type(model).__name__}"
    )


def supports_start_at_layer(model: Any) -> bool:
    """Whether ``model(resid, start_at_layer=L)`` is available (HookedTransformer only)."""
    return is_hooked(model)
