"""Every runnable example in examples/ and docs/ runs (tiny budgets)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import REPO_ROOT


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_d3rlpy_quickstart_runs_and_refreshes() -> None:
    pytest.importorskip("d3rlpy")
    out = _load("d3rlpy_hopper").main(["--offline-steps", "100", "--online-steps", "300", "--refresh-every", "150",
                                          "--tiny"])
    # one refresh per 150 online transitions stored (d3rlpy stores a transition one step late, so
    # 300 env steps give slightly fewer than 300 transitions)
    assert 250 <= out["online_transitions"] <= 300
    assert out["refreshes"] == out["online_transitions"] // 150 >= 1
    assert math.isfinite(out["before"]) and math.isfinite(out["after"])
