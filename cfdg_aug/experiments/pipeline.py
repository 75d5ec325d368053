"""The offline-to-online pipeline: dataset -> offline pre-training -> online fine-tuning with the
CFDG buffer -> periodic evaluation in D4RL normalised score -> a run directory.

Library entry point: :func:`run_o2o` (``RunConfig`` -> ``RunResult``). The pieces are public so
that callers can share work between runs (the demo pre-trains once and fine-tunes two arms from
the same weights): :func:`load_data`, :func:`build_algo`, :func:`pretrain`, :func:`finetune`,
:func:`evaluate`.

Run directory (``out_dir/run_name``)::

    config.json          RunConfig + the resolved CFDGConfig + algorithm config
    metrics.csv          one row per evaluation and per refresh (see ``METRIC_COLUMNS``)
    refreshes.json       RefreshStats of every refresh (+ online step)
    result.json          RunResult summary
    d3rlpy_logs/         d3rlpy's own CSV logs of the offline and online phases
    pretrained.pt        weights after offline pre-training (d3rlpy ``save_model``)
    model_final.pt       final weights (d3rlpy ``save_model``; load with ``algo.load_model``)
    learning_curve.png   normalised score vs. online steps

Algorithms are looked up in :data:`ALGOS` (name -> builder); IQL is registered here, PEX / APL /
SAC register their builders with :func:`register_algo`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cfdg_aug._io import write_csv, write_json
from cfdg_aug.config import AUGMENTATIONS, CFDGConfig, ConfigError, check_known_fields
from cfdg_aug.diagnostics.fidelity import FIDELITY_COLUMNS, buffer_refresh_fidelity
from cfdg_aug.transitions import SOURCE_NAMES

Profile = Literal["small", "paper"]

METRIC_COLUMNS: tuple[str, ...] = (
    "phase", "step", "online_step", "normalized_score", "return_mean", "return_std", "episodes",
    "num_refreshes", *(f"src_{n}" for n in SOURCE_NAMES), "refresh_fit_seconds", "refresh_sample_seconds",
    "refresh_fit_final_loss", "refresh_fit_steps", "n_synthetic_offline", "n_synthetic_online", "wall_seconds",
    *FIDELITY_COLUMNS,
)


@dataclass(frozen=True)
class RunConfig:
    """One offline-to-online run.

    Attributes:
        algo: key of :data:`ALGOS` ("iql").
        dataset: a :func:`cfdg_aug.datasets.load_dataset` spec ("embedded", a D4RL file or name,
            "minari:ID").
        env_id: evaluation / interaction env; None = the dataset's ``env_id``.
        augmentation: "cfdg" | "unconditional" | "none".
        profile: CFDG profile, "small" (CPU) or "paper".
        cfdg_overrides: CFDGConfig fields replacing the profile's values.
        algo_overrides: keyword arguments replacing the algorithm config's values.
        offline_steps / online_steps: gradient steps offline, environment steps online (one
            update per step).
        eval_every: online steps between evaluations; eval_episodes: episodes per evaluation.
        batch_size: None = the algorithm's paper value (256).
        online_capacity: FIFO size of the online pool (None = online_steps).
        threads: torch threads (None = leave torch's setting).
    """

    algo: str = "iql"
    dataset: str = "embedded"
    env_id: str | None = None
    augmentation: str = "cfdg"
    profile: Profile = "small"
    seed: int = 0
    offline_steps: int = 10_000
    online_steps: int = 20_000
    eval_every: int = 5_000
    eval_episodes: int = 5
    batch_size: int | None = None
    online_capacity: int | None = None
    device: str = "cpu"
    out_dir: str = "runs"
    run_name: str | None = None
    cfdg_overrides: Mapping[str, Any] = field(default_factory=dict)
    algo_overrides: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    show_progress: bool = True
    save_buffer: bool = False

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {sorted(ALGOS)}, got {self.algo!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if self.profile not in ("small", "paper"):
            raise ConfigError(f"profile must be 'small' or 'paper', got {self.profile!r}")
        for name in ("offline_steps", "online_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("eval_every", "eval_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be None or an int >= 1, got {self.batch_size!r}")
        self.cfdg_config()  # validates the overrides now, not mid-run

    def cfdg_config(self) -> CFDGConfig:
        """The profile with the overrides and this run's augmentation."""
        base = CFDGConfig.small if self.profile == "small" else CFDGConfig.paper
        return base(**{**dict(self.cfdg_overrides), "augmentation": self.augmentation})

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def name(self) -> str:
        return self.run_name or f"{self.algo}-{Path(str(self.dataset)).stem}-{self.augmentation}-{self.profile}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cfdg_overrides"] = dict(self.cfdg_overrides)
        d["algo_overrides"] = dict(self.algo_overrides)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        check_known_fields(cls, d, "RunConfig field")
        return cls(**d)


