"""The memory budget (runtime/memory.py) and the chunking policy planned from it (runtime/chunks.py).

Properties: sizes parse or raise; ``memory_budget`` is context-local and restored; the rows
the planner picks, measured by counting the bytes autograd actually saves, stay within the
budget; chunked, unchunked and recomputed (checkpointed) runs give the same numbers; and a
subprocess's measured peak RSS stays within ``max_memory`` on a long input while the same
call without a budget exceeds it (so the measurement can fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_model, requires_hooked

from mechattr import targets
from mechattr.attribution.tokens import attribute_tokens
from mechattr.interventions.variants import Edit, Mode, Variant, run_variants
from mechattr.runtime.chunks import grad_plan, max_rows
from mechattr.runtime.memory import (
    budget_bytes,
    current_budget,
    memory_budget,
    parse_bytes,
    row_bytes,
)


def test_parse_bytes_reads_units_and_rejects_nonsense():
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert parse_bytes("512mib") == 512 * 2**20
    assert parse_bytes(4096) == 4096
    for bad in ("2 parsecs", "", "-1GB", 0, -5, True, float("inf"), [1], "GB"):
        with pytest.raises(ValueError, match="max_memory"):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="max_memory"):
        attribute_tokens(make_model(), torch.ones(1, 4, dtype=torch.long), targets.logit(1), "ig", max_memory="lots")


def test_memory_budget_is_context_local_nested_and_restored():
    assert current_budget() is None
    seen = {}
    with memory_budget("1GB"):
        with memory_budget(1000):
            assert budget_bytes("cpu") == (1000, budget_bytes("cpu")[1])
        assert current_budget() == 10**9
        t = threading.Thread(target=lambda: seen.update(other=current_budget()))  # a thread starts from the default context
        t.start()
        t.join()
        with pytest.raises(RuntimeError), memory_budget("5MB"):
            raise RuntimeError
        assert current_budget() == 10**9
        assert budget_bytes("cpu", "3kB")[0] == 3000  # an explicit max_memory wins
    assert current_budget() is None and seen["other"] is None
    assert budget_bytes("cpu")[0] > 0  # the default: a fraction of free memory


def _saved_bytes(model, tokens, target, rows):
    """Bytes autograd keeps (new storages, weights excluded) for a forward of ``rows`` copies."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    emb = model.embed(tokens).detach().expand(rows, -1, -1).clone().requires_grad_(True)

    def put(act, hook):
        return emb

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), model.hooks(fwd_hooks=[("hook_embed", put)]):
        logits = model(tokens.expand(rows, -1))
    target.take(torch.zeros(rows, dtype=torch.long))(logits).sum()
    return sum(seen.values())


