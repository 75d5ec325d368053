"""The edges of `cfdg-aug` (issue 19): bad input is one `error: ...` line and exit 2, refused before
anything is created or trained; a refused resume names the settings that differ; a failed start
leaves no run directory; the libraries' chatter goes to the run's log file, not the terminal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cfdg_aug.config import CFDGConfig, ConfigError, check_device
from cfdg_aug.experiments.cli import app
from cfdg_aug.experiments.runner import (
    CONFIG_FILE,
    LOG_FILE,
    SMOKE_SET,
    RunError,
    _config_diff,
    check_run_config,
    parse_set,
    resolve_config,
    run_experiment,
)
from tests.cli_checks import one_error_line
from tests.data_helpers import five_dim_hopper_dataset

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")


def _set_args(items: list[str] | tuple[str, ...]) -> list[str]:
    return [a for it in items for a in ("--set", it)]


def _cli(tmp_path: Path, *extra: str) -> tuple[int, str]:
    """``cfdg-aug run`` with the smoke budget into ``tmp_path / "out"``: (exit code, stdout + stderr)."""
    res = CliRunner().invoke(app, ["run", "--dataset", "embedded", "--out", str(tmp_path / "out"), "--no-progress",
                                   *_set_args(SMOKE_SET), *extra])
    return res.exit_code, res.output


def _nothing_created(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.name != "pretrained"], list(out.iterdir())


def _smoke(aug: str = "cfdg", *extra: str, algo: str = "iql", dataset: str = "embedded"):
    return resolve_config(algo, aug, dataset, "small", 0, parse_set([*SMOKE_SET, *extra]))


# --- CLI errors ----------------------------------------------------------------------------------------
def test_unknown_cfdg_field_names_it_and_lists_the_known_fields(tmp_path: Path) -> None:
    line = one_error_line(*_cli(tmp_path, "--set", "cfdg.widht=3"))
    assert "unknown CFDGConfig field(s): widht" in line and "width" in line and "num_sample_steps" in line
    _nothing_created(tmp_path)
    with pytest.raises(ConfigError, match="unknown CFDGConfig field.*widht.*known: .*width"):
        CFDGConfig.small(widht=3)
    with pytest.raises(ConfigError, match="widht"):
        CFDGConfig.paper(widht=3)


def test_unknown_algo_field_is_refused_before_training_with_the_known_fields(tmp_path: Path) -> None:
    line = one_error_line(*_cli(tmp_path, "--set", "algo.nope=3"))
    assert "algo.nope" in line and "IQLConfig" in line and "expectile" in line and "weight_temp" in line
    _nothing_created(tmp_path)
    # PEX takes IQL's fields and its own; a field of another algorithm is refused.
    check_run_config(_smoke("none", "algo.inverse_temperature=5", algo="pex"))
    with pytest.raises(ConfigError, match="algo.inverse_temperature"):
        check_run_config(_smoke("none", "algo.inverse_temperature=5"))


@pytest.mark.parametrize(("setting", "words"), [
    ("algo.expectile=abc", ("algo.expectile", "number", "'abc'")),
    ("algo.n_critics=2.5", ("algo.n_critics", "int", "2.5")),
    ("algo.expectile=.nan", ("algo.expectile", "finite")),
    ("algo.actor_optim_factory=adam", ("algo.actor_optim_factory", "cannot be overridden")),
])
def test_algo_values_of_the_wrong_type_are_refused_before_training(tmp_path: Path, setting: str,
                                                                   words: tuple[str, ...]) -> None:
    line = one_error_line(*_cli(tmp_path, "--set", setting))
    for w in words:
        assert w in line, line
    _nothing_created(tmp_path)


def test_guidance_candidates_take_the_list_syntax_and_comma_separated_numbers(tmp_path: Path) -> None:
    brackets = resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["cfdg.guidance_candidates=[0,1,2]"]))
    commas = resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["cfdg.guidance_candidates=0,1,2"]))
    assert commas.cfdg_config().guidance_candidates == (0, 1, 2) and commas.run_id() == brackets.run_id()
    assert parse_set(["cfdg.guidance_interval=0.1,5"]) == {"cfdg": {"guidance_interval": [0.1, 5]}}
    # Anything else that is not a list is refused with the syntax that works.
    line = one_error_line(*_cli(tmp_path, "--set", "cfdg.guidance_candidates=abc"))
    assert "cfdg.guidance_candidates=[0,1,2]" in line and "'abc'" in line
    line = one_error_line(*_cli(tmp_path, "--set", "cfdg.guidance_candidates=0,1,x"))
    assert "cfdg.guidance_candidates=[0,1,2]" in line
    with pytest.raises(ConfigError, match=r"guidance_candidates=\[0,1,2\].*got '0,1,2'"):
        CFDGConfig(guidance_candidates="0,1,2")  # type: ignore[arg-type]
    assert CFDGConfig(guidance_candidates=[0, 2]).guidance_candidates == (0, 2)  # type: ignore[arg-type]


def _one_run_grid(tmp_path: Path, extra: dict | None = None) -> Path:
    """A sweep grid of one IQL run on the embedded data, writing into ``tmp_path / "sweep"``."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"out": str(tmp_path / "sweep"), "algos": ["iql"], "augmentations": ["none"],
                                    "datasets": ["embedded"], "seeds": 1, **(extra or {})}))
    return grid


