"""Shared test setup.

Tests run with one torch thread by default: the CI machine has 2 cores, and several torch
processes with 2 threads each slow each other down 15-20x. Override with CFDG_TEST_THREADS.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("CFDG_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture
def rng() -> np.random.Generator:  # noqa: F821
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_inside_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    # SB3's learn() without a logger folder creates tempdir/SB3-<time> and never removes it (about a
    # hundred per suite run); pytest prunes its own temporary tree, keeping the last three runs.
    os.environ.setdefault("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))
