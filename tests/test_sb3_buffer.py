"""CFDGReplayBuffer keeps SB3 ReplayBuffer behaviour (the way SB3's tests/test_buffers.py checks
its own buffers) and adds the offline/synthetic mix on top."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import embedded_dataset_path, load_embedded
from cfdg_aug.integrations.sb3 import (
    CFDGBufferError,
    CFDGReplayBuffer,
    prefill_offline,
    scale_actions_to_unit,
)
from cfdg_aug.integrations.spaces import ImageObservationError
from cfdg_aug.transitions import (
    SOURCE_REAL_OFFLINE,
    SOURCE_REAL_ONLINE,
    SOURCE_SYNTHETIC_OFFLINE,
    SOURCE_SYNTHETIC_ONLINE,
    TransitionError,
)

TINY = CFDGConfig.small(
    width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2, synthetic_online_size=64,
    synthetic_offline_size=16, refresh_every=50, min_online=50,
)


class DummyEnv(gym.Env):
    """SB3's own test env (tests/test_buffers.py): Box(1, 5) spaces, cyclic obs, truncation at 100."""

    def __init__(self) -> None:
        self.action_space = spaces.Box(1, 5, (1,))
        self.observation_space = spaces.Box(1, 5, (1,))
        self._observations = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float32)
        self._rewards = [1, 2, 3, 4, 5]
        self._t = 0
        self._ep_length = 100

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        self._t = 0
        return self._observations[0], {}

    def step(self, action):  # type: ignore[no-untyped-def]
        self._t += 1
        index = self._t % len(self._observations)
        return self._observations[index], self._rewards[index], False, self._t >= self._ep_length, {}


OBS_SPACE = spaces.Box(-10.0, 10.0, (3,), dtype=np.float32)
ACT_SPACE = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def _fill(buffers: list[ReplayBuffer], steps: int, n_envs: int = 1, seed: int = 0, truncate_every: int = 0) -> None:
    """Add the same random transitions to every buffer (SB3 add signature, n_envs rows per call)."""
    rng = np.random.default_rng(seed)
    for t in range(steps):
        obs = rng.normal(size=(n_envs, 3)).astype(np.float32)
        nxt = rng.normal(size=(n_envs, 3)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(n_envs, 2)).astype(np.float32)
        rew = rng.normal(size=n_envs).astype(np.float32)
        done = rng.random(n_envs) < 0.1
        infos = [{} for _ in range(n_envs)]
        if truncate_every and t % truncate_every == truncate_every - 1:
            done[:] = True
            for info in infos:
                info["TimeLimit.truncated"] = True
        for b in buffers:
            b.add(obs, nxt, act, rew, done, infos)


def _offline(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
        "terminals": rng.random(n) < 0.05,
        "timeouts": np.zeros(n, dtype=bool),
    }


