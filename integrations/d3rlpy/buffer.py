"""`CFDGReplayBuffer`: a d3rlpy ``ReplayBuffer`` whose mini-batches mix real and CFDG-generated data.

Drop-in: ``algo.fit_online(env, buffer=CFDGReplayBuffer(FIFOBuffer(1_000_000), env=env,
offline_dataset=dataset))`` works unchanged. The d3rlpy side of the object (the episode store,
``transition_count``, ``episodes``, ``dump`` / ``load``, ``sample_transition``,
``sample_trajectory(_batch)``, FIFO limits) is the parent class untouched; in addition every real
transition is mirrored into an :class:`~cfdg_aug.buffer.AugmentedReplayBuffer` (``.augmented``),
which owns the four pools, the refresh schedule and the mix, and ``sample_transition_batch``
returns its mixed batch.

Data routing:

- episodes given at construction (``episodes=``, d3rlpy's usual O2O idiom
  ``create_fifo_replay_buffer(limit, episodes=dataset.episodes)``), episodes added with
  ``append_episode``, and ``offline_dataset=`` all go to the *offline* pool (never evicted: d3rlpy's
  FIFO limit counts transitions, so a plain FIFO buffer would push offline data out);
- steps written through ``append`` / ``clip_episode`` (what ``fit_online`` calls) go to the
  *online* pool, one transition per step once its next observation is known, exactly when
  d3rlpy's writer makes the same transition visible (at ``clip_episode`` with
  ``write_at_termination=True``): ``clip_episode(True)`` stores the last step as terminal
  (``next_obs = obs``, masked by ``done``), ``clip_episode(False)`` drops the last step as d3rlpy
  does (its next observation never reaches the buffer), so nothing stored is terminal by
  truncation. The online pool therefore holds the same transitions as the parent's store.

Spaces (:mod:`cfdg_aug.integrations.spaces`): observations are one array or a tuple of arrays
(``observation_signature`` with several shapes), each flattened and concatenated for the
generator and split back in the mini-batch; with ``env=`` a ``Box`` observation space gives its
bounds and a ``Discrete`` / ``MultiDiscrete`` / ``MultiBinary`` one is one-hot / bit encoded.
Continuous actions are clipped to the env's ``action_space`` bounds (or ``action_bounds=``, else
the data's range); discrete actions (``ActionSpace.DISCRETE``, DQN / DoubleDQN / DiscreteCQL) are
one-hot for the generator and returned as indices ``(B, 1)``, as d3rlpy stores them. Image
observations cannot be augmented: refused at construction unless ``augmentation="none"``, where
the buffer is exactly its parent.

Transition pickers: with the default ``BasicTransitionPicker`` the mixed batch is built by
vectorised indexing. Any other picker (``MultiStepTransitionPicker``, ``SparseRewardTransitionPicker``,
your own) is applied to every real row, exactly as the parent applies it (n-step intervals and
discounted rewards included); synthetic rows are one-step transitions (``intervals`` 1).
``FrameStackTransitionPicker`` needs past frames, which a synthetic transition does not have: it
is refused under augmentation.

Drop-in guarantee: while the buffer holds no offline data and no refresh has happened, sampling is
delegated to the parent (same transitions, same ``np.random`` draws under the same seed).
``sample_transition`` and ``sample_trajectory(_batch)`` always stay the parent's (real episodes
only: trajectories of synthetic transitions do not exist). A rejected ``append`` (non-finite
values, a discrete action outside ``[0, action_size)``) raises before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from d3rlpy.constants import ActionSpace
from d3rlpy.dataset import (
    BasicTransitionPicker,
    BasicWriterPreprocess,
    BufferProtocol,
    Episode,
    EpisodeBase,
    FIFOBuffer,
    FrameStackTransitionPicker,
    InfiniteBuffer,
    ReplayBuffer,
    ReplayBufferBase,
    Signature,
    TransitionMiniBatch,
    detect_action_space,
)
from d3rlpy.dataset.io import dump as _d3_dump
from d3rlpy.dataset.io import load as _d3_load
from d3rlpy.dataset.trajectory_slicers import TrajectorySlicerProtocol
from d3rlpy.dataset.transition_pickers import TransitionPickerProtocol
from d3rlpy.dataset.writers import WriterPreprocessProtocol
from d3rlpy.types import GymEnv, NDArray, Observation

from cfdg_aug._io import atomic_write_with, file_sha256
from cfdg_aug.buffer import AugmentedReplayBuffer, BufferFileError, RefreshStats
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.generator import Progress, check_progress
from cfdg_aug.spaces import DiscreteSegment, SpaceEncoding
from cfdg_aug.termination import TerminationFn
from cfdg_aug.transitions import (
    SOURCE_NAMES,
    SOURCE_REAL_OFFLINE,
    SOURCE_REAL_ONLINE,
    SOURCE_SYNTHETIC_OFFLINE,
    SOURCE_SYNTHETIC_ONLINE,
    TransitionBatch,
    TransitionError,
)

from .._seeding import peek_np_seed
from ..spaces import FlatLayout, encoding_from_space, is_image_shape, refuse_images
from ._convert import (
    NO_TRANSITIONS,
    episodes_to_transition_batch,
    to_transition_batch,
    transition_batch_to_episodes,
    transition_batch_to_minibatch,
)

__all__ = ["CFDGReplayBuffer", "create_fifo_cfdg_replay_buffer", "create_infinite_cfdg_replay_buffer"]

_STATE_EPISODES = "episodes.h5"
_STATE_AUGMENTED = "augmented.safetensors"
_STATE_META = "meta.json"


def _env_id(env: GymEnv | None) -> str | None:
    """The env's registered id (its termination rule is looked up by it), or None."""
    spec = getattr(getattr(env, "unwrapped", env), "spec", None) or getattr(env, "spec", None)
    return getattr(spec, "id", None)


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
        seed: seed of the mixed sampling and of the generator. None (default) derives it from
            ``np.random`` *without advancing it*: ``d3rlpy.seed(n)`` seeds ``np.random`` before the
            buffer is built, so runs with different d3rlpy seeds draw different batches and fit
            different generators, and the parent's own sample stream is untouched.
        device: torch device of the generator.
        on_refresh: called with the :class:`~cfdg_aug.buffer.RefreshStats` after each refresh.
        action_bounds: ``(low, high)`` of continuous actions (scalars or per-dimension) when no
            ``env`` gives them; synthetic actions are clipped to them (None = the data's range).
        termination: the done flag of synthetic transitions: a callable ``(obs, act, next_obs) ->
            bool (N,)`` or an env id whose termination rule is known (:mod:`cfdg_aug.termination`).
            None = the rule of ``env`` (by its spec id) when known, else a classifier fitted on the
            real transitions. :meth:`save_state` keeps an env id; a callable must be given again to
            :meth:`load_state`.
        refresh_progress: how refreshes (triggered on schedule inside ``append`` /
            ``clip_episode`` / ``sample_transition_batch``; seconds to minutes) report their
            progress: ``False`` (default) silent, ``True`` a tqdm bar per stage on stderr
            (``"refresh 2: fitting generator"``), or a callable ``fn(stage: str, done: int, total:
            int)`` called with ``done = 0`` when a stage starts, as it advances, and with
            ``done == total`` when it ends (:mod:`cfdg_aug.buffer`, "Progress of a refresh", lists
            the stages). Also settable later as ``buffer.augmented.refresh_progress``.

    Raises:
        ConfigError: the online pool (``online_capacity``, by default the ``FIFOBuffer`` limit) and
            the synthetic pools would need more memory than is available.

    Attributes:
        augmented: the core :class:`AugmentedReplayBuffer` (PEX/APL use
            ``buffer.augmented.sample_from(pool, n)``); None only for image observations under
            ``augmentation="none"``, where the buffer is exactly its parent.
        obs_encoding, act_encoding: the :class:`~cfdg_aug.spaces.SpaceEncoding` of one observation
            (flattened) and one action; ``obs_layout`` splits a flat observation into its parts.
        source_histogram: running per-source counts of every row returned by
            ``sample_transition_batch`` (order of ``SOURCE_NAMES``).
        last_source_counts: per-source counts of the last batch.
        refresh_log: one dict per refresh (``RefreshStats.as_dict()`` plus ``online_step``).
        sample_seconds: wall time spent building batches in ``sample_transition_batch``.
    """

    augmented: AugmentedReplayBuffer | None
    obs_encoding: SpaceEncoding
    act_encoding: SpaceEncoding

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
        seed: int | None = None,
        device: str = "cpu",
        on_refresh: Callable[[RefreshStats], None] | None = None,
        action_bounds: tuple[Any, Any] | None = None,
        termination: TerminationFn | str | None = None,
        refresh_progress: Progress = False,
        _augmented: AugmentedReplayBuffer | None = None,
    ) -> None:
        if config is not None and not isinstance(config, CFDGConfig):
            raise TypeError(f"config must be a CFDGConfig or None, got {type(config).__name__}")
        check_progress("refresh_progress", refresh_progress)
        _check_termination(termination)
        config = _augmented.config if _augmented is not None else (config if config is not None else CFDGConfig.small())
        # The parent's constructor calls ``self.append_episode`` for ``episodes`` before the core
        # buffer can exist (its sizes come from the signatures the parent derives); collect them.
        self._early_episodes: list[EpisodeBase] | None = []
        self._pending: tuple[np.ndarray, np.ndarray, float] | None = None
        self._episode_rows: list[tuple[np.ndarray, np.ndarray, float, np.ndarray, float, int]] = []
        self._episode_steps = 0
        self._preprocessor: WriterPreprocessProtocol = writer_preprocessor or BasicWriterPreprocess()
        self._write_at_termination = bool(write_at_termination)
        self._cache_size = cache_size  # for save_state: the parent keeps it only inside its writer
        self.source_histogram = np.zeros(len(SOURCE_NAMES), dtype=np.int64)
        self.last_source_counts: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.refresh_log: list[dict[str, Any]] = []
        self.sample_seconds = 0.0  # wall time inside sample_transition_batch, refreshes excluded
        self.augmented = None
        self._passthrough = False
        self._config = config

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
                    # As d3rlpy decides it from episodes: integer actions are discrete.
                    action_space = detect_action_space(first.actions) if offline_batch is None else ActionSpace.CONTINUOUS
                if action_size is None:
                    action_size = (int(action_signature.shape[0][0]) if action_space == ActionSpace.CONTINUOUS
                                   else 1 + max(int(np.max(ep.actions)) for ep in offline_episodes))

        super().__init__(
            buffer, transition_picker, trajectory_slicer, writer_preprocessor, episodes, env,
            observation_signature, action_signature, reward_signature, action_space, action_size,
            cache_size, write_at_termination,
        )
        info = self.dataset_info
        # What the writer stores (after the preprocessor), as d3rlpy computes it.
        stored = getattr(getattr(self, "_writer", None), "_observation_signature", info.observation_signature)
        shapes = [tuple(int(d) for d in sh) for sh in stored.shape]
        dtypes = list(stored.dtype)
        self.obs_layout = (FlatLayout.array(shapes[0], dtypes[0]) if len(shapes) == 1
                           else FlatLayout.tuple_of(shapes, dtypes))
        images = [(f"observation_signature[{i}]" if len(shapes) > 1 else "observation_signature", sh, dt)
                  for i, (sh, dt) in enumerate(zip(shapes, dtypes, strict=True)) if is_image_shape(sh, dt)]
        picker = self.transition_picker
        self._basic_picker = type(picker) is BasicTransitionPicker
        if config.augmentation != "none":
            refuse_images(images)
            if isinstance(picker, FrameStackTransitionPicker):
                raise ValueError(
                    "transition_picker: FrameStackTransitionPicker stacks past frames, which a synthetic "
                    "transition does not have; use BasicTransitionPicker or MultiStepTransitionPicker, or "
                    "config=CFDGConfig(augmentation=\"none\")"
                )
        self.obs_dim = int(self.obs_layout.raw_dim)
        self.discrete_actions = info.action_space == ActionSpace.DISCRETE
        self.act_dim = 1 if self.discrete_actions else int(info.action_size)
        self.cfdg_seed = int(_augmented.seed if _augmented is not None else seed if seed is not None else peek_np_seed())
        if images:  # augmentation="none" with images: the parent, untouched
            self._passthrough = True
            self._early_episodes = None
            self.obs_encoding = self.act_encoding = None  # type: ignore[assignment]
            if offline_episodes is not None:
                for ep in offline_episodes:
                    super().append_episode(ep)
            return
        reward_shape = tuple(int(d) for d in info.reward_signature.shape[0])
        if int(np.prod(reward_shape)) != 1:
            raise ValueError(f"reward_signature: expected one reward per step (shape (1,)), got shape {reward_shape}; "
                             "CFDGReplayBuffer mixes and generates scalar rewards")

        if _augmented is not None:
            self.augmented = _augmented
            self.obs_encoding = _augmented.obs_encoding
            self.act_encoding = _augmented.act_encoding
            if refresh_progress:
                _augmented.refresh_progress = refresh_progress
        else:
            self.obs_encoding = self._observation_encoding(env)
            self.act_encoding = self._action_encoding(env, action_bounds)
            from_limit = online_capacity is None and isinstance(buffer, FIFOBuffer)
            if online_capacity is None:
                online_capacity = int(buffer._limit) if isinstance(buffer, FIFOBuffer) else 1_000_000
            try:
                self.augmented = AugmentedReplayBuffer(
                    self.obs_encoding.dim, self.act_encoding.dim, online_capacity=online_capacity,
                    config=config, seed=self.cfdg_seed, device=device, on_refresh=on_refresh,
                    obs_encoding=self.obs_encoding, act_encoding=self.act_encoding,
                    termination=termination if termination is not None else _env_id(env),
                    refresh_progress=refresh_progress,
                )
            except ConfigError as e:
                if not from_limit:
                    raise
                raise ConfigError(f"{e} (online_capacity is the FIFOBuffer limit unless given)") from None
        self.augmented.add_hook(self._record_refresh)
        # Real rows by reference, for pickers other than the basic one: offline episodes in pool
        # order, and (episode, index) per slot of the online ring.
        self._offline_eps: list[EpisodeBase] = []
        self._offline_ends = np.zeros(0, dtype=np.int64)
        cap = self.augmented.online_capacity
        self._online_ep = np.empty(cap if not self._basic_picker else 0, dtype=object)
        self._online_idx = np.zeros(cap if not self._basic_picker else 0, dtype=np.int64)

        early, self._early_episodes = self._early_episodes, None
        if early:
            self._add_offline_episodes(early)
        if offline_episodes is not None:
            for ep in offline_episodes:
                super().append_episode(ep)
            self._add_offline_episodes(offline_episodes, offline_batch)

    # --- encodings -----------------------------------------------------------------------------
    def _observation_encoding(self, env: GymEnv | None) -> SpaceEncoding:
        if env is not None and self.obs_layout.kind == "array":
            try:
                enc = encoding_from_space(env.observation_space, "env.observation_space")
            except ValueError:
                enc = None
            if enc is not None and enc.raw_dim == self.obs_layout.raw_dim:
                return enc
        return SpaceEncoding.concat(SpaceEncoding.box(size) for size in self.obs_layout.sizes)

    def _action_encoding(self, env: GymEnv | None, bounds: tuple[Any, Any] | None) -> SpaceEncoding:
        if self.discrete_actions:
            return SpaceEncoding((DiscreteSegment(int(self.dataset_info.action_size)),))
        if bounds is None and env is not None and type(env.action_space).__name__ == "Box":
            bounds = (np.asarray(env.action_space.low).reshape(-1), np.asarray(env.action_space.high).reshape(-1))
        if bounds is None:
            return SpaceEncoding.box(self.act_dim)
        return SpaceEncoding.box(self.act_dim, bounds[0], bounds[1])

    def _encode(self, batch: TransitionBatch) -> TransitionBatch:
        """Raw rows (flat observations, actions as d3rlpy stores them) -> encoded rows for the core."""
        return TransitionBatch.validated(TransitionBatch(
            obs=self.obs_encoding.encode(batch.obs), act=self.act_encoding.encode(batch.act), rew=batch.rew,
            next_obs=self.obs_encoding.encode(batch.next_obs), done=batch.done, timeout=batch.timeout,
        ))

    def _decode(self, batch: TransitionBatch) -> TransitionBatch:
        return TransitionBatch(
            obs=self.obs_encoding.decode(batch.obs), act=self.act_encoding.decode(batch.act), rew=batch.rew,
            next_obs=self.obs_encoding.decode(batch.next_obs), done=batch.done, timeout=batch.timeout,
            source=batch.source,
        )

    # --- configuration views ------------------------------------------------------------------
    @property
    def config(self) -> CFDGConfig:
        return self.augmented.config if self.augmented is not None else self._config

    @property
    def delegating(self) -> bool:
        """True while sampling is the parent's (no offline data, no refresh yet): drop-in state."""
        core = self.augmented
        return core is None or (core.num_offline == 0 and core.num_refreshes == 0)

    # --- writing ---------------------------------------------------------------------------------
    def _add_offline_episodes(self, episodes: Sequence[EpisodeBase], batch: TransitionBatch | None = None) -> None:
        episodes = [ep for ep in episodes if ep.transition_count > 0]
        if not episodes:
            return
        assert self.augmented is not None
        if batch is None:
            batch = episodes_to_transition_batch(episodes, obs_layout=self.obs_layout)
        self.augmented.add_offline(self._encode(batch))
        # Only after the core accepted them: the references stay aligned with the pool's rows.
        counts = np.array([ep.transition_count for ep in episodes], dtype=np.int64)
        start = int(self._offline_ends[-1]) if len(self._offline_ends) else 0
        self._offline_eps.extend(episodes)
        self._offline_ends = np.concatenate([self._offline_ends, start + np.cumsum(counts)])

    def append_episode(self, episode: EpisodeBase) -> None:
        """Add a whole episode: to the parent's store and to the offline pool."""
        if self._early_episodes is not None:
            super().append_episode(episode)
            self._early_episodes.append(episode)
            return
        if not self._passthrough and episode.transition_count > 0:
            # Validate (and encode) before the parent stores anything: a rejected episode changes nothing.
            batch = episodes_to_transition_batch([episode], obs_layout=self.obs_layout)
            self._encode(batch)
            super().append_episode(episode)
            self._add_offline_episodes([episode], batch)
        else:
            super().append_episode(episode)

    def _raw_step(self, observation: Observation, action: int | NDArray, reward: float | NDArray
                  ) -> tuple[np.ndarray, np.ndarray, float]:
        """One step as raw flat rows, validated (raises before anything is written)."""
        obs_p = self._preprocessor.process_observation(observation)
        try:
            obs = self.obs_layout.flatten(obs_p if self.obs_layout.kind != "array" else np.asarray(obs_p), 1)
        except (ValueError, TypeError) as e:
            raise TransitionError(f"observation: {e}") from None
        act = np.asarray(action, dtype=np.float64)
        if act.ndim == 0:
            act = act.reshape(1)
        act = np.asarray(self._preprocessor.process_action(act), dtype=np.float64).reshape(1, -1)
        rew = np.asarray(self._preprocessor.process_reward(np.asarray(reward, dtype=np.float64)), dtype=np.float64)
        if act.shape[1] != self.act_dim:
            raise TransitionError(f"action must have {self.act_dim} component(s), got shape {np.shape(action)}")
        for name, v in (("observation", obs), ("action", act), ("reward", rew)):
            if not np.isfinite(v).all():
                raise TransitionError(f"{name} must be finite, got {v.reshape(-1)[:8]}")
        self.obs_encoding.encode(obs)
        self.act_encoding.encode(act)  # a discrete action outside [0, action_size) raises here
        return obs[0].astype(np.float32), act[0].astype(np.float32), float(rew.reshape(-1)[0])

    def append(self, observation: Observation, action: int | NDArray, reward: float | NDArray) -> None:
        """Write one environment step (d3rlpy semantics) and mirror the completed transition.

        The step is validated before the parent writes it: a rejected step changes nothing."""
        if self._passthrough:
            super().append(observation, action, reward)
            return
        obs, act, rew = self._raw_step(observation, action, reward)
        super().append(observation, action, reward)
        if self._pending is not None:
            p_obs, p_act, p_rew = self._pending
            index = self._episode_steps - 1  # the transition d3rlpy's writer just made visible
            self._emit(p_obs, p_act, p_rew, obs, 0.0, index)
        self._pending = (obs, act, rew)
        self._episode_steps += 1

    def clip_episode(self, terminated: bool) -> None:
        """End the current episode. ``terminated=False`` (timeout) drops the last step, as d3rlpy."""
        if self._passthrough:
            super().clip_episode(terminated)
            return
        active = getattr(getattr(self, "_writer", None), "_active_episode", None)
        super().clip_episode(terminated)
        # d3rlpy ignores a clip while the active episode holds no transition yet (one step, not
        # shrunk): mirror that so both stores keep holding the same transitions.
        if self._episode_steps <= 1:
            return
        if terminated and self._pending is not None:
            p_obs, p_act, p_rew = self._pending
            self._emit(p_obs, p_act, p_rew, p_obs, 1.0, self._episode_steps - 1, episode=active)
        if self._write_at_termination:
            for row in self._episode_rows:
                self._add_online(*row, episode=active)
        self._episode_rows = []
        self._pending = None
        self._episode_steps = 0

    def _emit(self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, done: float, index: int,
              *, episode: Any = None) -> None:
        """A transition d3rlpy's writer has made (or, with ``write_at_termination``, will make) visible;
        ``episode``: the episode object holding it (default: the writer's active episode)."""
        if episode is None:
            episode = getattr(getattr(self, "_writer", None), "_active_episode", None)
        if self._write_at_termination:  # d3rlpy makes them visible at clip_episode only
            self._episode_rows.append((obs, act, rew, next_obs, done, index))
        else:
            self._add_online(obs, act, rew, next_obs, done, index, episode=episode)

    def _add_online(self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, done: float,
                    index: int, *, episode: Any = None) -> None:
        core = self.augmented
        assert core is not None
        if not self._basic_picker:
            slot = core.online_added_total % core.online_capacity
            self._online_ep[slot] = episode
            self._online_idx[slot] = index
        enc = self.obs_encoding.encode
        core.add(enc(obs[None]), self.act_encoding.encode(act[None]), np.array([rew], np.float32),
                 enc(next_obs[None]), np.array([done], np.float32), np.zeros(1, dtype=bool))
        # Refresh on schedule without the user calling anything.
        core.maybe_refresh()

    def _record_refresh(self, stats: RefreshStats) -> None:
        assert self.augmented is not None
        entry: dict[str, Any] = {"online_step": int(self.augmented.online_added_total)}
        entry.update(stats.as_dict())
        self.refresh_log.append(entry)

    # --- sampling -------------------------------------------------------------------------------
    def sample_transition_batch(self, batch_size: int) -> TransitionMiniBatch:
        """Mixed mini-batch (d3rlpy type). Delegates to the parent in the drop-in state.

        Real rows go through the buffer's transition picker (vectorised for the basic one);
        synthetic rows are one-step transitions (``intervals`` 1). Rows are ordered by source.
        """
        core = self.augmented
        if core is not None:
            core.maybe_refresh()
        t0 = time.perf_counter()
        if not self.delegating:
            _refuse_unsupported_algo(sys._getframe(1).f_locals.get("self"))
        if self.delegating:
            mb = super().sample_transition_batch(batch_size)
            counts = np.zeros(len(SOURCE_NAMES), dtype=np.int64)
            counts[SOURCE_REAL_ONLINE] = batch_size
        elif self._basic_picker:
            assert core is not None
            tb = core.sample(batch_size)
            mb = transition_batch_to_minibatch(self._decode(tb), obs_layout=self.obs_layout)
            assert tb.source is not None
            counts = np.bincount(tb.source.astype(np.int64), minlength=len(SOURCE_NAMES))
        else:
            mb, counts = self._sample_with_picker(batch_size)
        self.sample_seconds += time.perf_counter() - t0
        self.source_histogram += counts
        self.last_source_counts = tuple(int(c) for c in counts)  # type: ignore[assignment]
        return mb

    def _sample_with_picker(self, batch_size: int) -> tuple[TransitionMiniBatch, np.ndarray]:
        core = self.augmented
        assert core is not None
        counts = np.asarray(core.source_counts(batch_size), dtype=np.int64)
        picker = self.transition_picker
        transitions = []
        k_off, k_on = int(counts[SOURCE_REAL_OFFLINE]), int(counts[SOURCE_REAL_ONLINE])
        if k_off:
            rows = np.minimum((core.rng.random(k_off) * core.num_offline).astype(np.int64), core.num_offline - 1)
            eps = np.searchsorted(self._offline_ends, rows, side="right")
            starts = np.concatenate([[0], self._offline_ends[:-1]])
            transitions += [picker(self._offline_eps[e], int(r - starts[e])) for e, r in zip(eps, rows, strict=True)]
        if k_on:
            slots = np.minimum((core.rng.random(k_on) * core.num_online).astype(np.int64), core.num_online - 1)
            transitions += [picker(self._online_ep[s], int(self._online_idx[s])) for s in slots]
        parts = []
        if transitions:
            real = TransitionMiniBatch.from_transitions(transitions)
            shapes = real.observation_shape
            want = (self.obs_layout.shapes[0] if self.obs_layout.kind == "array" else list(self.obs_layout.shapes))
            if (tuple(shapes) if self.obs_layout.kind == "array" else [tuple(s) for s in shapes]) != want:
                raise ValueError(
                    f"transition_picker: {type(picker).__name__} returns observations of shape {shapes}, but the "
                    f"buffer's observations (and its synthetic transitions) have shape {want}; it cannot be mixed"
                )
            parts.append(real)
        for src in (SOURCE_SYNTHETIC_OFFLINE, SOURCE_SYNTHETIC_ONLINE):
            if counts[src]:
                tb = self._decode(core.sample_from(src, int(counts[src])))
                parts.append(transition_batch_to_minibatch(tb, obs_layout=self.obs_layout))
        return _concat_minibatches(parts), counts

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
        ``augmented.safetensors`` (the core buffer with generator, RNG and space encodings),
        ``meta.json``. Each file is written to a temporary name and moved into place; ``meta.json``
        is written last and records the sha256 of the other two, so :meth:`load_state` detects a
        save torn by a crash between the files instead of pairing a new core with old episodes.
        The step in progress (an episode not yet clipped) is not part of the state: resuming starts
        a new episode, as ``fit_online`` does. Only buffers with the basic transition picker can be
        saved (the references other pickers need are not part of the state).

        The parent's ``cache_size`` and ``write_at_termination`` are saved and restored. The
        termination rule is saved when it is an env id; a callable cannot be, so ``meta.json``
        records that there was one and :meth:`load_state` asks for it (``termination=``).
        """
        if self.augmented is None:
            raise ValueError("save_state: image observations without augmentation hold no CFDG state; use dump()")
        if not self._basic_picker:
            raise ValueError(
                f"save_state: a buffer with {type(self.transition_picker).__name__} cannot be saved for resuming "
                "(its real rows are picked from episode references that the state does not hold); use "
                "BasicTransitionPicker, or dump() the episodes"
            )
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.augmented.save(d / _STATE_AUGMENTED)
        episodes = [ep for ep in self.episodes if len(ep) > 0]
        if episodes:
            _atomic_write(d / _STATE_EPISODES, lambda fh: _d3_dump(episodes, fh))
        elif (d / _STATE_EPISODES).exists():
            (d / _STATE_EPISODES).unlink()
        buf = self.buffer
        info = self.dataset_info
        meta = {
            "format": "cfdg_aug.d3rlpy.CFDGReplayBuffer/1",
            "buffer": {"kind": "fifo", "limit": int(buf._limit)} if isinstance(buf, FIFOBuffer) else {"kind": "infinite"},
            "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "observation_shapes": [list(s) for s in self.obs_layout.shapes],
            "observation_dtypes": [str(d) for d in self.obs_layout.dtypes],
            "action_space": "discrete" if self.discrete_actions else "continuous",
            "action_size": int(info.action_size),
            "source_histogram": self.source_histogram.tolist(),
            "refresh_log": self.refresh_log,
            "n_episodes": len(episodes),
            "cache_size": int(self._cache_size),
            "write_at_termination": self._write_at_termination,
            "termination": _termination_record(self.augmented),
            "sha256": {name: file_sha256(d / name) for name in (_STATE_AUGMENTED, _STATE_EPISODES) if (d / name).exists()},
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
        refresh_progress: Progress = False,
        termination: TerminationFn | str | None = None,
    ) -> CFDGReplayBuffer:
        """Rebuild a buffer written by :meth:`save_state` (no pickle anywhere). A damaged
        ``augmented.safetensors`` raises :class:`~cfdg_aug.buffer.BufferFileError` naming it.
        ``refresh_progress``: as in the constructor (not part of the saved state).
        ``cache_size`` and ``write_at_termination`` are the saved buffer's (d3rlpy's defaults, 10000
        and False, for states saved before they were recorded).

        ``termination``: as in the constructor. None keeps the saved rule (an env id, or the fitted
        classifier); a state saved with a termination callable (not saved: code) needs it again here,
        else :class:`ValueError` (a classifier would silently decide the synthetic done flags)."""
        check_progress("refresh_progress", refresh_progress)
        _check_termination(termination)
        d = Path(directory)
        meta_path = d / _STATE_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a CFDGReplayBuffer state directory")
        if transition_picker is not None and type(transition_picker) is not BasicTransitionPicker:
            raise ValueError("transition_picker: load_state restores buffers with the BasicTransitionPicker only")
        try:
            meta = json.loads(meta_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BufferFileError(f"{meta_path} is corrupt: not valid JSON ({e})") from None
        recorded = meta.get("sha256")  # absent in states written before hashes were recorded
        on_disk = {name: file_sha256(d / name) for name in (_STATE_AUGMENTED, _STATE_EPISODES) if (d / name).exists()}
        if recorded is not None and recorded != on_disk:
            differ = sorted(n for n in set(recorded) | set(on_disk) if recorded.get(n) != on_disk.get(n))
            raise BufferFileError(
                f"{', '.join(str(d / n) for n in differ)} does not match the sha256 that {meta_path} recorded when "
                "the state was saved: the file is damaged, or the state files are not from the same save (a save "
                "interrupted between files)"
            )
        saved_term = meta.get("termination")  # absent in states written before it was recorded
        if termination is None and isinstance(saved_term, dict) and saved_term.get("kind") == "callable":
            raise ValueError(
                f"termination: the state in {d} was saved with the termination callable {saved_term.get('name')!r}, "
                "which a saved state cannot hold: pass it again, CFDGReplayBuffer.load_state(directory, termination=fn)"
            )
        if buffer is None:
            spec = meta["buffer"]
            buffer = FIFOBuffer(int(spec["limit"])) if spec["kind"] == "fifo" else InfiniteBuffer()
        augmented = AugmentedReplayBuffer.load(d / _STATE_AUGMENTED, device=device)
        if termination is not None:
            augmented.set_termination(termination)
        augmented.refresh_progress = refresh_progress
        if on_refresh is not None:
            augmented.add_hook(on_refresh)
        act_dim = int(meta["act_dim"])
        # States written before structured spaces were supported: one flat float32 vector, continuous actions.
        obs_shapes = [tuple(s) for s in meta.get("observation_shapes", [[int(meta["obs_dim"])]])]
        obs_dtypes = [np.dtype(t) for t in meta.get("observation_dtypes", ["float32"] * len(obs_shapes))]
        discrete = meta.get("action_space", "continuous") == "discrete"
        episodes: list[EpisodeBase] = []
        if (d / _STATE_EPISODES).exists():
            with open(d / _STATE_EPISODES, "rb") as fh:
                episodes = list(_d3_load(Episode, fh))
        self = cls(
            buffer, transition_picker, trajectory_slicer, writer_preprocessor,
            observation_signature=Signature(dtype=obs_dtypes, shape=obs_shapes),  # type: ignore[arg-type]
            action_signature=Signature(dtype=[np.dtype(np.int64 if discrete else np.float32)],
                                       shape=[(act_dim,)]),
            reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
            action_space=ActionSpace.DISCRETE if discrete else ActionSpace.CONTINUOUS,
            action_size=int(meta.get("action_size", act_dim)),
            cache_size=int(meta.get("cache_size", 10000)),
            write_at_termination=bool(meta.get("write_at_termination", False)), _augmented=augmented,
        )
        # Straight into the parent's store: these transitions are already in ``augmented``.
        for ep in episodes:
            ReplayBuffer.append_episode(self, ep)
        self.source_histogram[:] = np.asarray(meta["source_histogram"], dtype=np.int64)
        self.refresh_log = list(meta["refresh_log"])
        return self


def _concat_minibatches(parts: list[TransitionMiniBatch]) -> TransitionMiniBatch:
    """Row-wise concatenation (observations may be lists of arrays for tuple observations)."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Any:
        values = [getattr(p, name) for p in parts]
        if isinstance(values[0], (list, tuple)):
            return [np.ascontiguousarray(np.concatenate([v[i] for v in values], axis=0), dtype=np.float32)
                    for i in range(len(values[0]))]
        return np.ascontiguousarray(np.concatenate(values, axis=0), dtype=np.float32)

    return TransitionMiniBatch(
        observations=cat("observations"), actions=cat("actions"), rewards=cat("rewards"),
        next_observations=cat("next_observations"), next_actions=cat("next_actions"),
        terminals=cat("terminals"), intervals=cat("intervals"), transitions=NO_TRANSITIONS,
    )


