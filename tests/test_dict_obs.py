"""Structured observations: SB3 ``Dict`` spaces through :class:`CFDGDictReplayBuffer`.

Each key is flattened (and encoded: one-hot, bits, or real with its own bounds) for the generator
and split back into SB3's dict of ``(B, *shape)`` arrays when sampling. d3rlpy's tuple observations
are covered in tests/test_d3rlpy_buffer.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples

from cfdg_aug.config import CFDGConfig
from cfdg_aug.integrations.sb3 import (
    CFDGBufferError,
    CFDGCallback,
    CFDGDictReplayBuffer,
    prefill_offline,
    pretrain_offline,
)

TINY = CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                        synthetic_online_size=64, synthetic_offline_size=16, refresh_every=60, min_online=60)
SPACE = spaces.Dict({
    "position": spaces.Box(0.0, 1.0, (2,), dtype=np.float32),
    "velocity": spaces.Box(-np.inf, np.inf, (2, 2), dtype=np.float32),
    "goal": spaces.Discrete(4),
    "contacts": spaces.MultiBinary(3),
})
ACT = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def _step(rng: np.random.Generator, n_envs: int = 1) -> dict[str, np.ndarray]:
    return {
        "position": rng.uniform(0.2, 0.8, (n_envs, 2)).astype(np.float32),
        "velocity": rng.normal(0.0, 3.0, (n_envs, 2, 2)).astype(np.float32),
        "goal": rng.integers(0, 4, n_envs),
        "contacts": rng.integers(0, 2, (n_envs, 3)).astype(np.int8),
    }


def _fill(buffers: list[DictReplayBuffer], steps: int, n_envs: int = 1, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        o, n = _step(rng, n_envs), _step(rng, n_envs)
        a = rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32)
        r, d = rng.normal(size=n_envs).astype(np.float32), rng.random(n_envs) < 0.1
        for b in buffers:
            b.add({k: v.copy() for k, v in o.items()}, {k: v.copy() for k, v in n.items()}, a, r, d,
                  [{} for _ in range(n_envs)])


def test_before_mixing_samples_are_the_parents_under_the_same_seed() -> None:
    plain = DictReplayBuffer(40, SPACE, ACT, device="cpu", n_envs=2)
    ours = CFDGDictReplayBuffer(40, SPACE, ACT, device="cpu", n_envs=2, config=TINY, auto_refresh=False)
    _fill([plain, ours], steps=30, n_envs=2)  # wraps
    for key in SPACE.spaces:
        np.testing.assert_array_equal(ours.observations[key], plain.observations[key])
    np.random.seed(4)
    a = plain.sample(16)
    np.random.seed(4)
    b = ours.sample(16)
    for key in SPACE.spaces:
        assert th.equal(a.observations[key], b.observations[key]) and th.equal(a.next_observations[key],
                                                                                 b.next_observations[key])
    assert th.equal(a.actions, b.actions) and th.equal(a.rewards, b.rewards) and th.equal(a.dones, b.dones)


def test_keys_are_flattened_for_the_core_and_split_back_with_their_shapes_dtypes_and_bounds() -> None:
    buf = CFDGDictReplayBuffer(200, SPACE, ACT, device="cpu", config=TINY, seed=0)
    assert buf.obs_dim == 2 + 4 + 1 + 3  # raw components; the core sees goal one-hot: 2 + 4 + 4 + 3
    assert buf.augmented.obs_dim == 13
    _fill([buf], steps=59)
    # The core's rows are the stored keys, in the space's key order.
    online = buf.augmented.online_data()
    raw = buf.obs_encoding.decode(online.obs)
    back = buf.obs_layout.unflatten(raw)
    for key in SPACE.spaces:
        np.testing.assert_array_equal(back[key], buf.observations[key][:59, 0])
    _fill([buf], steps=1, seed=5)  # the 60th transition: refresh
    assert buf.num_refreshes == 1
    s = buf.sample(400)
    assert isinstance(s, DictReplayBufferSamples)
    for key, space in SPACE.spaces.items():
        assert s.observations[key].shape == (400, *buf.obs_shape[key])
        assert s.observations[key].dtype == th.as_tensor(np.zeros(1, space.dtype)).dtype
    synthetic = th.as_tensor(buf.last_sources >= 2)
    assert synthetic.any()
    for key, space in SPACE.spaces.items():
        for value in s.next_observations[key][synthetic].numpy():
            assert space.contains(value.reshape(space.shape).astype(space.dtype)), (key, value)
    # The Box key with infinite bounds stays inside the real data's range.
    vel = s.observations["velocity"][synthetic].numpy()
    real = buf.observations["velocity"][:60, 0]
    assert vel.min() >= real.min() - 1e-5 and vel.max() <= real.max() + 1e-5


def test_dict_offline_data_prefill_pretraining_and_callback_with_sac() -> None:
    from stable_baselines3 import SAC
    from stable_baselines3.common.envs import BitFlippingEnv

    env = BitFlippingEnv(n_bits=4, continuous=True, max_steps=8)
    model = SAC("MultiInputPolicy", env, learning_starts=0, batch_size=32, buffer_size=500, seed=0,
                policy_kwargs=dict(net_arch=[16]), replay_buffer_class=CFDGDictReplayBuffer,
                replay_buffer_kwargs={"config": CFDGConfig.small(**{**TINY.to_dict(), "refresh_every": 80,
                                                                    "min_online": 80})})
    rng = np.random.default_rng(0)
    n = 50
    bits = {k: rng.integers(0, 2, (n, 4)).astype(np.int8) for k in ("achieved_goal", "desired_goal", "observation")}
    nxt = {k: rng.integers(0, 2, (n, 4)).astype(np.int8) for k in bits}
    data = {"observations": bits, "next_observations": nxt, "actions": rng.uniform(-1, 1, (n, 4)),
            "rewards": -np.ones(n), "terminals": np.zeros(n, bool)}
    assert prefill_offline(model, data) == n
    assert model.replay_buffer.augmented.num_offline == n
    stats = pretrain_offline(model, 3)
    assert stats.n_updates_after == stats.n_updates_before + 3
    callback = CFDGCallback()
    model.learn(100, callback=callback)
    assert model.replay_buffer.num_refreshes == 1 and len(callback.refreshes) == 1
    with pytest.raises(CFDGBufferError, match=r"lacks the observation key\(s\) \['achieved_goal', 'desired_goal'\]"):
        prefill_offline(model, {**data, "observations": {"observation": bits["observation"]}})
