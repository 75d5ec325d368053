"""Bad input to `cfdg-aug report` and `cfdg-aug sweep` is one `error: ...` line and exit status 2,
refused before anything is created, changed or trained: a sweep's datasets go through the runner's
data pre-flight before its first run starts; a broken file of a finished run is refused naming it;
`--out` that is a file or cannot be created is named."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cfdg_aug.experiments import runner, sweep
from cfdg_aug.experiments.cli import app
from cfdg_aug.experiments.runner import SMOKE_SET, resolve_config, write_json, write_metrics
from tests.cli_checks import one_error_line, snapshot
from tests.data_helpers import five_dim_hopper_dataset

needs_training_stack = pytest.mark.skipif(
    importlib.util.find_spec("d3rlpy") is None or importlib.util.find_spec("mujoco") is None,
    reason="the data pre-flight builds the env and the algorithm (d3rlpy, mujoco)")


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


# --- report fixtures ---------------------------------------------------------------------------------------
def _fake_run(root: Path, aug: str = "none", seed: int = 0) -> Path:
    """A finished run folder (as tests/test_report.py builds them)."""
    cfg = resolve_config("iql", aug, "/data/hopper.hdf5", "small", seed)
    rd = root / cfg.run_id()
    rd.mkdir(parents=True)
    write_json(rd / "config.json", {"config": cfg.to_dict(), "config_hash": cfg.config_hash()})
    write_metrics(rd / "metrics.csv", [
        {"phase": "offline", "step": 0, "online_step": 0, "normalized_score": 1.0},
        {"phase": "online", "step": 100, "online_step": 100, "normalized_score": 5.0},
        {"phase": "online", "step": 200, "online_step": 200, "normalized_score": 10.0}])
    write_json(rd / "result.json", {"final_score": 10.0})
    return rd


@pytest.fixture
def rep(tmp_path: Path) -> Path:
    """``tmp_path / "rep"``: two good finished runs, and a plain file ``tmp_path / "afile"``."""
    _fake_run(tmp_path / "rep", "none", 0)
    _fake_run(tmp_path / "rep", "cfdg", 0)
    (tmp_path / "afile").write_text("keep me\n")
    return tmp_path / "rep"


def _report(tmp_path: Path, *args: str) -> str:
    """``cfdg-aug report ARGS``: refused with one error line, nothing under ``tmp_path`` changed."""
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("report", *args, "--reps", "100"))
    assert snapshot(tmp_path) == before
    return line


# --- report -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, why", [
    (b"phase,step,online_step,normalized_score\noffline,0,0,1.0\nonline,100,100,abc\n", "could not convert string to float"),
    (b"\xff\xfe\x00\x01\x89PNG binary \x00\x00 garbage", "not UTF-8 text"),
], ids=["non-numeric", "binary"])
def test_report_names_an_unreadable_metrics_csv_and_why(rep: Path, tmp_path: Path, content: bytes, why: str) -> None:
    bad = _fake_run(rep, "unconditional", 0) / "metrics.csv"
    bad.write_bytes(content)
    line = _report(tmp_path, str(rep), "--out", str(tmp_path / "out"))
    assert f"{bad.resolve()} is unreadable" in line and why in line, line
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_runs_folder_that_is_a_file(rep: Path, tmp_path: Path) -> None:
    line = _report(tmp_path, str(tmp_path / "afile"), "--out", str(tmp_path / "out"))
    assert line == f"error: {tmp_path / 'afile'} is not a folder"
    assert "no finished runs" not in line


@pytest.mark.parametrize("kind, expected", [
    ("garbage", "is unreadable: not valid JSON"),
    ("not-an-object", "is unreadable: expected a JSON object, got list"),
    ("folder", "is a folder, expected the run's JSON result file"),
], ids=["garbage", "not-an-object", "folder"])
def test_report_refuses_a_broken_result_json_naming_it(rep: Path, tmp_path: Path, kind: str, expected: str) -> None:
    """A finished-looking run whose result.json is broken is refused like a broken config.json or
    metrics.csv (not counted as finished, not silently left out)."""
    res = _fake_run(rep, "unconditional", 0) / "result.json"
    if kind == "garbage":
        res.write_bytes(b"{not json at all")
    elif kind == "not-an-object":
        res.write_text("[1, 2]")
    else:
        res.unlink()
        res.mkdir()
    line = _report(tmp_path, str(rep), "--out", str(tmp_path / "out"))
    assert line.startswith(f"error: {res.resolve()} {expected}"), line
    assert not (tmp_path / "out").exists()


def test_report_refuses_an_out_that_is_a_file(rep: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    line = _report(tmp_path, str(rep), "--out", str(afile))
    assert line == f"error: --out {afile} is a file, expected a folder"
    assert afile.read_text() == "keep me\n"


@pytest.mark.parametrize("where", ["below-a-file", "proc"])
def test_report_refuses_an_out_that_cannot_be_created(rep: Path, tmp_path: Path, where: str) -> None:
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    out = tmp_path / "afile" / "sub" if where == "below-a-file" else Path("/proc/cfdg-aug-report-test")
    line = _report(tmp_path, str(rep), "--out", str(out))
    assert line.startswith(f"error: cannot create --out {out}: "), line
    assert not out.exists()


# --- sweep ------------------------------------------------------------------------------------------------
def _grid(tmp_path: Path, datasets: list[str], **kw: Any) -> Path:
    """A smoke-budget grid file ``tmp_path / "grid.yaml"`` writing under ``tmp_path / "sweep"``."""
    g = {"out": str(tmp_path / "sweep"), "algos": ["iql"], "augmentations": ["none", "cfdg"], "datasets": datasets,
         "seeds": 2, "set": {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in SMOKE_SET)}, **kw}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


@pytest.fixture
def no_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records any attempt to start a run (a worker pool, a run, a Ray task): must stay empty."""
    started: list[Any] = []

    def refuse(*a: Any, **k: Any) -> Any:
        started.append((a, k))
        raise AssertionError("a run was started")

    monkeypatch.setattr(sweep, "ProcessPoolExecutor", refuse)
    monkeypatch.setattr(sweep, "run_one", refuse)
    monkeypatch.setattr(sweep, "_run_ray", refuse)
    return started


