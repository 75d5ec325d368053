"""`cfdg-aug run` drives every algorithm through the same path (seconds-scale budget)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfdg_aug.experiments.cli import app
from cfdg_aug.experiments.runner import SMOKE_SET
from cfdg_aug.transitions import SOURCE_NAMES


@pytest.mark.parametrize("algo", ["pex", "apl", "sac"])
def test_run_with_cfdg_finishes_with_refreshes_and_a_finite_score(algo: str, tmp_path: Path) -> None:
    args = ["run", "--algo", algo, "--augmentation", "cfdg", "--dataset", "embedded", "--out", str(tmp_path),
            "--no-progress"]
    for s in (*SMOKE_SET, "online_steps=150"):  # one refresh (at 100), then 50 steps on its pools
        args += ["--set", s]
    if algo == "apl":  # every update greedy from the first (FIFO >= 50 after the warm-up)
        args += ["--set", "algo.greedy_min_online=50", "--set", "algo.online_update_probability=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = (p for p in tmp_path.iterdir() if p.name != "pretrained")
    final = json.loads((run_dir / "result.json").read_text())
    assert math.isfinite(final["final_score"]) and final["config"]["algo"] == algo
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert any(r["phase"] == "refresh" for r in rows)
    trained = {n: sum(int(r[f"src_{n}"] or 0) for r in rows if r["phase"] == "online") for n in SOURCE_NAMES}
    assert trained["synthetic_online"] > 0
    if algo == "apl":  # APL's greedy branch: the recent online FIFO and synthetic online rows only
        assert trained["real_offline"] == trained["synthetic_offline"] == 0 < trained["real_online"]
    else:
        assert trained["synthetic_offline"] > 0
    # The per-evaluation src_* columns add up to the run's totals: for APL both count the rows its
    # branches drew, not the batch the loop hands it (APL.source_counts, tested in test_apl.py).
    assert trained == final["source_counts"]
