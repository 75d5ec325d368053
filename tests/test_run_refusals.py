"""Settings the runner would ignore or half-use, an unwritable shared pre-trained folder and damaged
run files: each is refused in one sentence naming the setting or file, before training where it can
be, and leaves what is stored as it was."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cfdg_aug.config import ConfigError
from cfdg_aug.experiments import runner
from cfdg_aug.experiments.cli import app
from cfdg_aug.experiments.runner import (
    ALGOS,
    PROFILES,
    SMOKE_SET,
    ExperimentConfig,
    RunError,
    check_run_config,
    parse_set,
    resolve_config,
    run_experiment,
)
from tests.cli_checks import one_error_line, snapshot

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

QUIET: dict[str, Any] = dict(progress=False, threads=1, log=lambda *a: None)


def _cfg(aug: str, *extra: str, algo: str = "iql") -> ExperimentConfig:
    return resolve_config(algo, aug, "embedded", "small", 0, parse_set([*SMOKE_SET, *extra]))


def _plain(algo: str, aug: str, *settings: str) -> ExperimentConfig:
    """The small profile with only ``settings`` (no smoke budget: batch_size unset)."""
    return resolve_config(algo, aug, "embedded", "small", 0, parse_set(list(settings)))


def _cli(out: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["run", "--augmentation", "none", "--dataset", "embedded", "--out", str(out),
                                   "--no-progress", *[a for s in SMOKE_SET for a in ("--set", s)], *extra])
    return res.exit_code, res.output


# --- the online pool against the batch size ----------------------------------------------------------
@pytest.mark.parametrize("algo", ["iql", "pex", "apl"])
def test_an_online_capacity_not_above_the_batch_size_is_refused_before_training(algo: str) -> None:
    for capacity in (1, 32):
        with pytest.raises(ConfigError) as e:
            check_run_config(_cfg("none", f"online_capacity={capacity}", algo=algo))
        msg = str(e.value)
        assert f"online_capacity={capacity} is not above batch_size=32" in msg
        assert "so none would run" in msg and "set online_capacity above 32" in msg
    check_run_config(_cfg("none", "online_capacity=33", algo=algo))  # one more than a batch: updates run


def test_online_steps_as_the_default_pool_size_is_named_with_the_default_batch_size() -> None:
    with pytest.raises(ConfigError) as e:
        check_run_config(_plain("iql", "none", "online_steps=256", "warmup_steps=10"))
    msg = str(e.value)
    assert "online_steps=256 (the online pool's size while online_capacity is unset)" in msg
    assert "is not above batch_size=256 (unset: the default)" in msg and "set online_capacity above 256" in msg
    check_run_config(_plain("iql", "none", "online_steps=256", "warmup_steps=10", "online_capacity=257"))


def test_online_capacity_one_is_one_cli_error_line_and_creates_nothing(tmp_path: Path) -> None:
    line = one_error_line(*_cli(tmp_path / "out", "--set", "online_capacity=1"))
    assert "online_capacity=1 is not above batch_size=32" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("algo", ALGOS)
def test_every_profile_budget_passes_the_run_checks(profile: str, algo: str) -> None:
    check_run_config(resolve_config(algo, "cfdg", "embedded", profile, 0))
    check_run_config(resolve_config(algo, "none", "embedded", profile, 0))


# --- algo.batch_size, APL's algo.utd_ratio, cfdg.augmentation ---------------------------------------------
def test_algo_batch_size_without_batch_size_is_refused_naming_batch_size() -> None:
    with pytest.raises(ConfigError) as e:
        _plain("iql", "none", "algo.batch_size=64")
    assert str(e.value) == ("algo.batch_size=64 is not the batch size the runner draws (batch_size, unset: 256): "
                            "set batch_size=64 instead and drop algo.batch_size")
    for algo in ("pex", "apl", "sac"):
        with pytest.raises(ConfigError, match=r"algo.batch_size=64 .* set batch_size=64 instead"):
            _plain(algo, "none", "algo.batch_size=64")
    assert _plain("iql", "none", "algo.batch_size=256").algo_kwargs["batch_size"] == 256  # what runs anyway


def test_apl_algo_utd_ratio_is_refused_naming_updates_per_step() -> None:
    with pytest.raises(ConfigError) as e:
        _plain("apl", "none", "algo.utd_ratio=5")
    msg = str(e.value)
    assert msg.startswith("algo.utd_ratio=5 is read by APL's own fit_online only")
    assert "updates_per_step=2 updates per environment step" in msg and "set updates_per_step=5 instead" in msg
    _plain("apl", "none", "algo.utd_ratio=2")  # the number of updates the loop runs: nothing ignored
    _plain("apl", "none", "algo.utd_ratio=5", "updates_per_step=5")


@pytest.mark.parametrize("value", ["none", "cfdg", "unconditional"])
def test_cfdg_augmentation_override_is_refused_naming_the_augmentation_argument(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        _plain("iql", "cfdg", f"cfdg.augmentation={value}")
    assert str(e.value) == ("cfdg.augmentation is set by the run's augmentation (--augmentation; a grid's "
                            f"augmentations), not by an override: remove cfdg.augmentation={value!r}")
    with pytest.raises(ConfigError, match=r"^cfdg.augmentation is set by the run's augmentation"):
        ExperimentConfig(augmentation="cfdg", cfdg={"augmentation": value})


@pytest.mark.parametrize(("setting", "expected"), [
    ("algo.batch_size=64", "error: algo.batch_size=64 conflicts with batch_size=32: set batch_size only"),
    ("cfdg.augmentation=cfdg", "error: cfdg.augmentation is set by the run's augmentation"),
])
def test_ignored_overrides_are_one_cli_error_line_and_create_nothing(tmp_path: Path, setting: str,
                                                                     expected: str) -> None:
    line = one_error_line(*_cli(tmp_path / "out", "--set", setting))
    assert line.startswith(expected), line
    assert not (tmp_path / "out").exists()


# --- the shared pre-trained folder ------------------------------------------------------------------------
def _refuse_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path, error: OSError) -> None:
    real = tempfile.mkstemp

    def mkstemp(*a: Any, **k: Any) -> tuple[int, str]:
        if Path(k.get("dir") or ".").resolve() == folder.resolve():
            raise error
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)  # the probe of cfdg_aug._io.folder_write_problem


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EROFS, "Read-only file system")])
def test_an_unwritable_pretrained_dir_is_refused_before_the_run_folder_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    _refuse_writes_under(monkeypatch, locked, error)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as e:
        run_experiment(_cfg("none"), tmp_path / "out", pretrained_dir=locked / "pre", **QUIET)
    assert str(e.value) == (f"pretrained_dir (--pretrained-dir) {locked / 'pre'}: cannot write in folder {locked} "
                            f"({error.strerror})")
    assert snapshot(tmp_path) == before  # no run folder, no probe file left
    line = one_error_line(*_cli(tmp_path / "out", "--pretrained-dir", str(locked / "pre")))
    assert line.startswith(f"error: pretrained_dir (--pretrained-dir) {locked / 'pre'}: cannot write in folder")
    assert snapshot(tmp_path) == before


def test_an_unwritable_default_pretrained_folder_names_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre = tmp_path / "out" / "pretrained"
    pre.mkdir(parents=True)
    _refuse_writes_under(monkeypatch, pre, PermissionError(errno.EACCES, "Permission denied"))
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"the shared pre-trained folder .*pretrained \(under out_dir \(--out\); "
                                          r"--pretrained-dir sets another\): cannot write in folder .*pretrained \(Permission denied\)"):
        run_experiment(_cfg("none"), tmp_path / "out", **QUIET)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode 555 folder")
def test_a_read_only_parent_of_pretrained_dir_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = one_error_line(*_cli(tmp_path / "out", "--pretrained-dir", str(locked / "pre")))
        assert f"pretrained_dir (--pretrained-dir) {locked / 'pre'}: cannot write in folder {locked}" in line
        assert not (tmp_path / "out").exists() and not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


# --- damaged run files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_finished_run_with_a_damaged_result_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    cfg = _cfg("none")
    run_dir = tmp_path / cfg.run_id()
    run_dir.mkdir()
    (run_dir / "result.json").write_text(text)
    before = snapshot(tmp_path)
    with pytest.raises(RunError) as e:
        run_experiment(cfg, tmp_path, **QUIET)
    assert str(e.value).startswith(f"{run_dir / 'result.json'} ")
    assert f"the file is damaged; delete {run_dir} to run it again from the start" in str(e.value)
    line = one_error_line(*_cli(tmp_path))
    assert line.startswith(f"error: {run_dir / 'result.json'} ")
    assert snapshot(tmp_path) == before


def test_a_damaged_stored_config_is_refused_naming_the_file(tmp_path: Path) -> None:
    cfg = _cfg("none")
    run_dir = tmp_path / cfg.run_id()
    run_dir.mkdir()
    (run_dir / "config.json").write_text('["a list"]')
    with pytest.raises(RunError, match=r"config\.json holds a JSON list, not an object: the file is damaged; "
                                       r"delete .* or choose another --out / --name"):
        run_experiment(cfg, tmp_path, **QUIET)
    assert (run_dir / "config.json").read_text() == '["a list"]'


def test_resuming_with_fewer_metrics_rows_than_the_checkpoint_recorded_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # after the offline checkpoint (and its metrics row) was committed

    cfg = _cfg("none")
    monkeypatch.setattr(runner._Run, "_online", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    monkeypatch.undo()
    run_dir = tmp_path / cfg.run_id()
    metrics = run_dir / "metrics.csv"
    header = metrics.read_text().splitlines()[0]
    metrics.write_text(header + "\n")  # the offline row is gone
    before = snapshot(run_dir)
    with pytest.raises(RunError) as e:
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["name"]
    assert str(e.value) == (f"{metrics} holds 0 rows but checkpoint {latest} recorded 1: the file was truncated or "
                            f"replaced since; delete {run_dir} to run it again from the start")
    after = snapshot(run_dir)
    after.pop("run.log"), before.pop("run.log")  # the attempt may be logged; nothing else changes
    assert after == before


# --- model_final.pt ------------------------------------------------------------------------------------
class _FakeAlgo:
    def __init__(self, payload: bytes, fail: bool = False) -> None:
        self.payload, self.fail = payload, fail

    def save_model(self, fname: str) -> None:
        with open(fname, "wb") as fh:
            fh.write(self.payload[:3])
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device")
            fh.write(self.payload[3:])


def test_the_final_model_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "model_final.pt"
    runner._save_model_atomic(_FakeAlgo(b"new weights"), path)
    assert path.read_bytes() == b"new weights" and sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pt"]
    with pytest.raises(OSError, match="No space left"):
        runner._save_model_atomic(_FakeAlgo(b"torn weights", fail=True), path)
    assert path.read_bytes() == b"new weights" and sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pt"]
