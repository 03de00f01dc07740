"""``engine="ray"`` on a local Ray (num_cpus=2, started here) writes the same shards' contents as ``engine="local"``."""

from __future__ import annotations

import numpy as np
import pytest

from mechattr.sweep.datasets import write_organism_dataset
from mechattr.sweep.runner import SweepResult, sweep

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

SPEC = "organism:induction"


def test_ray_engine_matches_local_engine(tmp_path):
    data = write_organism_dataset("induction", 96, tmp_path / "d.jsonl", seed=5)
    opts = {"method": "ig", "n_steps": 8}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = sweep(SPEC, data, "tokens", tmp_path / "ray", options=opts, batch_size=12, engine="ray", num_workers=2, progress=False)
        h = sweep(SPEC, data, "heads", tmp_path / "rayh", batch_size=12, engine="ray", num_workers=2, progress=False)
    finally:
        ray.shutdown()
    assert r.n_run == 96 and h.n_run == 96
    for name, analysis, o in (("ray", "tokens", opts), ("rayh", "heads", {})):
        sweep(SPEC, data, analysis, tmp_path / f"local-{name}", options=o, batch_size=12, progress=False)
        a = SweepResult(tmp_path / name, 0, 0).frame().sort_values("id").reset_index(drop=True)
        b = SweepResult(tmp_path / f"local-{name}", 0, 0).frame().sort_values("id").reset_index(drop=True)
        assert a["id"].is_unique and a["id"].tolist() == b["id"].tolist()
        np.testing.assert_allclose(np.stack(a["scores"].to_numpy()), np.stack(b["scores"].to_numpy()), rtol=1e-5, atol=1e-6)
        assert sorted(a["shard"].unique()) == sorted(b["shard"].unique())
