"""Dataset maker: roll out an SB3 policy (.zip) or uniform random actions in a Gymnasium MuJoCo env.

Writes a D4RL-layout hdf5 file (with ``infos/qpos``, ``infos/qvel`` and provenance attributes) or a
local Minari dataset. Behaviour: ``action = clip(policy(obs) + N(0, noise^2), low, high)``
(deterministic policy action plus Gaussian noise), or uniform random actions without a policy.

Seeding: ``env.reset(seed=seed)`` on the first episode only (later resets continue the env's RNG),
action noise / random actions from ``np.random.default_rng(SeedSequence(seed, spawn_key=(1,)))``;
the same arguments give the same file.

Bad input (:class:`MakeDatasetError`: a number out of range, noise without a policy, an extra
attribute that would replace a recorded one, an output that exists or cannot be written, a malformed
Minari id, an unknown env, an unusable policy) is refused before the rollout starts; an existing hdf5 file is replaced only with ``force=True`` (``--force``).

    cfdg-aug make-dataset --env Hopper-v4 --policy agent.zip --n-transitions 30000 \
        --noise 0.2 --seed 0 --out hopper-medium.hdf5
    python -m cfdg_aug.datasets.make ...   # the same, without the experiments extra
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np

from cfdg_aug._io import folder_write_problem, os_reason
from cfdg_aug._optional import require
from cfdg_aug.datasets.core import OfflineDataset, dataset_from_arrays
from cfdg_aug.datasets.envs import deferred_library_warnings, make_env, resolve_env_id
from cfdg_aug.datasets.scores import reference_returns

# How the arguments are named in messages: the Python keyword arguments, or the CLI's options.
API_NAMES: dict[str, str] = {
    "env": "env_id", "out": "out", "policy": "policy", "n_transitions": "n_transitions", "noise": "noise",
    "seed": "seed", "fmt": "fmt", "max_episode_steps": "max_episode_steps", "force": "force=True",
    "attr": "extra_attrs", "name": "name",
}
CLI_NAMES: dict[str, str] = {
    "env": "--env", "out": "--out", "policy": "--policy", "n_transitions": "--n-transitions", "noise": "--noise",
    "seed": "--seed", "fmt": "--format", "max_episode_steps": "--max-episode-steps", "force": "--force",
    "attr": "--attr", "name": "--name",
}
PROG = "cfdg-aug make-dataset"
MODULE_PROG = "python -m cfdg_aug.datasets.make"

# Minari's DATASET_ID_RE (minari 0.5) with the version required: create_dataset_from_buffers
# needs it, and without one minari fails only after creating the dataset's folder.
_MINARI_ID_RE = re.compile(r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<dataset>[-_\w]+?)-v(?P<version>\d+)$")


class MakeDatasetError(ValueError):
    """Bad input of :func:`make_dataset`; the message names the argument and what was expected.

    ``str(e)`` names the Python arguments (``out``), :meth:`message` with :data:`CLI_NAMES` the
    CLI's options (``--out``).
    """

    def __init__(self, template: str, **values: Any) -> None:
        self.template = template
        self.values = values
        super().__init__(self.message(API_NAMES))

    def message(self, names: Mapping[str, str]) -> str:
        return self.template.format(n=names, **self.values)


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MakeDatasetError("{n[" + field + "]} must be an int, got {v!r}", v=value)
    if value < minimum:
        raise MakeDatasetError("{n[" + field + "]} must be >= {m}, got {v}", m=minimum, v=int(value))


def _check_numbers(n_transitions: Any, noise: Any, seed: Any, max_episode_steps: Any) -> None:
    _check_int("n_transitions", n_transitions, 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)):
        raise MakeDatasetError("{n[noise]} must be a number, got {v!r}", v=noise)
    if not np.isfinite(noise) or noise < 0:
        raise MakeDatasetError("{n[noise]} must be a finite std >= 0, got {v}", v=float(noise))
    _check_int("seed", seed, 0)
    if max_episode_steps is not None:
        _check_int("max_episode_steps", max_episode_steps, 1)


# The attributes make_dataset records itself (_collect, make_dataset): an extra attribute of one of these
# names (or prefixes) would replace a recorded fact. ``behaviour`` ("policy" / "random", also told by
# ``policy_action`` and ``noise``) stays open: the embedded set's recipe labels it "medium".
_RECORDED_ATTRS: dict[str, str] = {
    "dataset_name": "{n[name]}", "max_episode_steps": "{n[max_episode_steps]}", "env_id": "{n[env]}",
    "noise": "{n[noise]}", "seed": "{n[seed]}", "policy_file": "{n[policy]}", "policy_path": "{n[policy]}",
    "policy_zip_sha256": "{n[policy]}", "policy_algo": "{n[policy]}",
    **{k: "" for k in ("command", "seeding", "policy_action", "infos_qpos_qvel", "created_utc", "ref_min_score",
                       "ref_max_score", "last_episode_partial")},
}
_RECORDED_PREFIXES: tuple[str, ...] = ("version_", "stats_")


def _check_extra_attrs(extra_attrs: Mapping[str, Any] | None) -> None:
    """An extra attribute may add provenance, never replace what the file records itself."""
    if extra_attrs is None:
        return
    if not isinstance(extra_attrs, Mapping):
        raise MakeDatasetError("{n[attr]} must be a mapping of attribute names to values, got {v!r}",
                               v=type(extra_attrs).__name__)
    for key in extra_attrs:
        if not isinstance(key, str) or not key:
            raise MakeDatasetError("{n[attr]}: attribute names must be non-empty strings, got {v!r}", v=key)
        if key in _RECORDED_ATTRS or key.startswith(_RECORDED_PREFIXES):
            given = _RECORDED_ATTRS.get(key, "")
            raise MakeDatasetError(
                "{n[attr]} {k}: the dataset records {k} itself" + (f" (set it with {given})" if given else "")
                + "; choose another attribute name", k=key)


def _check_noise_needs_policy(noise: Any, policy: Any) -> None:
    if policy is None and noise > 0:
        raise MakeDatasetError("{n[noise]} {v} needs {n[policy]}: without a policy the actions are uniform random "
                               "and take no noise; pass {n[policy]} or drop {n[noise]}", v=float(noise))


def _check_writable_folder(target: Path, shown: str) -> None:
    """The nearest existing folder above ``target`` accepts a new file."""
    problem = folder_write_problem(target)
    if problem is not None:
        raise MakeDatasetError("{n[out]} {p}: {w}", p=shown, w=problem)


def _check_out_file(out: str | os.PathLike[str], force: bool) -> None:
    shown = os.fspath(out)
    path = Path(out).expanduser()
    try:
        if path.is_dir():
            raise MakeDatasetError("{n[out]} {p} is a folder, expected an .hdf5 file path", p=shown)
        if path.exists() or path.is_symlink():
            if not force:
                raise MakeDatasetError("{n[out]} {p} already exists; pass {n[force]} to replace it", p=shown)
            if not path.is_file():
                raise MakeDatasetError("{n[out]} {p} exists and is not a regular file", p=shown)
        _check_writable_folder(path.parent, shown)
    except OSError as e:  # e.g. a folder on the way that cannot be searched
        raise MakeDatasetError("{n[out]} {p}: cannot be checked ({r})", p=shown, r=os_reason(e)) from None


def minari_dataset_folder(dataset_id: str) -> Path:
    """Where Minari keeps the local dataset ``dataset_id`` (as ``minari.storage.get_dataset_path``
    computes it, without creating the root folder)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    if root is None:
        root = os.path.join(os.path.expanduser("~"), ".minari", "datasets")
    return Path(root) / dataset_id


