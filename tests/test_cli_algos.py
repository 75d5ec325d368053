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


@pytest.mark.parametrize("algo", ["pex", "apl", "sac"])
def test_run_with_cfdg_finishes_with_refreshes_and_a_finite_score(algo: str, tmp_path: Path) -> None:
    args = ["run", "--algo", algo, "--augmentation", "cfdg", "--dataset", "embedded", "--out", str(tmp_path),
            "--no-progress"]
    for s in SMOKE_SET:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = (p for p in tmp_path.iterdir() if p.name != "pretrained")
    final = json.loads((run_dir / "result.json").read_text())
    assert math.isfinite(final["final_score"]) and final["config"]["algo"] == algo
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert any(r["phase"] == "refresh" for r in rows)
    assert sum(int(r["src_synthetic_online"] or 0) for r in rows if r["phase"] == "online") > 0
