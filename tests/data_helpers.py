"""Test data made on the fly, shared by several test modules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import d3rlpy
    import gymnasium as gym


def random_offline_buffer(env: gym.Env, n: int) -> d3rlpy.dataset.ReplayBuffer:
    """A d3rlpy FIFO buffer holding ``n`` transitions of a uniformly random policy in ``env``
    (episodes clipped at termination or truncation, the last one left open)."""
    import d3rlpy

    buf = d3rlpy.dataset.create_fifo_replay_buffer(10_000, env=env)
    obs, _ = env.reset(seed=0)
    for _ in range(n):
        act = env.action_space.sample()
        nxt, rew, term, trunc, _ = env.step(act)
        buf.append(obs, act, float(rew))
        if term or trunc:
            buf.clip_episode(term)
            nxt, _ = env.reset()
        obs = nxt
    buf.clip_episode(False)
    return buf


def five_dim_hopper_dataset(path: Path, n: int = 200) -> Path:
    """A well-formed D4RL file whose ``env_id`` is Hopper-v4 but whose observations have 5 dimensions
    instead of 11: valid on its own, wrong for the environment it names."""
    from cfdg_aug.datasets import write_d4rl

    rng = np.random.default_rng(0)
    return Path(write_d4rl(path, {
        "observations": rng.normal(size=(n, 5)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 5)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool), "timeouts": (np.arange(n) % 50 == 49),
    }, attrs={"env_id": "Hopper-v4"}))