@pytest.fixture
def preflight_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(dataset, "ok" / the exception's type) of each call of the runner's data pre-flight."""
    calls: list[tuple[str, str]] = []
    real = runner._preflight_data

    def spy(cfg: Any, device: str) -> Any:
        try:
            out = real(cfg, device)
        except Exception as e:
            calls.append((cfg.dataset, type(e).__name__))
            raise
        calls.append((cfg.dataset, "ok"))
        return out

    monkeypatch.setattr(runner, "_preflight_data", spy)
    return calls


def _bad_datasets(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an hdf5 file" * 10)
    five = five_dim_hopper_dataset(tmp_path / "five-dim.hdf5")
    return {"missing": tmp_path / "missing.hdf5", "garbage": garbage, "wrong-dim": five}


@needs_training_stack
@pytest.mark.parametrize("bad, expected", [
    (["missing"], ("missing.hdf5", "not found", "FileNotFoundError|DatasetError")),
    (["garbage"], ("garbage.hdf5", "not a readable hdf5 file", "DatasetError")),
    (["wrong-dim"], ("five-dim.hdf5", "5-dim observations where Hopper-v4 has 11", "ConfigError")),
    (["missing", "garbage", "wrong-dim"], ("missing.hdf5", "not found", "FileNotFoundError|DatasetError")),
], ids=["missing", "garbage", "wrong-dim", "all-three"])
def test_sweep_checks_every_dataset_against_its_env_before_any_run_starts(
        tmp_path: Path, no_runs: list[Any], preflight_calls: list[tuple[str, str]], bad: list[str],
        expected: tuple[str, str, str]) -> None:
    """The good dataset comes first in the grid: it is checked, not trained, and the bad one is
    refused with the error `cfdg-aug run` gives for it, before the out folder or any run exists."""
    paths = _bad_datasets(tmp_path)
    grid = _grid(tmp_path, ["embedded", *(str(paths[b]) for b in bad)])
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid), "--workers", "1"))
    name, why, kinds = expected
    assert name in line and why in line, line
    assert not (tmp_path / "sweep").exists()
    assert snapshot(tmp_path) == before
    assert no_runs == []
    # Refused by the pre-flight: the good dataset's runs were checked (once per setting, not per
    # seed) and passed; the first bad dataset's check raised; nothing after it was needed.
    assert [c for c in preflight_calls if c[0] == "embedded"] == [("embedded", "ok")] * 2
    assert preflight_calls[-1][0].endswith(name) and preflight_calls[-1][1] in kinds.split("|"), preflight_calls
    # The same error as `cfdg-aug run` on that dataset alone.
    run_code, run_out = _invoke("run", "--dataset", preflight_calls[-1][0], "--out", str(tmp_path / "run-out"),
                                "--no-progress", *[a for s in SMOKE_SET for a in ("--set", s)])
    run_line = one_error_line(run_code, run_out)
    assert line.endswith(run_line.removeprefix("error: ")), (line, run_line)  # a ConfigError names the run too


def test_sweep_refuses_an_out_that_is_a_file(tmp_path: Path, no_runs: list[Any],
                                             preflight_calls: list[tuple[str, str]]) -> None:
    grid = _grid(tmp_path, ["embedded"])
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid), "--out", str(afile)))
    assert line == f"error: --out {afile} is a file, expected a folder"
    assert snapshot(tmp_path) == before and no_runs == [] and preflight_calls == []


def test_sweep_refuses_a_grid_out_that_is_a_file_naming_the_grid_field(tmp_path: Path, no_runs: list[Any]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    grid = _grid(tmp_path, ["embedded"], out=str(afile))
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid)))
    assert line == f"error: grid field 'out' {afile} is a file, expected a folder"
    assert snapshot(tmp_path) == before and no_runs == []


@needs_training_stack
def test_sweep_refuses_an_out_that_cannot_be_created(tmp_path: Path, no_runs: list[Any]) -> None:
    grid = _grid(tmp_path, ["embedded"])
    (tmp_path / "afile").write_text("keep me\n")
    out = tmp_path / "afile" / "sub"
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid), "--out", str(out)))
    assert line == f"error: cannot create --out {out}: Not a directory"
    assert snapshot(tmp_path) == before and no_runs == []


def test_sweep_invalid_yaml_is_one_line_with_its_line_and_column(tmp_path: Path, no_runs: list[Any]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0, 1\n")
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(bad)))
    assert line == f"error: {bad}: not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"
    assert snapshot(tmp_path) == before and no_runs == []


def test_sweep_grid_that_is_not_text_is_one_line(tmp_path: Path, no_runs: list[Any]) -> None:
    bad = tmp_path / "grid.yaml"
    bad.write_bytes(b"out: x\n\xff\xfe\x00binary")
    line = one_error_line(*_invoke("sweep", str(bad)))
    assert str(bad) in line and "not a YAML text file" in line
    assert no_runs == []
