"""D4RL-layout hdf5 files: load (with validation), write (atomically), resolve official names.

Layout: datasets ``observations`` (N, obs_dim), ``actions`` (N, act_dim), ``rewards`` (N,),
``next_observations`` (N, obs_dim), ``terminals`` (N,), ``timeouts`` (N,), optional
``infos/qpos`` (N, nq) and ``infos/qvel`` (N, nv); file attributes hold provenance.
h5py reads plain arrays: nothing is unpickled.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cfdg_aug._optional import require
from cfdg_aug.datasets.core import (
    DatasetError,
    OfflineDataset,
    attr_to_hdf5,
    attr_to_python,
    dataset_from_arrays,
)

REQUIRED_KEYS: tuple[str, ...] = ("observations", "actions", "rewards", "terminals")
OPTIONAL_KEYS: tuple[str, ...] = ("next_observations", "timeouts", "infos/qpos", "infos/qvel")

# Official D4RL file locations (the ones d4rl.infos.DATASET_URLS lists), used only with download=True.
_D4RL_BASE = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
_ANTMAZE_FILES = {
    "antmaze-umaze-v2": "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5",
    "antmaze-umaze-diverse-v2": "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
    "antmaze-medium-play-v2": "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
    "antmaze-medium-diverse-v2": "Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
    "antmaze-large-play-v2": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
    "antmaze-large-diverse-v2": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
}
_LOCO_RE = re.compile(r"^(hopper|halfcheetah|walker2d|ant)-(random|medium|expert|medium-replay|medium-expert|full-replay)-v2$")

# Gymnasium environments whose observation layout matches the D4RL v2 datasets.
DEFAULT_ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v4", "halfcheetah": "HalfCheetah-v4", "walker2d": "Walker2d-v4", "ant": "Ant-v4",
}


def default_cache_dir() -> Path:
    """Where D4RL names are looked up: ``$CFDG_DATASETS_DIR``, else ``$D4RL_DATASET_DIR``, else ``~/.d4rl/datasets``."""
    for var in ("CFDG_DATASETS_DIR", "D4RL_DATASET_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return Path("~/.d4rl/datasets").expanduser()


def d4rl_url(name: str) -> str:
    """Official download URL of a D4RL v2 dataset name (``hopper-medium-v2``, ``antmaze-large-play-v2``)."""
    if name in _ANTMAZE_FILES:
        return f"{_D4RL_BASE}/ant_maze_v2/{_ANTMAZE_FILES[name]}"
    m = _LOCO_RE.match(name)
    if not m:
        raise DatasetError(
            f"no known D4RL download URL for {name!r}; expected e.g. 'hopper-medium-v2' or 'antmaze-medium-play-v2'"
        )
    env, level = m.group(1), m.group(2).replace("-", "_")
    return f"{_D4RL_BASE}/gym_mujoco_v2/{env}_{level}-v2.hdf5"


def _candidate_files(name: str, cache_dir: Path) -> list[Path]:
    # D4RL's own cache names files after the URL (hopper_medium-v2.hdf5); users often use the dataset name.
    cands = [cache_dir / f"{name}.hdf5", cache_dir / name]
    try:
        cands.append(cache_dir / Path(d4rl_url(name)).name)
    except DatasetError:
        pass
    return cands


def resolve_d4rl_path(path_or_name: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
                      download: bool = False) -> Path:
    """A local file for a path or a D4RL dataset name; downloads into the cache only with ``download=True``.

    Raises:
        DatasetError: the path is a folder.
        FileNotFoundError: no such file (a path), or the name is not in the cache (without ``download``).
    """
    p = Path(path_or_name).expanduser()
    name = str(path_or_name)
    looks_like_path = p.suffix in (".hdf5", ".h5") or os.sep in name or (os.altsep is not None and os.altsep in name)
    if p.is_dir() and looks_like_path:
        raise DatasetError(f"dataset {p} is a folder, expected an .hdf5 file")
    if p.is_file():
        return p
    if looks_like_path:
        # Looks like a path, not a dataset name: nothing to resolve or download.
        raise FileNotFoundError(f"dataset file not found: {p}")
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    for c in _candidate_files(name, cdir):
        if c.is_file():
            return c
    if p.is_dir():  # a bare name that is no cached dataset but a folder here
        raise DatasetError(f"dataset {p} is a folder, expected an .hdf5 file")
    if not download:
        raise FileNotFoundError(
            f"D4RL dataset {name!r} not found: looked for {', '.join(str(c) for c in _candidate_files(name, cdir))}. "
            f"Put the hdf5 file there (or set CFDG_DATASETS_DIR), or pass download=True on a machine with internet."
        )
    url = d4rl_url(name)
    dest = cdir / Path(url).name
    _download(url, dest)
    return dest


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as resp:  # noqa: S310 - fixed https/http D4RL host
            total = int(resp.headers.get("Content-Length") or 0)
            try:
                from tqdm import tqdm

                bar: Any = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {dest.name}")
            except ImportError:  # pragma: no cover
                bar = None
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _infer_env_id(attrs: Mapping[str, Any], name: str) -> str | None:
    if isinstance(attrs.get("env_id"), str) and attrs["env_id"]:
        return str(attrs["env_id"])
    from cfdg_aug.datasets.scores import env_family

    try:
        fam = env_family(name)
    except ValueError:
        return None
    return DEFAULT_ENV_IDS.get(fam)


def _import_h5py(what: str) -> Any:
    return require("h5py", "mujoco", what=what)


def load_d4rl(path_or_name: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
              download: bool = False) -> OfflineDataset:
    """Load a D4RL-layout hdf5 file (a path, or an official name resolved in the cache directory).

    Validates keys, lengths, dtypes and NaN/inf; every error names the file and the key.
    Files without ``next_observations`` (D4RL v0/v1) get them from the following row within an
    episode; rows whose successor is unknown (timeouts and the last row) are dropped, as D4RL's
    ``qlearning_dataset`` does. Files without ``timeouts`` get all-False timeouts.

    Returns:
        an :class:`OfflineDataset`; ``attrs`` holds the file attributes as plain Python values.
    """
    h5py = _import_h5py("reading D4RL-layout hdf5 files (the embedded demo set included)")

    path = resolve_d4rl_path(path_or_name, cache_dir=cache_dir, download=download)
    src = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{src}: not a readable hdf5 file ({e})") from None
    with f:
        arrays: dict[str, np.ndarray] = {}
        for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
            if key not in f:
                if key in REQUIRED_KEYS:
                    raise DatasetError(f"{src}: key '{key}': missing (required key)")
                continue
            obj = f[key]
            if not isinstance(obj, h5py.Dataset):
                raise DatasetError(f"{src}: key '{key}': expected an array dataset, got {type(obj).__name__}")
            arrays[key] = obj[()]
        attrs = {k: attr_to_python(v) for k, v in f.attrs.items()}
    name = str(attrs.get("dataset_name") or Path(path).stem)
    reconstructed = "next_observations" not in arrays
    if reconstructed:
        arrays = _reconstruct_next_obs(arrays, src)
        attrs["next_observations_reconstructed"] = True
    return dataset_from_arrays(arrays, name=name, env_id=_infer_env_id(attrs, name), attrs=attrs, source=src)


def _reconstruct_next_obs(arrays: dict[str, np.ndarray], src: str) -> dict[str, np.ndarray]:
    obs = np.asarray(arrays["observations"])
    n = obs.shape[0]
    for key, a in arrays.items():
        if np.shape(a)[0] != n:
            raise DatasetError(f"{src}: key '{key}': has {np.shape(a)[0]} rows but 'observations' has {n}")
    timeouts = np.asarray(arrays.get("timeouts", np.zeros(n, bool))).reshape(n).astype(bool)
    keep = ~timeouts
    keep[-1] = False
    out = {k: np.asarray(v)[keep] for k, v in arrays.items()}
    out["next_observations"] = obs[1:][keep[:-1]]
    return out


def write_d4rl(path: str | os.PathLike[str], data: OfflineDataset | Mapping[str, Any], *,
               attrs: Mapping[str, Any] | None = None, compression_level: int = 9) -> Path:
    """Write a D4RL-layout hdf5 file atomically (temporary file in the same folder, then ``os.replace``).

    ``data`` is an :class:`OfflineDataset` or a mapping of D4RL-named arrays (validated first, so
    a bad array never replaces a good file). Attribute values that are dicts/lists are stored as JSON.
    """
    h5py = _import_h5py("writing D4RL-layout hdf5 files")

    path = Path(path)
    if isinstance(data, OfflineDataset):
        ds = data
    else:
        ds = dataset_from_arrays(data, name=path.stem, source=str(path))
    all_attrs = {**ds.attrs, **dict(attrs or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            kw = {"compression": "gzip", "compression_opts": compression_level, "shuffle": True}
            f.create_dataset("observations", data=ds.observations.astype(np.float32), **kw)
            f.create_dataset("actions", data=ds.actions.astype(np.float32), **kw)
            f.create_dataset("rewards", data=ds.rewards.astype(np.float32), **kw)
            f.create_dataset("next_observations", data=ds.next_observations.astype(np.float32), **kw)
            f.create_dataset("terminals", data=ds.terminals.astype(np.bool_), **kw)
            f.create_dataset("timeouts", data=ds.timeouts.astype(np.bool_), **kw)
            if ds.infos_qpos is not None and ds.infos_qvel is not None:
                f.create_dataset("infos/qpos", data=ds.infos_qpos.astype(np.float64), **kw)
                f.create_dataset("infos/qvel", data=ds.infos_qvel.astype(np.float64), **kw)
            if ds.env_id is not None:
                all_attrs.setdefault("env_id", ds.env_id)
            all_attrs.setdefault("dataset_name", ds.name)
            for k, v in all_attrs.items():
                f.attrs[k] = attr_to_hdf5(v)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
