"""Discrete actions and discrete observations with CFDG: SB3 DQN / QR-DQN, d3rlpy DQN family.

Every generated action or observation must be a valid element of its space (one-hot / bits in the
core, decoded to indices for the host), and the algorithms must run on the mixed batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from cfdg_aug.config import CFDGConfig
from cfdg_aug.integrations.sb3 import CFDGReplayBuffer
from cfdg_aug.transitions import SOURCE_SYNTHETIC_ONLINE

TINY = dict(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
            synthetic_online_size=64, synthetic_offline_size=16, refresh_every=100, min_online=100)


def tiny(**kw: object) -> CFDGConfig:
    return CFDGConfig.small(**{**TINY, **kw})


# --- stable-baselines3 -----------------------------------------------------------------------------------
def test_sb3_dqn_on_cartpole_refreshes_and_trains_on_valid_synthetic_actions() -> None:
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=50, buffer_size=1000, batch_size=32, seed=0,
                policy_kwargs=dict(net_arch=[16]), replay_buffer_class=CFDGReplayBuffer,
                replay_buffer_kwargs={"config": tiny()})
    model.learn(250)
    buf = model.replay_buffer
    assert isinstance(buf, CFDGReplayBuffer) and buf.num_refreshes == 2
    assert model._n_updates > 0
    # The core stores one-hot actions; every synthetic one is an exact one-hot row.
    syn = buf.augmented.pool_data("synthetic_online").act
    assert syn.shape == (64, 2) and np.all(syn.sum(axis=1) == 1.0) and set(np.unique(syn)) == {0.0, 1.0}
    s = buf.sample(256)
    assert s.actions.shape == (256, 1) and s.actions.dtype == th.int64  # SB3's layout for Discrete
    assert set(s.actions.unique().tolist()) <= {0, 1}
    assert (buf.last_sources == SOURCE_SYNTHETIC_ONLINE).sum() > 0
    # DQN's own loss runs on a mixed batch (gather by the action index).
    model.train(gradient_steps=2, batch_size=64)


def test_sb3_dqn_with_cfdg_equals_plain_dqn_before_the_first_refresh() -> None:
    from stable_baselines3 import DQN

    def run(buffer_class: type | None) -> list[th.Tensor]:
        kwargs = {} if buffer_class is None else dict(replay_buffer_class=buffer_class,
                                                      replay_buffer_kwargs={"config": tiny(min_online=10_000)})
        m = DQN("MlpPolicy", "CartPole-v1", learning_starts=20, buffer_size=500, batch_size=16, seed=3,
                policy_kwargs=dict(net_arch=[8]), **kwargs)
        m.learn(120)
        return [p.detach().clone() for p in m.policy.parameters()]

    for a, b in zip(run(None), run(CFDGReplayBuffer), strict=True):
        assert th.equal(a, b)


def test_qrdqn_runs_on_mixed_batches() -> None:
    sb3_contrib = pytest.importorskip("sb3_contrib")
    model = sb3_contrib.QRDQN("MlpPolicy", "CartPole-v1", learning_starts=50, buffer_size=1000, batch_size=32,
                              seed=1, policy_kwargs=dict(net_arch=[16], n_quantiles=5),
                              replay_buffer_class=CFDGReplayBuffer, replay_buffer_kwargs={"config": tiny()})
    model.learn(150)
    assert model.replay_buffer.num_refreshes == 1 and model._n_updates > 0
    model.train(gradient_steps=2, batch_size=64)
    assert model.replay_buffer.last_sources is not None and (model.replay_buffer.last_sources >= 2).any()


@pytest.mark.parametrize("obs_space", [
    spaces.Discrete(6, start=-2),
    spaces.MultiDiscrete([3, 2, 4]),
    spaces.MultiBinary(5),
    spaces.MultiBinary([2, 3]),
], ids=["Discrete", "MultiDiscrete", "MultiBinary", "MultiBinary2d"])
def test_discrete_observation_spaces_generate_valid_elements(obs_space: spaces.Space) -> None:
    act_space = spaces.MultiDiscrete([2, 3])
    buf = CFDGReplayBuffer(200, obs_space, act_space, device="cpu", config=tiny(min_online=60, refresh_every=60),
                           seed=0)
    obs_space.seed(0)
    act_space.seed(0)
    for _ in range(60):
        o, n = obs_space.sample(), obs_space.sample()
        buf.add(np.array([o]), np.array([n]), np.array([act_space.sample()]), np.ones(1), np.zeros(1), [{}])
    assert buf.num_refreshes == 1
    core = buf.augmented
    assert core.obs_dim == buf.obs_encoding.dim and buf.obs_encoding.raw_dim == buf.obs_dim
    # The online rows decode back to exactly what SB3 stored.
    online = core.online_data()
    np.testing.assert_array_equal(buf.obs_encoding.decode(online.obs),
                                  buf.observations[:60, 0].reshape(60, -1).astype(np.float32))
    s = buf.sample(300)
    obs = s.observations.numpy()
    assert obs.dtype == buf.observations.dtype and obs.shape == (300, *buf.obs_shape)
    synthetic = buf.last_sources >= 2
    assert synthetic.any()
    for row in obs[synthetic]:
        value = row.reshape(()) if isinstance(obs_space, spaces.Discrete) else row
        assert obs_space.contains(value.astype(obs_space.dtype)), row
    for a in s.actions.numpy()[synthetic]:
        assert act_space.contains(a.astype(act_space.dtype)), a


# --- d3rlpy ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["DQN", pytest.param("DoubleDQN", marks=pytest.mark.slow),
                                  pytest.param("DiscreteCQL", marks=pytest.mark.slow)])
def test_d3rlpy_dqn_family_fit_online_on_cartpole_with_cfdg(algo: str) -> None:
    import d3rlpy
    import gymnasium
    from d3rlpy.dataset import FIFOBuffer

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer as D3Buffer

    env = gymnasium.make("CartPole-v1")
    d3rlpy.seed(0)
    env.reset(seed=0)
    buf = D3Buffer(FIFOBuffer(1000), env=env, config=tiny(), seed=0)
    config_cls = getattr(d3rlpy.algos, f"{algo}Config")
    agent = config_cls(batch_size=32, learning_rate=1e-3).create(device="cpu")
    agent.fit_online(env, buf, n_steps=230, n_steps_per_epoch=230, update_start_step=50,
                     logger_adapter=d3rlpy.logging.NoopAdapterFactory(), show_progress=False)
    assert buf.augmented.num_refreshes == 2
    syn = buf.augmented.pool_data("synthetic_online").act
    assert np.all(syn.sum(axis=1) == 1.0)
    assert buf.source_histogram[SOURCE_SYNTHETIC_ONLINE] > 0  # the agent trained on synthetic rows
    batch = buf.sample_transition_batch(64)
    assert batch.actions.shape == (64, 1) and set(np.unique(batch.actions)) <= {0.0, 1.0}
    agent.update(batch)


# --- the example ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("library", ["sb3", pytest.param("d3rlpy", marks=pytest.mark.slow)])
def test_discrete_cartpole_example_runs_with_valid_synthetic_actions(library: str) -> None:
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("discrete_cartpole", REPO_ROOT / "examples" / "discrete_cartpole.py")
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--library", library, "--tiny", "--offline-transitions", "400", "--online-steps", "250",
                        "--pretrain-steps", "20", "--refresh-every", "100", "--eval-episodes", "1"])
    assert out["refreshes"] == out["online_transitions"] // 100 >= 2
    assert out["valid_synthetic_actions"] == 1.0
    assert out["pool_sizes"]["real_offline"] == 400 and out["pool_sizes"]["synthetic_online"] > 0
    assert np.isfinite(out["before"]) and np.isfinite(out["after"])