def _assert_samples_equal(a: ReplayBufferSamples, b: ReplayBufferSamples) -> None:
    for name in ("observations", "actions", "next_observations", "dones", "rewards"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert th.equal(x, y), name


# --- drop-in: identical to the parent before offline data / refreshes -----------------------------


@pytest.mark.parametrize("n_envs", [1, 4])
def test_samples_equal_plain_replay_buffer_under_same_seed(n_envs: int) -> None:
    plain = ReplayBuffer(64, OBS_SPACE, ACT_SPACE, device="cpu", n_envs=n_envs)
    ours = CFDGReplayBuffer(64, OBS_SPACE, ACT_SPACE, device="cpu", n_envs=n_envs, config=TINY, auto_refresh=False)
    _fill([plain, ours], steps=40, n_envs=n_envs, truncate_every=7)  # wraps the FIFO when n_envs=4
    assert ours.pos == plain.pos and ours.full == plain.full and ours.size() == plain.size()
    for seed in range(3):
        np.random.seed(seed)
        a = plain.sample(32)
        np.random.seed(seed)
        b = ours.sample(32)
        _assert_samples_equal(a, b)
    assert ours.delegates_to_parent
    assert np.all(ours.last_sources == SOURCE_REAL_ONLINE)


def test_constructed_like_sb3_constructs_its_buffer_without_cfdg_options() -> None:
    # SB3 passes (buffer_size, obs_space, act_space, device=, n_envs=, optimize_memory_usage=) only.
    buf = CFDGReplayBuffer(100, OBS_SPACE, ACT_SPACE, device="cpu", n_envs=1, optimize_memory_usage=False)
    assert buf.config == CFDGConfig.small()  # the CPU profile: a buffer built as SB3 builds its own must run here
    _fill([buf], steps=5)
    assert buf.sample(4).observations.shape == (4, 3)


def test_seed_none_leaves_np_random_stream_untouched() -> None:
    np.random.seed(123)
    expected = np.random.randint(0, 1000, size=5)
    np.random.seed(123)
    buf = CFDGReplayBuffer(10, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY)
    assert np.array_equal(np.random.randint(0, 1000, size=5), expected)
    np.random.seed(123)
    assert CFDGReplayBuffer(10, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY).cfdg_seed == buf.cfdg_seed


# --- SB3 semantics of add -------------------------------------------------------------------------


def test_add_mirrors_every_env_row_into_core_buffer() -> None:
    buf = CFDGReplayBuffer(100, OBS_SPACE, ACT_SPACE, device="cpu", n_envs=3, config=TINY, auto_refresh=False)
    _fill([buf], steps=10, n_envs=3)
    online = buf.augmented.online_data()
    assert len(online) == 30
    # Core rows are step-major, env-minor: row 3*t + e is env e at step t.
    np.testing.assert_array_equal(online.obs.reshape(10, 3, 3), buf.observations[:10])
    np.testing.assert_array_equal(online.act.reshape(10, 3, 2), buf.actions[:10])
    np.testing.assert_array_equal(online.rew.reshape(10, 3), buf.rewards[:10])
    np.testing.assert_array_equal(online.next_obs.reshape(10, 3, 3), buf.next_observations[:10])


def test_buffer_size_is_split_over_envs_like_sb3() -> None:
    buf = CFDGReplayBuffer(100, OBS_SPACE, ACT_SPACE, device="cpu", n_envs=4, config=TINY, auto_refresh=False)
    assert buf.buffer_size == 25
    assert buf.augmented.online_capacity == 100
    _fill([buf], steps=30, n_envs=4)
    assert buf.full and buf.augmented.num_online == 100  # both FIFOs evicted the same oldest rows
    online = buf.augmented.online_data()
    chronological = np.concatenate([buf.observations[buf.pos:], buf.observations[: buf.pos]])
    np.testing.assert_array_equal(online.obs, chronological.reshape(100, 3))


@pytest.mark.parametrize("handle_timeout", [True, False])
def test_timeouts_are_not_terminal_when_handled(handle_timeout: bool) -> None:
    buf = CFDGReplayBuffer(
        50, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, handle_timeout_termination=handle_timeout,
        offline_data=_offline(5), auto_refresh=False,
    )
    obs = np.zeros((1, 3), np.float32)
    act = np.zeros((1, 2), np.float32)
    buf.add(obs, obs + 1, act, np.ones(1), np.array([True]), [{"TimeLimit.truncated": True}])
    buf.add(obs, obs + 2, act, np.ones(1), np.array([True]), [{"TimeLimit.truncated": False}])
    online = buf.augmented.online_data()
    if handle_timeout:
        np.testing.assert_array_equal(online.done, [0.0, 1.0])
        np.testing.assert_array_equal(online.timeout, [True, False])
    else:  # SB3 then treats every done as terminal, and so do we
        np.testing.assert_array_equal(online.done, [1.0, 1.0])
    # Mixed path: sampled dones of online rows are what SB3 would return for those rows.
    s = buf.sample(400)
    src = buf.last_sources
    online_rows = src == SOURCE_REAL_ONLINE
    next_first = s.next_observations[th.as_tensor(online_rows)][:, 0].numpy()
    dones = s.dones[th.as_tensor(online_rows)][:, 0].numpy()
    truncated_row = next_first == 1.0
    assert truncated_row.any() and (~truncated_row).any()
    assert np.all(dones[truncated_row] == (0.0 if handle_timeout else 1.0))
    assert np.all(dones[~truncated_row] == 1.0)


# --- the mixed batch --------------------------------------------------------------------------------


def test_mixed_batch_has_sb3_shapes_dtypes_and_source_counts() -> None:
    space64 = spaces.Box(-10.0, 10.0, (3,), dtype=np.float64)  # MuJoCo envs use float64 observations
    buf = CFDGReplayBuffer(100, space64, ACT_SPACE, device="cpu", config=TINY, offline_data=_offline(30))
    _fill([buf], steps=20)
    assert not buf.delegates_to_parent
    s = buf.sample(64)
    assert isinstance(s, ReplayBufferSamples)
    assert s.observations.shape == (64, 3) and s.next_observations.shape == (64, 3)
    assert s.actions.shape == (64, 2) and s.dones.shape == (64, 1) and s.rewards.shape == (64, 1)
    assert s.observations.dtype == th.float64 and s.next_observations.dtype == th.float64
    assert s.actions.dtype == th.float32 and s.rewards.dtype == th.float32 and s.dones.dtype == th.float32
    counts = np.bincount(buf.last_sources, minlength=4)
    assert tuple(counts) == buf.augmented.source_counts(64) == (32, 32, 0, 0)


def test_batch_includes_synthetic_sources_after_refresh() -> None:
    buf = CFDGReplayBuffer(200, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, offline_data=_offline(40), seed=3)
    _fill([buf], steps=49)
    assert buf.num_refreshes == 0
    _fill([buf], steps=1, seed=9)  # the 50th online transition makes the refresh due: add refreshes
    assert buf.num_refreshes == 1
    assert buf.pool_sizes["synthetic_online"] == 64 and buf.pool_sizes["synthetic_offline"] == 16
    s = buf.sample(300)
    counts = np.bincount(buf.last_sources, minlength=4)
    assert tuple(counts) == buf.augmented.source_counts(300)
    assert counts[SOURCE_SYNTHETIC_ONLINE] > counts[SOURCE_SYNTHETIC_OFFLINE] > 0
    assert counts[SOURCE_REAL_OFFLINE] > 0 and counts[SOURCE_REAL_ONLINE] > 0
    assert th.isfinite(s.observations).all() and set(s.dones.unique().tolist()) <= {0.0, 1.0}


def test_a_background_refresh_is_started_by_add_installed_after_the_lag_and_survives_pickling() -> None:
    buf = CFDGReplayBuffer(200, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY.replace(refresh_lag=10),
                           offline_data=_offline(40), seed=3)
    _fill([buf], steps=50)  # due at the 50th: started, not installed
    assert buf.augmented.refresh_pending and buf.num_refreshes == 0
    copy = pickle.loads(pickle.dumps(buf))  # waits for the process; the copy holds its result
    assert copy.augmented.refresh_pending
    for b in (buf, copy):
        _fill([b], steps=10, seed=9)
        assert not b.augmented.refresh_pending and b.num_refreshes == 1
        assert b.pool_sizes["synthetic_online"] == 64
    np.testing.assert_array_equal(buf.augmented.pool_data("synthetic_online").flatten(),
                                  copy.augmented.pool_data("synthetic_online").flatten())


def test_synthetic_actions_lie_in_the_stored_action_bounds() -> None:
    # SB3 stores policy.scale_action(a): the bounds of what is stored are [-1, 1] whatever the env's.
    act_space = spaces.Box(-2.0, 2.0, (2,), dtype=np.float32)
    buf = CFDGReplayBuffer(200, OBS_SPACE, act_space, device="cpu", config=TINY, seed=1)
    seg = buf.augmented.act_encoding.segments[0]
    assert seg.low == (-1.0, -1.0) and seg.high == (1.0, 1.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = np.clip(rng.normal(0.0, 0.9, (1, 2)), -1, 1)  # many actions at the bounds
        buf.add(rng.normal(size=(1, 3)), rng.normal(size=(1, 3)), a, rng.normal(size=1), np.zeros(1), [{}])
    assert buf.num_refreshes == 1
    act = buf.augmented.pool_data("synthetic_online").act  # (no offline data: no offline-labelled pool)
    assert len(act) == 64 and np.all(act >= -1.0) and np.all(act <= 1.0)
    assert np.isclose(np.abs(act), 1.0).any()  # the bounds bind: generated actions were clipped onto them
    unbounded = CFDGReplayBuffer(10, OBS_SPACE, spaces.Box(-np.inf, np.inf, (2,)), device="cpu", config=TINY)
    assert not unbounded.augmented.act_encoding.segments[0].bounded  # cannot be scaled: the data's range


def test_replay_buffer_normalization_applies_to_mixed_batch() -> None:
    # SB3's test_replay_buffer_normalization, with offline data so that the mixed path is used.
    env = VecNormalize(make_vec_env(DummyEnv))
    offline = {
        "observations": np.full((50, 1), 3.0, np.float32), "actions": np.full((50, 1), 3.0, np.float32),
        "rewards": np.full(50, 3.0, np.float32), "next_observations": np.full((50, 1), 4.0, np.float32),
        "terminals": np.zeros(50, bool),
    }
    buffer = CFDGReplayBuffer(100, env.observation_space, env.action_space, device="cpu", config=TINY,
                              offline_data=offline, auto_refresh=False)
    env.reset()
    obs = env.get_original_obs()
    with pytest.warns(UserWarning, match=r"outside \[-1, 1\]"):  # raw Box(1, 5) actions, as in SB3's test
        for _ in range(100):
            action = env.action_space.sample()
            _, _, done, info = env.step(action)
            next_obs = env.get_original_obs()
            reward = env.get_original_reward()
            buffer.add(obs, next_obs, action, reward, done, info)
            obs = next_obs
    sample = buffer.sample(50, env)
    assert th.allclose(sample.observations.mean(0), th.zeros(1, dtype=sample.observations.dtype), atol=1)
    assert th.allclose(sample.next_observations.mean(0), th.zeros(1, dtype=sample.observations.dtype), atol=1)
    assert np.allclose(sample.rewards.mean(0), np.zeros(1), atol=1)
    # Offline rows are normalised with the same statistics as online rows.
    off = th.as_tensor(buffer.last_sources == SOURCE_REAL_OFFLINE)
    expected = env.normalize_obs(np.array([[3.0]], np.float32))[0, 0]
    assert th.allclose(sample.observations[off], th.full_like(sample.observations[off], float(expected)))


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
def test_samples_are_on_the_buffer_device(device: str) -> None:
    if device == "cuda" and not th.cuda.is_available():
        pytest.skip("CUDA not available")
    buf = CFDGReplayBuffer(100, OBS_SPACE, ACT_SPACE, device=device, config=TINY, offline_data=_offline(10),
                           auto_refresh=False)
    _fill([buf], steps=20)
    for mixed in (True, False):
        if not mixed:
            buf = CFDGReplayBuffer(100, OBS_SPACE, ACT_SPACE, device=device, config=TINY, auto_refresh=False)
            _fill([buf], steps=20)
        for value in buf.sample(16):
            if value is not None:
                assert value.device.type == buf.device.type


# --- offline data ---------------------------------------------------------------------------------


def test_offline_actions_are_scaled_to_sb3_unit_interval() -> None:
    act_space = spaces.Box(1.0, 5.0, (1,), dtype=np.float32)
    obs_space = spaces.Box(1.0, 5.0, (1,), dtype=np.float32)
    buf = CFDGReplayBuffer(10, obs_space, act_space, device="cpu", config=TINY)
    data = {
        "observations": np.ones((3, 1)), "actions": np.array([[1.0], [3.0], [5.0]]), "rewards": np.zeros(3),
        "next_observations": np.ones((3, 1)), "terminals": np.zeros(3),
    }
    buf.add_offline(data)
    np.testing.assert_allclose(buf.augmented.offline_data().act[:, 0], [-1.0, 0.0, 1.0])
    buf.add_offline(data, actions_scaled=True)
    np.testing.assert_allclose(buf.augmented.offline_data().act[3:, 0], [1.0, 3.0, 5.0])


def test_out_of_bounds_offline_actions_are_clipped_with_warning_or_refused() -> None:
    with pytest.warns(UserWarning, match="outside the action space bounds"):
        scaled = scale_actions_to_unit(np.array([[2.0, 0.0]]), ACT_SPACE)
    np.testing.assert_array_equal(scaled, [[1.0, 0.0]])
    with pytest.raises(CFDGBufferError, match="actions"):
        scale_actions_to_unit(np.array([[2.0, 0.0]]), ACT_SPACE, clip=False)
    with pytest.raises(CFDGBufferError, match="infinite bounds"):
        scale_actions_to_unit(np.zeros((1, 2)), spaces.Box(-np.inf, np.inf, (2,)))


def test_bad_offline_data_is_rejected_and_nothing_is_stored() -> None:
    buf = CFDGReplayBuffer(10, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, offline_data=_offline(7))
    bad = _offline(5)
    bad["observations"] = bad["observations"][:, :2]
    with pytest.raises(TransitionError, match="obs"):
        buf.add_offline(bad)
    bad = _offline(5)
    bad["rewards"][2] = np.nan
    with pytest.raises(TransitionError, match="rew"):
        buf.add_offline(bad)
    with pytest.raises(CFDGBufferError, match="offline_data"):
        buf.add_offline(12345)
    assert buf.augmented.num_offline == 7


# --- spaces, memory layout, atomic adds, warnings ------------------------------------------------------


def test_a_dict_space_on_the_flat_class_points_to_the_dict_class() -> None:
    space = spaces.Dict({"observation": OBS_SPACE, "desired_goal": OBS_SPACE})
    with pytest.raises(CFDGBufferError, match="needs CFDGDictReplayBuffer"):
        CFDGReplayBuffer(10, space, ACT_SPACE, device="cpu")


def test_image_observations_are_refused_under_augmentation_and_plain_sb3_without() -> None:
    image = spaces.Box(0, 255, (3, 8, 8), dtype=np.uint8)
    for mode in ("cfdg", "unconditional"):
        with pytest.raises(ImageObservationError, match=r"image observations .*augmentation=\"none\""):
            CFDGReplayBuffer(10, image, ACT_SPACE, device="cpu", config=CFDGConfig.small(augmentation=mode))
    plain = ReplayBuffer(10, image, ACT_SPACE, device="cpu")
    ours = CFDGReplayBuffer(10, image, ACT_SPACE, device="cpu", config=CFDGConfig.small(augmentation="none"))
    assert ours.augmented is None and ours.delegates_to_parent
    rng = np.random.default_rng(0)
    for _ in range(14):  # wraps the FIFO
        o, n = rng.integers(0, 255, (2, 1, 3, 8, 8), dtype=np.uint8)
        a, r = rng.uniform(-1, 1, (1, 2)), rng.normal(size=1)
        for b in (plain, ours):
            b.add(o, n, a, r, np.zeros(1), [{}])
    for name in ("observations", "next_observations", "actions", "rewards"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(plain, name))
    np.random.seed(1)
    x = plain.sample(5)
    np.random.seed(1)
    _assert_samples_equal(x, ours.sample(5))
    with pytest.raises(CFDGBufferError, match="image observations"):
        ours.add_offline(_offline(3))


def test_image_pass_through_counts_every_env_row_as_real_online() -> None:
    image = spaces.Box(0, 255, (3, 8, 8), dtype=np.uint8)
    ours = CFDGReplayBuffer(10, image, ACT_SPACE, device="cpu", n_envs=2, config=CFDGConfig.small(augmentation="none"))
    rng = np.random.default_rng(0)
    for _ in range(3):
        o, n = rng.integers(0, 255, (2, 2, 3, 8, 8), dtype=np.uint8)
        ours.add(o, n, rng.uniform(-1, 1, (2, 2)), rng.normal(size=2), np.zeros(2), [{}, {}])
    assert ours.size() == 3  # SB3 counts steps per env
    assert ours.pool_sizes["real_online"] == 6  # two transitions per step


def test_n_step_replay_buffer_kwargs_are_refused_unless_one_step() -> None:
    from stable_baselines3 import SAC

    env = make_vec_env(DummyEnv, n_envs=1)
    with pytest.raises(CFDGBufferError, match=r"n_steps: expected 1, got 3: CFDGReplayBuffer samples one-step"):
        SAC("MlpPolicy", env, replay_buffer_class=CFDGReplayBuffer, device="cpu",
            replay_buffer_kwargs={"n_steps": 3, "gamma": 0.99, "config": TINY})
    # SB3's n_steps=1 kwargs (a one-step return) are accepted and change nothing
    model = SAC("MlpPolicy", env, replay_buffer_class=CFDGReplayBuffer, device="cpu", seed=0,
                replay_buffer_kwargs={"n_steps": 1, "gamma": 0.99, "config": TINY})
    assert isinstance(model.replay_buffer, CFDGReplayBuffer)


def test_optimize_memory_usage_keeps_sb3_layout_and_samples_then_mixes() -> None:
    kw = dict(device="cpu", optimize_memory_usage=True, handle_timeout_termination=False)
    plain = ReplayBuffer(16, OBS_SPACE, ACT_SPACE, **kw)  # type: ignore[arg-type]
    ours = CFDGReplayBuffer(16, OBS_SPACE, ACT_SPACE, **kw, config=TINY, auto_refresh=False)  # type: ignore[arg-type]
    assert not hasattr(ours, "next_observations")  # SB3's layout: next observations live in the next row
    _fill([plain, ours], steps=21)  # wraps
    np.testing.assert_array_equal(ours.observations, plain.observations)
    for seed in range(3):
        np.random.seed(seed)
        a = plain.sample(32)
        np.random.seed(seed)
        _assert_samples_equal(a, ours.sample(32))
    # The core mirrors each transition as SB3 stored it at add time: its observation row and the
    # following row (the next observation; SB3 keeps buffer_size - 1 transitions valid).
    online = ours.augmented.online_data()
    assert len(online) == 16
    np.testing.assert_array_equal(online.obs[-1], ours.observations[(ours.pos - 1) % 16, 0])
    np.testing.assert_array_equal(online.next_obs[-1], ours.observations[ours.pos % 16, 0])
    ours.add_offline(_offline(8))
    s = ours.sample(40)
    assert s.observations.shape == (40, 3) and set(np.unique(ours.last_sources)) == {0, 1}


@pytest.mark.parametrize("bad", ["nan_obs", "inf_next_obs", "nan_reward", "nan_action", "short_infos"])
def test_a_rejected_add_leaves_arrays_pool_and_position_unchanged(bad: str) -> None:
    buf = CFDGReplayBuffer(4, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, auto_refresh=False)
    _fill([buf], steps=6)  # full, wrapped: a partial write would destroy the oldest transition
    before = {n: getattr(buf, n).copy() for n in ("observations", "next_observations", "actions", "rewards",
                                                   "dones", "timeouts")}
    pos, full, core_before = buf.pos, buf.full, buf.augmented.online_data()
    obs, nxt, act = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)
    rew, infos = np.zeros(1, np.float32), [{}]
    if bad == "nan_obs":
        obs[0, 1] = np.nan
    elif bad == "inf_next_obs":
        nxt[0, 0] = np.inf
    elif bad == "nan_reward":
        rew[0] = np.nan
    elif bad == "nan_action":
        act[0, 0] = np.nan
    else:
        infos = []
    with pytest.raises((ValueError, IndexError)):
        buf.add(obs, nxt, act, rew, np.zeros(1), infos)
    for n, v in before.items():
        np.testing.assert_array_equal(getattr(buf, n), v, err_msg=n)
    assert (buf.pos, buf.full) == (pos, full)
    after = buf.augmented.online_data()
    np.testing.assert_array_equal(after.obs, core_before.obs)
    assert buf.augmented.online_added_total == 6


def test_parent_warnings_reach_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    # SB3 warns when a learn() restarts on a memory-optimised buffer (its test_warn_buffer); a subclass
    # that swallowed the parent's warnings would not be a drop-in.
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", buffer_size=100, optimize_memory_usage=True, learning_starts=10,
                replay_buffer_class=CFDGReplayBuffer,
                replay_buffer_kwargs={"handle_timeout_termination": False, "config": TINY, "auto_refresh": False},
                policy_kwargs=dict(net_arch=[8]))
    model.learn(20)
    with pytest.warns(UserWarning, match="The last trajectory in the replay buffer will be truncated"):
        model.learn(20)
    # ... and the parent's own constructor warning (not enough memory) is not swallowed either.
    import stable_baselines3.common.buffers as sb3_buffers

    class TinyMemory:  # psutil stand-in (psutil itself is optional for SB3)
        available = 1

        @staticmethod
        def virtual_memory() -> TinyMemory:
            return TinyMemory()

    monkeypatch.setattr(sb3_buffers, "psutil", TinyMemory)
    with pytest.warns(UserWarning, match="does not have apparently enough memory"):
        CFDGReplayBuffer(10, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY)


