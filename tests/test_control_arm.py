"""The ``offline_only`` control arm: ``none`` learning from offline rows only, named in runs, grids
and reports (docs/results/baseline.md, "Is the rise fine-tuning?")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cfdg_aug.buffer import AugmentedReplayBuffer
from cfdg_aug.config import ConfigError
from cfdg_aug.experiments.report import make_report
from cfdg_aug.experiments.runner import ARMS, arm_name, parse_set, resolve_config
from cfdg_aug.experiments.sweep import parse_grid
from tests.test_report import _fake_run

EXPLICIT = ["cfdg.real_mix=fixed", "cfdg.ratio_online=0"]


@pytest.mark.parametrize("profile", ["small", "paper"])
def test_offline_only_is_the_explicit_none_run_with_the_same_id(profile: str) -> None:
    """Named or spelt out, it is one run: the committed controls (made with the explicit --set)
    are the runs a grid naming ``offline_only`` would make, so a sweep skips them."""
    named = resolve_config("iql", "offline_only", "/d/hopper-medium-200k.hdf5", profile, 3)
    spelt = resolve_config("iql", "none", "/d/hopper-medium-200k.hdf5", profile, 3, parse_set(EXPLICIT))
    assert named.to_dict() == spelt.to_dict() and named.run_id() == spelt.run_id()
    assert named.augmentation == "none" and named.cfdg_config().ratio_online == 0
    assert named.cfdg_config().real_mix == "fixed"
    assert arm_name(named.to_dict()) == arm_name(spelt.to_dict()) == "offline_only"
    plain = resolve_config("iql", "none", "/d/hopper-medium-200k.hdf5", profile, 3)
    assert arm_name(plain.to_dict()) == "none" and plain.run_id() != named.run_id()


def test_arm_name_reads_a_setting_the_config_leaves_out_as_the_profile_default() -> None:
    stored = {"augmentation": "none", "profile": "small", "cfdg": {"ratio_online": 0}}
    assert arm_name(stored) == "offline_only"  # CFDGConfig.small's real_mix is "fixed"
    assert arm_name({**stored, "cfdg": {"ratio_online": 0, "real_mix": "proportional"}}) == "none"
    # An augmented run without real online rows still learns from online-like synthetic rows.
    assert arm_name({**stored, "augmentation": "cfdg"}) == "cfdg"
    assert arm_name({"augmentation": "none", "cfdg": "not a mapping"}) == "none"


def test_offline_only_refuses_a_setting_that_would_undo_it() -> None:
    with pytest.raises(ConfigError, match=r"'offline_only' is 'none' with cfdg.ratio_online=0; got --set "
                                          r"cfdg.ratio_online=0.5"):
        resolve_config("iql", "offline_only", "x.hdf5", "small", 0, parse_set(["cfdg.ratio_online=0.5"]))
    with pytest.raises(ConfigError, match="cfdg.real_mix='fixed'; got --set cfdg.real_mix='proportional'"):
        resolve_config("iql", "offline_only", "x.hdf5", "small", 0, parse_set(["cfdg.real_mix=proportional"]))
    # Repeating what it sets is not a conflict, and other settings pass through.
    cfg = resolve_config("iql", "offline_only", "x.hdf5", "small", 0, parse_set([*EXPLICIT, "offline_steps=7"]))
    assert cfg.offline_steps == 7 and arm_name(cfg.to_dict()) == "offline_only"
    with pytest.raises(ConfigError, match=r"augmentation must be one of .*'offline_only'.*got 'offline'"):
        resolve_config("iql", "offline", "x.hdf5", "small", 0)
    assert ARMS == ("cfdg", "unconditional", "none", "offline_only")


def test_offline_only_batches_hold_no_online_row_once_online_data_exists() -> None:
    cfg = resolve_config("iql", "offline_only", "x.hdf5", "small", 0).cfdg_config()
    buf = AugmentedReplayBuffer(3, 2, config=cfg, seed=0)
    rng = np.random.default_rng(0)

    def rows(n: int, rew: float) -> dict[str, np.ndarray]:
        return {"obs": rng.normal(size=(n, 3)), "act": rng.uniform(-1, 1, (n, 2)), "rew": np.full(n, rew),
                "next_obs": rng.normal(size=(n, 3)), "done": np.zeros(n), "timeout": np.zeros(n, dtype=bool)}

    buf.add_offline(rows(100, 0.0))
    buf.add(rows(400, 1.0))  # an online pool four times the offline one
    batch = buf.sample(256)
    assert buf.source_counts(256) == (256, 0, 0, 0)
    assert (batch.source == 0).all() and (batch.rew == 0).all()
    none = AugmentedReplayBuffer(3, 2, config=resolve_config("iql", "none", "x.hdf5", "small", 0).cfdg_config(), seed=0)
    none.add_offline(rows(100, 0.0))
    none.add(rows(400, 1.0))
    assert none.source_counts(256)[1] > 0  # the plain arm does learn from them


def test_a_grid_names_the_control_among_its_augmentations(tmp_path: Path) -> None:
    spec = parse_grid({"out": str(tmp_path / "out"), "algos": ["iql"], "augmentations": ["none", "offline_only"],
                       "datasets": ["/d/hopper.hdf5"], "seeds": 2, "set": {"online_steps": 300}})
    cfgs = spec.configs()
    assert [arm_name(c.to_dict()) for c in cfgs] == ["none", "none", "offline_only", "offline_only"]
    assert len({c.run_id() for c in cfgs}) == 4 and all(c.online_steps == 300 for c in cfgs)
    with pytest.raises(ConfigError, match="cfdg.ratio_online=0; got --set cfdg.ratio_online=1"):
        parse_grid({"out": str(tmp_path / "out"), "algos": ["iql"], "augmentations": ["offline_only"],
                    "datasets": ["/d/hopper.hdf5"], "seeds": 1, "set": {"cfdg.ratio_online": 1}}).configs()


def test_report_names_the_control_and_pairs_none_with_it(tmp_path: Path) -> None:
    """Final scores (seeds 0..2): none 30 / 40 / 50, offline_only 35 / 38 / 44, cfdg 31 / 45 / 49;
    none − offline_only = −5, +2, +6 and cfdg − offline_only = −4, +7, +5."""
    root = tmp_path / "runs"
    finals = {"none": [30.0, 40.0, 50.0], "offline_only": [35.0, 38.0, 44.0], "cfdg": [31.0, 45.0, 49.0]}
    for arm, scores in finals.items():
        for seed, v in enumerate(scores):
            _fake_run(root, arm, "hopper", seed, [(0, 20.0), (100, v)])
    res = make_report([root], tmp_path / "rep", reps=200, seed=0)
    assert set(res.aggregates["methods"]) == {"iql/none", "iql/offline_only", "iql/cfdg"}
    assert res.aggregates["methods"]["iql/offline_only"]["improved"] == [3, 3]
    p = res.aggregates["paired"]["iql/none-offline_only"]
    assert (p["pairs"], p["above"], p["below"]) == (3, 2, 1)
    assert p["mean_difference"][0] == pytest.approx(1.0)
    assert res.aggregates["paired"]["iql/cfdg-offline_only"]["mean_difference"][0] == pytest.approx(8 / 3)
    assert "offline_only-none" not in str(res.aggregates["paired"])  # the control is never the first arm
    assert "| iql | none − offline_only | 3 | 2 / 1 | +1.0 [" in res.markdown
    # Ordered after none: the table reads none, its control, then the augmentations.
    order = [line.split("|")[2].strip() for line in res.markdown.splitlines() if line.startswith("| iql | ")][:3]
    assert order == ["none", "offline_only", "cfdg"]
    assert "iql/cfdg>offline_only" in res.aggregates["probability_of_improvement"]


def test_cli_refuses_a_setting_that_undoes_the_control_in_one_line(tmp_path: Path) -> None:
    """(A whole run by name is the explicit-settings run, checked above by id; the CLI's smoke run
    itself is tests/test_cli.py's.)"""
    from typer.testing import CliRunner

    from cfdg_aug.experiments.cli import app
    from tests.cli_checks import one_error_line

    res = CliRunner().invoke(app, ["run", "--augmentation", "offline_only", "--dataset", "embedded", "--out",
                                   str(tmp_path / "out"), "--no-progress", "--set", "cfdg.ratio_online=0.5"])
    assert "cfdg.ratio_online=0; got --set cfdg.ratio_online=0.5" in one_error_line(res.exit_code, res.output)
    assert not (tmp_path / "out").exists()


def test_report_explains_the_control_only_when_it_ran(tmp_path: Path) -> None:
    for arm in ("none", "cfdg"):
        _fake_run(tmp_path / "runs", arm, "hopper", 0, [(0, 20.0), (100, 30.0)])
    res = make_report([tmp_path / "runs"], tmp_path / "rep", reps=50, seed=0)
    assert "| iql | cfdg − none | 1 |" in res.markdown and "offline_only" not in res.markdown


# --- APL: it draws its own branch batches, so the control is APLConfig.learn_from_online=False ------------
def test_apl_refuses_a_batch_mix_setting_it_would_not_read() -> None:
    """APL never calls the buffer's mixed sample: a ratio or real_mix override would change the
    run id and nothing else, so it is refused, naming the field and what to use."""
    for setting in ("cfdg.ratio_online=0.5", "cfdg.ratio_synthetic=2", "cfdg.real_mix=proportional",
                    "cfdg.synthetic_online_fraction=0.5"):
        with pytest.raises(ConfigError, match=rf"cfdg.{setting.split('.')[1].split('=')[0]} sets the buffer's batch "
                                              r"mix, which APL does not read .* use algo.synthetic_fraction"):
            resolve_config("apl", "none", "x.hdf5", "small", 0, parse_set([setting]))
    with pytest.raises(ConfigError, match="algo.learn_from_online is set by the arm.*--augmentation offline_only"):
        resolve_config("apl", "none", "x.hdf5", "small", 0, parse_set(["algo.learn_from_online=false"]))
    # The control's own pair is what it is, named or spelt out; the other algorithms keep the settings.
    named = resolve_config("apl", "offline_only", "x.hdf5", "small", 0)
    spelt = resolve_config("apl", "none", "x.hdf5", "small", 0, parse_set(EXPLICIT))
    assert named.run_id() == spelt.run_id() and arm_name(named.to_dict()) == "offline_only"
    assert resolve_config("pex", "none", "x.hdf5", "small", 0, parse_set(["cfdg.ratio_online=0.5"])).cfdg[
        "ratio_online"] == 0.5


def test_apl_control_learns_from_no_online_row_and_shares_the_pre_trained_agent(tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy")
    pytest.importorskip("mujoco")
    from cfdg_aug.experiments.runner import SMOKE_SET, build_algo, read_metrics, run_experiment

    # greedy_min_online=50 so that the plain arm takes greedy (online-only) updates within 100 steps
    sets = parse_set([*SMOKE_SET, "algo.greedy_min_online=50", "online_steps=100"])
    cfg = {arm: resolve_config("apl", arm, "embedded", "small", 0, sets) for arm in ("none", "offline_only")}
    assert build_algo(cfg["none"], "Hopper-v4", "cpu:0").config.learn_from_online is True
    assert build_algo(cfg["offline_only"], "Hopper-v4", "cpu:0").config.learn_from_online is False
    quiet = dict(progress=False, threads=1, log=lambda *a: None)
    runs = {arm: run_experiment(c, tmp_path / "out", **quiet) for arm, c in cfg.items()}
    online = {}
    for arm, outcome in runs.items():
        rows = [r for r in read_metrics(outcome.run_dir / "metrics.csv") if r["phase"] == "online"]
        online[arm] = sum(int(r["src_real_online"] or 0) for r in rows), sum(int(r["src_real_offline"] or 0) for r in rows)
    assert online["none"][0] > 0 and online["offline_only"][0] == 0 and online["offline_only"][1] > 0
    res = {arm: json.loads((o.run_dir / "result.json").read_text()) for arm, o in runs.items()}
    assert res["offline_only"]["pretrained"] == {"key": res["none"]["pretrained"]["key"], "reused": True}
    assert res["none"]["offline_score"] == res["offline_only"]["offline_score"]
