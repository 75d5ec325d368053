"""`CFDGReplayBuffer`: a d3rlpy ``ReplayBuffer`` whose mini-batches mix real and CFDG-generated data.

Drop-in: ``algo.fit_online(env, buffer=CFDGReplayBuffer(FIFOBuffer(1_000_000), env=env,
offline_dataset=dataset))`` works unchanged. The d3rlpy side of the object (the episode store,
``transition_count``, ``episodes``, ``dump`` / ``load``, ``sample_transition``,
``sample_trajectory(_batch)``, FIFO limits) is the parent class untouched; in addition every real
transition is mirrored into an :class:`~cfdg_aug.buffer.AugmentedReplayBuffer` (``.augmented``),
which owns the four pools, the refresh schedule and the mix, and ``sample_transition_batch``
returns its mixed batch, built by vectorised indexing.

Data routing:

- episodes given at construction (``episodes=``, d3rlpy's usual O2O idiom
  ``create_fifo_replay_buffer(limit, episodes=dataset.episodes)``), episodes added with
  ``append_episode``, and ``offline_dataset=`` all go to the *offline* pool (never evicted: d3rlpy's
  FIFO limit counts transitions, so a plain FIFO buffer would push offline data out);
- steps written through ``append`` / ``clip_episode`` (what ``fit_online`` calls) go to the
  *online* pool, one transition per step once its next observation is known, exactly when
  d3rlpy's writer makes the same transition visible: ``clip_episode(True)`` stores the last step
  as terminal (``next_obs = obs``, masked by ``done``), ``clip_episode(False)`` drops the last step
  as d3rlpy does (its next observation never reaches the buffer), so nothing stored is terminal
  by truncation. The online pool therefore holds the same transitions as the parent's store.

Drop-in guarantee: while the buffer holds no offline data and no refresh has happened, sampling is
delegated to the parent (same transitions, same ``np.random`` draws under the same seed).
``sample_transition`` and ``sample_trajectory(_batch)`` always stay the parent's (real episodes
only: trajectories of synthetic transitions do not exist). Only flat (1-D) observations and
continuous actions are supported; anything else is rejected at construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from d3rlpy.constants import ActionSpace
from d3rlpy.dataset import (
    BasicWriterPreprocess,
    BufferProtocol,
    Episode,
    EpisodeBase,
    FIFOBuffer,
    InfiniteBuffer,
    ReplayBuffer,
    ReplayBufferBase,
    Signature,
    TransitionMiniBatch,
)
from d3rlpy.dataset.io import dump as _d3_dump
from d3rlpy.dataset.io import load as _d3_load
from d3rlpy.dataset.trajectory_slicers import TrajectorySlicerProtocol
from d3rlpy.dataset.transition_pickers import TransitionPickerProtocol
from d3rlpy.dataset.writers import WriterPreprocessProtocol
from d3rlpy.types import GymEnv, NDArray, Observation

from cfdg_aug.buffer import AugmentedReplayBuffer, RefreshStats
from cfdg_aug.config import CFDGConfig
from cfdg_aug.transitions import SOURCE_NAMES, SOURCE_REAL_ONLINE, TransitionBatch

from ._convert import (
    episodes_to_transition_batch,
    to_transition_batch,
    transition_batch_to_episodes,
    transition_batch_to_minibatch,
)

__all__ = ["CFDGReplayBuffer", "create_fifo_cfdg_replay_buffer", "create_infinite_cfdg_replay_buffer"]

_STATE_EPISODES = "episodes.h5"
_STATE_AUGMENTED = "augmented.safetensors"
_STATE_META = "meta.json"


class CFDGReplayBuffer(ReplayBuffer):
    """d3rlpy ``ReplayBuffer`` with CFDG augmentation (see the module docstring).

    The positional/keyword arguments are d3rlpy's ``ReplayBuffer`` arguments, same order and
    defaults. CFDG options are keyword-only:

    Args:
        config: the CFDG configuration. ``None`` means :meth:`CFDGConfig.small` (the CPU
            profile): constructing the buffer the way d3rlpy constructs its own must give something
            that runs on a laptop; pass ``CFDGConfig.paper()`` on a GPU.
            ``CFDGConfig(augmentation="none")`` mixes real offline and online data only.
        offline_dataset: offline data for the never-evicted offline pool: a d3rlpy
            ``MDPDataset`` / ``ReplayBuffer``, a sequence of d3rlpy episodes, our ``OfflineDataset``
            or a ``TransitionBatch`` (or mapping of arrays). It is also added to the parent's
            episode store, so ``episodes``, ``dump`` and offline ``fit`` see it. If no ``env``,
            ``episodes`` or signatures are given, the signatures are taken from it.
        online_capacity: size of the online FIFO pool; ``None`` = the FIFO limit of ``buffer``
            when it is a ``FIFOBuffer``, else 1,000,000.
        seed: seed of the mixed sampling and of the generator.
        device: torch device of the generator.
        on_refresh: called with the :class:`~cfdg_aug.buffer.RefreshStats` after each refresh.

    Attributes:
        augmented: the core :class:`AugmentedReplayBuffer` (PEX/APL use
            ``buffer.augmented.sample_from(pool, n)``).
        source_histogram: running per-source counts of every row returned by
            ``sample_transition_batch`` (order of ``SOURCE_NAMES``).
        last_source_counts: per-source counts of the last batch.
        refresh_log: one dict per refresh (``RefreshStats.as_dict()`` plus ``online_step``).
        sample_seconds: wall time spent building batches in ``sample_transition_batch``.
    """

    augmented: AugmentedReplayBuffer

    def __init__(
        self,
        buffer: BufferProtocol,
        transition_picker: TransitionPickerProtocol | None = None,
        trajectory_slicer: TrajectorySlicerProtocol | None = None,
        writer_preprocessor: WriterPreprocessProtocol | None = None,
        episodes: Sequence[EpisodeBase] | None = None,
        env: GymEnv | None = None,
        observation_signature: Signature | None = None,
        action_signature: Signature | None = None,
        reward_signature: Signature | None = None,
        action_space: ActionSpace | None = None,
        action_size: int | None = None,
        cache_size: int = 10000,
        write_at_termination: bool = False,
        *,
        config: CFDGConfig | None = None,
        offline_dataset: Any = None,
        online_capacity: int | None = None,
        seed: int = 0,
        device: str = "cpu",
        on_refresh: Callable[[RefreshStats], None] | None = None,
        _augmented: AugmentedReplayBuffer | None = None,
    ) -> None:
        # The parent's constructor calls ``self.append_episode`` for ``episodes`` before the core
        # buffer can exist (its sizes come from the signatures the parent derives); collect them.
        self._early_episodes: list[EpisodeBase] | None = []
        self._pending: tuple[np.ndarray, np.ndarray, float] | None = None
        self._episode_steps = 0
        self._preprocessor: WriterPreprocessProtocol = writer_preprocessor or BasicWriterPreprocess()
        self.source_histogram = np.zeros(len(SOURCE_NAMES), dtype=np.int64)
        self.last_source_counts: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.refresh_log: list[dict[str, Any]] = []
        self.sample_seconds = 0.0  # wall time inside sample_transition_batch, refreshes excluded

        offline_batch: TransitionBatch | None = None
        offline_episodes: list[EpisodeBase] | None = None
        if offline_dataset is not None:
            if isinstance(offline_dataset, ReplayBufferBase):
                offline_episodes = list(offline_dataset.episodes)
            elif isinstance(offline_dataset, Sequence) and offline_dataset and hasattr(offline_dataset[0], "transition_count"):
                offline_episodes = list(offline_dataset)
            else:
                offline_batch = to_transition_batch(offline_dataset)
                offline_episodes = transition_batch_to_episodes(offline_batch)
            if not (observation_signature and action_signature and reward_signature) and not episodes and env is None:
                first = offline_episodes[0]
                observation_signature = first.observation_signature
                action_signature = first.action_signature
                reward_signature = first.reward_signature
                if action_space is None:
                    action_space = ActionSpace.CONTINUOUS
                if action_size is None:
                    action_size = int(action_signature.shape[0][0])

        super().__init__(
            buffer, transition_picker, trajectory_slicer, writer_preprocessor, episodes, env,
            observation_signature, action_signature, reward_signature, action_space, action_size,
            cache_size, write_at_termination,
        )
        info = self.dataset_info
        obs_shapes = info.observation_signature.shape
        if len(obs_shapes) != 1 or len(obs_shapes[0]) != 1:
            raise ValueError(
                f"observation_signature: CFDGReplayBuffer needs one flat observation vector, got shapes {obs_shapes}"
            )
        if info.action_space != ActionSpace.CONTINUOUS:
            raise ValueError(f"action_space: CFDGReplayBuffer needs a continuous action space, got {info.action_space}")
        self.obs_dim = int(obs_shapes[0][0])
        self.act_dim = int(info.action_size)

        if _augmented is not None:
            self.augmented = _augmented
        else:
            if online_capacity is None:
                online_capacity = int(buffer._limit) if isinstance(buffer, FIFOBuffer) else 1_000_000
            self.augmented = AugmentedReplayBuffer(
                self.obs_dim, self.act_dim, online_capacity=online_capacity,
                config=config if config is not None else CFDGConfig.small(), seed=seed, device=device,
                on_refresh=on_refresh,
            )
        self.augmented.add_hook(self._record_refresh)

        early, self._early_episodes = self._early_episodes, None
        if early:
            self._add_offline_batch(episodes_to_transition_batch(early))
        if offline_episodes is not None:
            for ep in offline_episodes:
                super().append_episode(ep)
            self._add_offline_batch(offline_batch if offline_batch is not None
                                    else episodes_to_transition_batch(offline_episodes))

    # --- configuration views ------------------------------------------------------------------
    @property
    def config(self) -> CFDGConfig:
        return self.augmented.config

    @property
    def delegating(self) -> bool:
        """True while sampling is the parent's (no offline data, no refresh yet): drop-in state."""
        return self.augmented.num_offline == 0 and self.augmented.num_refreshes == 0

    # --- writing ---------------------------------------------------------------------------------
    def _add_offline_batch(self, batch: TransitionBatch) -> None:
        self.augmented.add_offline(batch)

    def append_episode(self, episode: EpisodeBase) -> None:
        """Add a whole episode: to the parent's store and to the offline pool."""
        super().append_episode(episode)
        if self._early_episodes is not None:
            self._early_episodes.append(episode)
        elif episode.transition_count > 0:
            self._add_offline_batch(episodes_to_transition_batch([episode]))

    def append(self, observation: Observation, action: int | NDArray, reward: float | NDArray) -> None:
        """Write one environment step (d3rlpy semantics) and mirror the completed transition."""
        super().append(observation, action, reward)
        obs = np.asarray(self._preprocessor.process_observation(observation), dtype=np.float32).reshape(-1)
        act = np.asarray(action, dtype=np.float32).reshape(-1)
        rew = float(np.asarray(self._preprocessor.process_reward(np.asarray(reward))).reshape(-1)[0])
        act = np.asarray(self._preprocessor.process_action(act), dtype=np.float32).reshape(-1)
        if self._pending is not None:
            p_obs, p_act, p_rew = self._pending
            self._add_online(p_obs, p_act, p_rew, obs, 0.0)
        self._pending = (obs, act, rew)
        self._episode_steps += 1

    def clip_episode(self, terminated: bool) -> None:
        """End the current episode. ``terminated=False`` (timeout) drops the last step, as d3rlpy."""
        super().clip_episode(terminated)
        # d3rlpy ignores a clip while the active episode holds no transition yet (one step, not
        # shrunk): mirror that so both stores keep holding the same transitions.
        if self._episode_steps <= 1:
            return
        if terminated and self._pending is not None:
            p_obs, p_act, p_rew = self._pending
            self._add_online(p_obs, p_act, p_rew, p_obs, 1.0)
        self._pending = None
        self._episode_steps = 0

    def _add_online(self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, done: float) -> None:
        self.augmented.add(obs, act, np.float32(rew), next_obs, np.float32(done), False)
        # Refresh on schedule without the user calling anything.
        self.augmented.maybe_refresh()

    def _record_refresh(self, stats: RefreshStats) -> None:
        entry: dict[str, Any] = {"online_step": int(self.augmented.online_added_total)}
        entry.update(stats.as_dict())
        self.refresh_log.append(entry)

    # --- sampling -------------------------------------------------------------------------------
    def sample_transition_batch(self, batch_size: int) -> TransitionMiniBatch:
        """Mixed mini-batch (d3rlpy type). Delegates to the parent in the drop-in state."""
        self.augmented.maybe_refresh()
        t0 = time.perf_counter()
        if self.delegating:
            mb = super().sample_transition_batch(batch_size)
            counts = np.zeros(len(SOURCE_NAMES), dtype=np.int64)
            counts[SOURCE_REAL_ONLINE] = batch_size
        else:
            tb = self.augmented.sample(batch_size)
            mb = transition_batch_to_minibatch(tb)
            assert tb.source is not None
            counts = np.bincount(tb.source.astype(np.int64), minlength=len(SOURCE_NAMES))
        self.sample_seconds += time.perf_counter() - t0
        self.source_histogram += counts
        self.last_source_counts = tuple(int(c) for c in counts)  # type: ignore[assignment]
        return mb

    def source_fractions(self) -> dict[str, float]:
        """Share of each source among all rows sampled so far (zeros before the first batch)."""
        total = int(self.source_histogram.sum())
        return {n: (float(c) / total if total else 0.0) for n, c in zip(SOURCE_NAMES, self.source_histogram, strict=True)}

    def reset_source_histogram(self) -> None:
        self.source_histogram[:] = 0

    # --- d3rlpy constructors -------------------------------------------------------------------
    @classmethod
    def load(  # type: ignore[override]
        cls,
        f: BinaryIO,
        buffer: BufferProtocol,
        episode_cls: type[EpisodeBase] = Episode,
        transition_picker: TransitionPickerProtocol | None = None,
        trajectory_slicer: TrajectorySlicerProtocol | None = None,
        writer_preprocessor: WriterPreprocessProtocol | None = None,
        **cfdg_kwargs: Any,
    ) -> CFDGReplayBuffer:
        """d3rlpy's ``ReplayBuffer.load``: episodes from a ``dump`` file become offline data.

        To restore a run (online pool, synthetic pools, generator), use :meth:`load_state`.
        """
        return cls(
            buffer, episodes=_d3_load(episode_cls, f), transition_picker=transition_picker,
            trajectory_slicer=trajectory_slicer, writer_preprocessor=writer_preprocessor, **cfdg_kwargs,
        )

    # --- full state (resume) ------------------------------------------------------------------------
    def save_state(self, directory: str | os.PathLike[str]) -> Path:
        """Write everything needed to resume into ``directory`` (created if needed).

        ``episodes.h5`` (d3rlpy's own ``dump`` format: the parent's episode store),
        ``augmented.safetensors`` (the core buffer with generator and RNG), ``meta.json``. Each
        file is written to a temporary name and moved into place; ``meta.json`` is written last and
        records the sha256 of the other two, so :meth:`load_state` detects a save torn by a crash
        between the files instead of pairing a new core with old episodes. The step in progress (an
        episode not yet clipped) is not part of the state: resuming starts a new episode, as
        ``fit_online`` does.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.augmented.save(d / _STATE_AUGMENTED)
        episodes = [ep for ep in self.episodes if len(ep) > 0]
        if episodes:
            _atomic_write(d / _STATE_EPISODES, lambda fh: _d3_dump(episodes, fh))
        elif (d / _STATE_EPISODES).exists():
            (d / _STATE_EPISODES).unlink()
        buf = self.buffer
        meta = {
            "format": "cfdg_aug.d3rlpy.CFDGReplayBuffer/1",
            "buffer": {"kind": "fifo", "limit": int(buf._limit)} if isinstance(buf, FIFOBuffer) else {"kind": "infinite"},
            "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "source_histogram": self.source_histogram.tolist(),
            "refresh_log": self.refresh_log,
            "n_episodes": len(episodes),
            "sha256": {name: _sha256(d / name) for name in (_STATE_AUGMENTED, _STATE_EPISODES) if (d / name).exists()},
        }
        text = json.dumps(meta, default=_json_default)
        _atomic_write(d / _STATE_META, lambda fh: fh.write(text.encode()))
        return d

    @classmethod
    def load_state(
        cls,
        directory: str | os.PathLike[str],
        *,
        buffer: BufferProtocol | None = None,
        transition_picker: TransitionPickerProtocol | None = None,
        trajectory_slicer: TrajectorySlicerProtocol | None = None,
        writer_preprocessor: WriterPreprocessProtocol | None = None,
        device: str = "cpu",
        on_refresh: Callable[[RefreshStats], None] | None = None,
    ) -> CFDGReplayBuffer:
        """Rebuild a buffer written by :meth:`save_state` (no pickle anywhere)."""
        d = Path(directory)
        meta_path = d / _STATE_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a CFDGReplayBuffer state directory")
        meta = json.loads(meta_path.read_text())
        recorded = meta.get("sha256")  # absent in states written before hashes were recorded
        on_disk = {name: _sha256(d / name) for name in (_STATE_AUGMENTED, _STATE_EPISODES) if (d / name).exists()}
        if recorded is not None and recorded != on_disk:
            raise ValueError(
                f"{d}: the state files do not belong to the same save (a save interrupted between files?): "
                f"meta.json records {sorted(recorded)}, found {sorted(on_disk)} with other contents"
            )
        if buffer is None:
            spec = meta["buffer"]
            buffer = FIFOBuffer(int(spec["limit"])) if spec["kind"] == "fifo" else InfiniteBuffer()
        augmented = AugmentedReplayBuffer.load(d / _STATE_AUGMENTED, device=device)
        if on_refresh is not None:
            augmented.add_hook(on_refresh)
        obs_dim, act_dim = int(meta["obs_dim"]), int(meta["act_dim"])
        episodes: list[EpisodeBase] = []
        if (d / _STATE_EPISODES).exists():
            with open(d / _STATE_EPISODES, "rb") as fh:
                episodes = list(_d3_load(Episode, fh))
        self = cls(
            buffer, transition_picker, trajectory_slicer, writer_preprocessor,
            observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(obs_dim,)]),
            action_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(act_dim,)]),
            reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
            action_space=ActionSpace.CONTINUOUS, action_size=act_dim, _augmented=augmented,
        )
        # Straight into the parent's store: these transitions are already in ``augmented``.
        for ep in episodes:
            ReplayBuffer.append_episode(self, ep)
        self.source_histogram[:] = np.asarray(meta["source_histogram"], dtype=np.int64)
        self.refresh_log = list(meta["refresh_log"])
        return self


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as fh:  # h5py needs a readable handle
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_fifo_cfdg_replay_buffer(
    limit: int,
    episodes: Sequence[EpisodeBase] | None = None,
    transition_picker: TransitionPickerProtocol | None = None,
    trajectory_slicer: TrajectorySlicerProtocol | None = None,
    writer_preprocessor: WriterPreprocessProtocol | None = None,
    env: GymEnv | None = None,
    write_at_termination: bool = False,
    **cfdg_kwargs: Any,
) -> CFDGReplayBuffer:
    """``d3rlpy.dataset.create_fifo_replay_buffer`` for :class:`CFDGReplayBuffer`.

    ``limit`` bounds the parent's store and (unless ``online_capacity`` is given) the online pool;
    the offline pool is never evicted. CFDG options go in ``cfdg_kwargs``.
    """
    return CFDGReplayBuffer(
        FIFOBuffer(limit), episodes=episodes, transition_picker=transition_picker,
        trajectory_slicer=trajectory_slicer, writer_preprocessor=writer_preprocessor, env=env,
        write_at_termination=write_at_termination, **cfdg_kwargs,
    )


def create_infinite_cfdg_replay_buffer(
    episodes: Sequence[EpisodeBase] | None = None,
    transition_picker: TransitionPickerProtocol | None = None,
    trajectory_slicer: TrajectorySlicerProtocol | None = None,
    writer_preprocessor: WriterPreprocessProtocol | None = None,
    env: GymEnv | None = None,
    write_at_termination: bool = False,
    **cfdg_kwargs: Any,
) -> CFDGReplayBuffer:
    """``d3rlpy.dataset.create_infinite_replay_buffer`` for :class:`CFDGReplayBuffer`."""
    return CFDGReplayBuffer(
        InfiniteBuffer(), episodes=episodes, transition_picker=transition_picker,
        trajectory_slicer=trajectory_slicer, writer_preprocessor=writer_preprocessor, env=env,
        write_at_termination=write_at_termination, **cfdg_kwargs,
    )
