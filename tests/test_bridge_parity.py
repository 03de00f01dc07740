"""Every public function gives the same numbers on a HookedTransformer and on the
TransformerBridge of the same weights (compatibility mode), and leaves both unchanged.
On TransformerLens 4 (no HookedTransformer) only the bridge side runs."""

from __future__ import annotations

import pytest
import torch
from conftest import RowCounter, hooked_side

import mechattr
from mechattr import Head, targets
from mechattr import faithfulness as F

TOKS = torch.tensor([[1, 5, 9, 12, 7, 30, 5, 9, 22, 14], [1, 33, 4, 18, 25, 6, 33, 4, 11, 8]])
COR = TOKS.clone()
COR[:, 3] = 17
TGT = targets.logit_diff(5, 6)

CALLS = {
    "ig": lambda m: mechattr.attribute_tokens(m, TOKS, TGT, method="ig", n_steps=16).scores,
    "occlusion": lambda m: mechattr.attribute_tokens(m, TOKS, TGT, method="occlusion").scores,
    "atp": lambda m: mechattr.attribute_heads(m, TOKS, TGT, corrupted=COR),
    "dla": lambda m: mechattr.attribute_heads(m, TOKS, TGT, method="dla"),
    "resid": lambda m: mechattr.attribute_resid(m, TOKS, TGT, method="grad_x_act"),
    "ablation_scan": lambda m: mechattr.ablation_scan(m, TOKS, TGT, mode="mean"),
    "run_ablated": lambda m: mechattr.run_ablated(m, TOKS, [Head(1, 2)], mode="resample", seed=0).log_softmax(-1),
    "patch_resid_pre": lambda m: mechattr.activation_patch(m, TOKS, COR, TGT, site="resid_pre"),
    "patch_head_out": lambda m: mechattr.activation_patch(m, TOKS, COR, TGT, site="head_out"),
    "path_patch_q": lambda m: mechattr.path_patch(m, TOKS, COR, TGT, [Head(0, 1), Head(0, 3)], [(1, 0, "q")]),
    "path_patch_logits": lambda m: mechattr.path_patch(m, TOKS, COR, TGT, [Head(0, 1)], "logits"),
    "rollout": lambda m: mechattr.attention_rollout(m, TOKS),
    "flow": lambda m: mechattr.attention_flow(m, TOKS),
    "comprehensiveness": lambda m: F.comprehensiveness(m, TOKS, TGT, torch.arange(10.0).expand(2, 10)),
    "deletion_auc": lambda m: F.deletion_insertion(m, TOKS, TGT, torch.arange(10.0).expand(2, 10), n_draws=0).deletion,
}


@pytest.mark.parametrize("name", list(CALLS))
def test_bridge_gives_finite_numbers_and_stays_unchanged(hf_bridge, unchanged, name):
    with unchanged(hf_bridge):
        b = torch.as_tensor(CALLS[name](hf_bridge)).float()
    assert torch.isfinite(b).all()


@pytest.mark.parametrize("name", list(CALLS))
def test_hooked_and_bridge_agree(hf_pair, unchanged, name):
    ht, br = hf_pair
    hooked_side(ht)
    with unchanged(ht):
        a = torch.as_tensor(CALLS[name](ht)).float()
    with unchanged(br):
        b = torch.as_tensor(CALLS[name](br)).float()
    torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)


def test_cascading_randomization_on_bridge_randomizes_every_stage(hf_bridge):
    br = hf_bridge
    fn = lambda m, t, g: mechattr.attribute_tokens(m, t, g, method="input_x_gradient").scores  # noqa: E731
    r = F.cascading_randomization(br, TOKS, TGT, fn, seed=0)
    assert r.stages == ["unembed", "blocks.1", "blocks.0", "embed"]
    assert not torch.equal(r.maps[0], r.maps[-1])


def test_validate_runs_on_bridge(hf_bridge):
    br = hf_bridge
    rep = mechattr.validate(br, TOKS, TGT, corrupted=COR, methods=("ig", "saliency"))
    assert rep.claims and {c.verdict_kind for c in rep.claims} <= {"confirmed", "refuted", "redundant", "inconclusive", "underpowered"}


def test_bridge_forwards_end_at_the_hooks_they_need(hf_bridge, unchanged):
    """A bridge has no ``stop_at_layer``: reading early activations (the clean embedding of
    a token method, a cache of block 0) must still not run the later blocks. Rows through
    the last block = only the rows whose output is needed."""
    from mechattr.runtime.cache import cache_activations

    last = f"blocks.{hf_bridge.cfg.n_layers - 1}.hook_resid_post"
    with unchanged(hf_bridge), RowCounter(hf_bridge, last) as c:
        acts = cache_activations(hf_bridge, TOKS, ["hook_embed", "blocks.0.hook_resid_post"])
        assert c.rows == 0 and set(acts) == {"hook_embed", "blocks.0.hook_resid_post"}
        sal = mechattr.attribute_tokens(hf_bridge, TOKS, TGT, method="saliency").scores
    assert c.rows == TOKS.shape[0]  # the gradient rows only: no extra forward for the clean embedding
    # same numbers as a full forward would give
    full = {}
    with torch.no_grad(), hf_bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: full.setdefault("x", a.clone()))]):
        hf_bridge(TOKS)
    torch.testing.assert_close(acts["blocks.0.hook_resid_post"], full["x"])
    assert torch.isfinite(sal).all()


def test_bridge_in_train_mode_is_left_in_train_mode(hf_bridge, unchanged):
    """A bridge keeps its Hugging Face model outside its module tree (TL 4: ``original_model``
    in ``__dict__``) but ``eval()`` reaches it: the guard must restore that model's modes too."""
    from mechattr.runtime.hooks import model_modules

    original = vars(hf_bridge).get("original_model")
    hf_bridge.train()
    try:
        with unchanged(hf_bridge):
            mechattr.attribute_tokens(hf_bridge, TOKS, TGT, method="saliency")
        assert all(m.training for m in model_modules(hf_bridge))
        if original is not None:
            assert all(m.training for m in original.modules())
    finally:
        hf_bridge.eval()


def test_a_copied_bridge_runs_on_its_own_modules(hf_bridge):
    """The sanity check randomizes a deep copy. A bridge's lazily wired capture hooks are
    closures over its own modules, which ``copy.deepcopy`` shares: the copy must wire its own,
    so its forward leaves the original untouched and its hook points fire on the copy."""
    from mechattr.model import tl_flags
    from mechattr.runtime.clone import deepcopy_model
    from mechattr.runtime.hooks import model_modules

    def tensors(m):
        return {(i, k): v for i, mod in enumerate(model_modules(m)) for k, v in vars(mod).items() if isinstance(v, torch.Tensor)}

    with torch.no_grad():
        hf_bridge(TOKS)  # wires the original's capture hooks
    work = deepcopy_model(hf_bridge)
    before = tensors(hf_bridge)
    fired = []
    with tl_flags(work, use_hook_mlp_in=True), work.hooks(fwd_hooks=[("blocks.0.hook_mlp_in", lambda a, hook: fired.append(a.shape))]):
        out = work(TOKS)  # with gradients: a graph the original must not hold
    after = tensors(hf_bridge)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert fired, "the copy's hook_mlp_in did not fire on the copy"
    assert not hf_bridge.cfg.use_hook_mlp_in
    torch.testing.assert_close(out.detach(), hf_bridge(TOKS).detach())
