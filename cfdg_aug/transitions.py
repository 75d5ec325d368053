"""Transitions (s, a, r, s', done) as named arrays, and the flat layout the diffusion model sees.

The flat layout of one transition is ``[s (obs_dim), a (act_dim), r (1), s' (obs_dim), done (1)]``,
i.e. ``D = 2 * obs_dim + act_dim + 2`` float32 columns. :class:`TransitionLayout` owns the column
slices; :class:`TransitionBatch` owns validation, so every entry point (buffer ``add``, generator
``fit``, dataset loaders) rejects bad input with the same messages, naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Where a transition came from (``TransitionBatch.source``).
SOURCE_REAL_OFFLINE = 0
SOURCE_REAL_ONLINE = 1
SOURCE_SYNTHETIC_OFFLINE = 2
SOURCE_SYNTHETIC_ONLINE = 3
SOURCE_NAMES: tuple[str, ...] = ("real_offline", "real_online", "synthetic_offline", "synthetic_online")

# Condition labels of the diffusion model; NULL is the classifier-free "no label" token.
LABEL_OFFLINE = 0
LABEL_ONLINE = 1
LABEL_NULL = 2
LABEL_NAMES: dict[str | None, int] = {"offline": LABEL_OFFLINE, "online": LABEL_ONLINE, None: LABEL_NULL}

FIELDS: tuple[str, ...] = ("obs", "act", "rew", "next_obs", "done")


class TransitionError(ValueError):
    """Input transitions are malformed; the message names the field and what was expected."""


@dataclass(frozen=True)
class TransitionLayout:
    """Column layout of flattened transitions for given observation and action sizes."""

    obs_dim: int
    act_dim: int

    def __post_init__(self) -> None:
        for name in ("obs_dim", "act_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise TransitionError(f"{name} must be a positive int, got {v!r}")

    @property
    def dim(self) -> int:
        """Width D of a flat transition."""
        return 2 * self.obs_dim + self.act_dim + 2

    @property
    def obs(self) -> slice:
        return slice(0, self.obs_dim)

    @property
    def act(self) -> slice:
        return slice(self.obs_dim, self.obs_dim + self.act_dim)

    @property
    def rew(self) -> int:
        return self.obs_dim + self.act_dim

    @property
    def next_obs(self) -> slice:
        start = self.obs_dim + self.act_dim + 1
        return slice(start, start + self.obs_dim)

    @property
    def done(self) -> int:
        return self.dim - 1

    def unflatten(self, x: np.ndarray) -> TransitionBatch:
        """(N, D) float matrix -> :class:`TransitionBatch` (views where possible)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TransitionError(f"flat transitions must have shape (N, {self.dim}), got {x.shape}")
        return TransitionBatch(
            obs=x[:, self.obs], act=x[:, self.act], rew=x[:, self.rew], next_obs=x[:, self.next_obs],
            done=x[:, self.done],
        )


