"""`cfdg-aug run` and `run_experiment`: bad settings, folders and damaged checkpoints are one
sentence naming what is wrong, found before training where they can be, and leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfdg_aug.config import ConfigError
from cfdg_aug.experiments.cli import app, main
from cfdg_aug.experiments.runner import (
    PRETRAINED_DIR,
    SMOKE_SET,
    RunError,
    check_run_config,
    parse_set,
    resolve_config,
    run_experiment,
)

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

QUIET = dict(progress=False, threads=1, log=lambda *a: None)


def _cfg(aug: str, *extra: str, algo: str = "iql"):  # type: ignore[no-untyped-def]
    return resolve_config(algo, aug, "embedded", "small", 0, parse_set([*SMOKE_SET, *extra]))


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_usage_errors_are_one_error_line_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(capsys, "run", "--algo", "foo")
    assert "'--algo'" in line and "'foo' is not one of 'iql'" in line
    assert "'--seed'" in _usage_error(capsys, "run", "--seed", "-1")
    assert "--bogus" in _usage_error(capsys, "run", "--bogus")
    assert "'--reps'" in _usage_error(capsys, "report", "x", "--reps", "5")
    line = _usage_error(capsys, "fidelity", "--online-fraction", "1.5")
    assert "'--online-fraction'" in line and "cfdg-aug fidelity --help" in line


def test_help_still_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0 and "--augmentation" in capsys.readouterr().out


@pytest.mark.parametrize(("setting", "expected"), [
    ("algo.expectile=-3", "algo.expectile must be in (0, 1), got -3"),
    ("algo.gamma=2", "algo.gamma must be in [0, 1], got 2"),
    ("algo.actor_learning_rate=-1", "algo.actor_learning_rate must be a finite number > 0, got -1"),
    ("algo.n_critics=0", "algo.n_critics must be >= 1, got 0"),
    ("cfdg.batch_size=0", "cfdg.batch_size must be"),
    ("warmup_steps=300", "warmup_steps=300 >= online_steps=300"),
])
def test_settings_out_of_range_are_refused_before_training(tmp_path: Path, setting: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_run_config(_cfg("cfdg", setting))
    assert expected in str(e.value)
    res = CliRunner().invoke(app, ["run", "--dataset", "embedded", "--out", str(tmp_path / "out"), "--no-progress",
                                   *[a for s in (*SMOKE_SET, setting) for a in ("--set", s)]])
    assert res.exit_code == 2 and res.output.strip().startswith("error: ") and expected in res.output, res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_zero_temperature_learning_rate_still_means_a_fixed_temperature() -> None:
    from cfdg_aug.experiments.runner import check_algo_kwargs

    check_algo_kwargs("sac", {"temp_learning_rate": 0.0})
    check_algo_kwargs("apl", {"temp_learning_rate": 0.0})
    with pytest.raises(ConfigError, match=r"algo.temp_learning_rate must be a finite number >= 0, got -1"):
        check_algo_kwargs("sac", {"temp_learning_rate": -1.0})
    with pytest.raises(ConfigError, match=r"algo.critic_learning_rate must be a finite number > 0, got 0"):
        check_algo_kwargs("sac", {"critic_learning_rate": 0.0})


def test_our_algorithm_configs_check_their_fields_up_front() -> None:
    with pytest.raises(ConfigError, match=r"algo\.policy_target must be one of"):
        check_run_config(_cfg("none", "algo.policy_target=banana", algo="pex"))


def test_algo_batch_size_that_contradicts_batch_size_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"algo.batch_size=64 conflicts with batch_size=32: set batch_size only"):
        _cfg("none", "algo.batch_size=64")
    _cfg("none", "algo.batch_size=32")  # the same value says nothing new


@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(run_name="../escape"), "run_name (--name) must be a single folder name"),
    (dict(run_name="a/b"), "run_name (--name) must be a single folder name"),
    (dict(run_name=""), "run_name (--name) must be a single folder name"),
    (dict(share_pretrained=False, pretrained_dir="pd"), "pretrained_dir (--pretrained-dir) is only used with"),
    (dict(pretrained_dir="afile"), "pretrained_dir (--pretrained-dir) afile is a file, expected a folder"),
    (dict(pretrained_dir="afile/sub"), "cannot be created: afile is a file"),
])
def test_bad_run_folders_are_refused_before_anything_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  kwargs: dict[str, object], expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    with pytest.raises(ConfigError) as e:
        run_experiment(_cfg("none"), "out", **kwargs, **QUIET)  # type: ignore[arg-type]
    assert expected in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_that_is_a_file_is_named_as_out(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(app, ["run", "--dataset", "embedded", "--out", str(tmp_path / "afile"), "--no-progress",
                                   *[a for s in SMOKE_SET for a in ("--set", s)]])
    assert res.exit_code == 2 and f"error: out_dir (--out) {tmp_path / 'afile'} is a file, expected a folder" in res.output
    assert (tmp_path / "afile").read_text() == "x"


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_shared_pretrained_agent_is_refused_before_it_is_copied(tmp_path: Path) -> None:
    run_experiment(_cfg("none", "online_steps=40", "warmup_steps=10"), tmp_path, **QUIET)  # publishes the agent
    (entry,) = [p for p in (tmp_path / PRETRAINED_DIR).iterdir() if p.is_dir()]
    assert "model.pt" in json.loads((entry / "state.json").read_text())["sha256"]
    _flip_middle_byte(entry / "model.pt")
    cfg = _cfg("none", "eval_episodes=2")
    with pytest.raises(RunError, match=r"model\.pt is damaged: its sha256 differs .*; delete .*the next run pre-trains"):
        run_experiment(cfg, tmp_path, **QUIET)
    assert not (tmp_path / cfg.run_id()).exists()  # nothing resumable was committed: no orphan folder


def test_a_crash_before_the_first_checkpoint_keeps_the_folder_and_its_log(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.experiments import runner

    def crash(*a: object, **k: object) -> None:
        raise RuntimeError("a bug in pre-training")

    monkeypatch.setattr(runner._Run, "_offline", crash)
    cfg = _cfg("none")
    with pytest.raises(RuntimeError, match="a bug in pre-training"):
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    assert (tmp_path / cfg.run_id() / "run.log").is_file()  # only bad input removes what a start wrote


def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.experiments import runner

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # killed after the offline checkpoint was committed

    cfg = _cfg("none")
    monkeypatch.setattr(runner._Run, "_online", crash)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    monkeypatch.undo()
    run_dir = tmp_path / cfg.run_id()
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    ckpt = run_dir / "checkpoints" / latest["name"]
    model = ckpt / "model.pt"
    original = model.read_bytes()
    _flip_middle_byte(model)
    with pytest.raises(RunError, match=rf"{model} is damaged: .*; delete {run_dir} to run it again"):
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    model.write_bytes(original)
    (ckpt / "state.json").write_text("[]")
    with pytest.raises(RunError, match=r"state\.json holds a JSON list, not an object: the file is damaged"):
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(RunError, match=r"state\.json cannot be read .*the file is damaged"):
        run_experiment(cfg, tmp_path, share_pretrained=False, **QUIET)
    res = CliRunner().invoke(app, ["run", "--augmentation", "none", "--dataset", "embedded", "--out", str(tmp_path),
                                   "--no-progress", "--no-share-pretrained", *[a for s in SMOKE_SET for a in ("--set", s)]])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output, res.output
    assert run_dir.exists()  # a damaged checkpoint is reported, never deleted for the user
