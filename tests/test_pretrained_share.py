"""Pre-training shared across runs: one pre-training per key, the same start for every arm, and a
run that reuses the agent computes exactly what a run that pre-trains itself computes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

from cfdg_aug.experiments.runner import (  # noqa: E402
    PRETRAINED_DIR,
    SMOKE_SET,
    build_algo,
    device_tag,
    parse_set,
    pretrain_key,
    pretrain_key_info,
    resolve_config,
    run_experiment,
)


def _cfg(aug: str, *extra: str, algo: str = "iql"):
    return resolve_config(algo, aug, "embedded", "small", 0, parse_set([*SMOKE_SET, *extra]))


def _scores(run_dir: Path) -> list[tuple[str, int, float]]:
    rows = csv.DictReader(open(run_dir / "metrics.csv"))
    return [(r["phase"], int(r["online_step"]), float(r["normalized_score"])) for r in rows if r["phase"] != "refresh"]


def test_arms_share_one_pretraining_and_reuse_equals_pretraining_yourself(tmp_path: Path) -> None:
    quiet = dict(progress=False, threads=1, log=lambda *a: None)
    # Shared: the unconditional arm pre-trains and publishes, the none arm reuses it.
    first = run_experiment(_cfg("unconditional"), tmp_path / "shared", **quiet)
    second = run_experiment(_cfg("none"), tmp_path / "shared", **quiet)
    # Not shared: the none arm pre-trains itself.
    alone = run_experiment(_cfg("none"), tmp_path / "alone", share_pretrained=False, **quiet)

    entries = [p for p in (tmp_path / "shared" / PRETRAINED_DIR).iterdir() if p.is_dir()]
    assert len(entries) == 1 and not (tmp_path / "alone" / PRETRAINED_DIR).exists()
    assert {p.name for p in entries[0].iterdir()} >= {"model.pt", "state.json", "key.json"}
    r1 = json.loads((first.run_dir / "result.json").read_text())
    r2 = json.loads((second.run_dir / "result.json").read_text())
    r3 = json.loads((alone.run_dir / "result.json").read_text())
    assert r1["pretrained"] == {"key": entries[0].name, "reused": False}
    assert r2["pretrained"] == {"key": entries[0].name, "reused": True}
    assert r3["pretrained"] is None
    # Same start for both arms, and reusing changes nothing downstream: the reused none arm's
    # whole curve equals the one of the none arm that pre-trained itself.
    assert r1["offline_score"] == r2["offline_score"] == r3["offline_score"]
    assert _scores(second.run_dir) == _scores(alone.run_dir)
    # The reusing run still holds no checkpoint at the end, and its config records the key.
    assert not (second.run_dir / "checkpoints").exists()
    assert json.loads((second.run_dir / "config.json").read_text())["pretrain_key"] == entries[0].name


def test_a_new_number_of_evaluation_episodes_is_evaluated_once_and_cached(tmp_path: Path) -> None:
    quiet = dict(progress=False, threads=1, log=lambda *a: None)
    short = ("online_steps=40", "warmup_steps=10")  # the runs are there for their pre-trained agent
    run_experiment(_cfg("none", *short), tmp_path, **quiet)
    out = run_experiment(_cfg("none", "eval_episodes=2", *short), tmp_path, **quiet)
    (entry,) = [p for p in (tmp_path / PRETRAINED_DIR).iterdir() if p.is_dir()]
    assert sorted(p.name for p in entry.glob("eval-*.json")) == ["eval-Hopper-v4-1ep.json", "eval-Hopper-v4-2ep.json"]
    res = json.loads((out.run_dir / "result.json").read_text())
    assert res["pretrained"]["reused"] is True
    assert res["offline_score"] == json.loads((entry / "eval-Hopper-v4-2ep.json").read_text())["normalized_score"]


def test_pretrain_key_follows_what_determines_pretraining_only() -> None:
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import load_dataset
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    data = load_dataset("embedded").to_transition_batch()
    scaler_buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=data, config=CFDGConfig.small(augmentation="none"))

    def key(cfg) -> str:
        algo = build_algo(cfg, "Hopper-v4", "cpu")
        build_scalers_with_transition_picker(algo, scaler_buf)  # as the runner does before keying
        return pretrain_key(pretrain_key_info(cfg, algo, data, "cpu"))

    base = key(_cfg("none"))
    assert key(_cfg("cfdg")) == base  # the augmentation arm
    assert key(_cfg("none", "online_steps=500", "warmup_steps=70", "eval_episodes=3")) == base  # online settings
    assert key(_cfg("cfdg", algo="pex")) == base  # PEX pre-trains the same IQL
    assert key(_cfg("none", "offline_steps=200")) != base
    assert key(_cfg("none", "algo.expectile=0.8")) != base
    assert key(_cfg("none", "batch_size=64")) != base
    assert key(resolve_config("iql", "none", "embedded", "small", 1, parse_set(list(SMOKE_SET)))) != base
    assert key(_cfg("none", "algo.inverse_temperature=5", algo="pex")) == base  # a PEX-only field
    assert key(_cfg("none", "algo.expectile=0.8", algo="pex")) == key(_cfg("none", "algo.expectile=0.8"))  # IQL field


def test_pretrain_key_records_the_hardware_not_the_device_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert device_tag("cpu") == device_tag("cpu:0") == "cpu"
    names = {0: "NVIDIA H200", 1: "NVIDIA H200", 2: "NVIDIA A100-SXM4-80GB"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: names[i])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    # Two GPUs of one model share a pre-trained agent; "cuda" is the current GPU; another model does not.
    assert device_tag("cuda") == device_tag("cuda:0") == device_tag("cuda:1") == "cuda (NVIDIA H200)"
    assert device_tag("cuda:2") == "cuda (NVIDIA A100-SXM4-80GB)"


def test_warmup_steps_hold_online_updates_back(tmp_path: Path) -> None:
    quiet = dict(progress=False, threads=1, log=lambda *a: None)
    out = run_experiment(_cfg("none", "warmup_steps=200"), tmp_path, **quiet)
    res = json.loads((out.run_dir / "result.json").read_text())
    # 300 online steps, updates from step 201 on: 100 batches of 32 rows.
    assert sum(res["source_counts"].values()) == 100 * 32