@dataclass
class RunResult:
    """Summary of one run (also written to ``result.json``)."""

    run_dir: str
    config: dict[str, Any]
    offline_score: float | None
    final_score: float | None
    curve: list[tuple[int, float]]
    """(online step, normalised score); step 0 is the pre-trained policy."""
    source_counts: dict[str, int]
    """Rows per source over every online batch, counted from the batches."""
    refreshes: list[dict[str, Any]]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- algorithms -------------------------------------------------------------------------------------
AlgoBuilder = Callable[[RunConfig, str], Any]
"""``builder(run_config, env_family) -> d3rlpy algorithm`` (not yet built)."""

ALGOS: dict[str, AlgoBuilder] = {}


def register_algo(name: str, builder: AlgoBuilder) -> None:
    """Make ``RunConfig(algo=name)`` available (PEX, APL, SAC register here)."""
    ALGOS[name] = builder


def iql_kwargs(family: str, *, offline_steps: int, batch_size: int | None = None) -> dict[str, Any]:
    """``IQLConfig`` keyword arguments with the paper's hyperparameters for an env family (the one
    place they are written; the pipeline and the resumable runner both use it)."""
    import d3rlpy

    antmaze = family == "antmaze"
    return dict(
        actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=batch_size or 256,
        weight_temp=10.0 if antmaze else 3.0, max_weight=100.0, expectile=0.9 if antmaze else 0.7,
        reward_scaler=(d3rlpy.preprocessing.ConstantShiftRewardScaler(shift=-1.0) if antmaze
                       else d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)),
        # Cosine decay of the actor lr over the offline phase (IQL paper); removed online.
        actor_optim_factory=d3rlpy.optimizers.AdamFactory(
            lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=max(1, offline_steps))),
    )


def _build_iql(cfg: RunConfig, family: str) -> Any:
    """IQL with the paper's hyperparameters (Kostrikov et al. 2021; d3rlpy's reproductions).

    Locomotion: expectile 0.7, temperature 3, rewards scaled by 1000 / (max - min episode return).
    AntMaze: expectile 0.9, temperature 10, rewards shifted by -1. Both: batch 256, lr 3e-4, two
    256x256 critics, max advantage weight 100, actor lr with cosine decay over the offline phase
    (reset to 3e-4 and held constant online, see :func:`finetune`).
    """
    import d3rlpy

    kwargs = iql_kwargs(family, offline_steps=cfg.offline_steps, batch_size=cfg.batch_size)
    kwargs.update(dict(cfg.algo_overrides))
    return d3rlpy.algos.IQLConfig(**kwargs).create(device=cfg.device)


register_algo("iql", _build_iql)


def build_algo(cfg: RunConfig, env_id: str) -> Any:
    from cfdg_aug.datasets import env_family

    return ALGOS[cfg.algo](cfg, env_family(env_id))


# --- data, evaluation ---------------------------------------------------------------------------------
def load_data(cfg: RunConfig) -> tuple[Any, str]:
    """(OfflineDataset, env id) for the run."""
    from cfdg_aug.datasets import load_dataset

    ds = load_dataset(cfg.dataset)
    env_id = cfg.env_id or ds.env_id
    if env_id is None:
        raise ConfigError(f"dataset {cfg.dataset!r} records no env id: set RunConfig.env_id")
    return ds, env_id


def evaluate(algo: Any, env: Any, env_id: str, episodes: int, seed: int) -> tuple[float, float, float]:
    """Greedy returns over ``episodes`` episodes, env reset with seeds ``seed, seed+1, ...``.

    Returns (normalised score of the mean return, mean return, std of returns).
    """
    from cfdg_aug.datasets import normalized_score

    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            act = algo.predict(np.asarray(obs, dtype=np.float32)[None])[0]
            obs, rew, term, trunc, _ = env.step(act)
            total += float(rew)
            done = term or trunc
        returns.append(total)
    mean = float(np.mean(returns))
    return float(normalized_score(env_id, mean)), mean, float(np.std(returns))


# --- run directory helpers --------------------------------------------------------------------------
def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, rows, METRIC_COLUMNS)


def _file_logger(run_dir: Path) -> Any:
    import d3rlpy

    return d3rlpy.logging.FileAdapterFactory(root_dir=str(run_dir / "d3rlpy_logs"))