# --- pickling, generator files, reset -----------------------------------------------------------------


def test_pickle_keeps_data_and_drops_generator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    buf = CFDGReplayBuffer(200, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, offline_data=_offline(40), seed=5)
    hook_calls: list[int] = []
    buf.add_refresh_hook(lambda s: hook_calls.append(s.refresh_index))  # a lambda: unpicklable on purpose
    _fill([buf], steps=60)
    assert buf.num_refreshes == 1 and hook_calls == [1]
    gen = buf.generator
    assert gen is not None and gen.is_fitted
    blob = pickle.dumps(buf)
    gen_bytes = sum(v.numel() * v.element_size() for v in gen.state_tensors()[0].values())
    assert len(blob) < gen_bytes  # the generator's weights/optimiser are not in the pickle
    loaded: CFDGReplayBuffer = pickle.loads(blob)
    for name in ("observations", "actions", "next_observations", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(buf, name))
    assert (loaded.pos, loaded.full) == (buf.pos, buf.full)
    assert loaded.pool_sizes == buf.pool_sizes
    assert loaded.num_refreshes == 1 and loaded.augmented.online_added_total == 60
    np.testing.assert_array_equal(loaded.augmented.pool_data("synthetic_online").obs,
                                  buf.augmented.pool_data("synthetic_online").obs)
    assert loaded.generator is not None and not loaded.generator.is_fitted
    # The generator goes beside the pickle, as safetensors, and comes back exactly.
    path = tmp_path / "gen.safetensors"
    assert buf.save_generator(path)
    loaded.load_generator(path)
    assert loaded.generator is not None and loaded.generator.is_fitted
    a, _ = gen.state_tensors()
    b, _ = loaded.generator.state_tensors()
    assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a)
    assert loaded.pool_sizes == buf.pool_sizes  # load_generator kept the pools


