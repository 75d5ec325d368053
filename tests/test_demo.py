"""`make demo` runs the engine of `cfdg-aug run` for both arms from one shared pre-trained agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

from cfdg_aug.experiments import demo  # noqa: E402
from cfdg_aug.experiments.runner import SMOKE_SET  # noqa: E402


def test_demo_quick_compares_both_arms_from_one_pretrained_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = [a for s in (*SMOKE_SET, "online_steps=150") for a in ("--set", s)]  # one refresh, at ~100
    summary = demo.main(["--quick", "--out", str(tmp_path), "--no-progress", *extra])
    text = capsys.readouterr().out
    assert set(summary["arms"]) == {"none", "cfdg"}
    none, cfdg = summary["arms"]["none"], summary["arms"]["cfdg"]
    # One pre-training, shared: same key, the second arm reused it, same pre-trained score.
    assert none["pretrained"]["key"] == cfdg["pretrained"]["key"]
    assert [none["pretrained"]["reused"], cfdg["pretrained"]["reused"]] == [False, True]
    assert none["pretrained_score"] == cfdg["pretrained_score"] == none["curve"][0][1]
    assert cfdg["refreshes"] >= 1 and none["refreshes"] == 0
    # Each arm is an ordinary run directory of the CLI engine.
    for arm in (none, cfdg):
        rd = Path(arm["run_dir"])
        assert json.loads((rd / "result.json").read_text())["final_score"] == arm["final_score"]
    for f in ("summary.txt", "summary.json", "comparison.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "cfdg-aug run --algo iql --augmentation ARM --dataset embedded" in text
    assert "pre-trained (shared by both arms)" in text and "caveat: one seed" in text
