"""Physics error of (generated) MuJoCo transitions: a thin layer over the datasets' physics check.

Re-simulation itself is :func:`cfdg_aug.datasets.physics_check` (written for the datasets): for a
:class:`TransitionBatch` it rebuilds the MuJoCo state from the observation (``"reconstructed"``
method), steps the env with the action and compares ``next_obs``, ``rew`` and the terminal flag
with what the env's own step returns. Errors are relative, ``|pred - stored| / max(|stored|, 1)``,
max over observation dimensions for the next state. This module adds what fidelity needs on top:

- the **noise floor**: the same check on REAL transitions, also rebuilt from the float32
  observation, so it measures only what the float32 rounding of the observation produces
  (~1e-7 on hopper); its maximum is the floor;
- the summary: median and 90th percentile of next-state and reward errors, the terminal
  mismatch rate, the fraction of transitions within the floor (both errors at or below it) and
  within looser fixed thresholds (1e-3, 1e-2, 1e-1), and the fraction skipped (a velocity at the
  env's +-10 observation clip does not determine the state).

MuJoCo and Gymnasium are imported only when a check runs (the ``mujoco`` / ``experiments`` extra).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from cfdg_aug._optional import install_hint
from cfdg_aug.transitions import TransitionBatch

LOOSE_THRESHOLDS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)


def physics_available() -> bool:
    """True when mujoco and gymnasium can be imported (the physics check can run)."""
    return all(importlib.util.find_spec(m) is not None for m in ("mujoco", "gymnasium"))


def _require() -> None:
    if not physics_available():
        raise ImportError(f"the physics check needs mujoco and gymnasium: {install_hint('mujoco')}", name="mujoco")


def _as_batch(data: Any) -> TransitionBatch:
    """A TransitionBatch from a batch, an OfflineDataset or a mapping of arrays."""
    if isinstance(data, TransitionBatch):
        return data
    to_batch = getattr(data, "to_transition_batch", None)
    if callable(to_batch):
        return to_batch()
    return TransitionBatch.validated(data)


def noise_floor(real: Any, env_id: str, *, max_transitions: int = 1000) -> dict[str, float]:
    """Physics error of REAL transitions re-simulated from their float32 observations.

    ``real``: a TransitionBatch (or OfflineDataset; its stored qpos/qvel are deliberately NOT used,
    so the floor has the same rounding as generated data). Returns ``{"next_state", "reward",
    "n_checked"}``: the largest next-state and reward errors over an evenly spaced subset of at
    most ``max_transitions`` rows.
    """
    _require()
    from cfdg_aug.datasets.physics import physics_check

    rep = physics_check(_as_batch(real), env_id, max_transitions=max_transitions, method="reconstructed")
    if rep.n_checked == 0:
        raise ValueError("noise_floor: no real transition could be re-simulated (all velocities at the clip?)")
    return {"next_state": float(rep.next_state_error.max()), "reward": float(rep.reward_error.max()),
            "n_checked": float(rep.n_checked)}


def physics_error(
    batch: Any, env_id: str, *, max_transitions: int | None = 1000, floor: dict[str, float] | None = None,
) -> dict[str, float]:
    """Summary of the physics error of ``batch`` (e.g. generated transitions) in env ``env_id``.

    Args:
        batch: TransitionBatch (N rows), OfflineDataset or mapping; re-simulated from ``obs``.
        env_id: Gymnasium id or dataset name (``Hopper-v4``, ``hopper-medium-v2``).
        max_transitions: evenly spaced subset size (None = all rows).
        floor: the real data's noise floor (:func:`noise_floor`); without it the
            ``frac_within_floor`` entry is left out.

    Returns a flat dict: ``next_state_median``, ``next_state_p90``, ``reward_median``,
    ``reward_p90``, ``terminal_mismatch_rate``, ``frac_within_floor`` (both errors <= floor),
    ``frac_next_state_below_<t>`` for ``t`` in 1e-3, 1e-2, 1e-1, ``n_checked``, ``frac_skipped``.
    """
    _require()
    from cfdg_aug.datasets.physics import physics_check

    b = _as_batch(batch)
    rep = physics_check(b, env_id, max_transitions=max_transitions, method="reconstructed")
    n_total = rep.n_checked + int(rep.skipped.size)
    out: dict[str, float] = {
        "next_state_median": rep.next_state_median, "next_state_p90": rep.next_state_p90,
        "reward_median": rep.reward_median, "reward_p90": rep.reward_p90,
        "terminal_mismatch_rate": float(rep.terminal_mismatch.mean()) if rep.n_checked else float("nan"),
        "n_checked": float(rep.n_checked), "frac_skipped": float(rep.skipped.size / n_total) if n_total else float("nan"),
    }
    ns, rw = rep.next_state_error, rep.reward_error
    for t in LOOSE_THRESHOLDS:
        out[f"frac_next_state_below_{t:g}"] = float((ns <= t).mean()) if rep.n_checked else float("nan")
    if floor is not None:
        within = (ns <= floor["next_state"]) & (rw <= floor["reward"])
        out["frac_within_floor"] = float(within.mean()) if rep.n_checked else float("nan")
        out["floor_next_state"], out["floor_reward"] = float(floor["next_state"]), float(floor["reward"])
    return out