# --- phases -------------------------------------------------------------------------------------------
def pretrain(cfg: RunConfig, algo: Any, dataset: Any, run_dir: Path) -> float:
    """Offline pre-training for ``cfg.offline_steps`` gradient steps; returns seconds spent.

    The dataset is served by a :class:`CFDGReplayBuffer` with ``augmentation="none"`` (offline
    data only, vectorised sampling): the same transitions as a d3rlpy ``MDPDataset``.
    """
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    offline = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=dataset.to_transition_batch(),
                               config=CFDGConfig.small(augmentation="none"), seed=cfg.seed)
    t0 = time.perf_counter()
    if cfg.offline_steps > 0:
        algo.fit(offline, n_steps=cfg.offline_steps, n_steps_per_epoch=min(cfg.offline_steps, 10_000),
                 experiment_name="offline", with_timestamp=False, logger_adapter=_file_logger(run_dir),
                 show_progress=cfg.show_progress, save_interval=10**9)
    else:
        build_from_dataset(algo, offline)
    return time.perf_counter() - t0


def build_from_dataset(algo: Any, dataset: Any) -> None:
    """Fit the scalers (e.g. IQL's return-based reward scaler) and build the networks from a
    dataset without training, as ``fit`` does before its first step."""
    from d3rlpy.algos.utility import build_scalers_with_transition_picker

    build_scalers_with_transition_picker(algo, dataset)
    if algo.impl is None:
        algo.build_with_dataset(dataset)


def _reset_actor_lr(algo: Any) -> None:
    """After pre-training: actor lr back to its initial value and no more decay (d3rlpy's
    fine-tuning reproduction resets it; a cosine schedule continued past T_max would rise again)."""
    modules = getattr(algo.impl, "modules", None)
    optim = getattr(modules, "actor_optim", None)
    if optim is None:
        return
    lr = getattr(algo.config, "actor_learning_rate", None)
    if lr is not None:
        for g in optim.optim.param_groups:
            g["lr"] = lr
    if hasattr(optim, "_lr_scheduler"):
        optim._lr_scheduler = None


def finetune(
    cfg: RunConfig,
    algo: Any,
    dataset: Any,
    env_id: str,
    run_dir: Path,
    *,
    offline_score: tuple[float, float, float] | None = None,
    offline_seconds: float = 0.0,
) -> RunResult:
    """Online fine-tuning with ``fit_online`` and a :class:`CFDGReplayBuffer`, evaluating every
    ``cfg.eval_every`` steps; writes metrics, refresh log, final model, result and plot."""
    import d3rlpy
    from d3rlpy.dataset import FIFOBuffer

    from cfdg_aug.datasets import make_env
    from cfdg_aug.experiments.plots import plot_learning_curves
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    run_dir.mkdir(parents=True, exist_ok=True)
    env, eval_env = make_env(env_id), make_env(env_id)
    d3rlpy.envs.seed_env(env, cfg.seed)
    eval_seed = 10_000 + 1000 * cfg.seed
    cfdg_cfg = cfg.cfdg_config()
    capacity = cfg.online_capacity or max(1, cfg.online_steps)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []

    if offline_score is None:
        offline_score = evaluate(algo, eval_env, env_id, cfg.eval_episodes, eval_seed)
    rows.append({"phase": "offline", "step": cfg.offline_steps, "online_step": 0, "normalized_score": offline_score[0],
                 "return_mean": offline_score[1], "return_std": offline_score[2], "episodes": cfg.eval_episodes,
                 "num_refreshes": 0, "wall_seconds": 0.0})
    curve: list[tuple[int, float]] = [(0, offline_score[0])]

    buffer = CFDGReplayBuffer(FIFOBuffer(capacity), env=env, offline_dataset=dataset.to_transition_batch(),
                              config=cfdg_cfg, online_capacity=capacity, seed=cfg.seed, device=cfg.device)

    def on_refresh(stats: Any) -> None:
        d = stats.as_dict()
        rows.append({"phase": "refresh", "step": cfg.offline_steps + int(stats.online_count),
                     "online_step": int(stats.online_count), "num_refreshes": stats.refresh_index,
                     "refresh_fit_seconds": d["fit_seconds"], "refresh_sample_seconds": d["sample_seconds"],
                     "refresh_fit_final_loss": d["fit_final_loss"], "refresh_fit_steps": d["fit_steps"],
                     "n_synthetic_offline": d["n_synthetic_offline"], "n_synthetic_online": d["n_synthetic_online"],
                     "wall_seconds": time.perf_counter() - t_start,
                     **buffer_refresh_fidelity(buffer.augmented, env_id=env_id, seed=stats.refresh_index)})
        if cfg.show_progress:
            from tqdm import tqdm

            tqdm.write(f"[refresh {stats.refresh_index} at online step {stats.online_count}] generator fit "
                       f"{d['fit_steps']} steps in {d['fit_seconds']:.1f} s (loss {d['fit_final_loss']:.3f}), "
                       f"{d['n_synthetic_online']} + {d['n_synthetic_offline']} samples in {d['sample_seconds']:.1f} s")

    buffer.augmented.add_hook(on_refresh)
    _reset_actor_lr(algo)
    window = np.zeros(len(SOURCE_NAMES), dtype=np.int64)
    eval_seconds = [0.0]

    def callback(a: Any, epoch: int, step: int) -> None:
        if step % cfg.eval_every and step != cfg.online_steps:
            return
        t0 = time.perf_counter()
        score, mean, std = evaluate(a, eval_env, env_id, cfg.eval_episodes, eval_seed)
        eval_seconds[0] += time.perf_counter() - t0
        counts = buffer.source_histogram - window
        window[:] = buffer.source_histogram
        rows.append({"phase": "online", "step": cfg.offline_steps + step, "online_step": step,
                     "normalized_score": score, "return_mean": mean, "return_std": std,
                     "episodes": cfg.eval_episodes, "num_refreshes": buffer.augmented.num_refreshes,
                     **{f"src_{n}": int(c) for n, c in zip(SOURCE_NAMES, counts, strict=True)},
                     "wall_seconds": time.perf_counter() - t_start})
        curve.append((step, score))
        write_metrics(run_dir / "metrics.csv", rows)

    t_online = time.perf_counter()
    if cfg.online_steps > 0:
        algo.fit_online(env, buffer=buffer, n_steps=cfg.online_steps, n_steps_per_epoch=cfg.eval_every,
                        experiment_name="online", with_timestamp=False, logger_adapter=_file_logger(run_dir),
                        show_progress=cfg.show_progress, save_interval=10**9, callback=callback)
    online_seconds = time.perf_counter() - t_online
    write_metrics(run_dir / "metrics.csv", rows)
    algo.save_model(str(run_dir / "model_final.pt"))
    if cfg.save_buffer:
        buffer.save_state(run_dir / "buffer")
    write_json(run_dir / "refreshes.json", buffer.refresh_log)
    fit_s = sum(float(e.get("fit_seconds") or 0.0) for e in buffer.refresh_log)
    sample_s = sum(float(e.get("sample_seconds") or 0.0) for e in buffer.refresh_log)
    guidance_s = sum(float(e.get("guidance_seconds") or 0.0) for e in buffer.refresh_log)
    result = RunResult(
        run_dir=str(run_dir), config=cfg.to_dict(), offline_score=offline_score[0],
        final_score=curve[-1][1] if len(curve) > 1 else None, curve=curve,
        source_counts={n: int(c) for n, c in zip(SOURCE_NAMES, buffer.source_histogram, strict=True)},
        refreshes=list(buffer.refresh_log),
        timings={"offline_seconds": offline_seconds, "online_seconds": online_seconds,
                 "generator_fit_seconds": fit_s, "generator_guidance_seconds": guidance_s,
                 "generator_sample_seconds": sample_s,
                 "buffer_sample_seconds": buffer.sample_seconds, "eval_seconds": eval_seconds[0]},
    )
    write_json(run_dir / "result.json", result.to_dict())
    plot_learning_curves({cfg.augmentation: curve}, run_dir / "learning_curve.png",
                         title=f"{cfg.algo.upper()} {env_id} ({cfg.profile} profile, seed {cfg.seed})")
    env.close()
    eval_env.close()
    return result


