"""A rejected add changes nothing: random sequences of valid and invalid adds, against the parent.

The parent (SB3's ``ReplayBuffer``, d3rlpy's ``ReplayBuffer``) receives the valid steps only; our
class receives every step, must raise on each invalid one, and must end up in the parent's exact
state (arrays, position, episodes) with a core online pool that mirrors it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfdg_aug.config import CFDGConfig

CONFIG = CFDGConfig.small(width=32, depth=1, train_steps=30, num_sample_steps=4, redraw_steps=4, redraw_resample=2, synthetic_online_size=16,
                          synthetic_offline_size=8, refresh_every=10_000, min_online=10_000)
# derandomize: the same examples on every run (same seed, same run), still 25 random sequences per test
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# A step: (valid?, which corruption if invalid, seed of its values)
steps_strategy = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["nan_obs", "inf_next_obs", "nan_reward", "bad_action"]),
              st.integers(0, 2**31 - 1)),
    min_size=1, max_size=25,
)


# --- stable-baselines3 ---------------------------------------------------------------------------------
@given(steps=steps_strategy, n_envs=st.sampled_from([1, 2]), size=st.integers(2, 5),
       discrete=st.booleans(), optimize=st.booleans())
@SETTINGS
def test_sb3_random_adds_end_in_the_parents_state(steps, n_envs, size, discrete, optimize) -> None:  # type: ignore[no-untyped-def]
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    from cfdg_aug.integrations.sb3 import CFDGReplayBuffer

    obs_space = spaces.Discrete(5) if discrete else spaces.Box(-5, 5, (3,), dtype=np.float32)
    act_space = spaces.Discrete(3) if discrete else spaces.Box(-1, 1, (2,), dtype=np.float32)
    kw = dict(device="cpu", n_envs=n_envs, optimize_memory_usage=optimize, handle_timeout_termination=not optimize)
    parent = ReplayBuffer(size * n_envs, obs_space, act_space, **kw)  # type: ignore[arg-type]
    ours = CFDGReplayBuffer(size * n_envs, obs_space, act_space, **kw, config=CONFIG, seed=0)  # type: ignore[arg-type]
    added = 0
    for valid, corruption, seed in steps:
        r = np.random.default_rng(seed)
        if discrete:
            obs, nxt = r.integers(0, 5, n_envs), r.integers(0, 5, n_envs)
            act = r.integers(0, 3, (n_envs, 1))
        else:
            obs, nxt = r.normal(size=(2, n_envs, 3)).astype(np.float32)
            act = r.uniform(-1, 1, (n_envs, 2)).astype(np.float32)
        rew = r.normal(size=n_envs).astype(np.float32)
        done = r.random(n_envs) < 0.3
        infos = [{"TimeLimit.truncated": bool(r.random() < 0.5)} for _ in range(n_envs)]
        if valid:
            for b in (parent, ours):
                b.add(obs.copy(), nxt.copy(), act.copy(), rew, done, infos)
            added += n_envs
            continue
        if corruption == "bad_action":
            act = act.astype(np.float64) if not discrete else act
            act[-1] = 7 if discrete else np.nan  # outside Discrete(3) / not finite
        elif discrete:  # an int observation cannot be NaN: use a value outside Discrete(5)
            (obs if corruption == "nan_obs" else nxt)[-1] = 9
            if corruption == "nan_reward":
                rew[-1] = np.nan
        elif corruption == "nan_obs":
            obs[-1, 0] = np.nan
        elif corruption == "inf_next_obs":
            nxt[-1, 1] = np.inf
        else:
            rew[-1] = np.nan
        with pytest.raises(ValueError):
            ours.add(obs, nxt, act, rew, done, infos)
    names = ["observations", "actions", "rewards", "dones", "timeouts"] + ([] if optimize else ["next_observations"])
    for name in names:
        np.testing.assert_array_equal(getattr(ours, name), getattr(parent, name), err_msg=name)
    assert (ours.pos, ours.full) == (parent.pos, parent.full)
    core = ours.augmented
    assert core.online_added_total == added
    assert core.num_online == min(added, size * n_envs)
    # The core's online rows are the parent's stored rows, oldest first (step-major, env-minor).
    rows = ours.size() * n_envs
    order = np.r_[parent.pos:size, 0:parent.pos] if parent.full else np.arange(parent.pos)
    stored_act = parent.actions[order].reshape(rows, parent.action_dim)
    np.testing.assert_array_equal(ours.act_encoding.decode(core.online_data().act), stored_act.astype(np.float32))


# --- d3rlpy ------------------------------------------------------------------------------------------------
@given(steps=steps_strategy, discrete=st.booleans(), clips=st.lists(st.booleans(), min_size=25, max_size=25),
       ends=st.lists(st.integers(0, 4), min_size=25, max_size=25))
@SETTINGS
def test_d3rlpy_random_appends_end_in_the_parents_state(steps, discrete, clips, ends) -> None:  # type: ignore[no-untyped-def]
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import InfiniteBuffer, ReplayBuffer, Signature

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, episodes_to_transition_batch

    sig = dict(
        observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(3,)]),
        action_signature=Signature(dtype=[np.dtype(np.int64 if discrete else np.float32)], shape=[(1,) if discrete else (2,)]),
        reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
        action_space=ActionSpace.DISCRETE if discrete else ActionSpace.CONTINUOUS,
        action_size=3 if discrete else 2,
    )
    parent = ReplayBuffer(InfiniteBuffer(), **sig)  # type: ignore[arg-type]
    ours = CFDGReplayBuffer(InfiniteBuffer(), **sig, config=CONFIG)  # type: ignore[arg-type]
    for i, (valid, corruption, seed) in enumerate(steps):
        r = np.random.default_rng(seed)
        obs = r.normal(size=3).astype(np.float32)
        act = np.array([r.integers(0, 3)]) if discrete else r.uniform(-1, 1, 2).astype(np.float32)
        rew = float(r.normal())
        if valid:
            for b in (parent, ours):
                b.append(obs, act, rew)
            if ends[i] == 0:  # end the episode now and then (terminal or truncated)
                for b in (parent, ours):
                    b.clip_episode(clips[i])
            continue
        if corruption == "bad_action":
            act = np.array([5]) if discrete else np.array([np.nan, 0.0], np.float32)
        elif corruption == "nan_reward":
            rew = float("nan")
        else:
            obs[0] = np.nan if corruption == "nan_obs" else np.inf
        with pytest.raises(ValueError):
            ours.append(obs, act, rew)
    for b in (parent, ours):
        b.clip_episode(True)
    assert ours.transition_count == parent.transition_count
    assert len(ours.episodes) == len(parent.episodes)
    for a, b in zip(ours.episodes, parent.episodes, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.terminated == b.terminated
    eps = [ep for ep in parent.episodes if ep.transition_count > 0]
    if eps:
        expected = episodes_to_transition_batch(eps)
        got = ours.augmented.online_data()
        np.testing.assert_array_equal(got.obs, expected.obs)
        np.testing.assert_array_equal(ours.act_encoding.decode(got.act), expected.act.astype(np.float32))
        np.testing.assert_array_equal(got.done, expected.done)
    else:
        assert ours.augmented.num_online == 0
