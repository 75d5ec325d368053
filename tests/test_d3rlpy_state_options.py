"""d3rlpy CFDGReplayBuffer.save_state / load_state keep the parent's options (``write_at_termination``,
``cache_size``) and the termination rule, or ask for what a saved state cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

d3rlpy = pytest.importorskip("d3rlpy")

from d3rlpy.dataset import Episode, InfiniteBuffer, Signature  # noqa: E402

from cfdg_aug.config import CFDGConfig  # noqa: E402
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer  # noqa: E402
from cfdg_aug.termination import termination_rule  # noqa: E402
from tests.test_d3rlpy_buffer import ACT, OBS, TINY, signatures  # noqa: E402


def never_done(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    return np.zeros(len(obs), dtype=bool)


def offline_episode(length: int = 40) -> Episode:
    r = np.random.default_rng(0)
    return Episode(observations=r.random((length, OBS), dtype=np.float32),
                   actions=r.random((length, ACT), dtype=np.float32),
                   rewards=r.random((length, 1), dtype=np.float32), terminated=True)


def write_steps(buf: CFDGReplayBuffer, n: int, seed: int = 1) -> None:
    r = np.random.default_rng(seed)
    for _ in range(n):
        buf.append(r.random(OBS, dtype=np.float32), r.random(ACT, dtype=np.float32), float(r.random()))


def test_load_state_restores_write_at_termination(tmp_path: Path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), write_at_termination=True,
                           config=CFDGConfig.small(**TINY, augmentation="none"))
    write_steps(buf, 6)
    buf.clip_episode(True)
    buf.save_state(tmp_path / "state")
    back = CFDGReplayBuffer.load_state(tmp_path / "state")
    count, online = back.transition_count, back.augmented.num_online
    assert count == online == 6
    # As d3rlpy's writer with write_at_termination=True: nothing is visible before the episode ends.
    write_steps(back, 5, seed=2)
    assert back.transition_count == count and back.augmented.num_online == online
    back.clip_episode(True)
    assert back.transition_count == count + 5 == back.augmented.num_online


def test_load_state_restores_cache_size(tmp_path: Path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), cache_size=8,
                           config=CFDGConfig.small(**TINY, augmentation="none"))
    write_steps(buf, 4)
    buf.clip_episode(True)
    buf.save_state(tmp_path / "state")
    back = CFDGReplayBuffer.load_state(tmp_path / "state")
    write_steps(back, 8, seed=2)  # an episode of cache_size steps fits
    with pytest.raises(AssertionError, match="cache_size"):  # d3rlpy's own check, at the saved size
        write_steps(back, 1, seed=3)


def test_load_state_of_a_state_saved_without_these_keys_uses_d3rlpy_defaults(tmp_path: Path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), write_at_termination=True, cache_size=8,
                           config=CFDGConfig.small(**TINY, augmentation="none"))
    write_steps(buf, 4)
    buf.clip_episode(True)
    buf.save_state(tmp_path / "state")
    meta_path = tmp_path / "state" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("cache_size", "write_at_termination", "termination"):
        del meta[key]  # as written before they were recorded
    meta_path.write_text(json.dumps(meta))
    back = CFDGReplayBuffer.load_state(tmp_path / "state")
    write_steps(back, 9, seed=2)  # default cache_size 10000; write_at_termination False: visible at once
    assert back.transition_count == 4 + 8 == back.augmented.num_online


def test_load_state_asks_for_a_termination_callable_the_state_cannot_hold(tmp_path: Path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[offline_episode()], config=CFDGConfig.small(**TINY),
                           termination=never_done)
    write_steps(buf, 10)
    buf.save_state(tmp_path / "state")
    with pytest.raises(ValueError, match=r"termination: the state in .* was saved with the termination callable "
                                         r"'never_done'.*load_state\(directory, termination=fn\)"):
        CFDGReplayBuffer.load_state(tmp_path / "state")
    back = CFDGReplayBuffer.load_state(tmp_path / "state", termination=never_done)
    assert back.augmented is not None and back.augmented.generator.termination_fn is never_done


def test_load_state_keeps_an_env_id_termination_and_takes_a_new_one(tmp_path: Path) -> None:
    obs = 11  # Hopper's observation size: its rule applies
    sig = dict(signatures(), observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(obs,)]))
    buf = CFDGReplayBuffer(InfiniteBuffer(), **sig, config=CFDGConfig.small(**TINY), termination="Hopper-v4")
    buf.save_state(tmp_path / "state")
    back = CFDGReplayBuffer.load_state(tmp_path / "state")
    assert back.augmented.generator.termination_fn is termination_rule("Hopper-v4", obs)
    other = CFDGReplayBuffer.load_state(tmp_path / "state", termination=never_done)
    assert other.augmented.generator.termination_fn is never_done


def test_a_termination_that_is_neither_callable_nor_an_env_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="termination must be a callable.*got int"):
        CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=CFDGConfig.small(**TINY), termination=3)
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=CFDGConfig.small(**TINY))
    buf.save_state(tmp_path / "state")
    with pytest.raises(TypeError, match="termination must be a callable.*got list"):
        CFDGReplayBuffer.load_state(tmp_path / "state", termination=[1])  # type: ignore[arg-type]