def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_unavailable_device_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda(monkeypatch)
    line = one_error_line(*_cli(tmp_path, "--device", "cuda"))
    assert line.startswith("error: --device 'cuda' is not available: ")
    _nothing_created(tmp_path)
    res = CliRunner().invoke(app, ["fidelity", "--device", "cuda", "--out", str(tmp_path / "fid")])
    assert "device 'cuda' is not available" in one_error_line(res.exit_code, res.output)
    grid = _one_run_grid(tmp_path)
    res = CliRunner().invoke(app, ["sweep", str(grid), "--device", "cuda"])
    assert "device 'cuda' is not available" in one_error_line(res.exit_code, res.output)
    assert not (tmp_path / "sweep").exists()


def test_device_option_takes_a_gpu_index_and_refuses_bad_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    # A machine with one GPU: cuda:0 would be accepted, cuda:3 is named with the devices it has.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = one_error_line(*_cli(tmp_path, "--device", "cuda:3"))
    assert line == ("error: --device 'cuda:3' is not available: this machine has 1 CUDA device(s), "
                    "cuda:0 to cuda:0")
    _nothing_created(tmp_path)
    for args in (["run", "--out", str(tmp_path / "o")], ["fidelity", "--out", str(tmp_path / "fid")]):
        res = CliRunner().invoke(app, [*args, "--device", "banana"])
        assert "--device must be a torch device" in one_error_line(res.exit_code, res.output)
    grid = _one_run_grid(tmp_path)
    res = CliRunner().invoke(app, ["sweep", str(grid), "--device", "banana"])
    assert "--device must be a torch device" in one_error_line(res.exit_code, res.output)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "fid").exists()


def test_seed_and_device_errors_name_the_setting_before_training(tmp_path: Path) -> None:
    line = one_error_line(*_cli(tmp_path, "--set", "seed=-1"))
    assert "seed must be an int >= 0, got -1" in line
    line = one_error_line(*_cli(tmp_path, "--set", "seed=3"))  # not silently replaced by --seed
    assert "seed" in line and "--seed" in line
    _nothing_created(tmp_path)
    with pytest.raises(ConfigError, match="seed must be an int >= 0, got -1"):
        resolve_config("iql", "none", "embedded", "small", -1)
    with pytest.raises(ConfigError, match="device must be a torch device.*'banana'"):
        run_experiment(_smoke("cfdg"), tmp_path / "out", device="banana", progress=False, log=lambda *_: None)
    _nothing_created(tmp_path)
    with pytest.raises(ConfigError, match="grid field 'device'.*'banana'"):
        check_device("banana", "grid field 'device'", available=False)


