"""The learner diagnostics in metrics.csv: evaluation lengths, loss means and the critic probe."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

from cfdg_aug.experiments.runner import (  # noqa: E402
    METRIC_COLUMNS,
    SMOKE_SET,
    _LossMeans,
    build_algo,
    parse_set,
    resolve_config,
    run_experiment,
)
from cfdg_aug.integrations.d3rlpy import transition_batch_to_minibatch  # noqa: E402
from cfdg_aug.integrations.d3rlpy.probe import PROBE_STATS, critic_probe  # noqa: E402
from cfdg_aug.transitions import SOURCE_NAMES  # noqa: E402


def _trained_iql():
    """IQL built as the runner builds it (observation standardisation, IQL's reward scale), 50 updates."""
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug import CFDGConfig
    from cfdg_aug.datasets import load_dataset
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    cfg = resolve_config("iql", "none", "embedded", "small", 0, parse_set(list(SMOKE_SET)))
    data = load_dataset("embedded").to_transition_batch()
    algo = build_algo(cfg, "Hopper-v4", "cpu:0")
    buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=data, config=CFDGConfig.small(augmentation="none"), seed=0)
    build_scalers_with_transition_picker(algo, buf)
    algo.build_with_dataset(buf)
    rng = np.random.default_rng(0)
    for _ in range(50):
        algo.update(transition_batch_to_minibatch(data[rng.integers(0, len(data), 64)]))
    return algo, data


def test_probe_columns_match_what_the_probe_returns() -> None:
    probe_cols = {c for c in METRIC_COLUMNS if c.startswith("probe_")}
    assert probe_cols == {f"probe_{n}_{s}" for n in SOURCE_NAMES for s in PROBE_STATS}


def test_critic_probe_recomputes_iqls_target_and_changes_nothing() -> None:
    algo, data = _trained_iql()
    rows = data[np.arange(200)]
    before = algo.predict_value(rows.obs, rows.act)
    rng_state = torch.get_rng_state()
    out = critic_probe(algo, rows)
    assert set(out) == set(PROBE_STATS)
    assert torch.equal(torch.get_rng_state(), rng_state)
    np.testing.assert_array_equal(algo.predict_value(rows.obs, rows.act), before)
    # td by hand, through d3rlpy's public predictions: r + gamma (1 - done) V(s') - mean Q(s, a).
    cfg = algo.config
    with torch.no_grad():
        nxt = cfg.observation_scaler.transform(torch.as_tensor(rows.next_obs, dtype=torch.float32))
        v_next = algo.impl.modules.value_func(nxt).numpy().ravel()
        rew = cfg.reward_scaler.transform(torch.as_tensor(rows.rew, dtype=torch.float32)).numpy()
    target = rew + cfg.gamma * (1.0 - rows.done) * v_next
    assert out["td"] == pytest.approx(float(np.mean(target - before)), rel=1e-4, abs=1e-4)
    assert out["adv"] == pytest.approx(out["q"] - out["v"], abs=1e-4)
    with torch.no_grad():
        obs = cfg.observation_scaler.transform(torch.as_tensor(rows.obs, dtype=torch.float32))
        act = torch.as_tensor(rows.act, dtype=torch.float32)
        adv = (algo.impl._targ_q_func_forwarder.compute_expected_q(obs, act, "min")
               - algo.impl.modules.value_func(obs)).numpy()
    assert out["adv_std"] == pytest.approx(float(adv.std()), rel=1e-4) and out["adv_std"] > 0
    assert critic_probe(algo, data[np.arange(0)]) == {}


def test_loss_means_average_each_window_and_survive_a_checkpoint() -> None:
    m = _LossMeans()
    assert m.pop() == {}
    m.add({"critic_loss": 3.0, "q_loss": 2.0, "v_loss": 1.0, "actor_loss": 4.0})
    m.add({"critic_loss": 5.0, "q_loss": 4.0, "v_loss": 1.0, "actor_loss": 0.0})
    resumed = _LossMeans(m.state())
    assert m.pop() == resumed.pop() == {"loss_q": 3.0, "loss_v": 1.0, "loss_actor": 2.0}
    assert m.pop() == {}
    m.add({"critic_loss": 7.0, "temp": 1.0})  # SAC: no q_loss, so critic_loss; no value function
    assert m.pop() == {"loss_q": 7.0}


def test_a_cfdg_run_writes_the_diagnostics_of_every_pool(tmp_path: Path) -> None:
    cfg = resolve_config("iql", "cfdg", "embedded", "small", 0,
                         parse_set([*SMOKE_SET, "online_steps=150", "eval_every=100"]))  # a refresh at 100
    out = run_experiment(cfg, tmp_path, progress=False, threads=1, log=lambda *a: None)
    rows = list(csv.DictReader(open(out.run_dir / "metrics.csv")))
    offline = next(r for r in rows if r["phase"] == "offline")
    assert 0 < float(offline["eval_length_mean"]) <= 1000
    online = [r for r in rows if r["phase"] == "online"]
    refreshed = [r for r in online if int(r["num_refreshes"]) > 0]
    assert refreshed, "the smoke run never refreshed: no synthetic pool to probe"
    for r in refreshed:
        assert float(r["loss_q"]) > 0 and float(r["loss_v"]) >= 0 and r["loss_actor"] != ""
        for pool in SOURCE_NAMES:
            for stat in PROBE_STATS:
                assert np.isfinite(float(r[f"probe_{pool}_{stat}"])), (pool, stat)
