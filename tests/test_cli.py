"""`cfdg-aug` CLI: help, a tiny end-to-end run with the documented files, skip / refuse rules."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfdg_aug.config import SAVED_BEFORE_FIELD, CFDGConfig, ConfigError
from cfdg_aug.experiments.cli import app
from cfdg_aug.experiments.runner import SMOKE_SET, ExperimentConfig, parse_set, resolve_config
from tests.conftest import REPO_ROOT

TINY_SET = list(SMOKE_SET)


def _set_args(items: list[str]) -> list[str]:
    return [a for it in items for a in ("--set", it)]


def test_help_lists_every_command() -> None:
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0, res.output
    for cmd in ("run", "sweep", "report", "make-dataset", "fidelity"):
        assert cmd in res.output
    res = CliRunner().invoke(app, ["run", "--help"])
    assert res.exit_code == 0
    for opt in ("--algo", "--augmentation", "--dataset", "--profile", "--seed", "--set", "--out", "--device"):
        assert opt in res.output


def test_make_dataset_forwards_arguments_to_the_dataset_maker() -> None:
    res = CliRunner().invoke(app, ["make-dataset", "--help"])
    assert res.exit_code == 0
    assert "--n-transitions" in res.output  # argparse's help of cfdg_aug.datasets.make


def test_set_parses_values_and_routes_prefixed_keys() -> None:
    ov = parse_set(["online_steps=500", "cfdg.guidance=1.5", "algo.expectile=0.8", "env_id=Hopper-v4"])
    assert ov == {"online_steps": 500, "cfdg": {"guidance": 1.5}, "algo_kwargs": {"expectile": 0.8},
                  "env_id": "Hopper-v4"}
    with pytest.raises(ConfigError, match="unknown run setting.*bogus"):
        resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["bogus=1"]))
    with pytest.raises(ConfigError, match="online_steps"):
        resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["online_steps=-3"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["novalue"])


def test_run_id_is_deterministic_and_changes_with_the_config() -> None:
    a = resolve_config("iql", "cfdg", "/x/hopper-medium-50k.hdf5", "small", 3)
    b = resolve_config("iql", "cfdg", "/x/hopper-medium-50k.hdf5", "small", 3)
    c = resolve_config("iql", "cfdg", "/x/hopper-medium-50k.hdf5", "small", 3, {"online_steps": 10})
    assert a.run_id() == b.run_id() and a.run_id().startswith("iql-cfdg-hopper-medium-50k-s3-")
    assert a.run_id() != c.run_id()
    assert ExperimentConfig.from_dict(a.to_dict()) == a


def test_run_id_of_augmented_arms_follows_the_generator_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep must not skip a cfdg run made with other generator defaults as finished; the none arm
    builds no generator, so its id (and its committed run folders) survive a change of them."""
    def ids() -> tuple[str, str]:
        return tuple(resolve_config("iql", aug, "/x/hopper-medium-50k.hdf5", "small", 0).run_id()  # type: ignore[return-value]
                     for aug in ("cfdg", "none"))

    cfdg_id, none_id = ids()
    small = CFDGConfig.small
    monkeypatch.setattr(CFDGConfig, "small", classmethod(lambda cls, **kw: small(**{"num_sample_steps": 12, **kw})))
    assert resolve_config("iql", "cfdg", "/x/hopper-medium-50k.hdf5", "small", 0).cfdg_config().num_sample_steps == 12
    new_cfdg_id, new_none_id = ids()
    assert new_cfdg_id != cfdg_id and new_none_id == none_id