def test_a_sweep_checks_every_run_before_the_first_starts(tmp_path: Path) -> None:
    grid = _one_run_grid(tmp_path, {"set": {"algo.nope": 3}})
    res = CliRunner().invoke(app, ["sweep", str(grid), "--workers", "1"])
    line = one_error_line(res.exit_code, res.output)
    assert "run iql-none-embedded-s0-" in line and "algo.nope" in line
    assert not (tmp_path / "sweep").exists()


def test_dataset_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.hdf5"
    bad.write_bytes(b"not an hdf5 file" * 10)
    line = one_error_line(*_cli(tmp_path, "--dataset", str(bad)))
    assert str(bad) in line
    line = one_error_line(*_cli(tmp_path, "--dataset", str(tmp_path / "missing.hdf5")))
    assert "missing.hdf5" in line
    _nothing_created(tmp_path)


# --- pre-flight ----------------------------------------------------------------------------------------
def test_dataset_dimensions_are_checked_against_the_environment_before_training(tmp_path: Path) -> None:
    path = five_dim_hopper_dataset(tmp_path / "five-dim.hdf5")
    cfg = _smoke("none", dataset=str(path))
    with pytest.raises(ConfigError, match="5-dim observations where Hopper-v4 has 11"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=lambda *_: None)
    _nothing_created(tmp_path)


def test_online_steps_zero_is_refused_with_a_sentence() -> None:
    with pytest.raises(ConfigError, match=r"online_steps must be an int >= 1 .*offline-only runs are not supported"):
        _smoke("none", "online_steps=0")


def test_a_refresh_schedule_that_cannot_fire_is_refused_for_augmented_arms(tmp_path: Path) -> None:
    line = one_error_line(*_cli(tmp_path, "--set", "online_steps=80", "--set", "eval_every=40"))
    assert "cfdg.refresh_every=100" in line and "cfdg.min_online=100" in line and "online_steps=80" in line
    _nothing_created(tmp_path)
    with pytest.raises(ConfigError, match=r"cfdg.min_online=500 put the first generator refresh after 500"):
        check_run_config(_smoke("unconditional", "cfdg.min_online=500"))
    check_run_config(_smoke("none", "cfdg.min_online=500"))  # no generator: nothing to refuse
    # 300 online steps: a refresh started at 260 with a lag of 250 would be installed at 510.
    with pytest.raises(ConfigError, match=r"cfdg.refresh_lag=250 installs the first generator refresh .* after 510"):
        check_run_config(_smoke("cfdg", "cfdg.refresh_every=260", "cfdg.refresh_lag=250"))
    check_run_config(_smoke("cfdg", "cfdg.refresh_lag=99"))


def test_auto_guidance_needs_enough_online_data_at_the_first_refresh() -> None:
    with pytest.raises(ConfigError, match=r"guidance='auto'.*>= 100 online transitions.*sees 50"):
        check_run_config(_smoke("cfdg", "cfdg.guidance=auto", "cfdg.min_online=50", "cfdg.refresh_every=50"))
    with pytest.raises(ConfigError, match=r"guidance='auto'.*online_capacity=60"):
        check_run_config(_smoke("cfdg", "cfdg.guidance=auto", "online_capacity=60"))
    check_run_config(_smoke("cfdg", "cfdg.guidance=auto"))  # min_online=100: enough
    check_run_config(_smoke("unconditional", "cfdg.guidance=auto", "cfdg.min_online=50", "cfdg.refresh_every=50"))


