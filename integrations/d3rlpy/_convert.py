"""Conversions between the core :class:`~cfdg_aug.transitions.TransitionBatch` and d3rlpy's types.

d3rlpy stores data as episodes (``observations`` (T, obs_dim), ``actions`` (T, act_dim), ``rewards``
(T, 1), ``terminated``); a non-terminated episode of T stored steps holds T - 1 transitions (the
last step only provides the next observation of the one before), a terminated one holds T (the
last transition's next observation is not stored). Our core works on flat transitions with an
explicit ``next_obs``. The choices made here, documented once:

- **Terminal next observations.** d3rlpy does not keep the observation after a terminal step (its
  transition picker returns zeros). When episodes are converted to transitions we use the terminal
  step's own observation as ``next_obs``: the value is masked out of every TD target by
  ``done = 1``, and a copy of ``s`` keeps the generator's ``s'`` marginal free of an artificial
  cluster at the origin (zeros are far outside hopper's observation range).
- **Timeouts.** The last transition of a non-terminated episode gets ``timeout = True``
  (the episode ended without a termination: a time limit or a cut-off).
- **next_actions.** :class:`~d3rlpy.dataset.TransitionMiniBatch` requires ``next_actions``; a
  synthetic or flat transition has none, so they are zeros. IQL, CQL, SAC, TD3(+BC), AWAC, PEX and
  APL never read them; ReBRAC's critic target does, and ``CFDGReplayBuffer`` refuses it.
- **intervals** are 1 (one-step transitions) unless given (rows picked by a
  ``MultiStepTransitionPicker`` carry theirs). **transitions** is :data:`NO_TRANSITIONS`, empty, and
  iterating it raises: d3rlpy iterates it only to compute per-transition returns-to-go (Cal-QL's
  ``compute_returns_to_go``), which a mixed batch cannot give, and an empty list would silently
  broadcast to an empty tensor.
- **Tuple observations** (d3rlpy's ``observation_signature`` with several shapes) are flattened
  per step into one row (each part C-order, parts in order) by a
  :class:`~cfdg_aug.integrations.spaces.FlatLayout`, and split back into a list of
  ``(B, *shape_i)`` arrays in the mini-batch. Without a layout, observations must be one
  ``(T, obs_dim)`` array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from d3rlpy.dataset import Episode, EpisodeBase, ReplayBufferBase, TransitionMiniBatch

from cfdg_aug.transitions import TransitionBatch, TransitionError

from ..spaces import FlatLayout


class _NoTransitions(Sequence[Any]):
    """``TransitionMiniBatch.transitions`` of a mixed batch: empty, and iterating it is refused."""

    _MESSAGE = ("this mini-batch comes from CFDGReplayBuffer, whose generated transitions have no returns-to-go "
                "(rewards_to_go): algorithms that need them (need_returns_to_go, Cal-QL) are not supported")

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: Any) -> Any:
        raise ValueError(self._MESSAGE)

    def __iter__(self) -> Any:
        raise ValueError(self._MESSAGE)

    def __repr__(self) -> str:
        return "NO_TRANSITIONS"


NO_TRANSITIONS: Sequence[Any] = _NoTransitions()

__all__ = [
    "episodes_to_transition_batch",
    "to_transition_batch",
    "transition_batch_to_episodes",
    "transition_batch_to_minibatch",
]


def transition_batch_to_minibatch(
    batch: TransitionBatch, *, next_actions: np.ndarray | None = None, obs_layout: FlatLayout | None = None,
    intervals: np.ndarray | None = None,
) -> TransitionMiniBatch:
    """Build a d3rlpy :class:`TransitionMiniBatch` from a core batch (raw values) without a Python loop.

    Shapes: ``observations`` / ``next_observations`` (B, obs_dim) (a list of ``(B, *shape_i)``
    arrays with a tuple ``obs_layout``), ``actions`` / ``next_actions`` (B, act_dim),
    ``rewards`` / ``terminals`` / ``intervals`` (B, 1), all float32 and C-contiguous.
    ``next_actions`` defaults to zeros and ``intervals`` to ones (see the module docstring);
    ``terminals`` is ``batch.done`` (a timeout is not a terminal).
    """
    n = len(batch)
    act = np.ascontiguousarray(batch.act, dtype=np.float32)
    if next_actions is None:
        nact = np.zeros_like(act)
    else:
        nact = np.ascontiguousarray(next_actions, dtype=np.float32)
        if nact.shape != act.shape:
            raise TransitionError(f"next_actions must have shape {act.shape}, got {nact.shape}")
    if intervals is None:
        iv = np.ones((n, 1), dtype=np.float32)
    else:
        iv = np.ascontiguousarray(intervals, dtype=np.float32).reshape(n, 1)

    def obs(x: np.ndarray) -> Any:
        return np.ascontiguousarray(x, dtype=np.float32) if obs_layout is None else obs_layout.unflatten(x, dtypes=False)

    return TransitionMiniBatch(
        observations=obs(batch.obs),
        actions=act,
        rewards=np.ascontiguousarray(batch.rew, dtype=np.float32).reshape(n, 1),
        next_observations=obs(batch.next_obs),
        next_actions=nact,
        terminals=np.ascontiguousarray(batch.done, dtype=np.float32).reshape(n, 1),
        intervals=iv,
        transitions=NO_TRANSITIONS,
    )


def _flat_observations(episode: EpisodeBase, obs_layout: FlatLayout | None) -> np.ndarray:
    obs = episode.observations
    if obs_layout is not None:
        n = len(obs[0]) if obs_layout.kind == "tuple" else len(obs)
        try:
            return obs_layout.flatten(obs, n)
        except ValueError as e:
            raise TransitionError(f"episode observations do not match the buffer's observation signature: {e}") from None
    if not isinstance(obs, np.ndarray):
        raise TransitionError("episodes with tuple observations need an obs_layout (one (T, obs_dim) array otherwise)")
    obs = np.asarray(obs)
    if obs.ndim != 2:
        raise TransitionError(f"episode observations must have shape (T, obs_dim), got {obs.shape}")
    return obs


def episodes_to_transition_batch(
    episodes: Sequence[EpisodeBase], *, obs_layout: FlatLayout | None = None
) -> TransitionBatch:
    """Flatten d3rlpy episodes into one :class:`TransitionBatch` (N = sum of transition counts).

    Terminal transitions get ``next_obs = obs`` (see the module docstring); the last transition of
    a non-terminated episode gets ``timeout = True``. ``obs_layout`` flattens tuple (or
    multi-dimensional) observations into rows.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next_obs", "done", "timeout")}
    for ep in episodes:
        obs = _flat_observations(ep, obs_layout)
        n = int(ep.transition_count)
        if n <= 0:
            continue
        act = np.asarray(ep.actions)
        if act.ndim == 1:
            act = act[:, None]
        rew = np.asarray(ep.rewards).reshape(len(act), -1)[:, 0]
        o = obs[:n]
        if ep.terminated:
            nxt = np.concatenate([obs[1:n], obs[n - 1 : n]], axis=0)
        else:
            nxt = obs[1 : n + 1]
        done = np.zeros(n, dtype=np.float32)
        timeout = np.zeros(n, dtype=bool)
        if ep.terminated:
            done[-1] = 1.0
        else:
            timeout[-1] = True
        for k, v in (("obs", o), ("act", act[:n]), ("rew", rew[:n]), ("next_obs", nxt), ("done", done),
                     ("timeout", timeout)):
            parts[k].append(v)
    if not parts["obs"]:
        raise TransitionError("episodes hold no transitions")
    return TransitionBatch.from_arrays(
        *(np.concatenate(parts[k], axis=0) for k in ("obs", "act", "rew", "next_obs", "done", "timeout"))
    )