@pytest.mark.parametrize("budget", ["2MB", "6MB", "20MB"])
def test_planned_rows_fit_the_budget_measured_by_saved_tensors(budget):
    model = make_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=128)
    for p in model.parameters():
        p.requires_grad_(False)
    tokens = torch.randint(1, 50, (1, 96), generator=torch.Generator().manual_seed(0))
    target = targets.logit(torch.tensor([3]))
    plan = grad_plan(model, 96, n_read=1, max_memory=budget)
    assert not plan.checkpoint and plan.rows >= 1
    measured = _saved_bytes(model, tokens, target, plan.rows)
    assert measured <= plan.rows * plan.row_bytes <= parse_bytes(budget)
    # the estimate is an upper bound per row, but not a wild one: within 3× of what autograd keeps
    assert plan.rows * plan.row_bytes < 3 * measured
    # and one more row would not fit (unless the row cap applied)
    assert (plan.rows + 1) * plan.row_bytes > parse_bytes(budget) or plan.rows == max(1, 2048 // 96)


def test_nothing_fits_is_a_clear_error_naming_budget_and_need():
    model = make_model(n_layers=2, d_model=32, n_ctx=64)
    need = row_bytes(model, 60, backward=True, n_read=1, checkpoint=True)
    with pytest.raises(ValueError, match=r"memory budget of .*raise max_memory"):
        grad_plan(model, 60, n_read=1, max_memory=need // 2)
    with pytest.raises(ValueError, match="one forward row of 60 tokens needs about"):
        max_rows(model, 60, None, "cpu", max_memory=10)
    assert max_rows(model, 60, 7, "cpu", max_memory=10) == 7  # an explicit batch_size wins


def test_ig_same_numbers_chunked_unchunked_and_under_a_tight_budget():
    model = make_model(n_layers=3, d_model=32, n_ctx=64)
    toks = torch.randint(1, 24, (3, 40), generator=torch.Generator().manual_seed(1))
    target = targets.logit(torch.tensor([1, 2, 3]))
    whole = attribute_tokens(model, toks, target, "ig", n_steps=8, batch_size=24)
    one = attribute_tokens(model, toks, target, "ig", n_steps=8, batch_size=1)
    per_row = row_bytes(model, 40, backward=True, n_read=1)
    tight = attribute_tokens(model, toks, target, "ig", n_steps=8, max_memory=2 * per_row)  # 2 rows per chunk
    with memory_budget(5 * per_row):
        ctx = attribute_tokens(model, toks, target, "ig", n_steps=8)
    for r in (one, tight, ctx):
        torch.testing.assert_close(r.scores, whole.scores, atol=1e-5, rtol=1e-5)


@requires_hooked
def test_ig_recomputes_blocks_when_one_row_does_not_fit_same_numbers():
    model = make_model(n_layers=3, d_model=32, n_ctx=64)
    toks = torch.randint(1, 24, (2, 48), generator=torch.Generator().manual_seed(2))
    target = targets.logprob(torch.tensor([4, 5]))
    need = row_bytes(model, 48, backward=True, n_read=1)
    ck = row_bytes(model, 48, backward=True, n_read=1, checkpoint=True)
    assert ck < need
    budget = (ck + need) // 2
    assert grad_plan(model, 48, n_read=1, max_memory=budget).checkpoint
    ref = attribute_tokens(model, toks, target, "ig", n_steps=6, batch_size=12)
    got = attribute_tokens(model, toks, target, "ig", n_steps=6, max_memory=budget)
    torch.testing.assert_close(got.scores, ref.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.convergence_delta, ref.convergence_delta, atol=1e-5, rtol=1e-5)


def test_variant_engine_same_numbers_under_a_tight_budget():
    model = make_model(n_layers=2, d_model=32, n_ctx=64)
    toks = torch.randint(1, 24, (2, 32), generator=torch.Generator().manual_seed(3))
    target = targets.logit(torch.tensor([1, 2]))
    variants = [Variant()] + [Variant((Edit(f"blocks.{L}.attn.hook_z", (slice(None), h), Mode.ZERO),)) for L in range(2) for h in range(4)]
    free = run_variants(model, toks, variants, target, batch_size=64)
    one_row = row_bytes(model, 32, backward=False, n_read=1)
    with memory_budget(2 * one_row):  # two rows per forward = one variant at a time
        assert max_rows(model, 32, None, "cpu") == 2
        tight = run_variants(model, toks, variants, target)
    torch.testing.assert_close(tight, free, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(free[:1].expand_as(free[1:]), free[1:])  # the variants do change the target


_RSS_SCRIPT = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from conftest import make_model
from mechattr import targets
from mechattr.attribution.tokens import attribute_tokens
torch.set_num_threads(1)
budget = int(sys.argv[2])
model = make_model(n_layers=4, d_model=64, n_heads=8, d_vocab=100, n_ctx=512)
toks = torch.randint(1, 100, (1, 512), generator=torch.Generator().manual_seed(0))
t = targets.logit(torch.tensor([5]))
attribute_tokens(model, toks[:, :64], t, "ig", n_steps=2)  # warm-up: allocator, autograd threads

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

def reset_peak():  # Linux ≥ 4.0: "5" resets the high-water mark VmHWM to the current RSS
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")

def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))

out = {}
reset_peak()
base = rss()  # the peak of imports and model building before the call does not count
attribute_tokens(model, toks, t, "ig", n_steps=6, max_memory=budget)
out["budgeted"] = peak() - base
reset_peak()
base = rss()
attribute_tokens(model, toks, t, "ig", n_steps=6, batch_size=6)  # everything in one chunk
out["unbudgeted"] = peak() - base
print(json.dumps(out))
"""


def test_peak_rss_stays_within_max_memory_on_a_long_input(tmp_path):
    """4 layers × 8 heads × 512² attention: one forward+backward row keeps ~70 MB of scores and
    patterns; 6 path points in one chunk ~0.4 GB. Under a 160 MB budget the measured RSS
    growth stays below 160 MB; without it, it does not (the check can fail). The budget
    bounds live tensors: glibc's default malloc keeps freed heap (its mmap threshold grows
    with the largest freed block), which adds allocator slack to RSS, so the subprocess
    fixes the threshold (``MALLOC_MMAP_THRESHOLD_``) as docs/internals.md recommends."""
    script = tmp_path / "rss.py"
    script.write_text(_RSS_SCRIPT)
    budget = 160 * 10**6
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    res = subprocess.run([sys.executable, str(script), tests_dir, str(budget)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0 < got["budgeted"] <= budget, got
    assert got["unbudgeted"] > budget, got


def test_cpu_forward_chunks_hold_at_most_1024_tokens_and_removal_metrics_use_them():
    """Forward-only chunks on CPU: ``CPU_CHUNK_TOKENS // pos`` rows (≥ 1) when the budget allows
    more; the removal metrics go through the same planner (same numbers under a budget of one
    row per forward as in one big batch)."""
    from mechattr.faithfulness import faithfulness
    from mechattr.runtime.chunks import CPU_CHUNK_TOKENS

    model = make_model(n_layers=2, d_model=32, n_ctx=64)
    assert max_rows(model, 32, None, "cpu", max_memory="100GB") == CPU_CHUNK_TOKENS // 32
    assert max_rows(model, 64, None, "cpu", max_memory="100GB") == CPU_CHUNK_TOKENS // 64
    assert max_rows(model, 4 * CPU_CHUNK_TOKENS, None, "cpu", max_memory="100GB") == 1
    toks = torch.randint(1, 24, (3, 16), generator=torch.Generator().manual_seed(5))
    target = targets.logit(torch.tensor([1, 2, 3]))
    scores = torch.randn(3, 16, generator=torch.Generator().manual_seed(6))
    big = faithfulness(model, toks, target, scores, n_draws=6, k=0.25, batch_size=1000)
    sizes = []
    h = model.hook_dict["hook_embed"].register_forward_hook(lambda mod, i, out: sizes.append(out.shape[0]))
    try:
        with memory_budget(row_bytes(model, 16, backward=False, n_read=1)):
            assert max_rows(model, 16, None, "cpu") == 1
            small = faithfulness(model, toks, target, scores, n_draws=6, k=0.25)
    finally:
        h.remove()
    assert max(sizes) == 1 and len(sizes) > 6  # one row per forward: the planner chunked the variants
    torch.testing.assert_close(small.comprehensiveness, big.comprehensiveness, atol=1e-5, rtol=1e-5)
    for k in big.control:
        torch.testing.assert_close(small.control[k], big.control[k], atol=1e-5, rtol=1e-5)
