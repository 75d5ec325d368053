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
        "--set", "cfdg.width=32", "--set", "cfdg.redraw_steps=4", "--set", "cfdg.redraw_resample=2",
        "--n", "100", "--terminal-n", "500", "--no-physics", "--evals", "2", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    table = (out / "fidelity.md").read_text()
    assert table.count("| online |") == 3 and table.count("| offline |") == 3  # w=0, w=1.5, unconditional
    assert table.count("(sd ") == 6  # each AUC the mean of the two evaluations, with their spread
    data = json.loads((out / "fidelity.json").read_text())
    assert data["cfdg"][0]["evals"] == 2 and len(data["unconditional"]["online"]["auc_evals"]) == 2
    assert [r["guidance"] for r in data["cfdg"]] == [0.0, 1.5]
    assert data["cfdg"][0]["online"]["terminal_n"] == 500  # --terminal-n reaches the terminal-rate draw
    assert data["unconditional"]["conditional"] is False
    fit = data["fit"]["cfdg"]  # the settings behind the figures: resolved config and precisions
    assert fit["config"]["train_steps"] == 30 and fit["config"]["augmentation"] == "cfdg"
    assert fit["training_precision"] in ("float32", "bfloat16") and fit["sampling_precision"] in ("float32", "bfloat16")
    for name in ("sweep.png", "marginals.png", "projection.png"):
        assert (out / name).stat().st_size > 1000


def test_fidelity_command_rejects_bad_weights(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fidelity", "--w", "0,-1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "guidance" in result.output


def _fidelity_error(*args: str) -> str:
    """The command was refused with one ``error:`` line and exit status 2."""
    result = CliRunner().invoke(app, ["fidelity", "--no-physics", "--n", "50", *args])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_fidelity_refuses_an_out_that_is_a_file_before_fitting(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import cfdg_aug.diagnostics.study as study

    monkeypatch.setattr(study, "run_fidelity_study", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fitted")))
    (tmp_path / "afile").write_text("x")
    line = _fidelity_error("--out", str(tmp_path / "afile"))
    assert f"--out {tmp_path / 'afile'} is a file, expected a folder" in line
    assert (tmp_path / "afile").read_text() == "x"


def test_fidelity_names_weights_that_are_not_numbers(tmp_path: Path) -> None:
    assert "--w: guidance weights must be finite numbers >= 0, comma-separated, got 'a,b'" in _fidelity_error(
        "--w", "a,b", "--out", str(tmp_path / "o"))


def test_fidelity_refuses_setting_the_augmentation_it_sets_itself(tmp_path: Path) -> None:
    assert "--set augmentation" in _fidelity_error("--set", "augmentation=none", "--out", str(tmp_path / "o"))


def test_fidelity_refuses_online_data_of_another_environment(tmp_path: Path) -> None:
    import numpy as np

    from cfdg_aug.datasets.d4rl import write_d4rl

    rng = np.random.default_rng(0)
    n = 40
    other = tmp_path / "other.hdf5"
    write_d4rl(other, {"observations": rng.normal(size=(n, 5)).astype(np.float32),
                       "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                       "rewards": rng.normal(size=n).astype(np.float32),
                       "next_observations": rng.normal(size=(n, 5)).astype(np.float32),
                       "terminals": np.zeros(n, bool), "timeouts": np.r_[np.zeros(n - 1, bool), True]})
    line = _fidelity_error("--online", str(other), "--out", str(tmp_path / "o"))
    assert f"--online {other} has 5-dim observations and 2-dim actions, --dataset embedded has 11 and 3" in line
    assert not (tmp_path / "o").exists()


def test_fidelity_refuses_online_data_recorded_in_another_task(tmp_path: Path) -> None:
    import pytest

    from tests.conftest import SHARED_DATASETS as datasets

    if not (datasets / "walker2d-medium-50k.hdf5").exists():
        pytest.skip("needs ../shared/datasets")
    line = _fidelity_error("--dataset", str(datasets / "hopper-medium-50k.hdf5"), "--online",
                           str(datasets / "walker2d-medium-50k.hdf5"), "--out", str(tmp_path / "o"))
    assert "was recorded in Walker2d-v4" in line and "in Hopper-v4: both must come from the same environment" in line
