"""Shared fixtures: small random models and a tiny HF GPT-2 saved to a temp dir (offline)."""

from __future__ import annotations

import os

import pytest
import torch

from mechattr.runtime.tl import HAS_HOOKED, HookedTransformer, HookedTransformerConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)


requires_hooked = pytest.mark.skipif(not HAS_HOOKED, reason="HookedTransformer-only: TransformerLens 4 has none")


def make_model(n_layers=2, d_model=32, n_heads=4, d_vocab=24, n_ctx=16, attn_only=False, seed=0, **kw):
    """A small random model (LayerNorm, MLPs unless attn_only): a HookedTransformer on
    TransformerLens 3, the same-config native TransformerBridge (compatibility mode, no
    weight processing) on TransformerLens 4."""
    fields = dict(
        n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=d_model // n_heads, n_heads=n_heads,
        d_vocab=d_vocab, d_mlp=None if attn_only else 4 * d_model, act_fn="gelu", attn_only=attn_only,
        normalization_type="LN", seed=seed,
    )
    fields.update(kw)
    if HAS_HOOKED:
        model = HookedTransformer(HookedTransformerConfig(**fields))
    else:
        from transformer_lens.config import TransformerBridgeConfig

        from mechattr.runtime.tl import TransformerBridge

        model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(fields))
        model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    model.eval()
    return model


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def attn_model():
    return make_model(attn_only=True, n_layers=2)


@pytest.fixture
def tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 24, (3, 8), generator=g)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A tiny random GPT-2 with a word-level tokenizer, saved with save_pretrained (offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    vocab = {f"w{i}": i for i in range(40)}
    cfg = GPT2Config(vocab_size=40, n_positions=24, n_ctx=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    GPT2LMHeadModel(cfg).eval().save_pretrained(d)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w1", eos_token="w1", pad_token="w2", unk_token="w0").save_pretrained(d)
    return d


HT_SIDE = "HookedTransformer side: TransformerLens 4 has none (the bridge side runs in the bridge-only tests)"


@pytest.fixture(scope="session")
def hf_bridge(tiny_hf_dir):
    """The tiny GPT-2 as a TransformerBridge (compatibility mode), on every TransformerLens."""
    from mechattr import load_model

    return load_model(tiny_hf_dir, device="cpu", bridge=True)


@pytest.fixture(scope="session")
def hf_model(tiny_hf_dir, hf_bridge):
    """The tiny GPT-2 as ``load_model`` returns it by default: a HookedTransformer on
    TransformerLens 3, the TransformerBridge on TransformerLens 4."""
    from mechattr import load_model

    return load_model(tiny_hf_dir, device="cpu") if HAS_HOOKED else hf_bridge


@pytest.fixture(scope="session")
def hf_pair(hf_model, hf_bridge):
    """The same tiny GPT-2 as a HookedTransformer and as a TransformerBridge (compatibility
    mode). On TransformerLens 4 the HookedTransformer side is None: pass it through
    ``hooked_side`` to skip what needs it."""
    return (hf_model if HAS_HOOKED else None), hf_bridge


def hooked_side(m):
    """``m``, or skip the test when it is the missing HookedTransformer side of ``hf_pair``."""
    if m is None:
        pytest.skip(HT_SIDE)
    return m


def both_sides(pair):
    """The models of ``hf_pair`` that exist on this TransformerLens."""
    return [m for m in pair if m is not None]


def snapshot(model: torch.nn.Module) -> dict:
    """Everything the guard promises to restore, for before/after comparisons."""
    from mechattr.runtime.hooks import library_hook_ids, model_modules

    owned = library_hook_ids(model)  # TransformerLens wires its own on a bridge's first forward
    # a bridge's wrapped HF model sits outside its module tree but shares its train/eval mode
    mods = model_modules(model)
    hooks = sum(len([k for k in getattr(m, n) if k not in owned]) for m in mods for n in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "req": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in mods],
        # tensors a module holds with an autograd graph (a bridge's per-forward caches): a call must not leave its own
        "graphs": {(i, k): id(v) for i, m in enumerate(mods) for k, v in vars(m).items() if isinstance(v, torch.Tensor) and v.grad_fn is not None},
        "hooks": hooks,
        "flags": {f: getattr(model.cfg, f, None) for f in ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in", "use_attn_in")},
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"], "hooks leaked"
    assert after["flags"] == before["flags"], "TransformerLens flags not restored"
    assert after["training"] == before["training"], "train/eval mode not restored"
    assert after["graphs"].items() <= before["graphs"].items(), "an autograd graph left on a module attribute"
    assert after["req"] == before["req"], "requires_grad not restored"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"weight {k} changed"
    for k, g in before["grads"].items():
        if g is None:
            assert after["grads"][k] is None, f".grad left on {k}"
        else:
            assert torch.equal(after["grads"][k], g), f".grad of {k} changed"


@pytest.fixture
def unchanged():
    """Usage: ``with unchanged(model): call(...)`` asserts the model is as before, even on raise."""
    import contextlib

    @contextlib.contextmanager
    def _ctx(model):
        before = snapshot(model)
        try:
            yield
        finally:
            assert_unchanged(model, before)

    return _ctx


class RowCounter:
    """``with RowCounter(model[, hook]) as c``: ``c.rows`` = rows that went through ``hook``
    (default ``blocks.0.hook_resid_pre``: one per forward row through the blocks)."""

    def __init__(self, model, hook="blocks.0.hook_resid_pre"):
        self.model, self.hook, self.rows = model, hook, 0

    def __enter__(self):
        self.h = self.model.hook_dict[self.hook].register_forward_hook(self._count)
        return self

    def _count(self, module, inp, out):
        self.rows += out.shape[0]

    def __exit__(self, *exc):
        self.h.remove()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def grad_x_input(model, tokens, target):
    """Gradient × input at hook_embed, summed over d_model: an independent reference written
    with raw TransformerLens hooks (no mechattr code), shared by the faithfulness tests."""
    store = {}

    def keep(act, hook):
        act.requires_grad_(True)
        store["e"] = act
        return act

    with torch.enable_grad(), model.hooks([("hook_embed", keep)]):
        (g,) = torch.autograd.grad(target(model(tokens)).sum(), store["e"])
    return (g * store["e"]).sum(-1).detach()
