"""What the commands check before they work: an unwritable `fidelity --out` before the data is loaded
or a generator fitted, options `fidelity` would accept and never read, `report --seed` out of range,
`sweep --ray-address` without Ray, `make-dataset --attr` replacing a recorded attribute and `--noise`
without a policy. Each is one `error: ...` line, exit status 2, no traceback, nothing created."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import cfdg_aug.datasets
import cfdg_aug.diagnostics.study as study
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.datasets import make as make_mod
from cfdg_aug.experiments import runner, sweep
from cfdg_aug.experiments.cli import app, main
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.transitions import TransitionBatch
from tests.cli_checks import one_error_line, snapshot


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def _refuse(what: str) -> Any:
    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError(f"{what} was called")

    return refuse


# --- fidelity ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """No generator may be fitted."""
    monkeypatch.setattr(CFDGGenerator, "fit", _refuse("CFDGGenerator.fit"))


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch, no_fit: None) -> None:
    """Neither may a dataset be loaded."""
    monkeypatch.setattr(cfdg_aug.datasets, "load_dataset", _refuse("load_dataset"))


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder that accepts no new file: mode 555, and where that does not stop the user (root) the
    probe file's creation fails as it would there."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def mkstemp(*a: Any, **k: Any) -> Any:
            if Path(k.get("dir") or ".").resolve() == folder.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
            return real(*a, **k)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)  # the probe of cfdg_aug._io.folder_write_problem
    yield folder
    folder.chmod(0o755)


def _fidelity_refused(tmp_path: Path, *args: str) -> str:
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("fidelity", "--no-physics", "--n", "50", *args))
    assert snapshot(tmp_path) == before
    return line


def test_fidelity_refuses_an_unwritable_out_before_loading_data_or_fitting(
        tmp_path: Path, locked: Path, no_data: None) -> None:
    out = locked / "fid"
    line = _fidelity_refused(tmp_path, "--out", str(out))
    assert line == f"error: --out {out}: cannot write in folder {locked} (Permission denied)"
    assert not out.exists()


def test_fidelity_study_api_refuses_an_unwritable_out_before_fitting(locked: Path, no_fit: None) -> None:
    rng = np.random.default_rng(0)
    n = 40
    batch = TransitionBatch(rng.normal(size=(n, 3)).astype(np.float32), rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                            rng.normal(size=n).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32),
                            np.zeros(n, np.float32))
    with pytest.raises(ConfigError, match=r"^out .*/fid: cannot write in folder .*locked \(Permission denied\)$"):
        study.run_fidelity_study(batch, batch, [0.0], CFDGConfig.small(train_steps=1), out=locked / "fid",
                                 progress=False)
    assert not (locked / "fid").exists()


@pytest.mark.parametrize("setting, expected", [
    ("guidance=1", "--set guidance: the study samples at each weight of --w; use --w"),
    ("cfdg.guidance_candidates=[0,1]", "--set guidance_candidates: the study scores every weight of --w; use --w"),
    ("synthetic_online_size=10", "--set synthetic_online_size: the study generates --n transitions per label"),
    ("synthetic_offline_size=10", "--set synthetic_offline_size: the study generates --n transitions per label"),
    ("ratio_online=2", "--set ratio_online: it sets the mix of a run's replay batches; the study has no replay "
                       "buffer: remove it"),
    ("real_mix=proportional", "--set real_mix: it sets the mix of a run's replay batches"),
    ("synthetic_online_fraction=0.5", "--set synthetic_online_fraction: it sets the mix of a run's replay batches"),
    ("refresh_every=10", "--set refresh_every: it schedules a run's generator refreshes; the study fits each "
                         "generator once: remove it"),
    ("min_online=5", "--set min_online: it schedules a run's generator refreshes"),
    ("refresh_lag=1", "--set refresh_lag: it schedules a run's generator refreshes"),
    ("warm_start=true", "--set warm_start: it applies from a generator's second fit on"),
    ("augmentation=none", "--set augmentation: the study fits both a cfdg and an unconditional generator itself"),
], ids=lambda v: v.split("=")[0] if "=" in v and not v.startswith("--") else None)
def test_fidelity_refuses_set_fields_the_study_never_reads(
        tmp_path: Path, no_data: None, setting: str, expected: str) -> None:
    line = _fidelity_refused(tmp_path, "--set", setting, "--out", str(tmp_path / "fid"))
    assert line.startswith(f"error: {expected}"), line
    assert not (tmp_path / "fid").exists()


def test_every_field_the_study_refuses_is_a_cfdg_config_field() -> None:
    fields = set(CFDGConfig.__dataclass_fields__)
    assert set(study.STUDY_UNUSED_FIELDS) <= fields
    # The ones it reads stay open: the fit's and the sampler's.
    assert not {"train_steps", "width", "num_sample_steps", "guidance_interval", "sample_batch_size"} & set(
        study.STUDY_UNUSED_FIELDS)


def test_fidelity_refuses_online_fraction_together_with_online(tmp_path: Path, no_data: None) -> None:
    line = _fidelity_refused(tmp_path, "--online", "embedded", "--online-fraction", "0.3",
                             "--out", str(tmp_path / "fid"))
    assert line == ("error: --online-fraction 0.3 splits --dataset into offline and online episodes, and "
                    "--online embedded is the online data: give one or the other")
    assert not (tmp_path / "fid").exists()


@pytest.mark.parametrize("args, fraction", [((), 0.2), (("--online-fraction", "0.3"), 0.3)],
                         ids=["default", "given"])
def test_fidelity_online_fraction_is_used_without_online(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_fit: None, args: tuple[str, ...], fraction: float) -> None:
    seen: list[float] = []

    def split(data: Any, online_fraction: float) -> Any:
        seen.append(online_fraction)
        raise ConfigError("stop here")

    monkeypatch.setattr(study, "split_offline_online", split)
    line = _fidelity_refused(tmp_path, *args, "--out", str(tmp_path / "fid"))
    assert line == "error: stop here" and seen == [fraction]


# --- report -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_report_seed_out_of_range_is_one_line_naming_the_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path), "--out", str(tmp_path / "out"), "--seed", seed])
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "'--seed'" in lines[0] and "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw, expected", [
    ({"seed": -1}, "seed must be an int from 0 to 4294967295 (the bootstrap seed), got -1"),
    ({"seed": 2**32}, "seed must be an int from 0 to 4294967295 (the bootstrap seed), got 4294967296"),
    ({"seed": 1.5}, "seed must be an int from 0 to 4294967295 (the bootstrap seed), got 1.5"),
    ({"reps": 0}, "reps must be an int >= 1 (bootstrap resamples), got 0"),
], ids=["negative", "too-large", "float", "no-reps"])
def test_make_report_refuses_a_bad_seed_before_creating_out(tmp_path: Path, kw: dict[str, Any], expected: str) -> None:
    from cfdg_aug.experiments.report import ReportError, make_report
    from tests.test_report_sweep_errors import _fake_run

    _fake_run(tmp_path / "rep", "none", 0)
    _fake_run(tmp_path / "rep", "cfdg", 0)
    before = snapshot(tmp_path)
    with pytest.raises(ReportError) as e:
        make_report([tmp_path / "rep"], tmp_path / "out", **{"reps": 100, **kw})
    assert str(e.value) == expected
    assert not (tmp_path / "out").exists() and snapshot(tmp_path) == before


# --- sweep ------------------------------------------------------------------------------------------------
@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import ray`` fails, and nothing of a sweep may start or be checked."""
    monkeypatch.setitem(sys.modules, "ray", None)
    for name in ("ProcessPoolExecutor", "run_one", "_run_ray"):
        monkeypatch.setattr(sweep, name, _refuse(name))
    monkeypatch.setattr(runner, "check_run_config", _refuse("check_run_config"))


