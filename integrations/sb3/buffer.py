"""CFDG replay buffers for stable-baselines3: mixes offline, online and synthetic data.

Use them where SB3 takes a replay buffer class::

    SAC("MlpPolicy", env, replay_buffer_class=CFDGReplayBuffer,
        replay_buffer_kwargs={"config": CFDGConfig.small(), "offline_data": "hopper-medium"})
    SAC("MultiInputPolicy", goal_env, replay_buffer_class=CFDGDictReplayBuffer, ...)
    DQN("MlpPolicy", "CartPole-v1", replay_buffer_class=CFDGReplayBuffer, ...)

:class:`CFDGReplayBuffer` subclasses SB3's ``ReplayBuffer``, :class:`CFDGDictReplayBuffer` its
``DictReplayBuffer`` (SB3 picks that one for ``Dict`` observation spaces); both share
:class:`CFDGBufferMixin`. How they are built (and why):

- The SB3 arrays of the parent class stay the storage of record for online data: ``add`` first
  calls the parent's ``add`` (so ``n_envs``, ``TimeLimit.truncated``, ``optimize_memory_usage``'s
  layout and every other SB3 rule are SB3's own code), then reads the rows it just wrote back and
  mirrors them into the core :class:`~cfdg_aug.buffer.AugmentedReplayBuffer` (attribute
  :attr:`augmented`), which owns the offline pool, the synthetic pools, the generator and the
  refresh schedule. A rejected ``add`` (non-finite values, a Discrete value outside its space,
  wrong shapes) restores the row SB3 had started to write: nothing changes.
- Spaces: the core models flat float vectors; :mod:`cfdg_aug.integrations.spaces` encodes each
  space (``Box`` flattened, ``Discrete`` one-hot, ``MultiDiscrete`` one-hot per component,
  ``MultiBinary`` bits, ``Dict`` keys concatenated) and decodes sampled rows back to what SB3
  stores (an index for ``Discrete``, per-key arrays for ``Dict``). Generated rows are projected
  onto the encodings by the core, so a synthetic action is always a valid element of the space.
- Drop-in: while there is no offline data and no refresh has happened, :meth:`sample` is the
  parent's ``sample`` (same ``np.random`` calls), so the samples are identical to a plain
  ``ReplayBuffer`` under the same seed. Afterwards it returns the core's mixed batch.
- The buffer owns the refresh schedule: after each ``add`` it calls ``augmented.refresh_due()``,
  so a refresh happens right after the transition that makes it due is stored, with or without
  :class:`~cfdg_aug.integrations.sb3.CFDGCallback` (which only logs and saves). A refresh takes
  seconds to minutes; ``refresh_progress`` (or the callback's ``verbose``) makes it say so
  (``"refresh 2: fitting generator"``, then the sampling stages, with step counts).
- Memory: before SB3 allocates anything, the bytes the SB3 arrays (about ``buffer_size`` rows,
  ``buffer_size // n_envs`` per env),
  the core's pools and the synthetic pools need are compared with the available memory; too much
  raises :class:`~cfdg_aug.config.ConfigError` naming the settings, not a ``MemoryError`` later.
- Units: SB3 stores *unnormalised* observations and rewards (``VecNormalize`` is applied when
  sampling with ``env``) and ``Box`` actions *scaled to [-1, 1]* by ``policy.scale_action``. The
  offline pool and the generator therefore live in the same units: :meth:`add_offline` scales
  dataset actions from the action space's ``[low, high]`` to ``[-1, 1]`` (unless told they already
  are), synthetic ``Box`` actions are clipped to [-1, 1], and :meth:`sample` applies
  ``env.normalize_obs`` / ``env.normalize_reward`` to the whole mixed batch, as SB3 does.
- ``dones`` in a sampled batch are true terminations only, exactly as SB3 computes them
  (``done * (1 - timeout)`` when ``handle_timeout_termination``; every ``done`` otherwise).

Image observations cannot be augmented: with ``augmentation`` ``"cfdg"`` / ``"unconditional"`` they
are refused at construction (:class:`~cfdg_aug.integrations.spaces.ImageObservationError`); with
``augmentation="none"`` the buffer is exactly its parent (nothing mirrored, no offline pool).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from cfdg_aug.buffer import AugmentedReplayBuffer, RefreshStats, check_memory
from cfdg_aug.config import CFDGConfig
from cfdg_aug.generator import CFDGGenerator, Progress, check_progress
from cfdg_aug.spaces import SpaceEncoding
from cfdg_aug.termination import TerminationFn
from cfdg_aug.transitions import SOURCE_REAL_ONLINE, TransitionBatch

from .._seeding import peek_np_seed
from ..spaces import (
    FlatLayout,
    UnsupportedSpaceError,
    encoding_from_space,
    refuse_images,
    sb3_action_encoding,
    space_has_images,
)

RefreshHook = Callable[[RefreshStats], None]


class CFDGBufferError(ValueError):
    """The buffer was configured or fed in a way it cannot support; the message says what to change."""


def scale_actions_to_unit(actions: np.ndarray, action_space: spaces.Box, *, clip: bool = True) -> np.ndarray:
    """Map actions from ``[low, high]`` of ``action_space`` to ``[-1, 1]``, as SB3's ``policy.scale_action``.

    ``actions``: (N, act_dim). Returns float32 (N, act_dim). Values outside the bounds (datasets
    made with additive noise) are clipped to [-1, 1] with a warning when ``clip`` is set, an error
    otherwise. Infinite bounds cannot be scaled: :class:`CFDGBufferError`.
    """
    low = np.asarray(action_space.low, dtype=np.float64).reshape(-1)
    high = np.asarray(action_space.high, dtype=np.float64).reshape(-1)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise CFDGBufferError(
            "actions: the action space has infinite bounds, so dataset actions cannot be scaled to [-1, 1]; "
            "pass actions already in SB3's buffer units with actions_scaled=True"
        )
    a = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    scaled = 2.0 * ((a - low) / (high - low)) - 1.0
    outside = np.abs(scaled) > 1.0 + 1e-6
    if outside.any():
        frac = float(outside.any(axis=1).mean())
        if not clip:
            raise CFDGBufferError(
                f"actions: {frac:.2%} of the rows lie outside the action space bounds [{low}, {high}]"
            )
        warnings.warn(
            f"actions: {frac:.2%} of the offline rows lie outside the action space bounds; clipped to the bounds",
            stacklevel=3,
        )
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def load_dataset_spec(spec: str | os.PathLike[str]) -> Any:
    """``cfdg_aug.datasets.load_dataset(spec)`` -> ``OfflineDataset``: a D4RL-layout hdf5 path or name,
    ``"minari:<id>"`` for a Minari dataset, or ``"embedded"`` for the packaged hopper-medium set."""
    from cfdg_aug.datasets import load_dataset

    return load_dataset(spec)


def _as_transition_batch(data: Any, obs_layout: FlatLayout | None = None) -> TransitionBatch:
    """A dataset spec, ``OfflineDataset``, ``TransitionBatch`` or mapping of arrays -> TransitionBatch
    of raw values. Dict observations (a mapping under ``observations`` / ``next_observations``) are
    flattened in ``obs_layout``'s key order."""
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset_spec(data)
    if isinstance(data, TransitionBatch):
        return data
    to_tb = getattr(data, "to_transition_batch", None)
    if callable(to_tb):
        return to_tb()
    if isinstance(data, Mapping):
        data = dict(data)
        for key in ("observations", "next_observations", "obs", "next_obs"):
            value = data.get(key)
            if isinstance(value, Mapping):
                if obs_layout is None or obs_layout.kind != "dict":
                    raise CFDGBufferError(f"offline_data[{key!r}]: a dict of arrays needs a Dict observation space")
                missing = [k for k in obs_layout.keys if k not in value]
                if missing:
                    raise CFDGBufferError(f"offline_data[{key!r}] lacks the observation key(s) {missing}")
                n = len(np.asarray(value[obs_layout.keys[0]]))
                data[key] = obs_layout.flatten(value, n)
        return TransitionBatch.validated(data)
    raise CFDGBufferError(
        "offline_data must be a dataset spec (str/path for cfdg_aug.datasets.load_dataset), an OfflineDataset, "
        f"a TransitionBatch or a mapping of arrays, got {type(data).__name__}"
    )