def prepare_run_dir(cfg: RunConfig, env_id: str, algo: Any | None = None) -> Path:
    run_dir = Path(cfg.out_dir) / cfg.name()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_dict: dict[str, Any] = {"run": cfg.to_dict(), "env_id": env_id, "cfdg": cfg.cfdg_config().to_dict()}
    if algo is not None:
        cfg_dict["algo"] = json.loads(algo.config.serialize()) if hasattr(algo.config, "serialize") else None
    write_json(run_dir / "config.json", cfg_dict)
    return run_dir


def seed_everything(seed: int, threads: int | None = None) -> None:
    import d3rlpy
    import torch

    d3rlpy.seed(seed)
    np.random.seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


def run_o2o(cfg: RunConfig) -> RunResult:
    """The whole pipeline for one configuration; see the module docstring for the outputs."""
    seed_everything(cfg.seed, cfg.threads)
    dataset, env_id = load_data(cfg)
    algo = build_algo(cfg, env_id)
    run_dir = prepare_run_dir(cfg, env_id, algo)
    offline_seconds = pretrain(cfg, algo, dataset, run_dir)
    algo.save_model(str(run_dir / "pretrained.pt"))
    return finetune(cfg, algo, dataset, env_id, run_dir, offline_seconds=offline_seconds)


def clone_algo(algo: Any) -> Any:
    """An independent copy of a built d3rlpy algorithm (weights, optimisers, fitted scalers)."""
    return copy.deepcopy(algo)


__all__ = [
    "ALGOS", "METRIC_COLUMNS", "RunConfig", "RunResult", "build_algo", "build_from_dataset", "clone_algo", "evaluate", "finetune",
    "load_data", "prepare_run_dir", "pretrain", "register_algo", "run_o2o", "seed_everything", "write_json",
    "write_metrics",
]