@dataclass
class TransitionBatch:
    """A batch of N transitions as named float32 arrays.

    Shapes: ``obs`` (N, obs_dim), ``act`` (N, act_dim), ``rew`` (N,), ``next_obs`` (N, obs_dim),
    ``done`` (N,) in {0, 1} (true termination only), ``timeout`` (N,) bool (time-limit
    truncation: episode ends, but the transition is not terminal), ``source`` (N,) int8 (see the
    ``SOURCE_*`` constants) when the batch was drawn from a buffer.

    Construct through :meth:`from_arrays` (or :meth:`validated`) to get validation and casting;
    the plain constructor trusts its input.
    """

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    done: np.ndarray
    timeout: np.ndarray | None = None
    source: np.ndarray | None = None

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        obs: Any,
        act: Any,
        rew: Any,
        next_obs: Any,
        done: Any,
        timeout: Any = None,
        *,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        source: Any = None,
    ) -> TransitionBatch:
        """Validate and cast arrays; a single transition (obs of shape (obs_dim,)) becomes N = 1.

        Raises :class:`TransitionError` naming the field for: non-numeric dtypes, wrong number of
        dimensions, wrong obs/action size, arrays of different lengths, NaN or inf.
        """
        single = np.ndim(obs) == 1
        obs_a = _as_float("obs", obs, single=single, matrix=True)
        arrays: dict[str, np.ndarray] = {"obs": obs_a}
        arrays["act"] = _as_float("act", act, single=single, matrix=True)
        arrays["rew"] = _as_float("rew", rew, single=single, matrix=False)
        arrays["next_obs"] = _as_float("next_obs", next_obs, single=single, matrix=True)
        arrays["done"] = _as_flag("done", done, single=single, out=np.float32)
        timeout_a = None if timeout is None else _as_flag("timeout", timeout, single=single, out=np.bool_)
        expected_obs = obs_dim if obs_dim is not None else obs_a.shape[1]
        expected_act = act_dim if act_dim is not None else arrays["act"].shape[1]
        for name, width in (("obs", expected_obs), ("next_obs", expected_obs), ("act", expected_act)):
            if arrays[name].shape[1] != width:
                raise TransitionError(
                    f"{name} must have {width} columns ({'obs_dim' if name != 'act' else 'act_dim'}), "
                    f"got shape {arrays[name].shape}"
                )
        n = obs_a.shape[0]
        lengths = {k: v.shape[0] for k, v in arrays.items()}
        if timeout_a is not None:
            lengths["timeout"] = timeout_a.shape[0]
        bad = {k: m for k, m in lengths.items() if m != n}
        if bad:
            raise TransitionError(
                "all fields must have the same length N; "
                + ", ".join(f"{k} has {m}" for k, m in {"obs": n, **bad}.items())
            )
        for name, arr in arrays.items():
            if not np.isfinite(arr).all():
                row = int(np.argwhere(~np.isfinite(arr))[0][0])
                raise TransitionError(f"{name} contains NaN or inf (first at row {row})")
        source_a = None if source is None else np.asarray(source, dtype=np.int8).reshape(-1)
        if source_a is not None and source_a.shape[0] != n:
            raise TransitionError(f"source must have length {n}, got {source_a.shape[0]}")
        return cls(timeout=timeout_a, source=source_a, **arrays)

    @classmethod
    def validated(
        cls, data: TransitionBatch | Mapping[str, Any], *, obs_dim: int | None = None, act_dim: int | None = None
    ) -> TransitionBatch:
        """Accept a :class:`TransitionBatch` or a mapping of named arrays and validate it.

        Mapping keys may use our names or the D4RL names (``observations``, ``actions``,
        ``rewards``, ``next_observations``, ``terminals``, ``timeouts``).
        """
        if isinstance(data, TransitionBatch):
            m: Mapping[str, Any] = data.as_dict()
        else:
            m = _canonical_keys(data)
        missing = [k for k in FIELDS if k not in m]
        if missing:
            raise TransitionError(f"missing field(s): {', '.join(missing)}")
        return cls.from_arrays(
            m["obs"], m["act"], m["rew"], m["next_obs"], m["done"], m.get("timeout"),
            obs_dim=obs_dim, act_dim=act_dim, source=m.get("source"),
        )

    # --- views ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.act.shape[1])

    @property
    def layout(self) -> TransitionLayout:
        return TransitionLayout(self.obs_dim, self.act_dim)

    def as_dict(self) -> dict[str, np.ndarray]:
        d = {k: getattr(self, k) for k in FIELDS}
        if self.timeout is not None:
            d["timeout"] = self.timeout
        if self.source is not None:
            d["source"] = self.source
        return d

    def flatten(self) -> np.ndarray:
        """(N, D) float32 matrix in the layout of :class:`TransitionLayout`."""
        return np.concatenate(
            [self.obs, self.act, self.rew[:, None], self.next_obs, self.done[:, None]], axis=1, dtype=np.float32
        )

    def __getitem__(self, idx: Any) -> TransitionBatch:
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return TransitionBatch(
            obs=self.obs[idx], act=self.act[idx], rew=self.rew[idx], next_obs=self.next_obs[idx],
            done=self.done[idx], timeout=take(self.timeout), source=take(self.source),
        )

    @staticmethod
    def concat(batches: Iterable[TransitionBatch]) -> TransitionBatch:
        bs = list(batches)
        if not bs:
            raise TransitionError("concat needs at least one batch")

        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(b, name) for b in bs]
            if any(p is None for p in parts):
                return None
            return np.concatenate(parts, axis=0)

        return TransitionBatch(**{k: cat(k) for k in (*FIELDS, "timeout", "source")})  # type: ignore[arg-type]


_D4RL_KEYS = {
    "observations": "obs", "actions": "act", "rewards": "rew", "next_observations": "next_obs",
    "terminals": "done", "timeouts": "timeout", "dones": "done",
}


def _canonical_keys(m: Mapping[str, Any]) -> dict[str, Any]:
    return {_D4RL_KEYS.get(k, k): v for k, v in m.items()}


def _as_float(name: str, value: Any, *, single: bool = False, matrix: bool = True) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists etc.
        raise TransitionError(f"{name} could not be converted to an array: {e}") from None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TransitionError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if single:
        arr = arr[None] if matrix else arr.reshape(1)
    if matrix:
        if arr.ndim != 2:
            raise TransitionError(f"{name} must have shape (N, dim), got {arr.shape}")
    else:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise TransitionError(f"{name} must have shape (N,), got {arr.shape}")
    return arr


def _as_flag(name: str, value: Any, *, single: bool, out: type) -> np.ndarray:
    arr = np.asarray(value)
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
        raise TransitionError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    if single:
        arr = arr.reshape(1)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise TransitionError(f"{name} must have shape (N,), got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isfinite(arr).all():
            raise TransitionError(f"{name} contains NaN or inf")
        if not np.isin(arr, (0, 1)).all():
            raise TransitionError(f"{name} must be 0/1 (or bool), got values outside {{0, 1}}")
    return arr.astype(out)


__all__ = [
    "FIELDS", "LABEL_NAMES", "LABEL_NULL", "LABEL_OFFLINE", "LABEL_ONLINE", "SOURCE_NAMES",
    "SOURCE_REAL_OFFLINE", "SOURCE_REAL_ONLINE", "SOURCE_SYNTHETIC_OFFLINE", "SOURCE_SYNTHETIC_ONLINE",
    "TransitionBatch", "TransitionError", "TransitionLayout",
]
