"""Environments by name (Gymnasium MuJoCo, gymnasium-robotics AntMaze) and state <-> observation maps.

MuJoCo locomotion observations (v4/v5, D4RL v2 layout) are ``[qpos[k:], qvel]`` where the first
``k`` position coordinates (x for hopper / halfcheetah / walker2d, x and y for ant) are left out.
Hopper and walker2d clip the velocity part to [-10, 10]. Hence the simulator state is determined by
the observation up to the left-out coordinates, which these flat-floor tasks do not depend on
(dynamics and reward are invariant to them), except where a velocity was clipped.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from cfdg_aug._optional import require
from cfdg_aug.datasets.scores import env_family

# D4RL AntMaze dataset names -> gymnasium-robotics ids (the maps Minari's D4RL/antmaze datasets use).
ANTMAZE_IDS: dict[str, str] = {
    "umaze": "AntMaze_UMaze-v4",
    "umaze-diverse": "AntMaze_UMaze-v4",
    "medium-play": "AntMaze_Medium-v4",
    "medium-diverse": "AntMaze_Medium_Diverse_GR-v4",
    "large-play": "AntMaze_Large-v4",
    "large-diverse": "AntMaze_Large_Diverse_GR-v4",
}
# D4RL evaluated umaze with 700 steps, medium/large with 1000.
ANTMAZE_MAX_STEPS: dict[str, int] = {"umaze": 700, "umaze-diverse": 700}

# Locomotion families: (gymnasium id, number of left-out position coordinates, velocity clip or None).
LOCOMOTION: dict[str, tuple[str, int, float | None]] = {
    "hopper": ("Hopper-v4", 1, 10.0),
    "walker2d": ("Walker2d-v4", 1, 10.0),
    "halfcheetah": ("HalfCheetah-v4", 1, None),
    "ant": ("Ant-v4", 2, None),
}

# Dict observation keys of goal-conditioned envs, in the order they are flattened.
GOAL_OBS_KEYS: tuple[str, ...] = ("observation", "achieved_goal", "desired_goal")


def _import_gymnasium_robotics() -> Any:
    try:
        import gymnasium_robotics
    except ImportError as e:
        raise ImportError(
            "AntMaze needs gymnasium-robotics (pip install 'gymnasium-robotics==1.3.1'); note it requires "
            "mujoco<3.2, which conflicts with the mujoco 4 pin used for the locomotion datasets, so install it "
            f"in a separate environment ({e})"
        ) from None
    return gymnasium_robotics


def antmaze_gym_id(name: str) -> tuple[str, int]:
    """(gymnasium-robotics id, max episode steps) for a D4RL AntMaze name or a gymnasium-robotics id."""
    if name.startswith("AntMaze_"):
        return name, 1000
    m = re.search(r"antmaze[-_/](umaze-diverse|umaze|medium-play|medium-diverse|large-play|large-diverse)", name.lower())
    if not m:
        raise ValueError(
            f"unknown AntMaze name {name!r}; expected 'antmaze-<{'|'.join(ANTMAZE_IDS)}>-v2' or an 'AntMaze_*' id"
        )
    key = m.group(1)
    return ANTMAZE_IDS[key], ANTMAZE_MAX_STEPS.get(key, 1000)


def resolve_env_id(name: str) -> str:
    """Gymnasium id for a Gymnasium id or a D4RL/Minari dataset name (``hopper-medium-v2`` -> ``Hopper-v4``)."""
    if re.fullmatch(r"[A-Z][A-Za-z0-9_]*-v\d+", name):
        return name
    fam = env_family(name)
    if fam == "antmaze":
        return antmaze_gym_id(name)[0]
    return LOCOMOTION[fam][0]


def make_env(env_id: str, **kwargs: Any) -> Any:
    """Create a Gymnasium environment by Gymnasium id or dataset name.

    Locomotion: ``gymnasium.make`` (``hopper-medium-v2`` -> ``Hopper-v4``). AntMaze: a
    gymnasium-robotics maze with the D4RL AntMaze convention: sparse reward 1 within 0.5 of the
    goal, the episode terminates on success (``continuing_task=False``), so an episode's return
    is its success (0 or 1) and the normalised score is 100 x the success rate; 700 steps for
    umaze, 1000 otherwise. ``kwargs`` go to ``gymnasium.make`` and override these defaults.

    Raises:
        ImportError: gymnasium or mujoco not installed (the message names the ``mujoco`` extra);
            AntMaze requested without gymnasium-robotics installed.
        ValueError: the name matches no known environment family.
    """
    gym = require("gymnasium", "mujoco", what=f"the environment {env_id!r}")
    family = env_family(env_id)  # every known family is a MuJoCo task
    require("mujoco", "mujoco", what=f"the MuJoCo environment {env_id!r}")
    if family == "antmaze":
        gr = _import_gymnasium_robotics()
        gym.register_envs(gr)
        gid, steps = antmaze_gym_id(env_id)
        opts: dict[str, Any] = {"continuing_task": False, "reward_type": "sparse", "max_episode_steps": steps}
        opts.update(kwargs)
        return gym.make(gid, **opts)
    return gym.make(resolve_env_id(env_id), **kwargs)


@contextlib.contextmanager
def mujoco_warnings_to(write: Callable[[str], object]) -> Iterator[None]:
    """Route MuJoCo's warnings to ``write(message)`` while the block runs; the previous callback is
    restored after. Without a callback MuJoCo's C library prints to file descriptor 2 (beyond
    ``contextlib.redirect_stderr``) and appends to ``MUJOCO_LOG.TXT`` in the working directory.
    Does nothing when MuJoCo is not installed."""
    try:
        import mujoco
    except ImportError:
        yield
        return
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(write)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


@contextlib.contextmanager
def deferred_library_warnings(stream: TextIO | None = None) -> Iterator[None]:
    """Hold back the simulator stack's warnings while the block runs, then show those worth a
    user's attention on ``stream`` (default ``sys.stderr``): Python warnings as Python's filters
    would have shown them, MuJoCo's once per distinct message with a count.

    Deprecation notices are dropped: gymnasium's "The environment Hopper-v4 is out of date" and
    MuJoCo's "compiler attribute 'settotalmass' is deprecated" (printed for every HalfCheetah
    model) concern the environments' own files, not the user's command. Anything else, e.g.
    MuJoCo's "Nan, Inf or huge value in QACC" when a re-simulated state is unstable, is shown after
    the block, so it does not break a progress bar. Used by the ``cfdg-aug make-dataset`` and
    ``cfdg-aug fidelity`` commands (``cfdg-aug run`` writes the same messages to its ``run.log``).
    """
    held: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught, mujoco_warnings_to(lambda m: held.update([m.strip()])):
        try:
            yield
        finally:
            out = sys.stderr if stream is None else stream
            for w in caught:
                if not issubclass(w.category, DeprecationWarning):
                    out.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
            for message, count in held.items():
                if "deprecated" not in message:
                    out.write(f"MuJoCo warning{f' (x{count})' if count > 1 else ''}: {message}\n")


@dataclass(frozen=True)
class StateLayout:
    """How an observation maps to the MuJoCo state of a locomotion env.

    ``obs = [qpos[n_excluded:], clip(qvel, -vel_clip, vel_clip)]``.
    """

    nq: int
    nv: int
    n_excluded: int
    vel_clip: float | None

    @property
    def obs_dim(self) -> int:
        return self.nq - self.n_excluded + self.nv

    def state_from_obs(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(qpos (N, nq), qvel (N, nv), determined (N,) bool) from observations (N, obs_dim).

        Left-out coordinates are set to 0. ``determined`` is False where a velocity sits at the
        clip bound (the true velocity may have been larger).
        """
        obs = np.asarray(obs, dtype=np.float64)
        n = obs.shape[0]
        npos = self.nq - self.n_excluded
        qpos = np.zeros((n, self.nq))
        qpos[:, self.n_excluded:] = obs[:, :npos]
        qvel = obs[:, npos:npos + self.nv].copy()
        if self.vel_clip is None:
            determined = np.ones(n, dtype=bool)
        else:
            # float32 storage rounds 10.0 exactly, so compare with a hair of slack.
            determined = (np.abs(qvel) < self.vel_clip * (1 - 1e-7)).all(axis=1)
        return qpos, qvel, determined