def test_save_generator_returns_false_before_first_refresh(tmp_path) -> None:  # type: ignore[no-untyped-def]
    buf = CFDGReplayBuffer(20, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY)
    assert not buf.save_generator(tmp_path / "g.safetensors")
    assert not (tmp_path / "g.safetensors").exists()


def test_reset_empties_online_data_and_keeps_offline_pool() -> None:
    buf = CFDGReplayBuffer(100, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, offline_data=_offline(12))
    _fill([buf], steps=20)
    buf.reset()
    assert buf.size() == 0 and buf.augmented.num_online == 0 and buf.augmented.online_added_total == 0
    assert buf.augmented.num_offline == 12
    s = buf.sample(8)
    assert s.observations.shape == (8, 3) and np.all(buf.last_sources == SOURCE_REAL_OFFLINE)


def test_prefill_from_a_d4rl_file_spec_scales_nothing_for_unit_bounds() -> None:
    hopper_obs = spaces.Box(-np.inf, np.inf, (11,), dtype=np.float64)
    hopper_act = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
    buf = CFDGReplayBuffer(100, hopper_obs, hopper_act, device="cpu", config=TINY)
    assert prefill_offline(buf, str(embedded_dataset_path()), limit=100) == 100
    stored = buf.augmented.offline_data()
    ref = load_embedded()
    np.testing.assert_array_equal(stored.obs, ref.observations[:100])
    np.testing.assert_array_equal(stored.act, ref.actions[:100])  # Hopper bounds are [-1, 1]: identity
    np.testing.assert_array_equal(stored.done, ref.terminals[:100].astype(np.float32))
    with pytest.raises(TransitionError, match="obs"):
        prefill_offline(CFDGReplayBuffer(10, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY), ref)