def _check_minari_id(dataset_id: str) -> None:
    if not isinstance(dataset_id, str) or not _MINARI_ID_RE.fullmatch(dataset_id):
        raise MakeDatasetError(
            "{n[out]} {v!r} is not a Minari dataset id; expected (namespace/)name-v(version), "
            "e.g. local/hopper-medium-v0", v=dataset_id if isinstance(dataset_id, str) else os.fspath(dataset_id))
    folder = minari_dataset_folder(dataset_id)
    try:
        if folder.exists() or folder.is_symlink():
            raise MakeDatasetError(
                "{n[out]} {v!r}: a Minari dataset with this id already exists at {f}; choose another name or "
                "version (Minari datasets are never replaced, {n[force]} applies to hdf5 files)",
                v=dataset_id, f=str(folder))
        _check_writable_folder(folder.parent, dataset_id)
    except OSError as e:
        raise MakeDatasetError("{n[out]} {v!r}: cannot be checked ({r})", v=dataset_id, r=os_reason(e)) from None


def check_make_args(
    env_id: str,
    out: str | os.PathLike[str],
    *,
    policy: str | os.PathLike[str] | None,
    n_transitions: int,
    noise: float,
    seed: int,
    fmt: str = "d4rl",
    max_episode_steps: int | None = None,
    force: bool = False,
    extra_attrs: Mapping[str, Any] | None = None,
) -> None:
    """What :func:`make_dataset` can check before the rollout, without creating anything: the numbers,
    noise only with a policy, the format, the env name, that the policy file exists, extra attributes
    that do not replace recorded ones, and the output: an hdf5 path that is not a folder, does not exist
    (unless ``force``) and whose folder accepts files, or a well-formed Minari id that does not exist
    locally.

    Raises:
        MakeDatasetError: naming the argument and what was expected.
    """
    _check_numbers(n_transitions, noise, seed, max_episode_steps)
    _check_noise_needs_policy(noise, policy)
    _check_extra_attrs(extra_attrs)
    if fmt not in ("d4rl", "minari"):
        raise MakeDatasetError("{n[fmt]} must be 'd4rl' or 'minari', got {v!r}", v=fmt)
    try:
        resolve_env_id(env_id)
    except ValueError as e:
        raise MakeDatasetError("{n[env]}: {msg}", msg=str(e)) from None
    if policy is not None:
        pp = Path(policy).expanduser()
        if pp.is_dir():
            raise MakeDatasetError("{n[policy]} {p} is a folder, expected an SB3 SAC/TQC .zip file", p=os.fspath(policy))
        if not pp.is_file():
            raise MakeDatasetError("{n[policy]} {p} does not exist, expected an SB3 SAC/TQC .zip file",
                                   p=os.fspath(policy))
    if fmt == "d4rl":
        _check_out_file(out, force)
    else:
        _check_minari_id(str(out))


