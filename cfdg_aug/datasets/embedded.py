"""The embedded demo set and the one-string dataset loader."""

from __future__ import annotations

import os
from pathlib import Path

from cfdg_aug.datasets.core import OfflineDataset

EMBEDDED_NAME = "hopper-medium-embedded"
_EMBEDDED_FILE = f"{EMBEDDED_NAME}.hdf5"


def embedded_dataset_path() -> Path:
    """Path of the packaged demo set (real Hopper-v4 'medium' data, 28,000 transitions; see data/README.md)."""
    p = Path(__file__).resolve().parent / "data" / _EMBEDDED_FILE
    if not p.is_file():
        raise FileNotFoundError(f"embedded dataset missing from the installed package: {p}")
    return p


def load_embedded() -> OfflineDataset:
    """The packaged demo set as an :class:`OfflineDataset` (env ``Hopper-v4``)."""
    from cfdg_aug.datasets.d4rl import load_d4rl

    return load_d4rl(embedded_dataset_path())


def load_dataset(spec: str | os.PathLike[str]) -> OfflineDataset:
    """Load a dataset from one string.

    - ``"minari:ID"``: a Minari dataset (``$MINARI_DATASETS_PATH``), see :func:`load_minari`;
    - ``"embedded"`` or ``"hopper-medium-embedded"``: the packaged demo set;
    - an existing file (or anything ending in ``.hdf5`` / ``.h5``): a D4RL-layout file;
    - otherwise a D4RL name (``hopper-medium-v2``) resolved in the cache dir, see :func:`load_d4rl`.
    """
    from cfdg_aug.datasets.d4rl import load_d4rl

    s = os.fspath(spec)
    if s.startswith("minari:"):
        from cfdg_aug.datasets.minari_io import load_minari

        return load_minari(s[len("minari:"):])
    if s in ("embedded", EMBEDDED_NAME):
        return load_embedded()
    return load_d4rl(s)