def _refuse_unsupported_algo(caller: Any) -> None:
    """Refuse, before its first update, an algorithm that reads what a mixed batch does not carry.

    A mixed mini-batch has no ``next_actions`` (zeros) and no per-transition returns-to-go: generated
    rows have neither. ReBRAC's critic target reads the first, Cal-QL (``need_returns_to_go``) the
    second; with this buffer either would train silently on zeros. d3rlpy hands the buffer nothing
    that names the algorithm, so ``caller`` is the ``self`` of the frame that called
    ``sample_transition_batch`` (``fit`` / ``fit_online``); other callers are not checked here (the
    mini-batch's ``transitions`` still refuses returns-to-go, :func:`._convert.transition_batch_to_minibatch`).
    """
    from d3rlpy.algos import QLearningAlgoBase, ReBRAC

    if not isinstance(caller, QLearningAlgoBase):
        return
    name = type(caller).__name__
    if isinstance(caller, ReBRAC):
        raise ValueError(f"{name} is not supported by CFDGReplayBuffer: its critic target reads batch.next_actions, "
                         "which generated transitions do not have (a mixed batch carries zeros); use a plain d3rlpy "
                         "buffer for it, or another algorithm")
    if caller.need_returns_to_go:
        raise ValueError(f"{name} is not supported by CFDGReplayBuffer: it needs each transition's returns-to-go "
                         "(need_returns_to_go), which generated transitions do not have; use a plain d3rlpy buffer "
                         "for it, or another algorithm")


def _check_termination(termination: Any) -> None:
    """Refuse a ``termination`` that is neither None, an env id nor a callable before anything is built."""
    if termination is not None and not isinstance(termination, str) and not callable(termination):
        raise TypeError(
            "termination must be a callable (obs, act, next_obs) -> bool (N,), an env id with a known rule "
            f"(cfdg_aug.termination) or None, got {type(termination).__name__}"
        )


def _termination_record(core: AugmentedReplayBuffer) -> dict[str, Any] | None:
    """What ``meta.json`` says of the termination rule in effect (the core file keeps only an env id)."""
    term = core.termination  # set_termination may have changed it since construction
    if term is None:
        return None
    if isinstance(term, str):
        return {"kind": "env", "id": term}
    return {"kind": "callable", "name": str(getattr(term, "__qualname__", None) or type(term).__name__)}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")




def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a temp file beside ``path`` (:func:`cfdg_aug._io.atomic_write_with`)."""
    atomic_write_with(path, write)


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