def state_layout(env_id: str) -> StateLayout:
    """The :class:`StateLayout` of a locomotion env (hopper, walker2d, halfcheetah, ant).

    Raises:
        ValueError: for AntMaze (the observation omits the maze goal state and Gymnasium-robotics
            adds goal noise), where the state cannot be reconstructed from the observation.
    """
    fam = env_family(env_id)
    if fam not in LOCOMOTION:
        raise ValueError(f"cannot reconstruct the MuJoCo state from observations for {env_id!r} ({fam})")
    gid, n_excl, clip = LOCOMOTION[fam]
    nq, nv = {"hopper": (6, 6), "walker2d": (9, 9), "halfcheetah": (9, 9), "ant": (15, 14)}[fam]
    return StateLayout(nq=nq, nv=nv, n_excluded=n_excl, vel_clip=clip)


def action_encoding(env_id: str) -> Any:
    """The env's (Box) action space as a :class:`~cfdg_aug.spaces.SpaceEncoding` (its bounds), or
    None when Gymnasium / the env is not available here."""
    from cfdg_aug.spaces import SpaceEncoding

    try:
        env = make_env(env_id)
    except Exception:  # noqa: BLE001 - no gymnasium / mujoco / robotics: the data range is used instead
        return None
    try:
        space = env.action_space
        return SpaceEncoding.box(int(np.prod(space.shape)), np.asarray(space.low).reshape(-1),
                                 np.asarray(space.high).reshape(-1))
    finally:
        env.close()