def test_pinning_a_field_at_the_value_runs_had_before_it_existed_keeps_their_ids() -> None:
    """Runs made before ``behaviour_score`` filtered by log-likelihood, and those made before
    ``behaviour_redraws`` redrew nothing: a grid that pins ``cfdg.behaviour_score=log_prob`` and
    ``cfdg.behaviour_redraws=0`` names them with the ids they were committed under (the fields are
    left out of the hash at those values), while the new defaults are a different run."""
    def run(aug: str, *sets: str) -> ExperimentConfig:
        return resolve_config("iql", aug, "/x/hopper-medium-50k.hdf5", "small", 0, parse_set(list(sets)))

    pinned = run("cfdg", "cfdg.behaviour_score=log_prob", "cfdg.behaviour_redraws=0")
    assert pinned.cfdg_config().behaviour_score == "log_prob" and pinned.cfdg_config().behaviour_redraws == 0
    assert pinned.run_id() != run("cfdg").run_id()
    assert run("cfdg", "cfdg.behaviour_score=log_prob").run_id() not in (pinned.run_id(), run("cfdg").run_id())
    assert (run("cfdg").cfdg_config().behaviour_score, run("cfdg").cfdg_config().behaviour_redraws) == ("mahalanobis", 3)
    assert run("none", "cfdg.behaviour_score=log_prob", "cfdg.behaviour_redraws=0").run_id() == run("none").run_id()
    # the run carries the pin (a sweep worker rebuilds it from to_dict), only the hash leaves it out
    assert pinned.to_dict()["cfdg"]["behaviour_score"] == "log_prob"
    rebuilt = ExperimentConfig.from_dict(pinned.to_dict())
    assert rebuilt.run_id() == pinned.run_id() and rebuilt.cfdg_config().behaviour_score == "log_prob"
    # the pinned id is the hash of a config in which the field does not exist (nor the fields added
    # after it, at the values that change nothing: behaviour_redraws=0 and its RePaint settings)
    d = pinned.to_dict()
    del d["cfdg"]["behaviour_score"], d["cfdg"]["behaviour_redraws"]
    d["cfdg_resolved"] = {k: v for k, v in pinned.cfdg_config().to_dict().items()
                          if k not in ("refresh_lag", *SAVED_BEFORE_FIELD)}
    assert pinned.config_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
    # without a filter the statistic changes nothing, and leaves the id alone too
    off = run("cfdg", "cfdg.behaviour_quantile=null")
    d = off.to_dict()
    d["cfdg_resolved"] = {k: v for k, v in off.cfdg_config().to_dict().items()
                          if k not in ("refresh_lag", *SAVED_BEFORE_FIELD)}
    assert off.config_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def test_redraw_settings_change_a_runs_id_only_when_rows_are_redrawn() -> None:
    def run(*sets: str) -> ExperimentConfig:
        return resolve_config("iql", "cfdg", "/x/hopper-medium-50k.hdf5", "small", 0, parse_set(list(sets)))

    none = "cfdg.behaviour_redraws=0"
    for setting in ("cfdg.redraw_steps=5", "cfdg.redraw_resample=3", "cfdg.redraw_resample_sigma_max=1.0",
                    "cfdg.redraw_resample_sigma_max=null", "cfdg.redraw_in_terminal_search=true"):
        assert run(none, setting).run_id() == run(none).run_id()  # a run draws nothing given states
        assert run(setting).run_id() != run().run_id()  # the profile redraws (3)
    assert run(none).run_id() != run().run_id()


def test_redraws_as_runs_made_before_the_cheaper_redraws_keep_those_runs_ids() -> None:
    """A run made before ``redraw_resample_sigma_max`` and ``redraw_in_terminal_search`` (the
    committed synchronous overhead run of 2026-12-04, id 5bdc67bc) is named again by pinning them at
    what it did (every noise level resampled, the terminal search redrawn); today's profile is a
    different run, and so is either pin alone."""
    stored = REPO_ROOT / "benchmarks/results/o2o_overhead_runs/2026-12-04b" / "iql-cfdg-hopper-medium-50k-s0-5bdc67bc"
    config = json.loads((stored / "config.json").read_text())["config"]
    assert not {"redraw_resample_sigma_max", "redraw_in_terminal_search"} & set(config["cfdg"])

    def run_id(**pins: object) -> str:
        return ExperimentConfig.from_dict({**config, "cfdg": {**config["cfdg"], **pins}}).run_id()

    assert run_id(redraw_resample_sigma_max=None, redraw_in_terminal_search=True) == stored.name
    one_pin = (run_id(redraw_resample_sigma_max=None), run_id(redraw_in_terminal_search=True))
    assert stored.name not in (run_id(), *one_pin)