def test_memory_of_the_pools_is_checked_before_the_run_directory_exists(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import cfdg_aug.buffer

    monkeypatch.setattr(cfdg_aug.buffer, "available_memory_bytes", lambda: 16 * 2**20)
    cfg = _smoke("cfdg", "cfdg.synthetic_online_size=200000")
    with pytest.raises(ConfigError, match=r"cfdg.synthetic_online_size=200,000 rows.*only 16.0 MiB is available.*"
                                          r"lower cfdg.synthetic_online_size"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=lambda *_: None)
    _nothing_created(tmp_path)


# --- resume refused for another config -----------------------------------------------------------------
def test_a_refused_resume_names_the_nested_settings_that_differ(tmp_path: Path) -> None:
    stored = _smoke("cfdg")
    requested = _smoke("cfdg", "cfdg.ratio_synthetic=0.25", "algo.expectile=0.8")
    rd = tmp_path / "out" / "run"
    rd.mkdir(parents=True)
    (rd / CONFIG_FILE).write_text(json.dumps({"config": stored.to_dict(), "config_hash": stored.config_hash(),
                                              "cfdg_config": stored.cfdg_config().to_dict()}))
    with pytest.raises(RunError) as err:
        run_experiment(requested, tmp_path / "out", run_name="run", progress=False, log=lambda *_: None)
    msg = str(err.value)
    assert "cfdg.ratio_synthetic: stored 1.0, requested 0.25" in msg
    assert "algo.expectile: stored unset, requested 0.8" in msg
    assert "{" not in msg  # no whole dicts
    # A generator default that changed between versions is named too (the overrides are equal).
    old_res = {**stored.cfdg_config().to_dict(), "num_sample_steps": 12}
    diff = _config_diff(stored.to_dict(), stored.to_dict(), old_res, stored.cfdg_config().to_dict())
    assert diff == "cfdg.num_sample_steps: stored 12, requested 4"


# --- failed starts ---------------------------------------------------------------------------------------
def test_a_failed_start_leaves_no_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.experiments import runner

    quiet: dict[str, Any] = dict(progress=False, log=lambda *_: None)
    with pytest.raises(FileNotFoundError):
        run_experiment(_smoke("none", dataset=str(tmp_path / "gone.hdf5")), tmp_path / "out", **quiet)
    _nothing_created(tmp_path)

    def boom(self: object) -> None:
        raise RuntimeError("failed during start")

    monkeypatch.setattr(runner._Run, "execute", boom)
    cfg = _smoke("none")
    with pytest.raises(RuntimeError, match="failed during start"):
        run_experiment(cfg, tmp_path / "out", **quiet)
    assert not (tmp_path / "out" / cfg.run_id()).exists()
    # A directory that was there before is not the failed start's to remove.
    kept = tmp_path / "out" / "mine"
    kept.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="failed during start"):
        run_experiment(cfg, tmp_path / "out", run_name="mine", **quiet)
    assert kept.is_dir()


# --- quiet by default --------------------------------------------------------------------------------
TINY_RUN = ("offline_steps=50", "online_steps=75", "warmup_steps=10", "eval_every=100", "eval_episodes=1",
            "checkpoint_every=100", "batch_size=32", "cfdg.width=32", "cfdg.depth=1", "cfdg.train_steps=30",
            "cfdg.warm_start_steps=10", "cfdg.num_sample_steps=4", "cfdg.synthetic_online_size=64",
            "cfdg.synthetic_offline_size=16", "cfdg.refresh_every=50", "cfdg.min_online=50",
            "cfdg.redraw_steps=4", "cfdg.redraw_resample=2")


def test_library_chatter_goes_to_the_run_log_not_the_terminal(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cfdg_aug.experiments", "run", "--dataset", "embedded", "--out", str(tmp_path),
           "--no-progress", "--threads", "1", *_set_args(TINY_RUN)]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    terminal = res.stdout + res.stderr
    for noise in ("Gym has been unmaintained", "is out of date", "Fitting observation scaler",
                  "automatically determined", "[debug", "[info"):
        assert noise not in terminal, terminal
    assert "pre-trained policy normalised score" in res.stdout and "finished, final normalised score" in res.stdout
    # A refresh announces its stages instead of freezing the output (the run refreshes at least once).
    for stage in ("refresh 1: fitting generator", "refresh 1: sampling online-like"):
        assert stage in res.stdout, res.stdout
    (run_dir,) = (p for p in tmp_path.iterdir() if p.is_dir() and p.name != "pretrained")
    log = (run_dir / LOG_FILE).read_text()
    assert "The environment Hopper-v4 is out of date" in log and "Fitting observation scaler" in log
    assert "pre-trained policy normalised score" in log and "\x1b[" not in log
    if importlib.util.find_spec("gym_notices") is not None:  # gym prints its banner only with gym_notices
        assert "Gym has been unmaintained" in log


