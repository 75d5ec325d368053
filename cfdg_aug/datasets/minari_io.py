"""Minari datasets: load by id (episodes -> transitions, dict observations flattened), write locally.

Dict observations are flattened by concatenating, per step, the keys in this order:
``observation``, ``achieved_goal``, ``desired_goal`` (AntMaze and other goal-conditioned envs), then
any other keys in sorted order; each value is flattened row-major. The order used is stored in
``attrs["observation_keys"]`` with each key's width in ``attrs["observation_key_dims"]``.

Writing uses ``minari.create_dataset_from_buffers`` with filled ``EpisodeBuffer`` s, which needs no
jax (``DataCollector`` would).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cfdg_aug._optional import require
from cfdg_aug.datasets.core import DatasetError, OfflineDataset, dataset_from_arrays
from cfdg_aug.datasets.envs import GOAL_OBS_KEYS


def _import_minari() -> Any:
    return require("minari", "minari", what="reading or writing Minari datasets")


def observation_key_order(keys: Sequence[str]) -> list[str]:
    """Documented flattening order of dict-observation keys: goal keys first, then the rest sorted."""
    first = [k for k in GOAL_OBS_KEYS if k in keys]
    return first + sorted(k for k in keys if k not in GOAL_OBS_KEYS)


def flatten_observations(obs: Any, *, keys: Sequence[str] | None = None, source: str = "observations") -> tuple[np.ndarray, list[str], list[int]]:
    """(T, D) float32 from an array (T, ...) or a dict of arrays, plus the key order and widths used."""
    if isinstance(obs, Mapping):
        order = list(keys) if keys is not None else observation_key_order(list(obs))
        missing = [k for k in order if k not in obs]
        if missing:
            raise DatasetError(f"{source}: dict observation lacks key(s) {missing}; has {sorted(obs)}")
        parts = []
        for k in order:
            v = np.asarray(obs[k])
            if isinstance(obs[k], Mapping) or v.dtype == object:
                raise DatasetError(f"{source}: key '{k}': nested dict observations are not supported")
            parts.append(v.reshape(v.shape[0], -1).astype(np.float32))
        lengths = {p.shape[0] for p in parts}
        if len(lengths) != 1:
            raise DatasetError(f"{source}: dict observation keys have different lengths {dict(zip(order, [p.shape[0] for p in parts], strict=False))}")
        return np.concatenate(parts, axis=1), order, [p.shape[1] for p in parts]
    arr = np.asarray(obs)
    return arr.reshape(arr.shape[0], -1).astype(np.float32), [], []


def load_minari(dataset_id: str, *, download: bool = False) -> OfflineDataset:
    """Load a Minari dataset by id (from ``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``).

    Each episode's T+1 observations give T transitions (``observations[:-1]``, ``next_observations
    = observations[1:]``); terminals = terminations, timeouts = truncations (and not terminated).
    ``infos`` with ``qpos``/``qvel`` of length T+1 (or T) become ``infos_qpos``/``infos_qvel``.
    ``download`` is passed to ``minari.load_dataset`` (needs internet).
    """
    minari = _import_minari()
    try:
        mds = minari.load_dataset(dataset_id, download=download)
    except Exception as e:  # minari raises FileNotFoundError / ValueError with its own wording
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise DatasetError(
            f"Minari dataset {dataset_id!r} could not be loaded from {root} (download={download}): {e}"
        ) from None
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "qpos", "qvel")}
    order: list[str] | None = None
    dims: list[int] = []
    has_state = True
    for ep in mds.iterate_episodes():
        src = f"minari:{dataset_id} episode {ep.id}"
        obs, o, d = flatten_observations(ep.observations, keys=order, source=src)
        if order is None:
            order, dims = o, d
        t = len(ep.rewards)
        if obs.shape[0] != t + 1:
            raise DatasetError(f"{src}: key 'observations': expected {t + 1} rows (T + 1), got {obs.shape[0]}")
        act = np.asarray(ep.actions)
        if isinstance(ep.actions, Mapping) or act.dtype == object:
            raise DatasetError(f"{src}: key 'actions': dict actions are not supported")
        cols["observations"].append(obs[:-1])
        cols["next_observations"].append(obs[1:])
        cols["actions"].append(act.reshape(t, -1).astype(np.float32))
        cols["rewards"].append(np.asarray(ep.rewards, dtype=np.float32).reshape(t))
        term = np.asarray(ep.terminations, dtype=bool).reshape(t)
        cols["terminals"].append(term)
        cols["timeouts"].append(np.asarray(ep.truncations, dtype=bool).reshape(t) & ~term)
        infos = ep.infos if isinstance(ep.infos, Mapping) else {}
        if has_state and "qpos" in infos and "qvel" in infos:
            cols["qpos"].append(np.asarray(infos["qpos"], dtype=np.float64)[:t])
            cols["qvel"].append(np.asarray(infos["qvel"], dtype=np.float64)[:t])
        else:
            has_state = False
    if not cols["observations"]:
        raise DatasetError(f"minari:{dataset_id}: dataset has no episodes")
    arrays: dict[str, Any] = {k: np.concatenate(v) for k, v in cols.items() if k not in ("qpos", "qvel")}
    if has_state and cols["qpos"]:
        arrays["infos/qpos"] = np.concatenate(cols["qpos"])
        arrays["infos/qvel"] = np.concatenate(cols["qvel"])
    meta = dict(mds.storage.metadata)
    attrs: dict[str, Any] = {f"minari_{k}": (v if isinstance(v, (str, int, float, bool)) else str(v)) for k, v in meta.items()}
    if "ref_min_score" in meta:
        attrs["ref_min_score"] = meta["ref_min_score"]
    if "ref_max_score" in meta:
        attrs["ref_max_score"] = meta["ref_max_score"]
    if order:
        attrs["observation_keys"] = json.dumps(order)
        attrs["observation_key_dims"] = json.dumps(dims)
    env_id = None
    spec = getattr(mds.spec, "env_spec", None)
    if spec is not None:
        env_id = spec.id
    ds = dataset_from_arrays(arrays, name=dataset_id, env_id=env_id, attrs=attrs, source=f"minari:{dataset_id}")
    # Minari stores whole episodes: the last step of an episode cut by size has neither flag set.
    return ds


def write_minari(
    ds: OfflineDataset | None,
    dataset_id: str,
    *,
    episodes: Sequence[Mapping[str, Any]] | None = None,
    observation_space: Any = None,
    action_space: Any = None,
    env: Any = None,
    final_qpos: np.ndarray | None = None,
    final_qvel: np.ndarray | None = None,
    description: str | None = None,
) -> Path:
    """Write a local Minari dataset under ``$MINARI_DATASETS_PATH`` and return its folder.

    Either ``ds`` (an :class:`OfflineDataset`; episodes split as :meth:`OfflineDataset.episodes`,
    the env taken from ``ds.env_id``; ``final_qpos``/``final_qvel`` (N, nq)/(N, nv) give the state
    after each step, so infos hold T+1 states per episode) or raw ``episodes``: dicts with
    ``observations`` (T+1 rows, an array or a dict of arrays), ``actions`` (T), ``rewards`` (T),
    ``terminations`` (T), ``truncations`` (T), optional ``infos``; then ``observation_space`` and
    ``action_space`` are required unless ``env`` is given.
    """
    minari = _import_minari()
    from minari.data_collector import EpisodeBuffer

    buffers: list[Any] = []
    if ds is not None:
        for i, sl in enumerate(ds.episodes()):
            obs = np.concatenate([ds.observations[sl], ds.next_observations[sl.stop - 1:sl.stop]]).astype(np.float64)
            infos = None
            if ds.infos_qpos is not None and ds.infos_qvel is not None and final_qpos is not None and final_qvel is not None:
                infos = {"qpos": np.concatenate([ds.infos_qpos[sl], final_qpos[sl.stop - 1:sl.stop]]),
                         "qvel": np.concatenate([ds.infos_qvel[sl], final_qvel[sl.stop - 1:sl.stop]])}
            buffers.append(EpisodeBuffer(
                id=i, observations=obs, actions=ds.actions[sl], rewards=list(ds.rewards[sl].astype(np.float64)),
                terminations=list(ds.terminals[sl]), truncations=list(ds.timeouts[sl]), infos=infos,
            ))
        env = env if env is not None else ds.env_id
        if description is None:
            description = json.dumps({k: v for k, v in ds.attrs.items() if isinstance(v, (str, int, float, bool))},
                                     sort_keys=True, default=str)
    elif episodes is not None:
        for i, ep in enumerate(episodes):
            buffers.append(EpisodeBuffer(
                id=i, observations=ep["observations"], actions=np.asarray(ep["actions"]),
                rewards=list(np.asarray(ep["rewards"], dtype=np.float64)),
                terminations=list(np.asarray(ep["terminations"], dtype=bool)),
                truncations=list(np.asarray(ep["truncations"], dtype=bool)), infos=ep.get("infos"),
            ))
    else:
        raise ValueError("write_minari needs ds or episodes")
    kwargs: dict[str, Any] = {"algorithm_name": "cfdg_aug.datasets.make", "author": "cfdg_aug",
                              "author_email": "none@localhost", "code_permalink": "https://example.invalid/cfdg_aug",
                              "description": description}
    if env is not None and observation_space is None:
        kwargs["env"] = env
    else:
        kwargs["observation_space"] = observation_space
        kwargs["action_space"] = action_space
    mds = minari.create_dataset_from_buffers(dataset_id, buffers, **kwargs)
    return Path(mds.storage.data_path).parent if hasattr(mds.storage, "data_path") else Path(str(dataset_id))