def _grid(tmp_path: Path) -> Path:
    g = {"out": str(tmp_path / "sweep"), "algos": ["iql"], "augmentations": ["none"], "datasets": ["embedded"],
         "seeds": 1, "set": {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in runner.SMOKE_SET)}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


def test_sweep_on_ray_without_ray_is_one_line_before_anything_is_created(tmp_path: Path, no_ray: None) -> None:
    grid = _grid(tmp_path)
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid), "--ray-address", "local"))
    assert line == 'error: a sweep on Ray (--ray-address local) needs ray: pip install "cfdg-aug[ray]"'
    assert not (tmp_path / "sweep").exists() and snapshot(tmp_path) == before


def test_run_sweep_api_on_ray_without_ray_raises_import_error_naming_the_extra(tmp_path: Path, no_ray: None) -> None:
    spec = sweep.load_grid(_grid(tmp_path))
    with pytest.raises(ImportError, match=r'needs ray: pip install "cfdg-aug\[ray\]"') as e:
        sweep.run_sweep(spec, workers=1, ray_address="auto", progress=False)
    assert e.value.name == "ray" and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("address", ["localhost", "10.0.0.1:port", ":6379", "ray://", "host:0", "host:70000", "h:²"])
def test_sweep_refuses_a_ray_address_that_names_no_cluster(tmp_path: Path, no_ray: None, address: str) -> None:
    grid = _grid(tmp_path)
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid), "--ray-address", address))
    assert line == f"error: --ray-address {address!r}: expected 'local', 'auto', HOST:PORT or ray://HOST:PORT"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("address", ["local", "auto", "10.0.0.1:6379", "ray://head:10001"])
