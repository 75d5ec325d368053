"""The in-memory offline dataset (D4RL naming) and the validation every loader shares."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cfdg_aug.transitions import TransitionBatch


class DatasetError(ValueError):
    """A dataset file or array set is malformed; the message names the file (when known) and the key."""


@dataclass
class OfflineDataset:
    """N transitions as named arrays in D4RL naming.

    Shapes and dtypes: ``observations`` (N, obs_dim) float32, ``actions`` (N, act_dim) float32,
    ``rewards`` (N,) float32, ``next_observations`` (N, obs_dim) float32, ``terminals`` (N,) bool
    (true termination), ``timeouts`` (N,) bool (time-limit truncation: the episode ends but the
    transition is not terminal), ``infos_qpos`` (N, nq) / ``infos_qvel`` (N, nv) float64: the
    simulator state at the START of each transition, when known.

    Build through :func:`dataset_from_arrays` (or a loader) to get validation; the plain
    constructor trusts its input.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    env_id: str | None
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    infos_qpos: np.ndarray | None = None
    infos_qvel: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def episodes(self) -> list[slice]:
        """Episode slices, split after every terminal OR timeout.

        A trailing run of transitions with neither flag (an episode cut by the dataset's size
        limit, as in D4RL) is returned as a last, partial episode.
        """
        ends = np.flatnonzero(self.terminals | self.timeouts)
        out: list[slice] = []
        start = 0
        for e in ends:
            out.append(slice(start, int(e) + 1))
            start = int(e) + 1
        if start < len(self):
            out.append(slice(start, len(self)))
        return out

    def has_partial_tail(self) -> bool:
        """True when the last transition ends no episode (the final episode was cut)."""
        n = len(self)
        return n > 0 and not bool(self.terminals[-1] or self.timeouts[-1])

    def episode_returns(self, complete_only: bool = True) -> np.ndarray:
        """Undiscounted return per episode, float64 of shape (n_episodes,).

        With ``complete_only`` the trailing partial episode (if any) is left out.
        """
        eps = self.episodes()
        if complete_only and self.has_partial_tail():
            eps = eps[:-1]
        r = self.rewards.astype(np.float64)
        if not eps:
            return np.zeros(0, dtype=np.float64)
        starts = np.array([s.start for s in eps], dtype=np.int64)
        csum = np.concatenate([[0.0], np.cumsum(r)])
        stops = np.array([s.stop for s in eps], dtype=np.int64)
        return csum[stops] - csum[starts]

    def episode_lengths(self, complete_only: bool = True) -> np.ndarray:
        """Length per episode (int64), same selection as :meth:`episode_returns`."""
        eps = self.episodes()
        if complete_only and self.has_partial_tail():
            eps = eps[:-1]
        return np.array([s.stop - s.start for s in eps], dtype=np.int64)

    def to_transition_batch(self) -> TransitionBatch:
        """As a validated :class:`TransitionBatch` (done = terminals, timeout = timeouts)."""
        return TransitionBatch.from_arrays(
            self.observations, self.actions, self.rewards, self.next_observations,
            self.terminals, self.timeouts,
        )

    def subset(self, idx: slice | np.ndarray) -> OfflineDataset:
        """Rows ``idx`` as a new dataset (attrs copied; episode flags kept as stored)."""
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return OfflineDataset(
            observations=self.observations[idx], actions=self.actions[idx], rewards=self.rewards[idx],
            next_observations=self.next_observations[idx], terminals=self.terminals[idx],
            timeouts=self.timeouts[idx], env_id=self.env_id, name=self.name, attrs=dict(self.attrs),
            infos_qpos=take(self.infos_qpos), infos_qvel=take(self.infos_qvel),
        )

    def stats(self) -> dict[str, Any]:
        """Episode statistics in the same keys the dataset maker stores as ``stats_*`` attributes."""
        from cfdg_aug.datasets.scores import normalized_score

        rets = self.episode_returns(complete_only=True)
        out: dict[str, Any] = {
            "n_transitions": len(self),
            "n_terminals": int(self.terminals.sum()),
            "n_timeouts": int(self.timeouts.sum()),
            "n_episodes_complete": int(rets.size),
            "n_episodes_total": len(self.episodes()),
            "partial_tail_steps": (self.episodes()[-1].stop - self.episodes()[-1].start)
            if self.has_partial_tail() else 0,
            "mean_return": float(rets.mean()) if rets.size else float("nan"),
            "std_return": float(rets.std()) if rets.size else float("nan"),
            "min_return": float(rets.min()) if rets.size else float("nan"),
            "max_return": float(rets.max()) if rets.size else float("nan"),
        }
        if self.env_id is not None and rets.size:
            try:
                out["normalized_score"] = float(normalized_score(self.env_id, rets.mean()))
            except ValueError:
                pass
        return out