def transition_batch_to_episodes(
    batch: TransitionBatch, *, atol: float = 1e-6, obs_layout: FlatLayout | None = None
) -> list[Episode]:
    """Split flat transitions into d3rlpy episodes.

    An episode ends at a terminal, at a timeout, or where the chain breaks
    (``next_obs[i] != obs[i + 1]`` beyond ``atol``, e.g. D4RL's partial last episode or shuffled
    data). A terminated episode of T transitions becomes T stored steps (``terminated=True``); any
    other becomes T + 1 steps whose last step carries the final ``next_obs`` with a zero action and
    a zero reward (d3rlpy never turns that step into a transition; it only supplies
    ``next_observation`` and ``next_action`` of the step before). ``obs_layout`` splits flat
    observation rows back into tuple observations.
    """
    n = len(batch)
    if n == 0:
        return []
    obs, nxt = batch.obs.astype(np.float32), batch.next_obs.astype(np.float32)
    end = batch.done.astype(bool).copy()
    if batch.timeout is not None:
        end |= batch.timeout.astype(bool)
    if n > 1:
        scale = np.maximum(1.0, np.abs(obs[1:]))
        end[:-1] |= (np.abs(nxt[:-1] - obs[1:]) > atol * scale).any(axis=1)
    end[-1] = True
    stops = np.flatnonzero(end) + 1
    starts = np.concatenate([[0], stops[:-1]])
    episodes: list[Episode] = []
    act = batch.act.astype(np.float32)
    rew = batch.rew.astype(np.float32)[:, None]

    def shaped(rows: np.ndarray) -> Any:
        return rows if obs_layout is None else obs_layout.unflatten(rows, dtypes=False)

    for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
        terminated = bool(batch.done[e - 1] >= 0.5)
        if terminated:
            episodes.append(Episode(observations=shaped(obs[s:e].copy()), actions=act[s:e].copy(),
                                    rewards=rew[s:e].copy(), terminated=True))
        else:
            episodes.append(Episode(
                observations=shaped(np.concatenate([obs[s:e], nxt[e - 1 : e]], axis=0)),
                actions=np.concatenate([act[s:e], np.zeros((1, act.shape[1]), np.float32)], axis=0),
                rewards=np.concatenate([rew[s:e], np.zeros((1, 1), np.float32)], axis=0),
                terminated=False,
            ))
    return episodes


def to_transition_batch(data: Any, *, obs_layout: FlatLayout | None = None) -> TransitionBatch:
    """Accept any supported offline-data container and return a validated :class:`TransitionBatch`.

    Supported: a d3rlpy ``ReplayBuffer`` / ``MDPDataset`` (its ``episodes``), a sequence of d3rlpy
    episodes, a :class:`TransitionBatch`, an object with ``to_transition_batch()`` (our
    ``OfflineDataset``), or a mapping of named arrays (our or the D4RL names).
    """
    if isinstance(data, TransitionBatch):
        return TransitionBatch.validated(data)
    if isinstance(data, ReplayBufferBase):
        return episodes_to_transition_batch(list(data.episodes), obs_layout=obs_layout)
    if hasattr(data, "to_transition_batch"):
        return TransitionBatch.validated(data.to_transition_batch())
    if isinstance(data, Mapping):
        return TransitionBatch.validated(data)
    if isinstance(data, Sequence) and (len(data) == 0 or all(hasattr(e, "transition_count") and hasattr(e, "observations") for e in data)):
        return episodes_to_transition_batch(list(data), obs_layout=obs_layout)
    raise TransitionError(
        "offline_dataset must be a d3rlpy ReplayBuffer/MDPDataset, a sequence of d3rlpy episodes, a "
        f"TransitionBatch, an OfflineDataset or a mapping of arrays, got {type(data).__name__}"
    )