def test_the_ray_addresses_ray_accepts_pass_the_check(address: str) -> None:
    sweep.check_ray_address(address)


def test_a_ray_cluster_that_cannot_be_reached_is_one_line_and_no_output_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    def init(**kw: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=_refuse("ray.shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    for name in ("ProcessPoolExecutor", "run_one", "_run_ray"):
        monkeypatch.setattr(sweep, name, _refuse(name))
    grid = _grid(tmp_path)
    before = snapshot(tmp_path)
    line = one_error_line(*_invoke("sweep", str(grid), "--ray-address", "10.0.0.1:6379"))
    assert line == ("error: --ray-address 10.0.0.1:6379: could not start or join Ray (ConnectionError: Could not "
                    "find any running Ray instance. Please specify the one to connect to.); nothing was run")
    assert not (tmp_path / "sweep").exists() and snapshot(tmp_path) == before


# --- make-dataset -----------------------------------------------------------------------------------------
@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The cwd, with its own Minari root; the rollout must not start."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(make_mod, "_collect", _refuse("the rollout"))
    monkeypatch.setattr(make_mod, "_open_env", _refuse("the env"))
    yield tmp_path


def _make_refused(work: Path, *args: str) -> str:
    before = snapshot(work)
    line = one_error_line(*_invoke("make-dataset", "--env", "Hopper-v4", "--n-transitions", "5", "--no-progress",
                                   "--out", "x.hdf5", *args))
    assert snapshot(work) == before and not (work / "x.hdf5").exists()
    return line


@pytest.mark.parametrize("attr, hint", [
    ("env_id=Walker2d-v4", " (set it with --env)"),
    ("seed=7", " (set it with --seed)"),
    ("dataset_name=other", " (set it with --name)"),
    ("noise=0.5", " (set it with --noise)"),
    ("policy_zip_sha256=abc", " (set it with --policy)"),
    ("ref_min_score=0", ""),
    ("command=made-up", ""),
    ("stats_mean_return=9000", ""),
    ("version_numpy=0.1", ""),
], ids=lambda v: v.split("=")[0] if "=" in v else None)
def test_make_dataset_refuses_an_attr_that_would_replace_a_recorded_one(work: Path, attr: str, hint: str) -> None:
    key = attr.split("=")[0]
    line = _make_refused(work, "--attr", "policy_license=MIT", "--attr", attr)
    assert line == f"error: --attr {key}: the dataset records {key} itself{hint}; choose another attribute name"


def test_make_dataset_api_refuses_a_recorded_attr_naming_extra_attrs(work: Path) -> None:
    with pytest.raises(make_mod.MakeDatasetError) as e:
        make_mod.make_dataset("Hopper-v4", work / "x.hdf5", policy=None, n_transitions=5, noise=0.0, seed=0,
                              progress=False, extra_attrs={"env_id": "Walker2d-v4"})
    assert str(e.value) == ("extra_attrs env_id: the dataset records env_id itself (set it with env_id); "
                            "choose another attribute name")
    assert not (work / "x.hdf5").exists()


def test_make_dataset_accepts_new_provenance_attrs(work: Path) -> None:
    """Provenance the file does not record itself stays open, ``behaviour`` included (the embedded
    set's recipe labels it ``medium``)."""
    make_mod.check_make_args("Hopper-v4", work / "x.hdf5", policy=None, n_transitions=5, noise=0.0, seed=0,
                             extra_attrs={"policy_license": "MIT", "policy_repo": "x", "behaviour": "medium"})


def test_make_dataset_refuses_noise_without_a_policy(work: Path) -> None:
    line = _make_refused(work, "--noise", "0.3")
    assert line == ("error: --noise 0.3 needs --policy: without a policy the actions are uniform random and take "
                    "no noise; pass --policy or drop --noise")
    with pytest.raises(make_mod.MakeDatasetError, match=r"^noise 0.3 needs policy: "):
        make_mod.make_dataset("Hopper-v4", work / "x.hdf5", policy=None, n_transitions=5, noise=0.3, seed=0,
                              progress=False)
    with pytest.raises(make_mod.MakeDatasetError, match=r"^noise 0.3 needs policy: "):
        make_mod.rollout("Hopper-v4", policy=None, n_transitions=5, noise=0.3, seed=0, progress=False)
    # No noise: uniform random actions, as before.
    make_mod.check_make_args("Hopper-v4", work / "x.hdf5", policy=None, n_transitions=5, noise=0.0, seed=0)
