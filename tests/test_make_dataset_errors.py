"""The edges of `cfdg-aug make-dataset`: bad input is one `error: ...` line naming the option, exit
status 2, no traceback and no other output, refused before the rollout starts; nothing is written
and an existing file keeps its bytes. Also the folder-instead-of-file message of the D4RL loader."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfdg_aug.datasets import DatasetError, load_d4rl
from cfdg_aug.datasets import make as make_mod
from cfdg_aug.experiments.cli import app
from tests.cli_checks import one_error_line, snapshot

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")
pytest.importorskip("h5py")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HOPPER_POLICY = SHARED / "policies" / "tqc" / "Hopper-v3_1" / "Hopper-v3.zip"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working folder (the cwd) with its own Minari root; holds one existing dataset file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    (tmp_path / "existing.hdf5").write_bytes(b"an existing dataset: must keep these bytes")
    yield tmp_path


@pytest.fixture
def no_rollout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The expensive part of the rollout (stepping the env) must not start."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the rollout started")

    monkeypatch.setattr(make_mod, "_collect", refuse)


def _make(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["make-dataset", *args])
    return res.exit_code, res.output


def _refused(work: Path, *args: str) -> str:
    """``cfdg-aug make-dataset ARGS`` is one error line and changes nothing under ``work``."""
    before = snapshot(work)
    line = one_error_line(*_make(*args))
    assert snapshot(work) == before
    return line


BASE = ("--env", "Hopper-v4", "--n-transitions", "5", "--no-progress")


# --- 1. argument errors: one line naming the option, the CLI's program name ------------------------------
def test_no_arguments_is_one_line_naming_the_required_options(work: Path, no_rollout: None) -> None:
    line = _refused(work)
    assert line == ("error: missing required option(s) --env, --out, --n-transitions "
                    "(see cfdg-aug make-dataset --help)")


def test_non_integer_n_transitions_is_one_line_naming_the_option(work: Path, no_rollout: None) -> None:
    line = _refused(work, "--env", "Hopper-v4", "--out", "x.hdf5", "--n-transitions", "abc")
    assert line == "error: --n-transitions must be an int, got 'abc'"


def test_unknown_format_is_one_line_naming_the_option(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "x.hdf5", "--format", "csv")
    assert line == "error: --format must be 'd4rl' or 'minari', got 'csv'"


def test_attr_without_a_value_is_one_line_naming_the_option(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "x.hdf5", "--attr", "novalue")
    assert line == "error: --attr must be KEY=VALUE, got 'novalue'"


def test_help_names_the_cli_program_and_documents_force() -> None:
    res = CliRunner().invoke(app, ["make-dataset", "--help"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("usage: cfdg-aug make-dataset")
    assert "python -m cfdg_aug.datasets.make" not in res.output
    assert "--force" in res.output and "replace an existing hdf5 file" in " ".join(res.output.split())


# --- 2. the output path is checked before the rollout; write errors name --out ---------------------------
def test_out_that_is_a_folder_is_refused_before_the_rollout(work: Path, no_rollout: None) -> None:
    (work / "folder").mkdir()
    line = _refused(work, *BASE, "--out", "folder")
    assert line == "error: --out folder is a folder, expected an .hdf5 file path"


def test_out_under_a_file_is_refused_before_the_rollout(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "existing.hdf5/d.hdf5")
    assert line == "error: --out existing.hdf5/d.hdf5: existing.hdf5 is a file, expected a folder"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_out_in_an_unwritable_folder_is_refused_before_the_rollout(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "/proc/x.hdf5")
    assert line.startswith("error: --out /proc/x.hdf5: cannot write in folder /proc (")
    assert ".tmp" not in line


def test_write_failure_after_the_rollout_names_out_and_keeps_the_existing_file(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.datasets import d4rl

    def fail(src: str, dst: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", src)

    monkeypatch.setattr(d4rl.os, "replace", fail)  # the last step of the atomic write
    line = _refused(work, *BASE, "--out", "existing.hdf5", "--force")  # a 5-step rollout runs
    assert line == "error: --out existing.hdf5: cannot write the file (Permission denied)"


# --- 3, 4. numbers out of range --------------------------------------------------------------------------
@pytest.mark.parametrize("steps", ["0", "-3"])
def test_max_episode_steps_below_one_names_the_option(work: Path, no_rollout: None, steps: str) -> None:
    line = _refused(work, *BASE, "--out", "x.hdf5", "--max-episode-steps", steps)
    assert line == f"error: --max-episode-steps must be >= 1, got {steps}"


def test_negative_seed_names_the_option(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "x.hdf5", "--seed", "-1")
    assert line == "error: --seed must be >= 0, got -1"


# --- 5. Minari ids are checked before the rollout --------------------------------------------------------
@pytest.mark.parametrize("dataset_id", ["bad id", "local/no-version"])
def test_malformed_minari_id_is_refused_before_the_rollout(work: Path, no_rollout: None, dataset_id: str) -> None:
    pytest.importorskip("minari")
    line = _refused(work, *BASE, "--format", "minari", "--out", dataset_id)
    assert line == (f"error: --out {dataset_id!r} is not a Minari dataset id; expected (namespace/)name-v(version), "
                    "e.g. local/hopper-medium-v0")
    assert not (work / "minari").exists()


def test_existing_minari_id_is_refused_before_the_rollout(work: Path, no_rollout: None) -> None:
    pytest.importorskip("minari")
    folder = work / "minari" / "local" / "hopper-v0" / "data"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text("{}")
    line = _refused(work, *BASE, "--format", "minari", "--out", "local/hopper-v0", "--force")
    assert line.startswith(f"error: --out 'local/hopper-v0': a Minari dataset with this id already exists at "
                           f"{work / 'minari' / 'local' / 'hopper-v0'}; choose another name or version")


# --- 6. an existing hdf5 file is replaced only with --force ----------------------------------------------
def test_existing_hdf5_is_refused_without_force(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "existing.hdf5")
    assert line == "error: --out existing.hdf5 already exists; pass --force to replace it"


def test_force_replaces_an_existing_hdf5(work: Path) -> None:
    res = CliRunner().invoke(app, ["make-dataset", *BASE, "--out", "existing.hdf5", "--force"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("wrote existing.hdf5") and "Traceback" not in res.output
    ds = load_d4rl(work / "existing.hdf5")
    assert len(ds) == 5 and ds.attrs["command"].startswith("cfdg-aug make-dataset --env Hopper-v4")
    assert sorted(p.name for p in work.iterdir()) == ["existing.hdf5"]  # no temporary file left


# --- 7. the libraries' warnings stay off the terminal ----------------------------------------------------
def test_missing_policy_is_one_line_before_the_env_is_made(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE, "--out", "x.hdf5", "--policy", "/nope.zip")
    assert line == "error: --policy /nope.zip does not exist, expected an SB3 SAC/TQC .zip file"


def test_gymnasium_deprecation_warning_stays_off_stderr(work: Path) -> None:
    # A policy file that exists but is no zip is found after the env was made (gymnasium warns then).
    (work / "policy.zip").write_text("not a zip")
    before = snapshot(work)
    cmd = [sys.executable, "-m", "cfdg_aug.experiments", "make-dataset", *BASE, "--out", "x.hdf5",
           "--policy", "policy.zip"]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300, cwd=work)
    assert res.stdout == ""
    line = one_error_line(res.returncode, res.stderr)
    assert line == "error: --policy policy.zip: not a stable-baselines3 zip (File is not a zip file)"
    assert snapshot(work) == before


@pytest.mark.skipif(not HOPPER_POLICY.is_file(), reason="shared policies not present")
def test_policy_of_another_env_is_one_line_naming_the_option(work: Path, no_rollout: None) -> None:
    line = _refused(work, "--env", "Walker2d-v4", "--n-transitions", "5", "--no-progress", "--out", "x.hdf5",
                    "--policy", str(HOPPER_POLICY))
    assert line.startswith(f"error: --policy {HOPPER_POLICY}")  # hopper's actor has 3 action dims, walker2d 6
    assert line.endswith(": actor has 3 action dims, env action bounds have shape (6,)")


def test_unknown_env_version_is_one_line_naming_the_option(work: Path, no_rollout: None) -> None:
    line = _refused(work, *BASE[2:], "--env", "Hopper-v99", "--out", "x.hdf5")
    assert line.startswith("error: --env 'Hopper-v99': ") and "v99" in line


# --- 8. a dataset path that is a folder ------------------------------------------------------------------
def test_dataset_that_is_a_folder_says_so(work: Path) -> None:
    (work / "folder").mkdir()
    for given in (work / "folder", "folder"):
        with pytest.raises(DatasetError, match=r"^dataset \S*folder is a folder, expected an \.hdf5 file$"):
            load_d4rl(given)
    pytest.importorskip("d3rlpy")
    before = snapshot(work)
    res = CliRunner().invoke(app, ["run", "--dataset", str(work / "folder"), "--out", str(work / "out"),
                                   "--no-progress"])
    line = one_error_line(res.exit_code, res.output)
    assert line == f"error: dataset {work / 'folder'} is a folder, expected an .hdf5 file"
    assert snapshot(work) == before
