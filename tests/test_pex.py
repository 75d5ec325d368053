"""PEX as a d3rlpy algorithm: action selection, frozen offline policy, fit_online, save/load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import d3rlpy
import gymnasium as gym
import numpy as np
import pytest
import torch
from d3rlpy.logging import NoopAdapterFactory
from d3rlpy.models import VectorEncoderFactory

from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.integrations.d3rlpy.buffer import create_fifo_cfdg_replay_buffer
from cfdg_aug.integrations.d3rlpy.pex import PEX, PEXConfig
from tests.data_helpers import random_offline_buffer

OBS_DIM, ACT_DIM = 11, 3  # Hopper


def tiny_iql(seed: int = 0) -> d3rlpy.algos.IQL:
    d3rlpy.seed(seed)
    enc = VectorEncoderFactory(hidden_units=[32, 32])
    iql = d3rlpy.algos.IQLConfig(batch_size=32, actor_encoder_factory=enc, critic_encoder_factory=enc,
                                 value_encoder_factory=enc).create(device="cpu:0")
    iql.create_impl((OBS_DIM,), ACT_DIM)
    return iql


def tiny_cfdg() -> CFDGConfig:
    return CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                            synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50,
                            min_online=50)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def set_constant_policy(policy: torch.nn.Module, action: float) -> None:
    """Make a d3rlpy NormalPolicy output tanh(mu) = action everywhere, with std at its minimum."""
    with torch.no_grad():
        policy._mu.weight.zero_()
        policy._mu.bias.fill_(math.atanh(action))
        policy._logstd.fill_(-1e3)  # sigmoid -> 0 -> logstd = min_logstd (-5)


@pytest.mark.parametrize("margin", [0.1, -0.05, 0.0])
def test_choice_frequency_matches_softmax_of_known_q_margin(margin: float) -> None:
    pex = PEX.from_iql(tiny_iql())
    impl = pex.impl
    set_constant_policy(impl.modules.offline_policy, 0.3)
    set_constant_policy(impl.modules.policy, -0.3)
    # Q(s, a) = (margin / 0.6) * a_0: Q(offline=0.3) - Q(new=-0.3) = margin (up to the new
    # policy's tiny sampling noise, std ~ 0.007 -> logit noise ~ 0.01)
    slope = margin / 0.6
    impl._q_func_forwarder.compute_expected_q = (  # type: ignore[method-assign]
        lambda x, a, reduction="mean": slope * a[:, :1])
    n = 20_000
    obs = np.random.default_rng(0).normal(size=(n, OBS_DIM)).astype(np.float32)
    torch.manual_seed(0)
    actions, idx, probs = pex.sample_action_with_choice(obs)
    expected = 1.0 / (1.0 + math.exp(-10.0 * margin))  # P(offline) = softmax(10 * Q)[0]
    freq_offline = float(np.mean(idx == 0))
    assert abs(freq_offline - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.005
    assert abs(float(probs[:, 0].mean()) - expected) < 0.003
    assert np.allclose(probs[:, 0], expected, atol=0.03)
    # the executed action really is the chosen proposal
    assert np.allclose(actions[idx == 0, 0], 0.3, atol=1e-5)
    assert np.allclose(actions[idx == 1, 0], -0.3, atol=0.05)
    # predict() is greedy: both modes, the larger Q wins
    greedy = pex.predict(obs[:10])
    assert np.allclose(greedy[:, 0], 0.3 if margin > 0 else -0.3, atol=1e-5) or margin == 0.0


def test_inverse_temperature_zero_gives_uniform_choice() -> None:
    iql = tiny_iql()
    pex = PEX.from_iql(iql, PEXConfig.from_iql_config(iql.config, inverse_temperature=0.0))
    idx = pex.sample_action_with_choice(np.zeros((8000, OBS_DIM), np.float32))[1]
    assert abs(idx.mean() - 0.5) < 0.03


def test_from_iql_copies_critic_value_and_offline_policy_and_starts_a_fresh_policy() -> None:
    iql = tiny_iql()
    pex = PEX.from_iql(iql)
    src, dst = iql.impl.modules, pex.impl.modules
    assert same(state(src.policy), state(dst.offline_policy))
    assert same(state(src.q_funcs), state(dst.q_funcs))
    assert same(state(src.targ_q_funcs), state(dst.targ_q_funcs))
    assert same(state(src.value_func), state(dst.value_func))
    assert not same(state(src.policy), state(dst.policy))
    assert pex.config.expectile == iql.config.expectile and pex.config.inverse_temperature == 10.0
    copied = PEX.from_iql(iql, PEXConfig.from_iql_config(iql.config, init_new_policy_from_offline=True))
    assert same(state(src.policy), state(copied.impl.modules.policy))


def test_from_iql_rejects_mismatched_architecture_and_unbuilt_iql() -> None:
    iql = tiny_iql()
    with pytest.raises(ConfigError, match="n_critics"):
        PEX.from_iql(iql, PEXConfig.from_iql_config(iql.config, n_critics=3))
    with pytest.raises(ValueError, match="not built"):
        PEX.from_iql(d3rlpy.algos.IQLConfig().create())
    with pytest.raises(ValueError, match="pre-trained IQL"):
        PEXConfig().create().fit_online(gym.make("Hopper-v4"), n_steps=1)


def test_config_is_frozen_and_validated() -> None:
    cfg = PEXConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.inverse_temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="policy_target"):
        PEXConfig(policy_target="newest")
    with pytest.raises(ConfigError, match="inverse_temperature"):
        PEXConfig(inverse_temperature=-1.0)
    assert dataclasses.replace(cfg, inverse_temperature=3.0).inverse_temperature == 3.0


def _record_losses(algo: Any) -> list[dict[str, float]]:
    log: list[dict[str, float]] = []
    orig = algo.update

    def update(batch: Any) -> dict[str, float]:
        out = orig(batch)
        log.append(out)
        return out

    algo.update = update
    return log


@pytest.mark.parametrize("use_cfdg", [False, True])
@pytest.mark.parametrize("policy_target", ["composed", "dataset"])
def test_fit_online_on_hopper_trains_new_policy_and_never_touches_offline_policy(
        use_cfdg: bool, policy_target: str, tmp_path: Path) -> None:
    env = gym.make("Hopper-v4")
    env.action_space.seed(0)
    iql = tiny_iql()
    pex = PEX.from_iql(iql, PEXConfig.from_iql_config(iql.config, policy_target=policy_target))
    offline_before = state(pex.impl.modules.offline_policy)
    new_before, critic_before = state(pex.impl.modules.policy), state(pex.impl.modules.q_funcs)
    offline_data = random_offline_buffer(env, 200)
    if use_cfdg:
        buffer = create_fifo_cfdg_replay_buffer(10_000, env=env, offline_dataset=offline_data,
                                                config=tiny_cfdg(), seed=0)
    else:
        buffer = offline_data
    losses = _record_losses(pex)
    pex.fit_online(env, buffer=buffer, n_steps=120, update_start_step=20, show_progress=False,
                   logger_adapter=NoopAdapterFactory())
    assert len(losses) >= 90
    for key in ("critic_loss", "actor_loss", "v_loss"):
        assert all(math.isfinite(rec[key]) for rec in losses), key
    assert same(offline_before, state(pex.impl.modules.offline_policy))
    assert not same(new_before, state(pex.impl.modules.policy))
    assert not same(critic_before, state(pex.impl.modules.q_funcs))
    if use_cfdg:
        assert buffer.augmented.num_refreshes >= 1
        assert buffer.source_histogram[2] + buffer.source_histogram[3] > 0  # synthetic rows used

    obs = np.random.default_rng(1).normal(size=(16, OBS_DIM)).astype(np.float32)
    pex.save(str(tmp_path / "pex.d3"))
    loaded = d3rlpy.load_learnable(str(tmp_path / "pex.d3"))
    assert isinstance(loaded, PEX) and loaded.config == pex.config
    assert np.array_equal(loaded.predict(obs), pex.predict(obs))
    assert same(state(loaded.impl.modules.offline_policy), offline_before)
    pex.save_model(str(tmp_path / "pex.pt"))
    other = PEX.from_iql(tiny_iql(seed=1), pex.config)
    assert not np.array_equal(other.predict(obs), pex.predict(obs))
    other.load_model(str(tmp_path / "pex.pt"))
    assert np.array_equal(other.predict(obs), pex.predict(obs))


def test_from_iql_accepts_a_saved_d3_checkpoint(tmp_path: Path) -> None:
    iql = tiny_iql()
    iql.save(str(tmp_path / "iql.d3"))
    pex = PEX.from_iql(tmp_path / "iql.d3")
    assert same(state(iql.impl.modules.policy), state(pex.impl.modules.offline_policy))
    with pytest.raises(FileNotFoundError, match="iql"):
        PEX.from_iql(tmp_path / "missing.d3")


def test_small_profile_starts_the_new_policy_from_the_offline_one_and_pretrains_like_iql() -> None:
    from cfdg_aug.experiments.runner import build_algo, resolve_config

    pex = resolve_config("pex", "none", "embedded", "small", 0)
    iql = resolve_config("iql", "none", "embedded", "small", 0)
    assert pex.algo_kwargs["init_new_policy_from_offline"] is True
    # The PEX-only field does not reach the IQL it pre-trains: the arms share one pre-training.
    assert build_algo(pex, "Hopper-v4", "cpu:0").config == build_algo(iql, "Hopper-v4", "cpu:0").config
    assert "init_new_policy_from_offline" not in resolve_config("pex", "none", "embedded", "paper", 0).algo_kwargs