class CFDGBufferMixin:
    """The CFDG part shared by :class:`CFDGReplayBuffer` and :class:`CFDGDictReplayBuffer`.

    Constructor: SB3's (``buffer_size, observation_space, action_space, device, n_envs,
    optimize_memory_usage, handle_timeout_termination``) plus keyword-only CFDG options:

    :param config: :class:`CFDGConfig`. None means ``CFDGConfig.small()``, the CPU profile (what the
        code does: the paper's sizes, ``CFDGConfig.paper()``, are for a GPU; pass them explicitly).
    :param seed: seed of the core buffer's sampling RNG and of the generator. None (default) derives
        it from ``np.random`` *without advancing it* (SB3 seeds ``np.random`` with the model's seed
        before building the buffer), so the model's ``seed`` makes the whole run reproducible and the
        parent's sample stream is untouched.
    :param offline_data: optional offline dataset to put in the offline pool at construction (a spec
        for ``cfdg_aug.datasets.load_dataset``, an ``OfflineDataset``, a ``TransitionBatch`` or a
        mapping of D4RL-named arrays; Dict observations as a dict of arrays).
    :param actions_scaled: whether ``offline_data`` actions are already in SB3's [-1, 1] buffer units.
    :param offline_capacity: capacity of the offline pool (None = grows to fit).
    :param generator: a pre-built (e.g. pre-fitted) :class:`CFDGGenerator` to use.
    :param generator_device: torch device of the generator (None = the device of ``generator`` when one is
        passed, else the buffer's ``device``).
    :param on_refresh: called with :class:`RefreshStats` after each refresh.
    :param auto_refresh: refresh inside ``add`` when the schedule says so (default). With False
        nothing refreshes unless :meth:`refresh` / :meth:`maybe_refresh` is called.
    :param termination: the done flag of synthetic transitions: a callable ``(obs, act, next_obs) ->
        bool (N,)`` or an env id with a known rule (:mod:`cfdg_aug.termination`). None: ``CFDGCallback``
        sets the rule of the model's env (by its spec id) when it is known; otherwise a classifier
        fitted on the real transitions decides. Pickled with the buffer (``save_replay_buffer``) when
        it can be (an env id, a module-level function); a callable that cannot (a lambda, a local
        function) is left out with a warning: give it again with :meth:`set_termination` after loading.
    :param refresh_progress: how a refresh (seconds to minutes, inside ``add``) reports its progress:
        ``False`` (default) silent, ``True`` a tqdm bar per stage on stderr, or a callable
        ``fn(stage: str, done: int, total: int)`` called with ``done = 0`` when a stage starts, as it
        advances, and with ``done == total`` when it ends; stages ``"refresh k: fitting generator"``
        (gradient steps), ``"refresh k: sampling offline-like"`` / ``"online-like"`` (rows) and
        others (:mod:`cfdg_aug.buffer`, "Progress of a refresh"). Also a settable attribute;
        ``CFDGCallback(verbose=1)`` prints the stages when it is left False. A callable is not
        pickled with the buffer (``save_replay_buffer``): set it again after loading.
    :param n_steps, gamma: what SB3's ``NStepReplayBuffer`` takes (``replay_buffer_kwargs={"n_steps": ...,
        "gamma": ...}``, as SB3 advises for a custom buffer class): ``n_steps=1`` is accepted (a one-step
        return needs no ``gamma``); any other value is refused, since generated transitions have no
        successors to sum an n-step return over.

    :raises ConfigError: the SB3 arrays and the CFDG pools would need more memory than is available
        (``buffer_size``, ``offline_capacity`` and the synthetic sizes are named).

    Attributes: ``obs_encoding`` / ``act_encoding`` (:class:`~cfdg_aug.spaces.SpaceEncoding` of
    what SB3 stores), ``obs_layout`` (how an observation becomes raw columns), ``augmented`` (the
    core buffer; None only for image observations with ``augmentation="none"``, where the buffer
    is exactly its parent), ``last_sources`` ((B,) int8 source of each row of the last batch).
    """

    # Declared for type checkers; SB3's base classes define these.
    observation_space: Any
    action_space: Any
    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    device: th.device
    action_dim: int
    optimize_memory_usage: bool
    handle_timeout_termination: bool
    observations: Any
    next_observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    augmented: AugmentedReplayBuffer | None
    last_sources: np.ndarray | None

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        *,
        config: CFDGConfig | None = None,
        seed: int | None = None,
        offline_data: Any = None,
        actions_scaled: bool = False,
        offline_capacity: int | None = None,
        generator: CFDGGenerator | None = None,
        generator_device: str | th.device | None = None,
        on_refresh: RefreshHook | None = None,
        auto_refresh: bool = True,
        termination: TerminationFn | str | None = None,
        refresh_progress: Progress = False,
        n_steps: int = 1,
        gamma: float | None = None,
    ) -> None:
        if config is not None and not isinstance(config, CFDGConfig):
            raise CFDGBufferError(f"config must be a CFDGConfig or None, got {type(config).__name__}")
        if n_steps != 1:
            raise CFDGBufferError(
                f"n_steps: expected 1, got {n_steps!r}: CFDGReplayBuffer samples one-step transitions (generated "
                "transitions have no successors to sum returns over); drop n_steps from replay_buffer_kwargs"
            )
        config = config if config is not None else CFDGConfig.small()
        check_progress("refresh_progress", refresh_progress)
        _check_termination(termination)
        self._check_observation_space(observation_space)
        # Before SB3's np.zeros: a buffer_size beyond the machine's memory is named, not a MemoryError.
        _check_sb3_memory(buffer_size, n_envs, observation_space, action_space, optimize_memory_usage, config,
                          offline_capacity)
        # The parent first: its own checks, warnings and arrays are SB3's.
        super().__init__(  # type: ignore[call-arg]
            buffer_size, observation_space, action_space, device=device, n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage, handle_timeout_termination=handle_timeout_termination,
        )
        self.obs_layout = self._make_obs_layout()
        images = space_has_images(observation_space)
        if images and config.augmentation != "none":
            refuse_images([(name, shape, dt) for name, shape, dt in self._obs_parts()
                           if _is_image_part(shape, dt)])
        try:
            self.obs_encoding: SpaceEncoding = encoding_from_space(observation_space, "observation_space")
            self.act_encoding: SpaceEncoding = sb3_action_encoding(action_space)
        except UnsupportedSpaceError:
            if not images:
                raise
            self.obs_encoding = self.act_encoding = None  # type: ignore[assignment]
        self.obs_dim = int(self.obs_layout.raw_dim)  # raw components of one observation
        if seed is None:
            seed = peek_np_seed()
        self.cfdg_seed = int(seed)
        self.auto_refresh = bool(auto_refresh)
        self.refresh_progress: Progress = refresh_progress
        if generator_device is None:  # the generator passed in stays where it is; a new one goes with the buffer
            generator_device = generator.device if generator is not None else self.device
        self.generator_device = str(generator_device)
        self._offline_capacity = offline_capacity
        self._refresh_hooks: list[RefreshHook] = [] if on_refresh is None else [on_refresh]
        self._warned_unscaled = False
        self.last_sources = None
        # Image observations with augmentation="none": the parent, untouched (nothing to mirror:
        # a flat float copy of every frame would only cost memory).
        self._passthrough = images
        self._passthrough_config = config
        self.termination_given = termination is not None
        self._termination = termination
        self.augmented = None if images else self._make_core(config, generator)
        if generator is not None and images:
            raise CFDGBufferError("generator: image observations cannot be augmented, so a generator cannot be used")
        if offline_data is not None:
            self.add_offline(offline_data, actions_scaled=actions_scaled)

    # --- spaces and layouts ---------------------------------------------------------------------
    def _check_observation_space(self, observation_space: spaces.Space) -> None:
        if isinstance(observation_space, spaces.Dict):
            raise CFDGBufferError(
                "observation_space: a Dict space needs CFDGDictReplayBuffer (SB3 uses DictReplayBuffer for Dict "
                "spaces); pass replay_buffer_class=CFDGDictReplayBuffer"
            )

    def _make_obs_layout(self) -> FlatLayout:
        return FlatLayout.array(self.obs_shape, self.observation_space.dtype)  # type: ignore[attr-defined]

    def _obs_parts(self) -> list[tuple[str, tuple[int, ...], Any]]:
        return [("observation_space", tuple(self.observation_space.shape or ()), self.observation_space.dtype)]

    def _core_dims(self) -> tuple[int, int]:
        return self.obs_encoding.dim, self.act_encoding.dim

    # --- construction helpers ----------------------------------------------------------------------
    def _make_core(self, config: CFDGConfig, generator: CFDGGenerator | None,
                   termination: TerminationFn | str | None = None) -> AugmentedReplayBuffer:
        """A new core buffer; ``termination`` None means the constructor's."""
        obs_dim, act_dim = self._core_dims()
        if generator is not None and (generator.obs_dim, generator.act_dim) != (obs_dim, act_dim):
            raise CFDGBufferError(
                f"generator has obs_dim={generator.obs_dim}, act_dim={generator.act_dim}; this buffer's encoded "
                f"spaces need obs_dim={obs_dim}, act_dim={act_dim}"
            )
        # The core may initialise torch modules; isolate the global RNGs so that building this buffer
        # inside an SB3 model does not shift the policy's initial weights or SB3's np.random stream.
        np_state = np.random.get_state()
        with th.random.fork_rng(devices=[]):
            core = AugmentedReplayBuffer(
                obs_dim, act_dim, online_capacity=self.buffer_size * self.n_envs,
                offline_capacity=self._offline_capacity, config=config, seed=self.cfdg_seed,
                device=self.generator_device, generator=generator, on_refresh=self._dispatch_refresh,
                obs_encoding=self.obs_encoding, act_encoding=self.act_encoding,
                termination=termination if termination is not None else self._termination,
            )
        np.random.set_state(np_state)
        return core

    def _dispatch_refresh(self, stats: RefreshStats) -> None:
        for fn in list(self._refresh_hooks):
            fn(stats)

    def add_refresh_hook(self, fn: RefreshHook) -> None:
        """Call ``fn(stats)`` after every refresh (idempotent: adding the same hook twice keeps one)."""
        if fn not in self._refresh_hooks:
            self._refresh_hooks.append(fn)

    def remove_refresh_hook(self, fn: RefreshHook) -> None:
        """Stop calling ``fn`` after refreshes (no error when it was not registered)."""
        if fn in self._refresh_hooks:
            self._refresh_hooks.remove(fn)

    def set_termination(self, termination: TerminationFn | str | None) -> None:
        """The done flag of synthetic transitions from now on, as the constructor's ``termination``
        (a callable ``(obs, act, next_obs) -> bool (N,)``, an env id with a known rule, or None for a
        classifier). Use it after ``load_replay_buffer`` for a callable that could not be pickled.
        A rule set here is kept by ``CFDGCallback`` (which otherwise sets the rule of the model's env)."""
        _check_termination(termination)
        self._core().set_termination(termination)
        self._termination = termination
        self.termination_given = termination is not None

    def _core(self) -> AugmentedReplayBuffer:
        if self.augmented is None:
            raise CFDGBufferError(
                "this buffer holds image observations with augmentation='none': it is SB3's own buffer, without "
                "an offline pool, synthetic pools or a generator"
            )
        return self.augmented

    # --- properties --------------------------------------------------------------------------------
    @property
    def config(self) -> CFDGConfig:
        return self.augmented.config if self.augmented is not None else self._passthrough_config

    @property
    def generator(self) -> CFDGGenerator | None:
        return self.augmented.generator if self.augmented is not None else None

    @property
    def num_refreshes(self) -> int:
        return int(self.augmented.num_refreshes) if self.augmented is not None else 0

    @property
    def pool_sizes(self) -> dict[str, int]:
        if self.augmented is None:
            # SB3's size() counts steps per env; each step stores n_envs transitions
            return {"real_offline": 0, "real_online": int(self.size()) * self.n_envs,  # type: ignore[attr-defined]
                    "synthetic_offline": 0, "synthetic_online": 0}
        return dict(self.augmented.pool_sizes)

    @property
    def delegates_to_parent(self) -> bool:
        """True while ``sample`` is exactly SB3's (no offline data, no refresh yet)."""
        core = self.augmented
        return core is None or (core.num_offline == 0 and core.num_refreshes == 0)

    # --- encoding ------------------------------------------------------------------------------------
    def _encode_obs(self, raw: np.ndarray) -> np.ndarray:
        return self.obs_encoding.encode(raw)

    def _decode_obs(self, enc: np.ndarray) -> Any:
        """(B, obs_dim) encoded -> what SB3 returns: (B, *obs_shape) (or a dict) in the space's dtype(s)."""
        return self.obs_layout.unflatten(self.obs_encoding.decode(enc))

    def _decode_act(self, enc: np.ndarray) -> np.ndarray:
        raw = self.act_encoding.decode(enc)
        if np.issubdtype(self.actions.dtype, np.integer):
            raw = np.rint(raw)
        return np.ascontiguousarray(raw, dtype=self.actions.dtype)

    # --- offline data ------------------------------------------------------------------------------
    def add_offline(self, data: Any, *, actions_scaled: bool = False, clip_actions: bool = True) -> int:
        """Put offline transitions in the offline pool; returns how many were added.

        ``data``: a spec for ``cfdg_aug.datasets.load_dataset`` (D4RL hdf5 path, Minari id...), an
        ``OfflineDataset``, a ``TransitionBatch`` or a mapping of D4RL-named arrays, with
        observations of shape (N, obs_dim) raw components (an index for a Discrete space; a dict
        of (N, *shape) arrays for a Dict space) and actions (N, action_dim) in the env's units.
        ``Box`` actions are scaled from the action space's bounds to SB3's [-1, 1] buffer units
        unless ``actions_scaled``. Validation happens before anything is stored, so a bad dataset
        leaves the buffer unchanged.
        """
        core = self._core()
        batch = _as_transition_batch(data, self.obs_layout)
        batch = TransitionBatch.validated(batch, obs_dim=self.obs_dim, act_dim=self.action_dim)
        act = batch.act
        if isinstance(self.action_space, spaces.Box) and not actions_scaled:
            act = scale_actions_to_unit(act, self.action_space, clip=clip_actions)
        encoded = TransitionBatch(
            obs=self._encode_obs(batch.obs), act=self.act_encoding.encode(act), rew=batch.rew,
            next_obs=self._encode_obs(batch.next_obs), done=batch.done, timeout=batch.timeout,
        )
        core.add_offline(encoded)
        return len(batch)

    # --- SB3 API ---------------------------------------------------------------------------------
    def _row_state(self, row: int) -> dict[str, Any]:
        """Copies of everything the parent's ``add`` may write for ``row`` (to undo a rejected add)."""
        nxt = (row + 1) % self.buffer_size

        def copy(a: Any, i: int) -> Any:
            return {k: v[i].copy() for k, v in a.items()} if isinstance(a, dict) else a[i].copy()

        state: dict[str, Any] = {"pos": self.pos, "full": self.full, "obs": copy(self.observations, row),
                                 "actions": self.actions[row].copy(), "rewards": self.rewards[row].copy(),
                                 "dones": self.dones[row].copy(), "timeouts": self.timeouts[row].copy()}
        if self.optimize_memory_usage:
            state["obs_next_row"] = copy(self.observations, nxt)
        else:
            state["next_obs"] = copy(self.next_observations, row)
        return state

    def _restore_row(self, row: int, state: dict[str, Any]) -> None:
        def put(a: Any, i: int, v: Any) -> None:
            if isinstance(a, dict):
                for k in a:
                    a[k][i] = v[k]
            else:
                a[i] = v

        put(self.observations, row, state["obs"])
        if "obs_next_row" in state:
            put(self.observations, (row + 1) % self.buffer_size, state["obs_next_row"])
        else:
            put(self.next_observations, row, state["next_obs"])
        for name in ("actions", "rewards", "dones", "timeouts"):
            getattr(self, name)[row] = state[name]
        self.pos, self.full = state["pos"], state["full"]

    def _stored_obs(self, arrays: Any, i: int) -> np.ndarray:
        """Raw (n_envs, obs_dim) observation components of stored row ``i``."""
        n = self.n_envs
        if isinstance(arrays, dict):
            return self.obs_layout.flatten({k: v[i] for k, v in arrays.items()}, n)
        return self.obs_layout.flatten(arrays[i], n)

    def add(  # type: ignore[override]
        self,
        obs: Any,
        next_obs: Any,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """SB3's ``add`` (one step of ``n_envs`` envs), mirrored into the core buffer, then the refresh check.

        Atomic: if the parent's ``add`` or the mirroring rejects the step (non-finite values, a
        Discrete value outside its space, a shape SB3 cannot store), the row SB3 had started to
        write is restored, ``pos`` / ``full`` are unchanged and the core is untouched.
        """
        if self._passthrough:
            super().add(obs, next_obs, action, reward, done, infos)  # type: ignore[misc]
            return
        core = self._core()
        row = self.pos
        saved = self._row_state(row)
        try:
            super().add(obs, next_obs, action, reward, done, infos)  # type: ignore[misc]
            # Read back what SB3 stored: same reshape/cast rules as the parent, whatever the caller passed.
            n = self.n_envs
            nxt_arrays, nxt_row = ((self.observations, (row + 1) % self.buffer_size) if self.optimize_memory_usage
                                   else (self.next_observations, row))
            act = self.actions[row].reshape(n, self.action_dim)
            self._check_unscaled(act)
            dones = self.dones[row]
            timeouts = self.timeouts[row] if self.handle_timeout_termination else np.zeros(n, dtype=np.float32)
            core.add(
                self._encode_obs(self._stored_obs(self.observations, row)),
                self.act_encoding.encode(act),
                self.rewards[row],
                self._encode_obs(self._stored_obs(nxt_arrays, nxt_row)),
                dones * (1.0 - timeouts),
                timeouts > 0,
            )
        except BaseException:
            self._restore_row(row, saved)
            raise
        if self.auto_refresh and core.refresh_due():
            self.maybe_refresh()

    def _check_unscaled(self, act: np.ndarray) -> None:
        # SB3's algorithms store policy.scale_action(a) in [-1, 1]; synthetic Box actions are clipped
        # to [-1, 1]. A caller storing raw actions outside it gets told once.
        if self._warned_unscaled or not isinstance(self.action_space, spaces.Box):
            return
        enc_bounds = self.act_encoding.segments[0]
        if getattr(enc_bounds, "bounded", False) and np.abs(act).max(initial=0.0) > 1.0 + 1e-6:
            self._warned_unscaled = True
            warnings.warn(
                "actions: a stored Box action lies outside [-1, 1]; SB3's algorithms store actions scaled to "
                "[-1, 1] (policy.scale_action) and CFDG clips synthetic actions to [-1, 1]",
                stacklevel=3,
            )

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> Any:
        """A batch of ``batch_size`` transitions as SB3 samples on ``self.device``.

        Shapes: observations / next_observations (B, *obs_shape) in the observation space's dtype
        (a dict of them for :class:`CFDGDictReplayBuffer`), actions (B, action_dim) in SB3's action
        dtype (indices for ``Discrete``), dones and rewards (B, 1) float32. The source of each row
        (see ``cfdg_aug.transitions.SOURCE_*``) is kept in :attr:`last_sources` (B,) int8.
        """
        if self.delegates_to_parent:
            out = super().sample(batch_size, env=env)  # type: ignore[misc]
            self.last_sources = np.full(batch_size, SOURCE_REAL_ONLINE, dtype=np.int8)
            return out
        batch = self._core().sample(batch_size)
        self.last_sources = batch.source
        return self._to_samples(batch, env)

    def _to_samples(self, batch: TransitionBatch, env: VecNormalize | None) -> Any:
        obs = self._normalize_obs(self._decode_obs(batch.obs), env)  # type: ignore[attr-defined]
        next_obs = self._normalize_obs(self._decode_obs(batch.next_obs), env)  # type: ignore[attr-defined]
        actions = self.to_torch(self._decode_act(batch.act))  # type: ignore[attr-defined]
        dones = self.to_torch(batch.done.astype(np.float32, copy=False).reshape(-1, 1))  # type: ignore[attr-defined]
        rewards = self.to_torch(  # type: ignore[attr-defined]
            self._normalize_reward(batch.rew.astype(np.float32, copy=False).reshape(-1, 1), env))  # type: ignore[attr-defined]
        if isinstance(obs, dict):
            return DictReplayBufferSamples(
                observations={k: self.to_torch(v) for k, v in obs.items()},  # type: ignore[attr-defined]
                actions=actions,
                next_observations={k: self.to_torch(v) for k, v in next_obs.items()},  # type: ignore[attr-defined]
                dones=dones, rewards=rewards,
            )
        return ReplayBufferSamples(self.to_torch(obs), actions, self.to_torch(next_obs), dones, rewards)  # type: ignore[attr-defined]

    def reset(self) -> None:
        """Empty the online data (SB3 arrays and the core's online pool and schedule counters).

        The offline pool is kept. The synthetic pools are dropped (they were fitted to the old
        online data); a generator that was already fitted is kept and warm-starts the next fit.
        """
        super().reset()  # type: ignore[misc]
        old = self.augmented
        if old is None:
            return
        offline = old.offline_data() if old.num_offline else None
        generator = old.generator if old.num_refreshes > 0 else None  # exists after a refresh; never build one here
        # The rule in effect, which may be the env's that CFDGCallback set on the old core.
        self.augmented = self._make_core(old.config, generator, old.termination)
        if offline is not None:
            self.augmented.add_offline(offline)

    # --- refreshes -------------------------------------------------------------------------------
    def refresh(self, progress: Progress = None) -> RefreshStats:
        """Refit the generator and regenerate the synthetic pools now (off schedule).

        ``progress``: as :meth:`AugmentedReplayBuffer.refresh` (False, True, or a callable
        ``fn(stage, done, total)``); None (default) uses :attr:`refresh_progress`."""
        core = self._core()
        if progress is None:
            progress = self.refresh_progress
        # Fitting and sampling may draw from torch's global RNG; fork it so the agent's own random
        # stream (exploration noise, SAC's sampled actions) does not depend on whether CFDG ran.
        with th.random.fork_rng(devices=[]):
            return core.refresh(progress=False if progress is None else progress)

    def maybe_refresh(self, progress: Progress = None) -> RefreshStats | None:
        """What the schedule calls for now (what ``add`` does when ``auto_refresh``): a refresh, or
        with ``refresh_lag > 0`` installing or starting a background one
        (:meth:`AugmentedReplayBuffer.maybe_refresh`)."""
        core = self.augmented
        if core is None or not core.refresh_due():
            return None
        if progress is None:
            progress = self.refresh_progress
        with th.random.fork_rng(devices=[]):  # as in refresh()
            return core.maybe_refresh(progress=False if progress is None else progress)

    # --- generator files -------------------------------------------------------------------------
    def save_generator(self, path: str | os.PathLike[str]) -> bool:
        """Save the generator as one safetensors file (atomic). Returns False when there is none to save
        (``augmentation="none"`` or not fitted yet)."""
        gen = self.augmented.generator if self.augmented is not None else None
        if gen is None or not gen.is_fitted:
            return False
        gen.save(path)  # creates missing folders; an unwritable path raises an OSError naming it
        return True

    def load_generator(self, path: str | os.PathLike[str]) -> CFDGGenerator:
        """Load a generator saved by :meth:`save_generator` (safetensors, no unpickling) and use it from now on.

        Pools, counters and the sampling RNG are kept; only the generator is replaced.
        """
        core = self._core()
        gen = CFDGGenerator.load(path, device=self.generator_device)
        if (gen.obs_dim, gen.act_dim) != (core.obs_dim, core.act_dim):
            raise CFDGBufferError(
                f"generator in {path} has obs_dim={gen.obs_dim}, act_dim={gen.act_dim}; this buffer needs "
                f"obs_dim={core.obs_dim}, act_dim={core.act_dim} (encoded widths)"
            )
        state = _core_state_without_generator(core)
        # The core's state keeps an env id but not a callable, and a loaded generator has neither: both
        # get the rule in effect, else the next fit would silently replace it with a classifier.
        self.augmented = _core_from_state(
            state, device=self.generator_device, on_refresh=self._dispatch_refresh, generator=gen,
            termination=core.termination,
        )
        return gen

    # --- pickling (model.save_replay_buffer / load_replay_buffer) ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Everything but the generator and the hooks, as numpy arrays and plain values.

        The pickle holds: the SB3 arrays and counters, the CFDG config, seed and schedule counters,
        the space encodings, and the offline, online and synthetic pools. It does NOT hold the
        generator (weights, optimiser, EMA): save it beside the buffer with :meth:`save_generator`
        (or ``CFDGCallback(save_path=...)``) and restore it with :meth:`load_generator`. Without it
        the reloaded buffer keeps sampling its synthetic pools and fits a fresh generator at the
        next refresh. Refresh hooks (callables) are dropped too; ``CFDGCallback`` re-registers itself.
        A callable ``refresh_progress`` is dropped the same way (False after loading).

        Termination: an env id and a callable that pickles (a module-level function) are kept and used
        again after loading. A callable that does not pickle (a lambda, a local function) is left out
        with a warning, here and when loading: after loading, ``CFDGCallback`` sets the rule of the
        model's env when it is known (else a classifier decides) until :meth:`set_termination` gives
        the callable again. (``copy.deepcopy`` goes through here too.)

        Integrity: a sha256 of the SB3 arrays and of the core's pools is pickled with them, and
        unpickling a buffer whose arrays no longer match it (a damaged file) raises
        :class:`CFDGBufferError` instead of sampling wrong numbers.
        """
        state = self.__dict__.copy()
        core = state.pop("augmented")
        state["_refresh_hooks"] = []
        if callable(state.get("refresh_progress")):  # code, like the hooks (a lambda cannot be pickled)
            state["refresh_progress"] = False
        term = self._termination if core is None else core.termination  # the rule in effect
        if term is None or isinstance(term, str):
            state["_termination"] = term  # an env id also travels in the core's state
        elif _picklable(term):
            state.update(_termination=term, termination_given=True)  # kept: CFDGCallback must not replace it
        else:
            name = _callable_name(term)
            warnings.warn(_dropped_termination_message(name, "is left out of the saved replay buffer"), stacklevel=2)
            # Not "given" any more: CFDGCallback then sets the env's rule instead of leaving a classifier.
            state.update(_termination=None, termination_given=False, _cfdg_dropped_termination=name)
        state["_cfdg_core_state"] = None if core is None else _core_state_without_generator(core)
        state["_cfdg_sha256"] = _pickled_state_sha256(state)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        recorded = state.pop("_cfdg_sha256", None)
        # Pickles written before the checksum was stored have none: they load unchecked, as before.
        if recorded is not None and recorded != _pickled_state_sha256(state):
            raise CFDGBufferError(
                "the replay buffer being unpickled (model.load_replay_buffer / pickle.load) is corrupt: the checksum "
                "of its SB3 arrays and CFDG pools does not match the one stored when it was saved"
            )
        core_state = state.pop("_cfdg_core_state")
        dropped = state.pop("_cfdg_dropped_termination", None)
        # Defaults for pickles from before these attributes.
        self.__dict__.update({"refresh_progress": False, "_termination": None, **state})
        if "termination_given" not in self.__dict__:
            self.termination_given = self._termination is not None
        if self.generator_device.startswith("cuda"):
            # A buffer saved on a GPU machine and loaded on one without that GPU: the generator goes to
            # the CPU (no CUDA) or to the default GPU (an index this machine does not have).
            index = th.device(self.generator_device).index
            if not th.cuda.is_available():
                self.generator_device = "cpu"
            elif index is not None and index >= th.cuda.device_count():
                warnings.warn(f"this replay buffer's generator was on {self.generator_device}, which this machine "
                              f"does not have ({th.cuda.device_count()} GPU(s)): it is loaded on cuda:0", stacklevel=2)
                self.generator_device = "cuda:0"
        # The core's state holds an env id only: a pickled callable is handed to the rebuilt core.
        term = self._termination
        self.augmented = None if core_state is None else _core_from_state(
            core_state, device=self.generator_device, on_refresh=self._dispatch_refresh,
            termination=None if isinstance(term, str) else term)
        if dropped is not None:
            warnings.warn(_dropped_termination_message(dropped, "was left out when this replay buffer was saved"),
                          stacklevel=2)


def _is_image_part(shape: tuple[int, ...], dtype: Any) -> bool:
    from ..spaces import is_image_shape

    return is_image_shape(shape, dtype)


class CFDGReplayBuffer(CFDGBufferMixin, ReplayBuffer):
    """SB3 ``ReplayBuffer`` with CFDG augmentation; constructor = SB3's plus keyword-only CFDG options
    (see :class:`CFDGBufferMixin`). Observation spaces: ``Box`` (any shape), ``Discrete``,
    ``MultiDiscrete``, ``MultiBinary``; action spaces: the same (SB3's algorithms use ``Box`` or
    ``Discrete``). ``optimize_memory_usage=True`` keeps SB3's layout (next observations in the
    following row) for the SB3 arrays; the core still holds its own copy of each transition.
    """


class CFDGDictReplayBuffer(CFDGBufferMixin, DictReplayBuffer):
    """SB3 ``DictReplayBuffer`` with CFDG augmentation (goal-conditioned tasks: observation + goals).

    Each key's observation is flattened and the keys concatenated in the space's order for the
    generator (each key's bounds kept: a ``Box`` key is clipped to its own bounds, a ``Discrete``
    key one-hot), and sampled rows are split back into a dict of ``(B, *shape)`` arrays. SB3's own
    ``DictReplayBuffer`` refuses ``optimize_memory_usage``, and so does this one (same assertion).
    """

    def _check_observation_space(self, observation_space: spaces.Space) -> None:
        # The parent asserts the Dict space itself ("DictReplayBuffer must be used with Dict obs space only").
        return None

    def _make_obs_layout(self) -> FlatLayout:
        space: spaces.Dict = self.observation_space  # type: ignore[assignment]
        return FlatLayout.from_dict_shapes(self.obs_shape, {k: s.dtype for k, s in space.spaces.items()})  # type: ignore[arg-type]

    def _obs_parts(self) -> list[tuple[str, tuple[int, ...], Any]]:
        space: spaces.Dict = self.observation_space  # type: ignore[assignment]
        return [(f"observation_space[{k!r}]", tuple(s.shape or ()), s.dtype) for k, s in space.spaces.items()]


def _check_sb3_memory(
    buffer_size: int, n_envs: int, observation_space: spaces.Space, action_space: spaces.Space,
    optimize_memory_usage: bool, config: CFDGConfig, offline_capacity: int | None,
) -> None:
    """:func:`~cfdg_aug.buffer.check_memory` for the SB3 arrays plus the core's pools.

    Per stored step (about ``buffer_size`` rows: SB3 keeps ``buffer_size // n_envs`` per env): SB3's observations (twice, unless
    ``optimize_memory_usage``), actions, rewards, dones and timeouts, plus the core's float32 copy of
    the encoded transition; the offline and synthetic pools at the core's row size."""
    from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape

    if isinstance(buffer_size, bool) or not isinstance(buffer_size, (int, np.integer)) or buffer_size < 1:
        return  # SB3's own check names it
    try:
        parts_obs: list[spaces.Space] = (list(observation_space.spaces.values())
                                         if isinstance(observation_space, spaces.Dict) else [observation_space])
        obs_bytes = 0
        for sp in parts_obs:
            shape: Any = get_obs_shape(sp)  # a tuple for the non-Dict parts
            obs_bytes += int(np.prod(shape)) * np.dtype(sp.dtype).itemsize
        act_dtype = np.dtype(action_space.dtype)
        act_bytes = get_action_dim(action_space) * (4 if act_dtype == np.float64 else act_dtype.itemsize)
    except Exception:  # noqa: BLE001 - a space SB3 itself will refuse, with its own message
        return
    sb3_row = obs_bytes * (1 if optimize_memory_usage else 2) + act_bytes + 3 * 4
    core_row = 0
    if not space_has_images(observation_space):
        try:
            obs_dim = encoding_from_space(observation_space, "observation_space").dim
            act_dim = sb3_action_encoding(action_space).dim
        except (UnsupportedSpaceError, ValueError):
            return  # refused below with the space named
        core_row = 4 * (2 * obs_dim + act_dim + 2) + 1
    # SB3 keeps buffer_size // n_envs rows per env (at least 1): about buffer_size rows in all.
    rows = max(int(buffer_size) // max(int(n_envs), 1), 1) * max(int(n_envs), 1)
    parts = [("buffer_size", rows, sb3_row + core_row),
             ("offline_capacity", int(offline_capacity or 0), core_row)]
    if config.augmentation != "none" and core_row:
        parts += [("synthetic_online_size", config.synthetic_online_size, core_row),
                  ("synthetic_offline_size", config.synthetic_offline_size, core_row)]
    check_memory(parts, what="for the SB3 arrays and the CFDG pools")


_SB3_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _pickled_state_sha256(state: Mapping[str, Any]) -> str:
    """sha256 of the SB3 arrays (``_SB3_ARRAYS``; dicts of arrays for Dict spaces) and of the core's
    pools and metadata in a pickled state: what :meth:`CFDGBufferMixin.__setstate__` verifies."""
    h = hashlib.sha256()

    def add(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value):
                add(f"{name}.{k}", value[k])
        elif isinstance(value, np.ndarray) and not value.dtype.hasobject:
            a = np.ascontiguousarray(value)
            h.update(f"{name}|{a.dtype.str}|{a.shape}\0".encode())
            h.update(a.reshape(-1).view(np.uint8).data)
        else:
            h.update(f"{name}|{value!r}\0".encode())

    for name in _SB3_ARRAYS:
        add(name, state.get(name))
    core = state.get("_cfdg_core_state")
    if core is not None:
        add("core.tensors", core["tensors"])
        add("core.metadata", core["metadata"])
    return h.hexdigest()


def _check_termination(termination: Any) -> None:
    """Refuse a ``termination`` that is neither None, an env id nor a callable now, not at the first refresh."""
    if termination is not None and not isinstance(termination, str) and not callable(termination):
        raise CFDGBufferError(
            "termination must be a callable (obs, act, next_obs) -> bool (N,), an env id with a known rule "
            f"(cfdg_aug.termination) or None, got {type(termination).__name__}"
        )


def _picklable(obj: Any) -> bool:
    """Whether ``pickle`` (what SB3's ``save_to_pkl`` uses) can write ``obj``."""
    try:
        pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - PicklingError, AttributeError (local objects), TypeError...
        return False
    return True


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _dropped_termination_message(name: str, what: str) -> str:
    return (
        f"termination: the callable {name!r} cannot be pickled, so it {what}; after "
        "model.load_replay_buffer(...) call model.replay_buffer.set_termination(fn) to use it again "
        "(until then CFDGCallback uses the rule of the model's env when it is known, else a classifier "
        "fitted on the real transitions decides); a module-level function or an env id is saved"
    )


def _core_state_without_generator(core: AugmentedReplayBuffer) -> dict[str, Any]:
    """The core's state as numpy arrays + string metadata, minus the generator."""
    tensors, metadata = core.state_tensors(include_generator=False)
    return {"tensors": {k: v.detach().cpu().numpy() for k, v in tensors.items()}, "metadata": dict(metadata)}


def _core_from_state(
    state: Mapping[str, Any], *, device: str, on_refresh: RefreshHook, generator: CFDGGenerator | None = None,
    termination: TerminationFn | str | None = None,
) -> AugmentedReplayBuffer:
    """Rebuild the core from :func:`_core_state_without_generator` output, optionally with a generator;
    ``termination`` (when not None) replaces the rule the state holds (an env id or None: never a callable)."""
    tensors = {k: th.from_numpy(np.ascontiguousarray(v)) for k, v in state["tensors"].items()}
    core = AugmentedReplayBuffer.from_state_tensors(tensors, dict(state["metadata"]), device=device,
                                                    generator=generator)
    if termination is not None:
        core.set_termination(termination)
    core.add_hook(on_refresh)
    return core


__all__ = [
    "CFDGBufferError", "CFDGBufferMixin", "CFDGDictReplayBuffer", "CFDGReplayBuffer", "scale_actions_to_unit",
]