def test_profiles_carry_the_paper_budgets() -> None:
    iql = resolve_config("iql", "cfdg", "embedded", "paper", 0)
    apl = resolve_config("apl", "cfdg", "embedded", "paper", 0)
    assert (iql.offline_steps, iql.online_steps) == (1_000_000, 1_000_000)
    assert (apl.offline_steps, apl.online_steps, apl.updates_per_step) == (100_000, 100_000, 10)
    assert apl.cfdg_config().refresh_every == 10_000


def test_tiny_run_writes_the_documented_files_then_skips_then_refuses_other_config(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["run", "--algo", "iql", "--augmentation", "cfdg", "--dataset", "embedded", "--profile", "small",
            "--seed", "0", "--out", str(tmp_path), "--no-progress", *_set_args(TINY_SET)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run_dirs = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "pretrained"]
    assert len(run_dirs) == 1
    assert len([p for p in (tmp_path / "pretrained").iterdir() if p.is_dir()]) == 1  # the shared pre-trained agent
    rd = run_dirs[0]
    cfg = resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(TINY_SET))
    assert rd.name == cfg.run_id()
    for f in ("config.json", "metrics.csv", "learning_curve.png", "model_final.pt", "result.json"):
        assert (rd / f).is_file() and (rd / f).stat().st_size > 0, f
    stored = json.loads((rd / "config.json").read_text())
    assert stored["config_hash"] == cfg.config_hash() and stored["cfdg_config"]["augmentation"] == "cfdg"
    assert set(stored["generator_precision"]) == {"training", "sampling"}  # "auto" as decided on this machine
    rows = list(csv.DictReader(open(rd / "metrics.csv")))
    evals = [(r["phase"], int(r["online_step"])) for r in rows if r["phase"] != "refresh"]
    assert evals == [("offline", 0), ("online", 100), ("online", 200), ("online", 300)]
    assert all(r["normalized_score"] != "" for r in rows if r["phase"] != "refresh")
    refreshes = [r for r in rows if r["phase"] == "refresh"]
    assert refreshes  # the CFDG generator was refreshed
    # fidelity of the fresh synthetic pools is logged on every refresh row
    # (a 300-step generator: its rows are told from real ones better than chance, and re-simulating them
    # in MuJoCo gives a non-zero next-state error; a column of zeros or NaNs fails here)
    assert all(0.5 < float(r["fidelity_online_auc"]) <= 1.0 and float(r["fidelity_online_next_state_median"]) > 0
               for r in refreshes)
    result = json.loads((rd / "result.json").read_text())
    assert result["final_score"] == pytest.approx(float(rows[-1]["normalized_score"]) if rows[-1]["phase"] == "online"
                                                  else float([r for r in rows if r["phase"] == "online"][-1]["normalized_score"]))
    assert not (rd / "checkpoints").exists()  # removed once the final model is written

    # Same command again: nothing to do, and it says so.
    mtime = (rd / "metrics.csv").stat().st_mtime_ns
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0 and "already finished" in res2.output
    assert (rd / "metrics.csv").stat().st_mtime_ns == mtime

    # Another configuration into the same directory: refused, naming the differing field.
    res3 = runner.invoke(app, [*args, "--name", rd.name, "--set", "online_steps=400"])
    assert res3.exit_code == 2
    assert "different configuration" in res3.output and "online_steps" in res3.output


def test_set_values_in_exponent_notation_are_numbers() -> None:
    from cfdg_aug.experiments.runner import parse_set

    assert parse_set(["cfdg.lr=6e-4", "name=abc"]) == {"cfdg": {"lr": 6e-4}, "name": "abc"}
