"""D4RL normalised scores and environment-family names: the one place the reference table lives.

``score = 100 * (return - random) / (expert - random)`` with the D4RL reference returns
(REFERENCE.md). Every part of the project that reports a normalised score calls
:func:`normalized_score`, so all tables agree.
"""

from __future__ import annotations

import re
from typing import overload

import numpy as np

# (random return, expert return) per family, from D4RL's infos.REF_MIN_SCORE / REF_MAX_SCORE (v2).
REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
}

FAMILIES: tuple[str, ...] = tuple(REF_SCORES)

# Spellings seen in D4RL names ("halfcheetah-medium-v2"), Gymnasium ids ("HalfCheetah-v4"),
# Minari ids ("D4RL/antmaze/medium-play-v1", "mujoco/halfcheetah/medium-v0") and gymnasium-robotics
# ids ("AntMaze_Medium-v4"). antmaze is matched before ant.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("antmaze", re.compile(r"ant[_\-]?maze")),
    ("halfcheetah", re.compile(r"half[_\-]?cheetah")),
    ("walker2d", re.compile(r"walker[_\-]?2d")),
    ("hopper", re.compile(r"hopper")),
    ("ant", re.compile(r"(^|[/_\-])ant($|[/_\-])")),
)


def env_family(name: str) -> str:
    """Family of an environment or dataset name.

    Accepts D4RL names (``hopper-medium-v2``, ``antmaze-large-play-v2``), Gymnasium ids
    (``Hopper-v4``, ``Ant-v4``), gymnasium-robotics ids (``AntMaze_Medium-v4``), Minari ids
    (``D4RL/antmaze/medium-play-v1``) and plain family names. Returns one of :data:`FAMILIES`.

    Raises:
        ValueError: the name matches no known family.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"env name must be a non-empty string, got {name!r}")
    low = name.lower()
    for family, pat in _PATTERNS:
        if pat.search(low):
            return family
    raise ValueError(
        f"unknown environment family for {name!r}; expected a name containing one of {', '.join(FAMILIES)}"
    )


@overload
def normalized_score(env: str, returns: float) -> float: ...
@overload
def normalized_score(env: str, returns: np.ndarray) -> np.ndarray: ...


def normalized_score(env: str, returns: float | np.ndarray) -> float | np.ndarray:
    """D4RL normalised score of undiscounted episode return(s).

    Args:
        env: any name :func:`env_family` understands.
        returns: a scalar return or an array of returns (any shape).

    Returns:
        ``100 * (returns - random) / (expert - random)``: a float for scalar input, else an
        array of the same shape (float64).
    """
    lo, hi = REF_SCORES[env_family(env)]
    arr = np.asarray(returns, dtype=np.float64)
    score = 100.0 * (arr - lo) / (hi - lo)
    if np.ndim(returns) == 0:
        return float(score)
    return score


def reference_returns(env: str) -> tuple[float, float]:
    """(random, expert) reference returns for ``env``'s family."""
    return REF_SCORES[env_family(env)]
