"""The actor's learning rate across the offline -> online switch (runner.reset_actor_lr)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("d3rlpy")

from cfdg_aug.config import ConfigError  # noqa: E402
from cfdg_aug.experiments.runner import ExperimentConfig, build_algo, reset_actor_lr  # noqa: E402


def _iql(offline_steps: int = 4):
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import load_dataset
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    data = load_dataset("embedded").to_transition_batch()[:2000]
    buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=data, config=CFDGConfig.small(augmentation="none"))
    algo = build_algo(ExperimentConfig(offline_steps=offline_steps, batch_size=16), "Hopper-v4", "cpu")
    build_scalers_with_transition_picker(algo, buf)
    algo.build_with_dataset(buf)
    return algo, data


def _step(algo, data, n: int) -> None:
    from cfdg_aug.integrations.d3rlpy import transition_batch_to_minibatch

    rng = np.random.default_rng(0)
    for _ in range(n):
        algo.update(transition_batch_to_minibatch(data[rng.integers(0, len(data), 16)]))


def _lr(algo) -> float:
    return algo.impl.modules.actor_optim.optim.param_groups[0]["lr"]


def test_offline_cosine_ends_near_zero_and_online_reset_restores_the_initial_lr() -> None:
    algo, data = _iql(offline_steps=4)
    _step(algo, data, 4)
    assert _lr(algo) < 1e-9  # the offline cosine schedule ran to its end
    reset_actor_lr(algo, "constant")
    _step(algo, data, 3)
    assert _lr(algo) == pytest.approx(3e-4)


def test_online_cosine_decays_to_zero_over_the_online_updates_and_survives_save_load(tmp_path: Path) -> None:
    algo, data = _iql()
    _step(algo, data, 4)
    reset_actor_lr(algo, "cosine", updates=10)
    assert _lr(algo) == pytest.approx(3e-4)
    _step(algo, data, 5)
    assert _lr(algo) == pytest.approx(3e-4 * (1 + math.cos(math.pi * 5 / 10)) / 2)
    algo.save_model(str(tmp_path / "m.pt"))
    back, _ = _iql()
    reset_actor_lr(back, "cosine", updates=10)  # as a resumed run does, before load_model
    back.load_model(str(tmp_path / "m.pt"))
    _step(algo, data, 5)
    _step(back, data, 5)
    assert _lr(algo) == pytest.approx(0.0, abs=1e-12) and _lr(back) == pytest.approx(_lr(algo), abs=1e-12)


def test_unknown_online_lr_schedule_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="online_lr_schedule"):
        ExperimentConfig(online_lr_schedule="linear")


def test_online_actor_lr_replaces_the_offline_one_at_the_switch() -> None:
    algo, data = _iql()
    _step(algo, data, 4)
    reset_actor_lr(algo, "cosine", updates=10, lr=1e-4)
    assert _lr(algo) == pytest.approx(1e-4)
    _step(algo, data, 5)
    assert _lr(algo) == pytest.approx(1e-4 * (1 + math.cos(math.pi * 5 / 10)) / 2)


def test_online_actor_lr_is_validated_and_left_out_of_the_run_id_when_unset() -> None:
    with pytest.raises(ConfigError, match="online_actor_lr"):
        ExperimentConfig(online_actor_lr=0.0)
    assert "online_actor_lr" not in ExperimentConfig().to_dict()  # ids of runs made before the field
    assert ExperimentConfig(online_actor_lr=3e-4).config_hash() != ExperimentConfig().config_hash()


def test_online_weight_temp_sets_the_temperature_the_actor_loss_weights_with() -> None:
    import torch
    from d3rlpy.torch_utility import TorchMiniBatch

    from cfdg_aug.experiments.runner import set_weight_temp
    from cfdg_aug.integrations.d3rlpy import transition_batch_to_minibatch

    algo, data = _iql()
    _step(algo, data, 4)
    batch = TorchMiniBatch.from_batch(transition_batch_to_minibatch(data[:64]), gamma=0.99, compute_returns_to_go=False,
                                      device="cpu:0", observation_scaler=algo.observation_scaler,
                                      action_scaler=algo.action_scaler, reward_scaler=algo.reward_scaler)
    beta0 = algo.config.weight_temp
    with torch.no_grad():
        q = algo.impl._targ_q_func_forwarder.compute_expected_q(batch.observations, batch.actions, "min")
        adv = q - algo.impl._modules.value_func(batch.observations)
        before = algo.impl._compute_weight(batch)
        set_weight_temp(algo, beta0 + 2.0)
        after = algo.impl._compute_weight(batch)
    torch.testing.assert_close(before, (beta0 * adv).exp().clamp(max=100.0))
    torch.testing.assert_close(after, ((beta0 + 2.0) * adv).exp().clamp(max=100.0))
    assert not torch.allclose(before, after)
    assert algo.config.weight_temp == beta0  # the config keeps the offline value


def test_online_weight_temp_is_validated_and_left_out_of_the_run_id_when_unset() -> None:
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="online_weight_temp"):
            ExperimentConfig(online_weight_temp=bad)
    with pytest.raises(ConfigError, match="online_weight_temp.*'apl'"):
        ExperimentConfig(algo="apl", online_weight_temp=3.0)
    assert "online_weight_temp" not in ExperimentConfig().to_dict()
    assert ExperimentConfig(online_weight_temp=3.0).config_hash() != ExperimentConfig().config_hash()