def _open_env(env_id: str, max_episode_steps: int | None) -> Any:
    kwargs: dict[str, Any] = {}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        return make_env(env_id, **kwargs)
    except ValueError as e:  # no known env family
        raise MakeDatasetError("{n[env]}: {msg}", msg=str(e)) from None
    except Exception as e:
        if type(e).__module__.startswith("gymnasium.error"):  # not registered: an unknown version, a typo
            raise MakeDatasetError("{n[env]} {v!r}: {msg}", v=env_id, msg=str(e)) from None
        raise


def _load_actor(policy: str | os.PathLike[str] | None, env: Any, env_id: str) -> Any:
    if policy is None:
        return None
    from cfdg_aug.datasets.policy import PolicyError, SB3Actor

    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    try:
        actor = SB3Actor(policy, low, high)
    except PolicyError as e:
        raise MakeDatasetError("{n[policy]} {msg}", msg=str(e)) from None
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    if actor.obs_dim != obs_dim or actor.act_dim != act_dim:
        raise MakeDatasetError(
            "{n[policy]} {p} has obs_dim {po} / act_dim {pa}, env {e} has {eo} / {ea}", p=os.fspath(policy),
            po=actor.obs_dim, pa=actor.act_dim, e=env_id, eo=obs_dim, ea=act_dim)
    return actor


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

    Raises:
        MakeDatasetError: a number out of range, an unknown env, an unusable policy (before any step).
    """
    _check_numbers(n_transitions, noise, seed, max_episode_steps)
    _check_noise_needs_policy(noise, policy)
    env = _open_env(env_id, max_episode_steps)
    try:
        actor = _load_actor(policy, env, env_id)
        return _collect(env, env_id, actor, policy=policy, n_transitions=n_transitions, noise=noise, seed=seed,
                        progress=progress)
    finally:
        env.close()


def _collect(env: Any, env_id: str, actor: Any, *, policy: str | os.PathLike[str] | None, n_transitions: int,
             noise: float, seed: int, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from cfdg_aug.datasets.policy import file_sha256

    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    u = env.unwrapped
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
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
    force: bool = False,
) -> Path:
    """Roll out a policy (or random actions) and write a dataset.

    Args:
        env_id: Gymnasium id or dataset name (``Hopper-v4``, ``hopper-medium-v2``).
        out: for ``fmt="d4rl"`` the hdf5 path (written atomically); for ``fmt="minari"`` the Minari
            dataset id (e.g. ``local/hopper-medium-v0``), created under ``$MINARI_DATASETS_PATH``.
        policy: SB3 SAC/TQC ``.zip``, or None for uniform random actions.
        n_transitions: number of steps N (the last episode may be cut; for Minari it is kept as an
            episode with neither flag set on its last step).
        noise: std of the Gaussian added to the policy's deterministic action; must be 0 without a policy.
        seed: see the module docstring.
        command: recorded as the ``command`` attribute; defaults to this process's command line.
        extra_attrs: more provenance attributes; a name the file records itself (``env_id``, ``seed``,
            ``dataset_name``, ``stats_*``, ...) is refused.
        force: replace an existing hdf5 file at ``out`` (atomically). Without it an existing file is
            refused; an existing Minari dataset is always refused.

    Returns:
        the hdf5 path, or the Minari dataset's folder.

    Raises:
        MakeDatasetError: bad input (:func:`check_make_args`, an unknown env, an unusable policy),
            refused before the rollout; or the output cannot be written after it (nothing is left behind).
        ImportError: an extra this needs is not installed (before the rollout).
    """
    check_make_args(env_id, out, policy=policy, n_transitions=n_transitions, noise=noise, seed=seed, fmt=fmt,
                    max_episode_steps=max_episode_steps, force=force, extra_attrs=extra_attrs)
    if fmt == "d4rl":
        from cfdg_aug.datasets.d4rl import _import_h5py, write_d4rl

        _import_h5py("writing D4RL-layout hdf5 files")
    else:
        from cfdg_aug.datasets.minari_io import _import_minari, write_minari

        _import_minari()
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
        path = Path(out).expanduser()
        if not force and (path.exists() or path.is_symlink()):  # appeared during the rollout
            raise MakeDatasetError("{n[out]} {p} already exists; pass {n[force]} to replace it", p=os.fspath(out))
        try:
            return write_d4rl(path, ds)
        except OSError as e:  # write_d4rl removed its temporary file; an existing file is untouched
            raise MakeDatasetError("{n[out]} {p}: cannot write the file ({r})", p=os.fspath(out),
                                   r=os_reason(e)) from None
    folder = minari_dataset_folder(str(out))
    if folder.exists() or folder.is_symlink():
        raise MakeDatasetError("{n[out]} {v!r}: a Minari dataset with this id already exists at {f}; choose "
                               "another name or version", v=str(out), f=str(folder))
    try:
        return write_minari(ds, str(out), final_qpos=arrays["infos/next_qpos"], final_qvel=arrays["infos/next_qvel"])
    except BaseException as e:
        # The folder did not exist just before: whatever is there now is this call's partial write.
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, OSError):
            raise MakeDatasetError("{n[out]} {v!r}: cannot write the Minari dataset in {f} ({r})", v=str(out),
                                   f=str(folder), r=os_reason(e)) from None
        raise


# --- command line ------------------------------------------------------------------------------------
class _UsageError(Exception):
    """A command-line argument cannot be parsed; the message names the option."""


def _usage_message(message: str, prog: str) -> str:
    """argparse's error message as one sentence that names the option."""
    m = re.fullmatch(r"argument ([^:]+): (.*)", message, re.S)
    if m:
        opt, rest = m.group(1).split("/")[0], m.group(2)
        if rest.startswith(opt):  # our own type checks name the option already
            return rest
        if rest == "expected one argument":
            return f"{opt} needs a value"
        return f"{opt}: {rest}"
    m = re.fullmatch(r"the following arguments are required: (.*)", message, re.S)
    if m:
        return f"missing required option(s) {m.group(1)} (see {prog} --help)"
    m = re.fullmatch(r"unrecognized arguments: (.*)", message, re.S)
    if m:
        return f"unknown argument(s) {m.group(1)} (see {prog} --help)"
    return message


