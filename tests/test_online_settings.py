"""Settings of the online phase: collection at a reduced exploration noise (``exploration_scale``)
and the advantage temperature online (``online_weight_temp``), as a run applies them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

import cfdg_aug.experiments.runner as runner  # noqa: E402
from cfdg_aug.config import ConfigError  # noqa: E402
from cfdg_aug.experiments.runner import (  # noqa: E402
    SMOKE_SET,
    ExperimentConfig,
    explore,
    parse_set,
    resolve_config,
    run_experiment,
)
from tests.test_online_lr import _iql as _built_iql  # noqa: E402


def _iql():
    algo, data = _built_iql()  # the small IQL of the learning-rate tests, built on embedded hopper rows
    return algo, np.asarray(data.obs[:64], dtype=np.float32)


def test_scale_moves_the_action_along_the_line_from_greedy_to_the_policy_sample() -> None:
    import torch

    algo, obs = _iql()
    greedy = algo.predict(obs)

    def at(scale: float) -> np.ndarray:
        torch.manual_seed(7)  # the same draw of sample_action for every scale
        return explore(algo, obs, scale)

    sampled = at(1.0)
    torch.manual_seed(7)
    np.testing.assert_array_equal(sampled, algo.sample_action(obs))  # 1 = the algorithm's own sampling
    np.testing.assert_allclose(at(0.0), greedy, atol=1e-6)
    np.testing.assert_allclose(at(0.25) - greedy, 0.25 * (sampled - greedy), atol=1e-6)
    assert np.abs(sampled - greedy).mean() > 0.05  # the policy does sample: the test can tell 1 from 0


def test_exploration_scale_is_validated_and_left_out_of_the_run_id_at_one() -> None:
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ConfigError, match="exploration_scale"):
            ExperimentConfig(exploration_scale=bad)  # type: ignore[arg-type]
    assert "exploration_scale" not in ExperimentConfig().to_dict()  # ids of runs made before the field
    assert ExperimentConfig(exploration_scale=0.5).config_hash() != ExperimentConfig().config_hash()


def test_the_run_collects_at_the_configured_scale_and_trains_at_the_online_temperature(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    seen: list[float] = []
    temps: list[tuple[type, float]] = []

    def recording(algo, obs, scale=1.0):
        seen.append(scale)
        return explore(algo, obs, scale)

    def recording_temp(algo, beta):
        temps.append((type(algo), beta))
        runner_set_weight_temp(algo, beta)
        assert algo.impl._weight_temp == beta

    runner_set_weight_temp = runner.set_weight_temp
    monkeypatch.setattr(runner, "explore", recording)
    monkeypatch.setattr(runner, "set_weight_temp", recording_temp)
    cfg = resolve_config("iql", "none", "embedded", "small", 0,
                         parse_set([*SMOKE_SET, "exploration_scale=0.25", "online_weight_temp=5",
                                    "online_steps=40", "warmup_steps=10"]))
    run_experiment(cfg, tmp_path, progress=False, threads=1, log=lambda *a: None)
    assert seen == [0.25] * cfg.online_steps
    assert len(temps) == 1 and temps[0][1] == 5.0 and temps[0][0].__name__ == "IQL"
