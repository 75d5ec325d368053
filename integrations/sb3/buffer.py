"""`CFDGReplayBuffer`: a stable-baselines3 ``ReplayBuffer`` that mixes offline, online and synthetic data.

Use it where SB3 takes a replay buffer class::

    SAC("MlpPolicy", env, replay_buffer_class=CFDGReplayBuffer,
        replay_buffer_kwargs={"config": CFDGConfig.small(), "offline_data": "hopper-medium"})

How it is built (and why):

- The SB3 arrays of the parent class stay the storage of record for online data: ``add`` first
  calls ``ReplayBuffer.add`` (so ``n_envs``, ``TimeLimit.truncated`` and every other SB3 rule are
  SB3's own code), then reads the row it just wrote back and mirrors it into the core
  :class:`~cfdg_aug.buffer.AugmentedReplayBuffer` (attribute :attr:`augmented`), which owns the
  offline pool, the synthetic pools, the generator and the refresh schedule.
- Drop-in: while there is no offline data and no refresh has happened, :meth:`sample` is the
  parent's ``sample`` (same ``np.random`` calls), so the samples are identical to a plain
  ``ReplayBuffer`` under the same seed. Afterwards it returns the core's mixed batch.
- The buffer owns the refresh schedule: after each ``add`` it calls ``augmented.maybe_refresh()``,
  so a refresh happens right after the transition that makes it due is stored, with or without
  :class:`~cfdg_aug.integrations.sb3.CFDGCallback` (which only logs and saves).
- Units: SB3 stores *unnormalised* observations and rewards (``VecNormalize`` is applied when
  sampling with ``env``) and actions *scaled to [-1, 1]* by ``policy.scale_action``. The offline
  pool and the generator therefore live in the same units: :meth:`add_offline` scales dataset
  actions from the action space's ``[low, high]`` to ``[-1, 1]`` (unless told they already are),
  and :meth:`sample` applies ``env.normalize_obs`` / ``env.normalize_reward`` to the whole mixed
  batch, as SB3 does.
- ``dones`` in a sampled batch are true terminations only, exactly as SB3 computes them
  (``done * (1 - timeout)`` when ``handle_timeout_termination``; every ``done`` otherwise).

Refused with a clear error: ``Dict`` (and other non-``Box``) observation spaces, non-``Box``
action spaces (the generator models continuous vectors), and ``optimize_memory_usage=True`` (the
core keeps its own copy of next observations, so the memory saving would not exist).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from cfdg_aug.buffer import AugmentedReplayBuffer, RefreshStats
from cfdg_aug.config import CFDGConfig
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.transitions import SOURCE_REAL_ONLINE, TransitionBatch

RefreshHook = Callable[[RefreshStats], None]


class CFDGBufferError(ValueError):
    """The buffer was configured or fed in a way it cannot support; the message says what to change."""


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if isinstance(observation_space, spaces.Dict):
        raise CFDGBufferError(
            "observation_space: CFDGReplayBuffer does not support Dict observation spaces (the diffusion "
            "model generates flat vectors); flatten the observations (gymnasium.wrappers.FlattenObservation) "
            "or use SB3's DictReplayBuffer without CFDG"
        )
    if not isinstance(observation_space, spaces.Box):
        raise CFDGBufferError(
            f"observation_space must be a gymnasium.spaces.Box (continuous vectors), got "
            f"{type(observation_space).__name__}"
        )
    if not isinstance(action_space, spaces.Box):
        raise CFDGBufferError(
            f"action_space must be a gymnasium.spaces.Box (continuous actions, as SAC/TD3/DDPG/TQC use), got "
            f"{type(action_space).__name__}"
        )


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
    a = np.asarray(actions, dtype=np.float64)
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


def _as_transition_batch(data: Any) -> TransitionBatch:
    """A dataset spec, ``OfflineDataset``, ``TransitionBatch`` or mapping of arrays -> TransitionBatch."""
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset_spec(data)
    if isinstance(data, TransitionBatch):
        return data
    to_tb = getattr(data, "to_transition_batch", None)
    if callable(to_tb):
        return to_tb()
    if isinstance(data, Mapping):
        return TransitionBatch.validated(data)
    raise CFDGBufferError(
        "offline_data must be a dataset spec (str/path for cfdg_aug.datasets.load_dataset), an OfflineDataset, "
        f"a TransitionBatch or a mapping of arrays, got {type(data).__name__}"
    )


class CFDGReplayBuffer(ReplayBuffer):
    """SB3 ``ReplayBuffer`` with CFDG augmentation; constructor = SB3's plus keyword-only CFDG options.

    :param buffer_size: .. :param handle_timeout_termination: exactly as
        ``stable_baselines3.common.buffers.ReplayBuffer`` (``optimize_memory_usage=True`` is refused).
    :param config: :class:`CFDGConfig` (None = the core buffer's default, the paper profile).
    :param seed: seed of the core buffer's sampling RNG and of the generator. None (default) derives
        it from ``np.random`` *without advancing it* (SB3 seeds ``np.random`` with the model's seed
        before building the buffer), so the model's ``seed`` makes the whole run reproducible and the
        parent's sample stream is untouched.
    :param offline_data: optional offline dataset to put in the offline pool at construction (a spec
        for ``cfdg_aug.datasets.load_dataset``, an ``OfflineDataset``, a ``TransitionBatch`` or a
        mapping of D4RL-named arrays).
    :param actions_scaled: whether ``offline_data`` actions are already in SB3's [-1, 1] buffer units.
    :param offline_capacity: capacity of the offline pool (None = grows to fit).
    :param generator: a pre-built (e.g. pre-fitted) :class:`CFDGGenerator` to use.
    :param generator_device: torch device of the generator (None = the buffer's ``device``).
    :param on_refresh: called with :class:`RefreshStats` after each refresh.
    :param auto_refresh: refresh inside ``add`` when the schedule says so (default). With False
        nothing refreshes unless :meth:`refresh` / :meth:`maybe_refresh` is called.
    """

    augmented: AugmentedReplayBuffer
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
    ) -> None:
        _check_spaces(observation_space, action_space)
        if optimize_memory_usage:
            raise CFDGBufferError(
                "optimize_memory_usage=True is not supported by CFDGReplayBuffer: the CFDG core stores next "
                "observations separately for the generator, so the memory saving would not exist; use "
                "optimize_memory_usage=False"
            )
        if config is not None and not isinstance(config, CFDGConfig):
            raise CFDGBufferError(f"config must be a CFDGConfig or None, got {type(config).__name__}")
        super().__init__(
            buffer_size, observation_space, action_space, device=device, n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage, handle_timeout_termination=handle_timeout_termination,
        )
        self.obs_dim = int(np.prod(self.obs_shape))
        if seed is None:
            seed = _peek_np_seed()
        self.cfdg_seed = int(seed)
        self.auto_refresh = bool(auto_refresh)
        self.generator_device = str(generator_device if generator_device is not None else self.device)
        self._offline_capacity = offline_capacity
        self._refresh_hooks: list[RefreshHook] = [] if on_refresh is None else [on_refresh]
        self.last_sources = None
        self.augmented = self._make_core(config, generator)
        if offline_data is not None:
            self.add_offline(offline_data, actions_scaled=actions_scaled)

    # --- construction helpers ----------------------------------------------------------------------
    def _make_core(self, config: CFDGConfig | None, generator: CFDGGenerator | None) -> AugmentedReplayBuffer:
        # The core may initialise torch modules; isolate the global RNGs so that building this buffer
        # inside an SB3 model does not shift the policy's initial weights or SB3's np.random stream.
        np_state = np.random.get_state()
        with th.random.fork_rng(devices=[]):
            core = AugmentedReplayBuffer(
                self.obs_dim, self.action_dim, online_capacity=self.buffer_size * self.n_envs,
                offline_capacity=self._offline_capacity,
                # None -> the CPU profile, like the d3rlpy buffer: a buffer built the way SB3 builds its
                # own must work on a laptop; pass CFDGConfig.paper() on a GPU.
                config=config if config is not None else CFDGConfig.small(), seed=self.cfdg_seed,
                device=self.generator_device, generator=generator, on_refresh=self._dispatch_refresh,
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

    # --- properties --------------------------------------------------------------------------------
    @property
    def config(self) -> CFDGConfig:
        return self.augmented.config

    @property
    def generator(self) -> CFDGGenerator | None:
        return self.augmented.generator

    @property
    def num_refreshes(self) -> int:
        return int(self.augmented.num_refreshes)

    @property
    def pool_sizes(self) -> dict[str, int]:
        return dict(self.augmented.pool_sizes)

    @property
    def delegates_to_parent(self) -> bool:
        """True while ``sample`` is exactly SB3's (no offline data, no refresh yet)."""
        return self.augmented.num_offline == 0 and self.augmented.num_refreshes == 0

    # --- offline data ------------------------------------------------------------------------------
    def add_offline(self, data: Any, *, actions_scaled: bool = False, clip_actions: bool = True) -> int:
        """Put offline transitions in the offline pool; returns how many were added.

        ``data``: a spec for ``cfdg_aug.datasets.load_dataset`` (D4RL hdf5 path, Minari id...), an
        ``OfflineDataset``, a ``TransitionBatch`` or a mapping of D4RL-named arrays, with
        observations of shape (N, obs_dim) and actions (N, act_dim) in the env's units. Actions
        are scaled from the action space's bounds to SB3's [-1, 1] buffer units unless
        ``actions_scaled``. Validation happens before anything is stored, so a bad dataset leaves
        the buffer unchanged.
        """
        batch = _as_transition_batch(data)
        batch = TransitionBatch.validated(batch, obs_dim=self.obs_dim, act_dim=self.action_dim)
        if not actions_scaled:
            assert isinstance(self.action_space, spaces.Box)
            batch = TransitionBatch(
                obs=batch.obs, act=scale_actions_to_unit(batch.act, self.action_space, clip=clip_actions),
                rew=batch.rew, next_obs=batch.next_obs, done=batch.done, timeout=batch.timeout,
            )
        self.augmented.add_offline(batch)
        return len(batch)

    # --- SB3 API ---------------------------------------------------------------------------------
    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """SB3's ``add`` (one step of ``n_envs`` envs), mirrored into the core buffer, then the refresh check."""
        row = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        # Read back what SB3 stored: same reshape/cast rules as the parent, whatever the caller passed.
        n = self.n_envs
        dones = self.dones[row]
        timeouts = self.timeouts[row] if self.handle_timeout_termination else np.zeros(n, dtype=np.float32)
        self.augmented.add(
            self.observations[row].reshape(n, self.obs_dim),
            self.actions[row].reshape(n, self.action_dim),
            self.rewards[row],
            self.next_observations[row].reshape(n, self.obs_dim),
            dones * (1.0 - timeouts),
            timeouts > 0,
        )
        if self.auto_refresh and self.augmented.refresh_due():
            self.refresh()

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A batch of ``batch_size`` transitions as SB3 ``ReplayBufferSamples`` on ``self.device``.

        Shapes: observations / next_observations (B, *obs_shape) in the observation space's dtype,
        actions (B, act_dim), dones and rewards (B, 1) float32. The source of each row (see
        ``cfdg_aug.transitions.SOURCE_*``) is kept in :attr:`last_sources` (B,) int8.
        """
        if self.delegates_to_parent:
            out = super().sample(batch_size, env=env)
            self.last_sources = np.full(batch_size, SOURCE_REAL_ONLINE, dtype=np.int8)
            return out
        batch = self.augmented.sample(batch_size)
        self.last_sources = batch.source
        return self._to_samples(batch, env)

    def _to_samples(self, batch: TransitionBatch, env: VecNormalize | None) -> ReplayBufferSamples:
        b = len(batch)
        obs_dtype = self.observation_space.dtype
        obs = batch.obs.reshape(b, *self.obs_shape).astype(obs_dtype, copy=False)
        next_obs = batch.next_obs.reshape(b, *self.obs_shape).astype(obs_dtype, copy=False)
        data = (
            self._normalize_obs(obs, env),
            batch.act.astype(self.actions.dtype, copy=False),
            self._normalize_obs(next_obs, env),
            batch.done.astype(np.float32, copy=False).reshape(-1, 1),
            self._normalize_reward(batch.rew.astype(np.float32, copy=False).reshape(-1, 1), env),
        )
        return ReplayBufferSamples(*tuple(map(self.to_torch, data)))  # type: ignore[arg-type]

    def reset(self) -> None:
        """Empty the online data (SB3 arrays and the core's online pool and schedule counters).

        The offline pool is kept. The synthetic pools are dropped (they were fitted to the old
        online data); a generator that was already fitted is kept and warm-starts the next fit.
        """
        super().reset()
        old = self.augmented
        offline = old.offline_data() if old.num_offline else None
        generator = old.generator if old.num_refreshes > 0 else None  # exists after a refresh; never build one here
        self.augmented = self._make_core(old.config, generator)
        if offline is not None:
            self.augmented.add_offline(offline)

    # --- refreshes -------------------------------------------------------------------------------
    def refresh(self) -> RefreshStats:
        """Refit the generator and regenerate the synthetic pools now (off schedule)."""
        # Fitting and sampling may draw from torch's global RNG; fork it so the agent's own random
        # stream (exploration noise, SAC's sampled actions) does not depend on whether CFDG ran.
        with th.random.fork_rng(devices=[]):
            return self.augmented.refresh()

    def maybe_refresh(self) -> RefreshStats | None:
        """Refresh if the schedule says so (what ``add`` does when ``auto_refresh``)."""
        return self.refresh() if self.augmented.refresh_due() else None

    # --- generator files -------------------------------------------------------------------------
    def save_generator(self, path: str | os.PathLike[str]) -> bool:
        """Save the generator as one safetensors file (atomic). Returns False when there is none to save
        (``augmentation="none"`` or not fitted yet)."""
        gen = self.augmented.generator
        if gen is None or not gen.is_fitted:
            return False
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        gen.save(path)
        return True

    def load_generator(self, path: str | os.PathLike[str]) -> CFDGGenerator:
        """Load a generator saved by :meth:`save_generator` (safetensors, no unpickling) and use it from now on.

        Pools, counters and the sampling RNG are kept; only the generator is replaced.
        """
        gen = CFDGGenerator.load(path, device=self.generator_device)
        if (gen.obs_dim, gen.act_dim) != (self.obs_dim, self.action_dim):
            raise CFDGBufferError(
                f"generator in {path} has obs_dim={gen.obs_dim}, act_dim={gen.act_dim}; this buffer needs "
                f"obs_dim={self.obs_dim}, act_dim={self.action_dim}"
            )
        state = _core_state_without_generator(self.augmented)
        self.augmented = _core_from_state(
            state, device=self.generator_device, on_refresh=self._dispatch_refresh, generator=gen
        )
        return gen

    # --- pickling (model.save_replay_buffer / load_replay_buffer) ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Everything but the generator and the hooks, as numpy arrays and plain values.

        The pickle holds: the SB3 arrays and counters, the CFDG config, seed and schedule counters,
        and the offline, online and synthetic pools. It does NOT hold the generator (weights,
        optimiser, EMA): save it beside the buffer with :meth:`save_generator` (or
        ``CFDGCallback(save_path=...)``) and restore it with :meth:`load_generator`. Without it the
        reloaded buffer keeps sampling its synthetic pools and fits a fresh generator at the next
        refresh. Refresh hooks (callables) are dropped too; ``CFDGCallback`` re-registers itself.
        """
        state = self.__dict__.copy()
        core = state.pop("augmented")
        state["_refresh_hooks"] = []
        state["_cfdg_core_state"] = _core_state_without_generator(core)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        core_state = state.pop("_cfdg_core_state")
        self.__dict__.update(state)
        if self.generator_device.startswith("cuda") and not th.cuda.is_available():
            # A buffer saved on a GPU machine and loaded on a CPU one: the (future) generator goes to the CPU.
            self.generator_device = "cpu"
        self.augmented = _core_from_state(core_state, device=self.generator_device, on_refresh=self._dispatch_refresh)


def _peek_np_seed() -> int:
    """A seed drawn from the global ``np.random`` state, which is restored afterwards."""
    st = np.random.get_state()
    try:
        return int(np.random.randint(0, 2**31 - 1))
    finally:
        np.random.set_state(st)


def _core_state_without_generator(core: AugmentedReplayBuffer) -> dict[str, Any]:
    """The core's state as numpy arrays + string metadata, minus the generator."""
    tensors, metadata = core.state_tensors(include_generator=False)
    return {"tensors": {k: v.detach().cpu().numpy() for k, v in tensors.items()}, "metadata": dict(metadata)}


def _core_from_state(
    state: Mapping[str, Any], *, device: str, on_refresh: RefreshHook, generator: CFDGGenerator | None = None
) -> AugmentedReplayBuffer:
    """Rebuild the core from :func:`_core_state_without_generator` output, optionally with a generator."""
    tensors = {k: th.from_numpy(np.ascontiguousarray(v)) for k, v in state["tensors"].items()}
    core = AugmentedReplayBuffer.from_state_tensors(tensors, dict(state["metadata"]), device=device,
                                                    generator=generator)
    core.add_hook(on_refresh)
    return core


__all__ = ["CFDGBufferError", "CFDGReplayBuffer", "scale_actions_to_unit"]
