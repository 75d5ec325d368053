"""The offline-to-online pipeline end to end with tiny budgets, and RunConfig validation."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

from cfdg_aug.config import ConfigError  # noqa: E402
from cfdg_aug.experiments.pipeline import ALGOS, RunConfig, register_algo, run_o2o  # noqa: E402

TINY = dict(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4,
            synthetic_online_size=64, synthetic_offline_size=16, refresh_every=80, min_online=80)


def test_run_o2o_writes_a_complete_run_directory(tmp_path) -> None:
    cfg = RunConfig(dataset="embedded", augmentation="cfdg", offline_steps=20, online_steps=200, eval_every=100,
                    eval_episodes=1, batch_size=32, out_dir=str(tmp_path), run_name="r", cfdg_overrides=TINY,
                    show_progress=False, threads=1)
    res = run_o2o(cfg)
    run = tmp_path / "r"
    for name in ("config.json", "metrics.csv", "refreshes.json", "result.json", "model_final.pt",
                 "pretrained.pt", "learning_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "d3rlpy_logs" / "online").is_dir() and (run / "d3rlpy_logs" / "offline").is_dir()
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["augmentation"] == "cfdg" and saved["cfdg"]["refresh_every"] == 80
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    phases = [r["phase"] for r in rows]
    assert phases.count("offline") == 1 and phases.count("online") == 2 and phases.count("refresh") == 2
    assert [s for s, _ in res.curve] == [0, 100, 200]
    assert [e["online_step"] for e in res.refreshes] == [80, 160]
    for r in (r for r in rows if r["phase"] == "refresh"):  # fidelity of the new synthetic pools, per refresh
        assert 0.0 <= float(r["fidelity_offline_auc"]) <= 1.0 and float(r["fidelity_online_mmd2"]) > -1.0
    # Window counts in the CSV add up to the buffer's histogram.
    total = sum(int(r["src_synthetic_online"]) for r in rows if r["phase"] == "online")
    assert total == res.source_counts["synthetic_online"] > 0
    assert sum(res.source_counts.values()) == 200 * 32


def test_run_config_rejects_bad_fields_naming_them() -> None:
    with pytest.raises(ConfigError, match="algo"):
        RunConfig(algo="nope")
    with pytest.raises(ConfigError, match="augmentation"):
        RunConfig(augmentation="diffusion")
    with pytest.raises(ConfigError, match="eval_every"):
        RunConfig(eval_every=0)
    with pytest.raises(ConfigError, match="width"):
        RunConfig(cfdg_overrides={"width": 0})
    cfg = RunConfig(cfdg_overrides={"refresh_every": 7})
    assert cfg.cfdg_config().refresh_every == 7 and cfg.cfdg_config().augmentation == "cfdg"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_register_algo_makes_a_new_algorithm_name_valid() -> None:
    register_algo("test-dummy", lambda cfg, family: None)
    try:
        assert RunConfig(algo="test-dummy").algo == "test-dummy"
    finally:
        del ALGOS["test-dummy"]
