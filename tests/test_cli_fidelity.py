"""`cfdg-aug fidelity`: one fit, a row per guidance weight and label, unconditional comparison, files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cfdg_aug.experiments.cli import app


def test_fidelity_command_writes_table_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "fid"
    result = CliRunner().invoke(app, [
        "fidelity", "--w", "0,1.5", "--set", "cfdg.train_steps=30", "--set", "cfdg.num_sample_steps=4",
        "--set", "cfdg.width=32", "--n", "100", "--no-physics", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    table = (out / "fidelity.md").read_text()
    assert table.count("| online |") == 3 and table.count("| offline |") == 3  # w=0, w=1.5, unconditional
    data = json.loads((out / "fidelity.json").read_text())
    assert [r["guidance"] for r in data["cfdg"]] == [0.0, 1.5]
    assert data["unconditional"]["conditional"] is False
    fit = data["fit"]["cfdg"]  # the settings behind the figures: resolved config and precisions
    assert fit["config"]["train_steps"] == 30 and fit["config"]["augmentation"] == "cfdg"
    assert fit["training_precision"] in ("float32", "bfloat16") and fit["sampling_precision"] in ("float32", "bfloat16")
    for name in ("sweep.png", "marginals.png", "projection.png"):
        assert (out / name).stat().st_size > 1000


def test_fidelity_command_rejects_bad_weights(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fidelity", "--w", "0,-1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "guidance" in result.output
