"""Shared sweep fixtures: the induction organism and its task written as JSONL datasets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import mechattr
from mechattr import organisms
from mechattr.sweep.datasets import write_organism_dataset

SPEC = "organism:induction"


@pytest.fixture(scope="module")
def model():
    return mechattr.load_model(SPEC, device="cpu")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {n: write_organism_dataset("induction", n, d / f"ind{n}.jsonl", seed=3) for n in (16, 400, 2000)}


def rows(out) -> pd.DataFrame:
    """A finished sweep's table, sorted by id."""
    return mechattr.sweep.runner.SweepResult(Path(out), 0, 0).frame().sort_values("id").reset_index(drop=True)


def direct_batch(n: int):
    """The same examples as ``data[n]``, as a task batch."""
    return organisms.task("induction").sample(n, seed=3)
