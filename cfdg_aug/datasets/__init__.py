"""Offline datasets: D4RL-layout hdf5 and Minari loaders, D4RL normalised scores, a dataset maker,
the embedded demo set and a physics-consistency check for MuJoCo transitions.

Core-only imports here (numpy, h5py lazily): gymnasium, mujoco, minari are imported inside the
functions that need them, so ``import cfdg_aug.datasets`` works without the optional extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cfdg_aug.datasets.core import DatasetError, OfflineDataset, dataset_from_arrays
from cfdg_aug.datasets.d4rl import default_cache_dir, load_d4rl, write_d4rl
from cfdg_aug.datasets.embedded import EMBEDDED_NAME, embedded_dataset_path, load_dataset, load_embedded
from cfdg_aug.datasets.scores import FAMILIES, REF_SCORES, env_family, normalized_score, reference_returns

if TYPE_CHECKING:
    from cfdg_aug.datasets.physics import PhysicsReport


def load_minari(dataset_id: str, *, download: bool = False) -> OfflineDataset:
    """See :func:`cfdg_aug.datasets.minari_io.load_minari`."""
    from cfdg_aug.datasets.minari_io import load_minari as _load

    return _load(dataset_id, download=download)


def make_env(env_id: str, **kwargs: Any) -> Any:
    """See :func:`cfdg_aug.datasets.envs.make_env`."""
    from cfdg_aug.datasets.envs import make_env as _make

    return _make(env_id, **kwargs)


def make_dataset(*args: Any, **kwargs: Any) -> Any:
    """See :func:`cfdg_aug.datasets.make.make_dataset`."""
    from cfdg_aug.datasets.make import make_dataset as _make

    return _make(*args, **kwargs)


def physics_check(*args: Any, **kwargs: Any) -> PhysicsReport:
    """See :func:`cfdg_aug.datasets.physics.physics_check`."""
    from cfdg_aug.datasets.physics import physics_check as _check

    return _check(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "PhysicsReport":
        from cfdg_aug.datasets.physics import PhysicsReport

        return PhysicsReport
    raise AttributeError(f"module 'cfdg_aug.datasets' has no attribute {name!r}")


__all__ = [
    "DatasetError", "EMBEDDED_NAME", "FAMILIES", "OfflineDataset", "PhysicsReport", "REF_SCORES",
    "dataset_from_arrays", "default_cache_dir", "embedded_dataset_path", "env_family", "load_d4rl",
    "load_dataset", "load_embedded", "load_minari", "make_dataset", "make_env", "normalized_score",
    "physics_check", "reference_returns", "write_d4rl",
]
