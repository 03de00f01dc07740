"""Edge attribution and circuit forwards against slow one-edge-at-a-time references."""

from __future__ import annotations

import pytest
import torch

from mechattr import targets
from mechattr.circuits import attribute_edges, model_edges
from mechattr.circuits.scores import METHODS
from mechattr.interventions.edges import Graph, reference_outputs, run_circuits, sender_outputs
from mechattr.runtime.split import split_io
from tests.circuits.reference import slow_circuit_target, slow_eap_scores, slow_edge_effects
from tests.conftest import both_sides, make_model, requires_hooked


def _pair(n=3, pos=7, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, pos), generator=g)
    corr = clean.clone()
    corr[:, 2:5] = torch.randint(3, vocab, (n, 3), generator=g)
    return clean, corr


def _target(model, clean):
    return targets.logit_diff(clean[:, -1] * 0 + 5, clean[:, -1] * 0 + 9)


def _models(hf_pair):
    return both_sides(hf_pair)


@pytest.mark.parametrize("ablation", ["patch", "mean", "zero"])
def test_eap_matches_slow_reference(hf_pair, ablation):
    for m in _models(hf_pair):
        clean, corr = _pair()
        t = _target(m, clean)
        es = model_edges(m)
        got = attribute_edges(m, clean, corr if ablation == "patch" else None, t, method="eap", ablation=ablation)
        ref = slow_eap_scores(m, clean, corr, t, es, ablation)
        torch.testing.assert_close(got.scores, ref.float(), atol=1e-5, rtol=1e-4)


def test_exact_matches_one_edge_at_a_time(hf_pair):
    for m in _models(hf_pair):
        clean, corr = _pair(seed=1)
        t = _target(m, clean)
        es = model_edges(m)
        got = attribute_edges(m, clean, corr, t, method="exact", batch_size=16)
        ref = slow_edge_effects(m, clean, corr, t, es)
        torch.testing.assert_close(got.scores, ref.float(), atol=1e-5, rtol=1e-4)


@requires_hooked
@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_exact_matches_reference_under_mean_and_zero(ablation):
    m = make_model(n_layers=2, d_vocab=60, n_ctx=16)
    clean, _ = _pair()
    t = targets.logit(clean[:, -1])
    es = model_edges(m)[::7]
    got = attribute_edges(m, clean, None, t, method="exact", ablation=ablation, edges=es)
    torch.testing.assert_close(got.scores, slow_edge_effects(m, clean, None, t, es, ablation).float(), atol=1e-5, rtol=1e-4)


def _circuit_runner(m, clean, corr, ablation="patch"):
    ctx = split_io(m)
    io = ctx.__enter__()
    g = Graph.of(m, io, model_edges(m))
    with torch.no_grad():
        co = sender_outputs(m, clean, g)
        xo = sender_outputs(m, corr, g)
    return ctx, g, reference_outputs(co, ablation, xo)


def test_circuit_forward_matches_slow_multi_edge_reference(hf_pair):
    for m in _models(hf_pair):
        clean, corr = _pair(seed=2)
        t = _target(m, clean)
        ctx, g, ref = _circuit_runner(m, clean, corr)
        try:
            gen = torch.Generator().manual_seed(0)
            masks = torch.rand(4, len(g.edges), generator=gen) < torch.tensor([[0.1], [0.3], [0.6], [0.9]])
            got = run_circuits(m, clean, g, ref, masks, t).mean(1)
        finally:
            ctx.__exit__(None, None, None)
        want = [slow_circuit_target(m, clean, corr, t, [e for e, a in zip(g.edges, row) if a]) for row in masks.tolist()]
        torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-4)


def test_every_edge_ablated_is_the_corrupted_run_and_none_is_clean(hf_pair):
    """Ablating every edge with ``patch`` feeds every receiver its corrupted input: the
    corrupted run's target, exactly; ablating none is the clean run."""
    for m in _models(hf_pair):
        clean, corr = _pair(seed=3)
        t = _target(m, clean)
        ctx, g, ref = _circuit_runner(m, clean, corr)
        try:
            masks = torch.stack([torch.ones(len(g.edges), dtype=torch.bool), torch.zeros(len(g.edges), dtype=torch.bool)])
            got = run_circuits(m, clean, g, ref, masks, t)
        finally:
            ctx.__exit__(None, None, None)
        with torch.no_grad():
            torch.testing.assert_close(got[0], t(m(corr)).float(), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got[1], t(m(clean)).float(), atol=1e-5, rtol=1e-5)


