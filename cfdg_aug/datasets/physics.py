"""Physics consistency of MuJoCo transitions: re-simulate each one and measure the errors.

For each checked transition the simulator is put into the transition's start state, stepped with
its action, and the resulting observation and reward are compared with the stored ``next_obs`` and
``rew``. The start state comes from:

- ``"qpos_qvel"``: the dataset's ``infos_qpos`` / ``infos_qvel`` (exact; real data re-simulates to
  float32 rounding under the mujoco version that made it);
- ``"reconstructed"``: the observation, for hopper, walker2d, halfcheetah and ant (v4 layout, no
  contact forces): ``qpos = [0 (x, and y for ant), obs[:nq-k]]``, ``qvel = obs[nq-k:]``. The
  left-out x (y) coordinates do not affect dynamics or reward on a flat floor. Skipped: hopper
  and walker2d transitions whose observed velocity sits at the +-10 clip (state not determined).
  The start state is then float32-rounded, so errors are larger than with qpos/qvel (chaotic contacts
  amplify the rounding); this is the method used for generated data, which has no simulator state.
  AntMaze is not supported (goal and maze state are not in the observation).

Errors are relative: ``|pred - stored| / max(|stored|, 1)``; the next-state error of a transition
is the max over observation dimensions. Terminal flags are compared too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cfdg_aug.datasets.core import OfflineDataset
from cfdg_aug.datasets.envs import make_env, state_layout
from cfdg_aug.transitions import TransitionBatch


@dataclass
class PhysicsReport:
    """Per-transition re-simulation errors.

    Shapes: ``indices`` (M,) rows checked; ``next_state_error`` (M,) max relative error over obs
    dims; ``reward_error`` (M,) relative reward error; ``terminal_mismatch`` (M,) bool;
    ``skipped`` (K,) rows that could not be checked (state not determined by the observation).
    """

    env_id: str
    method: Literal["qpos_qvel", "reconstructed"]
    indices: np.ndarray
    next_state_error: np.ndarray
    reward_error: np.ndarray
    terminal_mismatch: np.ndarray
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_checked(self) -> int:
        return int(self.indices.size)

    def _q(self, a: np.ndarray, q: float) -> float:
        return float(np.quantile(a, q)) if a.size else float("nan")

    @property
    def next_state_median(self) -> float:
        return self._q(self.next_state_error, 0.5)

    @property
    def next_state_p90(self) -> float:
        return self._q(self.next_state_error, 0.9)

    @property
    def reward_median(self) -> float:
        return self._q(self.reward_error, 0.5)

    @property
    def reward_p90(self) -> float:
        return self._q(self.reward_error, 0.9)

    def summary(self) -> dict[str, Any]:
        """Plain-dict summary (JSON-ready)."""
        return {
            "env_id": self.env_id, "method": self.method, "n_checked": self.n_checked, "n_skipped": int(self.skipped.size),
            "next_state_median": self.next_state_median, "next_state_p90": self.next_state_p90,
            "next_state_max": float(self.next_state_error.max()) if self.n_checked else float("nan"),
            "reward_median": self.reward_median, "reward_p90": self.reward_p90,
            "reward_max": float(self.reward_error.max()) if self.n_checked else float("nan"),
            "terminal_mismatch_rate": float(self.terminal_mismatch.mean()) if self.n_checked else float("nan"),
        }


def _select(n: int, indices: Any, max_transitions: int | None) -> np.ndarray:
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
        idx = idx % n
    else:
        idx = np.arange(n, dtype=np.int64)
    if max_transitions is not None and idx.size > max_transitions:
        # Evenly spaced, so the subset is deterministic and covers the whole dataset.
        idx = idx[np.linspace(0, idx.size - 1, max_transitions).round().astype(np.int64)]
    return idx


def physics_check(
    dataset_or_batch: OfflineDataset | TransitionBatch,
    env_id: str | None = None,
    *,
    indices: Any = None,
    max_transitions: int | None = None,
    method: Literal["auto", "qpos_qvel", "reconstructed"] = "auto",
) -> PhysicsReport:
    """Re-simulate transitions and report next-state and reward errors.

    Args:
        dataset_or_batch: an :class:`OfflineDataset` (uses ``infos_qpos``/``infos_qvel`` when
            present) or a :class:`TransitionBatch` (state reconstructed from ``obs``).
        env_id: Gymnasium id or dataset name; defaults to the dataset's ``env_id``.
        indices: rows to check (default all); ``max_transitions`` then keeps an evenly spaced subset.
        method: ``"auto"`` picks ``"qpos_qvel"`` when the state is stored, else ``"reconstructed"``.

    Raises:
        ValueError: no env id, an env whose state cannot be reconstructed, or a shape mismatch.
    """
    if isinstance(dataset_or_batch, OfflineDataset):
        ds = dataset_or_batch
        obs, act, rew, nxt = ds.observations, ds.actions, ds.rewards, ds.next_observations
        done = ds.terminals.astype(bool)
        qpos_all, qvel_all = ds.infos_qpos, ds.infos_qvel
        env_id = env_id or ds.env_id
    elif isinstance(dataset_or_batch, TransitionBatch):
        b = dataset_or_batch
        obs, act, rew, nxt, done = b.obs, b.act, b.rew, b.next_obs, np.asarray(b.done) > 0.5
        qpos_all = qvel_all = None
    else:
        raise TypeError(f"physics_check expects an OfflineDataset or TransitionBatch, got {type(dataset_or_batch).__name__}")
    if not env_id:
        raise ValueError("env_id is required (the dataset has none)")
    if method == "auto":
        method = "qpos_qvel" if qpos_all is not None and qvel_all is not None else "reconstructed"
    if method == "qpos_qvel" and (qpos_all is None or qvel_all is None):
        raise ValueError("method 'qpos_qvel' needs a dataset with infos_qpos and infos_qvel")

    idx = _select(len(obs), indices, max_transitions)
    env = make_env(env_id)
    try:
        u = env.unwrapped
        env.reset(seed=0)
        if obs.shape[1] != env.observation_space.shape[0] or act.shape[1] != env.action_space.shape[0]:
            raise ValueError(
                f"{env_id} has obs_dim {env.observation_space.shape[0]} / act_dim {env.action_space.shape[0]}, "
                f"data has {obs.shape[1]} / {act.shape[1]}"
            )
        if method == "qpos_qvel":
            assert qpos_all is not None and qvel_all is not None
            qpos, qvel = qpos_all[idx], qvel_all[idx]
            ok = np.ones(idx.size, dtype=bool)
        else:
            qpos, qvel, ok = state_layout(env_id).state_from_obs(obs[idx])
        skipped = idx[~ok]
        idx, qpos, qvel = idx[ok], qpos[ok], qvel[ok]
        pred_obs = np.zeros((idx.size, obs.shape[1]))
        pred_rew = np.zeros(idx.size)
        pred_term = np.zeros(idx.size, dtype=bool)
        for j in range(idx.size):
            u.set_state(qpos[j], qvel[j])
            o, r, term, _, _ = u.step(np.asarray(act[idx[j]], dtype=np.float32))
            pred_obs[j], pred_rew[j], pred_term[j] = o, r, term
    finally:
        env.close()
    true_next = np.asarray(nxt[idx], dtype=np.float64)
    true_rew = np.asarray(rew[idx], dtype=np.float64)
    ns_err = (np.abs(pred_obs - true_next) / np.maximum(np.abs(true_next), 1.0)).max(axis=1) if idx.size \
        else np.zeros(0)
    rw_err = np.abs(pred_rew - true_rew) / np.maximum(np.abs(true_rew), 1.0)
    return PhysicsReport(
        env_id=env_id, method=method, indices=idx, next_state_error=ns_err, reward_error=rw_err,
        terminal_mismatch=pred_term != done[idx], skipped=skipped,
    )