def _where(source: str | None, key: str) -> str:
    return f"{source}: key '{key}'" if source else f"key '{key}'"


def _first_bad_row(arr: np.ndarray) -> int:
    bad = ~np.isfinite(arr)
    return int(np.argwhere(bad)[0][0])


def _float_array(source: str | None, key: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{_where(source, key)}: expected a float array, got dtype {arr.dtype}")
    if ndim == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # D4RL sometimes stores rewards as (N, 1)
    if arr.ndim != ndim:
        want = "(N,)" if ndim == 1 else "(N, dim)"
        raise DatasetError(f"{_where(source, key)}: expected shape {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{_where(source, key)}: contains NaN or inf (first at row {_first_bad_row(arr)})")
    return arr


def _flag_array(source: str | None, key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError(f"{_where(source, key)}: expected shape (N,), got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise DatasetError(f"{_where(source, key)}: expected bool or 0/1 numbers, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{_where(source, key)}: contains NaN or inf (first at row {_first_bad_row(arr)})")
    if not np.isin(arr, (0, 1)).all():
        raise DatasetError(f"{_where(source, key)}: expected only 0/1 values")
    return arr.astype(np.bool_)


def dataset_from_arrays(
    arrays: Mapping[str, Any],
    *,
    name: str,
    env_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> OfflineDataset:
    """Validate D4RL-named arrays and build an :class:`OfflineDataset`.

    ``arrays`` needs ``observations``, ``actions``, ``rewards``, ``next_observations``,
    ``terminals``; ``timeouts`` defaults to all False; ``infos/qpos`` and ``infos/qvel`` (or
    ``infos_qpos`` / ``infos_qvel``) are optional but must come together. Checks dtypes, shapes,
    equal lengths, matching obs widths and NaN/inf; errors are :class:`DatasetError` naming
    ``source`` (the file) and the key.
    """
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        if key not in arrays:
            raise DatasetError(f"{_where(source, key)}: missing (required key)")
    obs = _float_array(source, "observations", arrays["observations"], 2)
    act = _float_array(source, "actions", arrays["actions"], 2)
    rew = _float_array(source, "rewards", arrays["rewards"], 1)
    nxt = _float_array(source, "next_observations", arrays["next_observations"], 2)
    term = _flag_array(source, "terminals", arrays["terminals"])
    n = obs.shape[0]
    tout = _flag_array(source, "timeouts", arrays["timeouts"]) if arrays.get("timeouts") is not None \
        else np.zeros(n, dtype=np.bool_)
    qpos = arrays.get("infos/qpos", arrays.get("infos_qpos"))
    qvel = arrays.get("infos/qvel", arrays.get("infos_qvel"))
    if (qpos is None) != (qvel is None):
        missing = "infos/qvel" if qvel is None else "infos/qpos"
        raise DatasetError(f"{_where(source, missing)}: missing (infos/qpos and infos/qvel come together)")
    named: dict[str, np.ndarray] = {
        "observations": obs, "actions": act, "rewards": rew, "next_observations": nxt,
        "terminals": term, "timeouts": tout,
    }
    if qpos is not None:
        named["infos/qpos"] = _float_array(source, "infos/qpos", qpos, 2).astype(np.float64, copy=False)
        named["infos/qvel"] = _float_array(source, "infos/qvel", qvel, 2).astype(np.float64, copy=False)
    for key, arr in named.items():
        if arr.shape[0] != n:
            raise DatasetError(
                f"{_where(source, key)}: has {arr.shape[0]} rows but 'observations' has {n} (lengths must match)"
            )
    if nxt.shape[1] != obs.shape[1]:
        raise DatasetError(
            f"{_where(source, 'next_observations')}: has {nxt.shape[1]} columns but 'observations' has {obs.shape[1]}"
        )
    if n == 0:
        raise DatasetError(f"{_where(source, 'observations')}: dataset is empty")
    return OfflineDataset(
        observations=obs.astype(np.float32, copy=False), actions=act.astype(np.float32, copy=False),
        rewards=rew.astype(np.float32, copy=False), next_observations=nxt.astype(np.float32, copy=False),
        terminals=term, timeouts=tout & ~term,  # a terminal step is never also a truncation
        env_id=env_id, name=name, attrs=dict(attrs or {}),
        infos_qpos=named.get("infos/qpos"), infos_qvel=named.get("infos/qvel"),
    )


def attr_to_python(v: Any) -> Any:
    """hdf5 / numpy attribute value -> plain Python (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [attr_to_python(x) for x in v.tolist()] if v.dtype == object else v.tolist()
    return v


def attr_to_hdf5(v: Any) -> Any:
    """Plain Python -> something h5py stores as an attribute (dicts/lists of mixed types as JSON)."""
    if v is None:
        return "null"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return v
