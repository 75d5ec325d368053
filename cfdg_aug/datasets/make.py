"""Dataset maker: roll out an SB3 policy (.zip) or uniform random actions in a Gymnasium MuJoCo env.

Writes a D4RL-layout hdf5 file (with ``infos/qpos``, ``infos/qvel`` and provenance attributes) or a
local Minari dataset. Behaviour: ``action = clip(policy(obs) + N(0, noise^2), low, high)``
(deterministic policy action plus Gaussian noise), or uniform random actions without a policy.

Seeding: ``env.reset(seed=seed)`` on the first episode only (later resets continue the env's RNG),
action noise / random actions from ``np.random.default_rng(SeedSequence(seed, spawn_key=(1,)))``;
the same arguments give the same file.

    python -m cfdg_aug.datasets.make --env Hopper-v4 --policy agent.zip --n-transitions 30000 \
        --noise 0.2 --seed 0 --out hopper-medium.hdf5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cfdg_aug._optional import require
from cfdg_aug.datasets.core import OfflineDataset, dataset_from_arrays
from cfdg_aug.datasets.envs import make_env
from cfdg_aug.datasets.scores import reference_returns


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("cfdg-aug", "numpy", "gymnasium", "mujoco", "h5py", "torch", "minari"):
        try:
            out[pkg.replace("-", "_")] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def rollout(
    env_id: str,
    *,
    policy: str | os.PathLike[str] | None,
    n_transitions: int,
    noise: float,
    seed: int,
    progress: bool = True,
    max_episode_steps: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Collect exactly ``n_transitions`` steps (the last episode may be cut, flagged by neither
    terminal nor timeout, as in D4RL).

    Returns:
        (arrays, info): D4RL-named arrays (plus ``infos/next_qpos``, ``infos/next_qvel``: the state
        after each step, used for Minari's T+1 layout) and provenance for the file attributes.
    """
    from cfdg_aug.datasets.policy import SB3Actor, file_sha256

    if n_transitions < 1:
        raise ValueError(f"n_transitions must be >= 1, got {n_transitions}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite std >= 0, got {noise}")
    kwargs: dict[str, Any] = {}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    env = make_env(env_id, **kwargs)
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    actor = SB3Actor(policy, low, high) if policy is not None else None
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    u = env.unwrapped
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    if actor is not None and (actor.obs_dim != obs_dim or actor.act_dim != act_dim):
        raise ValueError(
            f"policy {policy} has obs_dim {actor.obs_dim} / act_dim {actor.act_dim}, env {env_id} has {obs_dim} / {act_dim}"
        )
    n = n_transitions
    obs_a = np.zeros((n, obs_dim), np.float32)
    next_a = np.zeros((n, obs_dim), np.float32)
    act_a = np.zeros((n, act_dim), np.float32)
    rew_a = np.zeros(n, np.float32)
    term_a = np.zeros(n, bool)
    tout_a = np.zeros(n, bool)
    qpos_a = np.zeros((n, u.model.nq))
    qvel_a = np.zeros((n, u.model.nv))
    nqpos_a = np.zeros((n, u.model.nq))
    nqvel_a = np.zeros((n, u.model.nv))

    bar: Any = None
    if progress:
        tqdm = require("tqdm", "mujoco", what="the make-dataset progress bar (off with --no-progress)").tqdm

        bar = tqdm(total=n, desc=f"make-dataset {env_id}", unit="step", mininterval=1.0)
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        qpos_a[i], qvel_a[i] = u.data.qpos, u.data.qvel
        if actor is None:
            action = rng.uniform(low, high)
        else:
            action = actor(obs).astype(np.float64)
            if noise > 0:
                action = action + rng.normal(0.0, noise, size=act_dim)
            action = np.clip(action, low, high)
        action = action.astype(np.float32)
        nobs, r, terminated, truncated, _ = env.step(action)
        obs_a[i], act_a[i], rew_a[i], next_a[i] = obs, action, r, nobs
        nqpos_a[i], nqvel_a[i] = u.data.qpos, u.data.qvel
        term_a[i] = terminated
        tout_a[i] = truncated and not terminated
        obs = nobs
        if terminated or truncated:
            obs, _ = env.reset()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    env.close()
    arrays = {
        "observations": obs_a, "actions": act_a, "rewards": rew_a, "next_observations": next_a,
        "terminals": term_a, "timeouts": tout_a, "infos/qpos": qpos_a, "infos/qvel": qvel_a,
        "infos/next_qpos": nqpos_a, "infos/next_qvel": nqvel_a,
    }
    info: dict[str, Any] = {
        "env_id": env.spec.id if env.spec is not None else env_id,
        "max_episode_steps": env.spec.max_episode_steps if env.spec is not None else None,
        "noise": json.dumps({"type": "gaussian", "std": float(noise)} if actor is not None else {"type": "uniform_random"}),
        "seed": int(seed),
        "seeding": "env.reset(seed=seed) on the first episode only; action noise from "
                   "np.random.default_rng(SeedSequence(seed, spawn_key=(1,)))",
        "behaviour": "policy" if actor is not None else "random",
        "policy_action": "tanh(mu(obs)) of the SB3 actor (= model.predict(obs, deterministic=True)) + noise, "
                         "clipped to action bounds" if actor is not None else "uniform random in action bounds",
        "infos_qpos_qvel": "MuJoCo state at the START of each transition (before the action)",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if actor is not None:
        assert policy is not None
        info.update(policy_file=Path(policy).name, policy_path=str(policy), policy_zip_sha256=file_sha256(policy),
                    policy_algo=actor.algo)
    info.update({f"version_{k}": v for k, v in _versions().items()})
    return arrays, info


def make_dataset(
    env_id: str,
    out: str | os.PathLike[str],
    *,
    policy: str | os.PathLike[str] | None,
    n_transitions: int,
    noise: float,
    seed: int,
    fmt: Literal["d4rl", "minari"] = "d4rl",
    progress: bool = True,
    name: str | None = None,
    command: str | None = None,
    max_episode_steps: int | None = None,
    extra_attrs: dict[str, Any] | None = None,
) -> Path:
    """Roll out a policy (or random actions) and write a dataset.

    Args:
        env_id: Gymnasium id or dataset name (``Hopper-v4``, ``hopper-medium-v2``).
        out: for ``fmt="d4rl"`` the hdf5 path (written atomically); for ``fmt="minari"`` the Minari
            dataset id (e.g. ``local/hopper-medium-v0``), created under ``$MINARI_DATASETS_PATH``.
        policy: SB3 SAC/TQC ``.zip``, or None for uniform random actions.
        n_transitions: number of steps N (the last episode may be cut; for Minari it is kept as an
            episode with neither flag set on its last step).
        noise: std of the Gaussian added to the policy's deterministic action (ignored for random).
        seed: see the module docstring.
        command: recorded as the ``command`` attribute; defaults to this process's command line.

    Returns:
        the hdf5 path, or the Minari dataset's folder.
    """
    if fmt not in ("d4rl", "minari"):
        raise ValueError(f"fmt must be 'd4rl' or 'minari', got {fmt!r}")
    arrays, info = rollout(env_id, policy=policy, n_transitions=n_transitions, noise=noise, seed=seed,
                           progress=progress, max_episode_steps=max_episode_steps)
    info["command"] = command if command is not None else " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    lo, hi = reference_returns(info["env_id"])
    info.update(ref_min_score=lo, ref_max_score=hi)
    info.update(extra_attrs or {})
    ds_name = name or (Path(out).stem if fmt == "d4rl" else str(out))
    ds = dataset_from_arrays({k: v for k, v in arrays.items() if not k.startswith("infos/next_")},
                             name=ds_name, env_id=info["env_id"], attrs=info)
    ds.attrs["dataset_name"] = ds_name
    ds.attrs["last_episode_partial"] = ds.has_partial_tail()
    ds.attrs.update({f"stats_{k}": v for k, v in ds.stats().items()})
    if fmt == "d4rl":
        from cfdg_aug.datasets.d4rl import write_d4rl

        return write_d4rl(out, ds)
    from cfdg_aug.datasets.minari_io import write_minari

    return write_minari(ds, str(out), final_qpos=arrays["infos/next_qpos"], final_qvel=arrays["infos/next_qvel"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cfdg_aug.datasets.make",
        description="Roll out an SB3 policy (.zip) or uniform random actions in a Gymnasium MuJoCo env and "
                    "write a D4RL-layout hdf5 file (with infos/qpos, infos/qvel, provenance) or a local Minari dataset.",
    )
    p.add_argument("--env", required=True, help="Gymnasium id or dataset name, e.g. Hopper-v4 or hopper-medium-v2")
    p.add_argument("--out", required=True, help="hdf5 path (--format d4rl) or Minari dataset id (--format minari)")
    p.add_argument("--policy", default=None, help="SB3 SAC/TQC .zip; omit for uniform random actions")
    p.add_argument("--n-transitions", type=int, required=True, help="number of steps to record")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian action noise added to the policy (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the env reset and the action noise (default 0)")
    p.add_argument("--format", dest="fmt", choices=("d4rl", "minari"), default="d4rl")
    p.add_argument("--name", default=None, help="dataset name stored in the attributes (default: file stem / id)")
    p.add_argument("--max-episode-steps", type=int, default=None, help="override the env's time limit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="extra provenance attribute stored in the file (repeatable), e.g. policy_license=MIT")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    extra: dict[str, Any] = {}
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--attr expects KEY=VALUE, got {item!r}")
        extra[key] = value
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "cfdg_aug.datasets.make", *argv_list])
    try:
        path = make_dataset(args.env, args.out, policy=args.policy, n_transitions=args.n_transitions,
                            noise=args.noise, seed=args.seed, fmt=args.fmt, progress=not args.no_progress,
                            name=args.name, command=command, max_episode_steps=args.max_episode_steps,
                            extra_attrs=extra)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.fmt == "d4rl":
        from cfdg_aug.datasets.d4rl import load_d4rl

        ds: OfflineDataset = load_d4rl(path)
        s = ds.stats()
        print(f"wrote {path} ({path.stat().st_size} bytes): {s['n_transitions']} transitions, "
              f"{s['n_episodes_complete']} complete episodes, mean return {s['mean_return']:.1f}, "
              f"normalised {s.get('normalized_score', float('nan')):.1f}")
    else:
        print(f"wrote Minari dataset {args.out} at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