def test_eap_ig_activations_is_complete_per_receiver(hf_pair):
    """Σ over a receiver's incoming edges = target change with that receiver's whole input
    patched (Gauss–Legendre, many nodes)."""
    m = _models(hf_pair)[-1]
    clean, corr = _pair(n=2, pos=5, seed=4)
    t = _target(m, clean)
    es = [e for e in model_edges(m) if str(e.receiver) in ("L1H0", "MLP1", "logits")]
    got = attribute_edges(m, clean, corr, t, method="eap_ig_activations", n_steps=24, edges=es)
    for key in {(e.receiver, e.input) for e in es}:
        into = [e for e in es if (e.receiver, e.input) == key]
        total = float(sum(got.as_dict()[e] for e in into))
        with torch.no_grad():
            patched = slow_circuit_target(m, clean, corr, t, into) - float(t(m(clean)).float().mean())
        assert total == pytest.approx(patched, abs=2e-4, rel=1e-3), key


def test_eap_ig_inputs_matches_slow_reference(hf_pair):
    """EAP-IG (inputs): Δ_s · mean_k g_r at inputs ref + (k/n)(clean − ref), k = 1..n."""
    m = _models(hf_pair)[0]
    clean, corr = _pair(n=2, pos=6, seed=5)
    t = _target(m, clean)
    n = 3
    es = model_edges(m)
    got = attribute_edges(m, clean, corr, t, method="eap_ig_inputs", n_steps=n)
    # slow: per step, replace the embeddings and take the gradient at every receiver
    from tests.circuits.reference import edge_flags, receiver_hook, sender_hook

    with edge_flags(m):
        _, cc = m.run_with_cache(clean)
        _, xc = m.run_with_cache(corr)
        x0c, x0x = cc["blocks.0.hook_resid_pre"], xc["blocks.0.hook_resid_pre"]
        names = sorted({receiver_hook(m, e.receiver, e.input)[0] for e in es})
        acc = None
        for k in range(1, n + 1):
            zs = {}

            def add_at(name, zs=zs):
                def add(x, hook):
                    zs[name] = torch.zeros_like(x, requires_grad=True)
                    return x + zs[name]

                return add

            inp = x0x + k / n * (x0c - x0x)
            hooks = [("blocks.0.hook_resid_pre", lambda x, hook, inp=inp: inp.clone())] + [(nm, add_at(nm)) for nm in names]
            with torch.enable_grad():
                v = t(m.run_with_hooks(clean, fwd_hooks=hooks)).float().mean()
                gs = dict(zip(names, torch.autograd.grad(v, [zs[nm] for nm in names])))
            acc = gs if acc is None else {nm: acc[nm] + gs[nm] for nm in names}
        want = []
        for e in es:
            sn, si = sender_hook(e.sender)
            rn, ri = receiver_hook(m, e.receiver, e.input)
            want.append(((xc[sn][si] - cc[sn][si]) * acc[rn][ri] / n).sum())
    torch.testing.assert_close(got.scores, torch.stack(want).float(), atol=1e-5, rtol=1e-4)


def test_clean_corrupted_is_the_mean_of_two_eaps(hf_pair):
    m = _models(hf_pair)[0]
    clean, corr = _pair(seed=6)
    t = _target(m, clean)
    a = attribute_edges(m, clean, corr, t, method="clean_corrupted")
    e1 = slow_eap_scores(m, clean, corr, t, a.edges)  # Δ · g at the clean run
    e2 = slow_eap_scores(m, corr, clean, t, a.edges)  # −Δ · g at the corrupted run
    torch.testing.assert_close(a.scores, ((e1 - e2) / 2).float(), atol=1e-5, rtol=1e-4)