def test_mujoco_warnings_go_to_the_run_log_not_stderr_or_a_log_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mujoco = pytest.importorskip("mujoco")
    import io

    from cfdg_aug.experiments.runner import quiet_output

    # MuJoCo's default handler writes to fd 2 and MUJOCO_LOG.TXT in the working directory (as
    # HalfCheetah's deprecated settotalmass did in every halfcheetah run).
    monkeypatch.chdir(tmp_path)
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body><joint type="slide"/><geom size=".1"/></body></worldbody></mujoco>')
    data = mujoco.MjData(model)
    sink = io.StringIO()
    previous = mujoco.get_mju_user_warning()
    with quiet_output(sink):
        data.qvel[0] = np.nan
        mujoco.mj_step(model, data)
    assert "MuJoCo warning: Nan, Inf or huge value in QVEL" in sink.getvalue()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is previous


def test_deferred_library_warnings_hide_deprecations_and_show_the_rest_once_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    mujoco = pytest.importorskip("mujoco")
    import io
    import warnings

    from cfdg_aug.datasets.envs import deferred_library_warnings

    monkeypatch.chdir(tmp_path)
    xml = '<mujoco><worldbody><body><joint type="slide"/><geom size=".1"/></body></worldbody></mujoco>'
    model = mujoco.MjModel.from_xml_string(xml)
    out = io.StringIO()
    previous = mujoco.get_mju_user_warning()
    with deferred_library_warnings(out):
        # HalfCheetah's XML sets the deprecated attribute: MuJoCo warns at every compile.
        mujoco.MjModel.from_xml_string(xml.replace("<worldbody>", '<compiler settotalmass="3"/><worldbody>'))
        for _ in range(2):  # an unstable state, twice: one line with a count
            data = mujoco.MjData(model)
            data.qvel[0] = np.nan
            mujoco.mj_step(model, data)
        warnings.warn("The environment Hopper-v4 is out of date", DeprecationWarning, stacklevel=1)
        warnings.warn("a setting the user chose was changed", UserWarning, stacklevel=1)
        assert out.getvalue() == ""  # nothing while the block runs: a progress bar is not broken
    shown = out.getvalue()
    assert "MuJoCo warning (x2): Nan, Inf or huge value in QVEL" in shown
    assert "a setting the user chose was changed" in shown
    assert "deprecated" not in shown and "out of date" not in shown
    assert capfd.readouterr().err == ""  # MuJoCo's C handler (fd 2) was not used
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is previous


def test_make_dataset_keeps_halfcheetah_deprecation_notices_off_the_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium")
    from cfdg_aug.datasets.make import main as make_main

    monkeypatch.chdir(tmp_path)
    code = make_main(["--env", "HalfCheetah-v4", "--out", str(tmp_path / "hc.hdf5"), "--n-transitions", "50",
                      "--no-progress"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert captured.err == "", captured.err
    assert captured.out.startswith("wrote ") and "50 transitions" in captured.out
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


# --- help --------------------------------------------------------------------------------------------
def test_help_lines_are_not_broken_mid_sentence() -> None:
    for command in app.registered_commands:
        for paragraph in (command.help or "").split("\n\n"):
            assert paragraph and "\n" not in paragraph, (command.name, command.help)
    wide = {"COLUMNS": "200"}
    top = CliRunner().invoke(app, ["--help"], env=wide).output
    assert any("report" in ln and "probability of improvement" in ln for ln in top.splitlines()), top
    run_help = CliRunner().invoke(app, ["run", "--help"], env=wide).output
    assert "does nothing on a finished one" in run_help and "only after pre-training (the augmentation" in run_help