class _ArgumentParser(argparse.ArgumentParser):
    """Raises :class:`_UsageError` instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(_usage_message(message, self.prog))


def _typed(opt: str, kind: type, what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{opt} must be {what}, got {text!r}") from None

    return parse


def _fmt(text: str) -> str:
    if text not in ("d4rl", "minari"):
        raise argparse.ArgumentTypeError(f"--format must be 'd4rl' or 'minari', got {text!r}")
    return text


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog=prog,
        description="Roll out an SB3 policy (.zip) or uniform random actions in a Gymnasium MuJoCo env and "
                    "write a D4RL-layout hdf5 file (with infos/qpos, infos/qvel, provenance) or a local Minari dataset. "
                    "Bad input is refused with one 'error: ...' line (exit status 2) before the rollout starts.",
    )
    p.add_argument("--env", required=True, help="Gymnasium id or dataset name, e.g. Hopper-v4 or hopper-medium-v2")
    p.add_argument("--out", required=True, help="hdf5 path (--format d4rl; an existing file only with --force) "
                                                "or a new Minari dataset id (--format minari), e.g. local/hopper-medium-v0")
    p.add_argument("--force", action="store_true",
                   help="replace an existing hdf5 file at --out (atomically, once the new one is written); "
                        "an existing Minari dataset is never replaced")
    p.add_argument("--policy", default=None, help="SB3 SAC/TQC .zip; omit for uniform random actions")
    p.add_argument("--n-transitions", type=_typed("--n-transitions", int, "an int"), required=True,
                   help="number of steps to record (>= 1)")
    p.add_argument("--noise", type=_typed("--noise", float, "a number"), default=0.0,
                   help="std of Gaussian action noise added to the policy (>= 0, default 0; needs --policy)")
    p.add_argument("--seed", type=_typed("--seed", int, "an int"), default=0,
                   help="seed of the env reset and the action noise (>= 0, default 0)")
    p.add_argument("--format", dest="fmt", type=_fmt, choices=("d4rl", "minari"), default="d4rl")
    p.add_argument("--name", default=None, help="dataset name stored in the attributes (default: file stem / id)")
    p.add_argument("--max-episode-steps", type=_typed("--max-episode-steps", int, "an int"), default=None,
                   help="override the env's time limit (>= 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="extra provenance attribute stored in the file (repeatable), e.g. policy_license=MIT; "
                        "not one the file records itself (env_id, seed, dataset_name, stats_*, ...)")
    return p


def _error(msg: str) -> int:
    print(f"error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Command-line entry point; returns the exit status.

    Bad input is one ``error: ...`` line on stderr naming the option, exit status 2, before the
    rollout; deprecation notices (gymnasium's "out of date" banner, MuJoCo's "settotalmass is
    deprecated" for HalfCheetah) are kept off the terminal, other warnings are shown once the
    rollout ends (:func:`~cfdg_aug.datasets.envs.deferred_library_warnings`). ``prog`` names the
    command in ``--help`` and in the recorded ``command`` attribute (``python -m
    cfdg_aug.datasets.make`` passes its own).
    """
    parser = build_parser(prog)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv_list)
        extra: dict[str, Any] = {}
        for item in args.attr:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise _UsageError(f"--attr must be KEY=VALUE, got {item!r}")
            extra[key] = value
    except _UsageError as e:
        return _error(str(e))
    command = " ".join(shlex.quote(a) for a in [*shlex.split(prog), *argv_list])
    with deferred_library_warnings():  # deprecation banners stay hidden; anything else is shown after
        try:
            path = make_dataset(args.env, args.out, policy=args.policy, n_transitions=args.n_transitions,
                                noise=args.noise, seed=args.seed, fmt=args.fmt, progress=not args.no_progress,
                                name=args.name, command=command, max_episode_steps=args.max_episode_steps,
                                extra_attrs=extra, force=args.force)
        except MakeDatasetError as e:
            return _error(e.message(CLI_NAMES))
        except (ValueError, FileNotFoundError, ImportError) as e:
            return _error(str(e))
        if args.fmt == "d4rl":
            from cfdg_aug.datasets.d4rl import load_d4rl

            ds: OfflineDataset = load_d4rl(path)
            s = ds.stats()
            summary = (f"wrote {path} ({path.stat().st_size} bytes): {s['n_transitions']} transitions, "
                       f"{s['n_episodes_complete']} complete episodes, mean return {s['mean_return']:.1f}, "
                       f"normalised {s.get('normalized_score', float('nan')):.1f}")
        else:
            summary = f"wrote Minari dataset {args.out} at {path}"
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog=MODULE_PROG))