def test_scores_leave_the_model_untouched(hf_pair, unchanged):
    for m in _models(hf_pair):
        clean, corr = _pair()
        t = _target(m, clean)
        with unchanged(m):
            for method in METHODS:
                attribute_edges(m, clean, corr, t, method=method, n_steps=2)
        assert not m.cfg.use_split_qkv_input and not m.cfg.use_attn_result


def test_bad_inputs_are_clear_errors(hf_pair):
    m = _models(hf_pair)[0]
    clean, corr = _pair()
    t = _target(m, clean)
    with pytest.raises(ValueError, match="unknown method 'eapp'"):
        attribute_edges(m, clean, corr, t, method="eapp")
    with pytest.raises(ValueError, match="unknown ablation 'resample'"):
        attribute_edges(m, clean, corr, t, ablation="resample")
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        attribute_edges(m, clean, corr, t, method="eap_ig_inputs", n_steps=0)
    with pytest.raises(ValueError, match="needs a corrupted input"):
        attribute_edges(m, clean, None, t)
    with pytest.raises(ValueError, match="not downstream"):
        attribute_edges(m, clean, corr, t, edges=["L1H0->L0H1.q"])
    with pytest.raises(ValueError, match="unknown node 'L0X1'"):
        attribute_edges(m, clean, corr, t, edges=["L0X1->logits"])
    with pytest.raises(ValueError, match="rows"):
        attribute_edges(m, clean, corr, targets.logit(torch.arange(5)))


def test_edge_scores_round_trip(tmp_path, hf_pair):
    m = _models(hf_pair)[0]
    clean, corr = _pair()
    s = attribute_edges(m, clean, corr, _target(m, clean), method="eap")
    s.save(tmp_path / "s")
    back = type(s).load(tmp_path / "s")
    assert back.edges == s.edges and torch.equal(back.scores, s.scores)
    df = s.to_frame()
    assert list(df.columns) == ["edge", "sender", "receiver", "input", "score"]
    assert df["score"].abs().is_monotonic_decreasing
    assert "EdgeScores(eap" in repr(s) and len(repr(s)) < 300


def test_per_position_terms_sum_to_the_scores(hf_pair, tmp_path):
    m = both_sides(hf_pair)[0]
    clean, corr = _pair()
    s = attribute_edges(m, clean, corr, _target(m, clean), method="eap_ig_inputs", n_steps=2, per_position=True)
    assert s.per_position.shape == (len(s.edges), *clean.shape)
    torch.testing.assert_close(s.per_position.sum((1, 2)), s.scores, atol=1e-5, rtol=1e-4)
    s.save(tmp_path / "pp")
    assert torch.equal(type(s).load(tmp_path / "pp").per_position, s.per_position)
    with pytest.raises(ValueError, match="per_position needs a gradient method"):
        attribute_edges(m, clean, corr, _target(m, clean), method="exact", per_position=True)


@pytest.mark.parametrize("method", ["eap", "clean_corrupted", "eap_ig_inputs"])
def test_unsplit_engine_equals_split_forwards(hf_pair, method):
    """The linear-map path (no split forwards) gives the split forwards' numbers."""
    for m in _models(hf_pair):
        clean, corr = _pair(seed=7)
        t = _target(m, clean)
        auto = attribute_edges(m, clean, corr, t, method=method, n_steps=2)
        split = attribute_edges(m, clean, corr, t, method=method, n_steps=2, engine="split")
        assert split.settings["engine"] == "split"
        torch.testing.assert_close(auto.scores, split.scores, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        attribute_edges(m, clean, corr, t, engine="fast")


@requires_hooked
def test_linear_path_is_used_only_where_verified():
    from mechattr.runtime.linear_io import linear_io

    assert linear_io(make_model(n_layers=2, d_vocab=40)) is not None
    rotary = make_model(n_layers=2, d_vocab=40, positional_embedding_type="rotary", rotary_dim=8)
    assert linear_io(rotary) is not None  # hook_q is taken before the rotation, so still linear
    clean, corr = _pair()
    t = targets.logit(clean[:, -1])
    a = attribute_edges(rotary, clean, corr, t, method="eap")
    b = attribute_edges(rotary, clean, corr, t, method="eap", engine="split")
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)
