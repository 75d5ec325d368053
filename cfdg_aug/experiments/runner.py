"""Resumable offline-to-online runs: the engine behind ``cfdg-aug run`` and ``cfdg-aug sweep``.

One run = offline pre-training (``offline_steps`` gradient steps on the dataset) then online
fine-tuning (``online_steps`` environment steps, ``updates_per_step`` gradient steps each) with a
:class:`~cfdg_aug.integrations.d3rlpy.CFDGReplayBuffer`, evaluated every ``eval_every`` steps in
D4RL normalised score. Unlike ``d3rlpy``'s ``fit`` / ``fit_online`` (one uninterruptible call), the
loops here are our own (the same steps as ``fit_online``: sample action, step, ``append``,
``clip_episode``, ``sample_transition_batch``, ``update``) so the run can stop and resume anywhere.

Run directory ``OUT/<run-id>/`` (run id = ``algo-augmentation-dataset-sSEED-HASH8``, the hash of
the resolved config, see :meth:`ExperimentConfig.run_id`)::

    config.json          the resolved ExperimentConfig, its hash, the CFDGConfig and the algo config
    metrics.csv          one row per evaluation and per generator refresh (``METRIC_COLUMNS``)
    tb/                  TensorBoard events (only when the ``tensorboard`` package is installed)
    checkpoints/         latest.json (the commit pointer) + ckpt-<phase>-<step>/ (see below)
    learning_curve.png   normalised score vs. online steps
    model_final.pt       final weights (d3rlpy ``save_model``)
    result.json          summary; its presence marks the run finished
    prefit.json          the generator's pre-fit (``prefit_generator``): steps, seconds, wait
    run.log              the run's log lines and the libraries' chatter (gym's deprecation banner,
                         gymnasium warnings, d3rlpy's debug / info lines), kept off the terminal
    ../pretrained/<key>/ the shared pre-trained agent (see "Shared pre-training" below)

Checkpoints. Every ``checkpoint_every`` steps a new folder ``checkpoints/ckpt-<phase>-<step>/`` is
written (``model.pt``: d3rlpy ``save_model`` = networks + optimiser states; ``state.json``: step
counters, metrics row count, numpy / python / torch / env RNG states, APL's branch RNG;
``state.safetensors``: APL's recent-online FIFO; ``buffer/``: ``CFDGReplayBuffer.save_state`` =
the d3rlpy episode store + the core buffer with all four pools, the generator and its RNG), then
``latest.json`` is replaced atomically (tmp + ``os.replace``) to point at it, then older folders are
deleted. A kill at any moment leaves either the old or the new checkpoint as the committed one.
``state.json`` records the sha256 of ``model.pt`` and ``state.safetensors`` (the buffer records its
own), checked before a resume or an install of a shared agent loads them: a damaged file is a
:class:`RunError` naming it, never a silent resume from changed weights.

Resume rule. On start the committed checkpoint (if any) is loaded, ``metrics.csv`` is cut back to
the row count recorded in it (rows written after the checkpoint are recomputed, so there is no gap
and no duplicate), TensorBoard events after its step are purged (``purge_step``), and training
continues. Online checkpoints are taken only at *episode boundaries* (the first episode end at or
after each multiple of ``checkpoint_every`` at which no background refresh is still fitting, and
always at the end): the environment then needs no
mid-episode simulator state, the d3rlpy writer holds no half-written episode, and the env's reset
RNG is restored, so a resumed run replays the same transitions. What is NOT bit-exact across a
resume: (1) wall-clock columns; (2) d3rlpy's own diagnostic loss logs (none are written here);
(3) on multi-threaded CPU/GPU torch, float reductions are not run-to-run deterministic anyway, so
two uninterrupted runs can already differ in the last bits. Offline checkpoints happen every
``checkpoint_every`` gradient steps (no episode constraint offline).

Shared pre-training. The pre-trained agent is published to ``PRETRAINED/<key>/`` (default
``OUT/pretrained``; key = :func:`pretrain_key` of :func:`pretrain_key_info`: the offline algorithm's
config, the data's hash, offline steps, batch size, seed, device, library versions) by the first run
of a key, under a lock per key; later runs install it as their committed offline checkpoint and
continue as a resumed run does, so every augmentation arm of a seed starts from the same weights
and computes what it would have computed by pre-training itself. A generator's pre-fit
(``prefit_generator``) is shared the same way, as ``PRETRAINED/prefit-<key>/`` (key:
:func:`prefit_key` of :func:`prefit_key_info`: the generator settings its fit reads, the data, env,
seed, precision, device, versions), so arms that differ only after the fit (refresh schedule, pool
sizes, batch mix, sampler) fit it once; a run that finds another fitting its key pre-trains
meanwhile and takes that pre-fit afterwards.

Pre-flight. Before the run directory is created and before any training, :func:`run_experiment`
checks what would otherwise fail minutes in (:func:`check_run_config`: the device, the ``algo.*``
overrides against the d3rlpy config's fields, types and ranges, a warm-up shorter than the online
phase, an online pool larger than a batch, a refresh schedule that fires within the run,
``guidance="auto"`` against the online data it needs; the output folders and the run name, the
shared pre-trained folder tried for writing; then, with the data loaded: its dimensions against the
environment's spaces and the memory the replay pools need). A start refused for bad input leaves
no run directory behind.

Everything is loaded without unpickling: safetensors, JSON, d3rlpy ``load_model`` (``torch.load``
with ``weights_only=True``) and d3rlpy's hdf5 episode dump.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from cfdg_aug._io import file_sha256, folder_write_problem, fsync_dir, write_csv, write_json
from cfdg_aug.config import (
    AUGMENTATIONS,
    REDRAW_SETTINGS,
    SAVED_BEFORE_FIELD,
    CFDGConfig,
    ConfigError,
    check_device,
    check_folder,
    check_known_fields,
)
from cfdg_aug.datasets.envs import mujoco_warnings_to
from cfdg_aug.diagnostics.fidelity import FIDELITY_COLUMNS, buffer_refresh_fidelity
from cfdg_aug.generator import FIT_STAGES
from cfdg_aug.transitions import SOURCE_NAMES

ALGOS: tuple[str, ...] = ("iql", "pex", "apl", "sac")
PROFILES: tuple[str, ...] = ("small", "paper")

METRIC_COLUMNS: tuple[str, ...] = (
    "phase", "step", "online_step", "normalized_score", "return_mean", "return_std", "episodes",
    "num_refreshes", *(f"src_{n}" for n in SOURCE_NAMES), "rollout_return_mean", "rollout_episodes",
    "refresh_fit_seconds", "refresh_sample_seconds", "refresh_fit_final_loss", "refresh_fit_steps",
    *(f"refresh_fit_seconds_{n}" for n in FIT_STAGES), "refresh_behaviour_accept_rate",
    "n_synthetic_offline", "n_synthetic_online", "wall_seconds", *FIDELITY_COLUMNS,
    "eval_length_mean", "loss_q", "loss_v", "loss_actor",
    *(f"probe_{n}_{s}" for n in SOURCE_NAMES for s in ("q", "v", "adv", "adv_std", "td")),
)
"""Columns of ``metrics.csv``. ``phase``: "offline" (the pre-trained policy, ``online_step`` 0),
"online" (an evaluation during fine-tuning) or "refresh" (a generator refresh; no score).

Refresh rows: ``refresh_fit_seconds`` (the whole fit) and, split by the model trained,
``refresh_fit_seconds_{termination,dynamics,behaviour,generator}`` (blank for a model the profile
does not train; :attr:`cfdg_aug.generator.FitStats.stage_seconds`).

Learner diagnostics, on "online" rows: ``eval_length_mean`` (mean evaluation episode length; also on
the "offline" row), ``loss_q`` / ``loss_v`` / ``loss_actor`` (the algorithm's critic, value and actor
losses averaged over the updates since the previous evaluation: d3rlpy's ``q_loss`` or else
``critic_loss``, ``v_loss``, ``actor_loss``; blank where the algorithm has none), and
``probe_<pool>_<stat>``: what the critic says about up to :data:`PROBE_ROWS` rows of each pool at
the evaluation (:func:`cfdg_aug.integrations.d3rlpy.probe.critic_probe`: mean Q, V, Q - V, the
spread of Q - V and the TD residual; the newest rows of the real online pool, a fixed subset of the real offline pool, the
first rows of each synthetic pool; blank for an empty pool)."""

PROBE_ROWS = 1024
"""Rows per pool that :func:`critic_probe_row` probes."""

_LOSS_KEYS: dict[str, tuple[str, ...]] = {
    "loss_q": ("q_loss", "critic_loss"), "loss_v": ("v_loss",), "loss_actor": ("actor_loss",),
}

RESULT_FILE = "result.json"
PREFIT_FILE = "prefit.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
LOG_FILE = "run.log"


class RunError(RuntimeError):
    """A run directory that cannot be used (other config, another process running it, ...)."""


# --- profiles -------------------------------------------------------------------------------------
#: The small IQL / PEX budget (docs/results/baseline.md, where each choice is measured): 10K offline
#: steps (longer offline training makes the policy worse on 50K transitions), 25K online steps of
#: which the first 5K only collect (``warmup_steps``, PEX's ``update_start_step``), real offline and
#: online data mixed in proportion to their sizes (``real_mix="proportional"``, IQL / CORL), the
#: actor lr cosine-decayed over the online updates as offline (a constant one leaves the evaluated
#: policy a noisy iterate), the advantage temperature 1 (3 in the paper: on 50K transitions the
#: weights of 3 over-fit), the actor lr 1e-3 (BC's; 3e-4 leaves the actor under-fitted after 10K
#: steps: 7-26 points lower on the three tasks),
#: 10 evaluation episodes every 2,500 steps, a generator refresh every 5K online steps (the first at
#: the end of the warm-up).
_SMALL_IQL: dict[str, Any] = dict(
    offline_steps=10_000, online_steps=25_000, warmup_steps=5_000, online_lr_schedule="cosine",
    eval_every=2_500, eval_episodes=10,
    checkpoint_every=5_000, updates_per_step=1, algo_kwargs=dict(weight_temp=1.0, actor_learning_rate=1e-3),
    cfdg=dict(refresh_every=5_000, min_online=5_000, real_mix="proportional"),
)

#: PEX's new policy starts as a copy of the frozen offline one (the released code starts it from
#: random weights). Measured on hopper-medium-50k, seed 0: with random weights the greedy
#: evaluation fell from the pre-trained 51.9 to 0.9 during the warm-up, before any update, because
#: the critic, fitted for 10K steps on the dataset's actions only, values the untrained policy's
#: near-zero actions above the offline policy's in most states and PEX executes the proposal with
#: the larger Q; it was back at 34 only after 15K online steps. A copy proposes the same actions at
#: the start, so the choice cannot fall below the offline policy before the new one has learned.
_SMALL_PEX: dict[str, Any] = dict(init_new_policy_from_offline=True)

#: The small APL agent: 2 critics and 1 CQL action per sampler instead of the released code's 5 and
#: 10, the one setting measured at >= 20 updates/s on one CPU thread on both branches (25.7
#: conservative, 44 greedy; the defaults 2.1 and 25: docs/benchmarks.md, "APL update throughput").
#: A conservative update costs the critics' rows, 2 x 256 x (1 + 3 x 10) at 5 / 10 against
#: 2 x 256 x 4 here: 16x fewer FLOPs. With 2 critics the TD target's random pair is both (SAC's
#: clipped double Q). ``greedy_min_online=2_000``: the released 10K is the whole small online
#: budget, so the greedy branch, APL's point, would never run; 2K leaves 80% of the online phase
#: to the adaptive rule (the paper's 10K of 100K leaves 90%) without greedy batches drawn from a
#: few hundred transitions. The paper profile keeps APLConfig's defaults.
_SMALL_APL: dict[str, Any] = dict(n_critics=2, n_action_samples=1, greedy_min_online=2_000)

#: Budgets per profile and algorithm. ``small``: sized for one IQL run on the embedded hopper set in
#: <= 20 minutes on 2 CPU cores (IQL ~110 updates/s; a cfdg run's first refresh ~4 min, each warm
#: refresh ~1 min: docs/benchmarks.md, "The overhead of CFDG in an IQL run"). ``paper``: the paper's
#: budgets (1M offline + 1M online for IQL/PEX, 100K + 100K for APL with UTD 10 and refreshes every
#: 10K; SAC: online only, SynthER-style), for a GPU.
PROFILE_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        # IQL's actor on the real rows of each batch: with synthetic rows in its loss, cfdg ended
        # below none on hopper in 5 of 5 seeds; on the real rows it is level with none
        # (docs/results/README.md, "Why cfdg hurt hopper"). PEX and APL have other actor losses.
        "iql": dict(_SMALL_IQL, actor_data="real"),
        "pex": dict(_SMALL_IQL, algo_kwargs=dict(_SMALL_IQL["algo_kwargs"], **_SMALL_PEX)),
        "apl": dict(offline_steps=10_000, online_steps=10_000, eval_every=2_000, eval_episodes=10,
                    checkpoint_every=2_000, updates_per_step=2, cfdg=dict(refresh_every=2_500),
                    algo_kwargs=dict(_SMALL_APL)),
        "sac": dict(offline_steps=0, online_steps=30_000, eval_every=5_000, eval_episodes=5,
                    checkpoint_every=5_000, updates_per_step=1),
    },
    "paper": {
        "iql": dict(offline_steps=1_000_000, online_steps=1_000_000, eval_every=10_000, eval_episodes=10,
                    checkpoint_every=50_000, updates_per_step=1),
        "pex": dict(offline_steps=1_000_000, online_steps=1_000_000, eval_every=10_000, eval_episodes=10,
                    checkpoint_every=50_000, updates_per_step=1),
        "apl": dict(offline_steps=100_000, online_steps=100_000, eval_every=5_000, eval_episodes=10,
                    checkpoint_every=10_000, updates_per_step=10, cfdg=dict(refresh_every=10_000)),
        "sac": dict(offline_steps=0, online_steps=1_000_000, eval_every=10_000, eval_episodes=10,
                    checkpoint_every=50_000, updates_per_step=1, cfdg=dict(refresh_every=10_000)),
    },
}


#: A seconds-scale budget in ``--set`` form (tiny networks, a few hundred steps, a refresh every 100
#: online steps): smoke tests of the whole machinery, used by the tests and docs/experiments.md.
SMOKE_SET: tuple[str, ...] = (
    "offline_steps=100", "online_steps=300", "warmup_steps=50", "eval_every=100", "eval_episodes=1", "checkpoint_every=100",
    "batch_size=32", "cfdg.width=32", "cfdg.depth=1", "cfdg.train_steps=30", "cfdg.warm_start_steps=10",
    "cfdg.num_sample_steps=4", "cfdg.synthetic_online_size=64", "cfdg.synthetic_offline_size=16",
    "cfdg.refresh_every=100", "cfdg.min_online=100", "cfdg.redraw_steps=4", "cfdg.redraw_resample=2",
)


@dataclass(frozen=True)
class ExperimentConfig:
    """The resolved configuration of one run (what ``config.json`` stores and the run id hashes).

    Attributes:
        algo: "iql" | "pex" | "apl" | "sac". PEX pre-trains IQL offline and expands it online;
            SAC (profile default ``offline_steps=0``) learns online with the offline data replayed.
        augmentation: "none" | "unconditional" | "cfdg".
        dataset: a :func:`cfdg_aug.datasets.load_dataset` spec ("embedded", a path, "minari:ID").
        profile: "small" (a 2-core CPU's budgets, ``CFDGConfig.small``) or "paper" (the paper's,
            ``CFDGConfig.paper``, for a GPU): the defaults every other setting starts from.
        seed: seeds the algorithm, the environment, the buffer and the generator.
        env_id: None = the dataset's env id.
        offline_steps: gradient steps offline (0 for online-only).
        online_steps: environment steps online, >= 1 (a run is offline-to-online: offline-only
            runs are refused, not supported).
        updates_per_step: gradient updates per environment step (UTD).
        warmup_steps: online environment steps collected with the pre-trained policy before the
            first online update (PEX's released code: 5,000, ``update_start_step``), so the
            first online batches are not drawn from a handful of transitions.
        online_lr_schedule: the actor's learning rate online, reset to its initial value after
            pre-training, then "constant" or "cosine" (decayed to 0 over the online updates, as
            offline); see :func:`reset_actor_lr`.
        online_actor_lr: the actor's learning rate at the start of the online phase (None: the
            offline one, ``algo_kwargs["actor_learning_rate"]`` or the algorithm's default).
        online_weight_temp: IQL's (and PEX's) advantage temperature beta in the online phase (None:
            the offline one, ``algo_kwargs["weight_temp"]``). Offline, a low beta keeps the actor
            near behaviour cloning of a small dataset; online, the actor moves past the data it
            collected itself only through the advantage weights ``exp(beta * A)``, which a larger
            beta sharpens (measured: docs/results/baseline.md, "The online phase on walker2d and
            halfcheetah").
        exploration_scale: how far the actions collected online lie from the greedy action:
            ``greedy + exploration_scale * (sampled - greedy)``, with ``sampled`` the algorithm's
            own ``sample_action`` and ``greedy`` its ``predict``. 1 = the algorithm's sampling
            unchanged (the default); 0 = greedy. For IQL's Gaussian policy (a state-independent
            std around ``tanh(mu)``) it scales the std; for PEX's and APL's squashed Gaussians it
            interpolates in action space. Evaluation is greedy whatever the value.
        actor_data: the rows of each online batch IQL's actor trains on: "all" (the paper; the
            paper profile) or "real" (the real offline and online rows only, the small IQL
            profile; the critic and value function still see the synthetic rows;
            :mod:`cfdg_aug.integrations.d3rlpy.actor_rows` says why). Left out of the run id for
            ``none`` arms, where it changes nothing.
        prefit_generator: augmented arms fit the generator on the offline data before the online
            phase (:meth:`~cfdg_aug.buffer.AugmentedReplayBuffer.prefit`), so every scheduled refresh
            is a warm refit (``cfdg.refit_steps``) instead of the first being a fit from scratch
            (``cfdg.train_steps``). The pre-fit runs in a background process started before
            pre-training, on a second core; the online phase goes on without it and waits for it
            only when the first refresh starts (``max(cfdg.min_online, cfdg.refresh_every)`` online
            steps in), so it costs the run no wall time when pre-training and those online steps
            are at least as long (whatever ``cfdg.refresh_lag``; it makes the generator a
            synchronous pre-fit makes). Those steps are quick when they are ``warmup_steps``
            (collection without updates, as in the small profile). With a shared pre-trained folder
            it is shared too (module docstring).
            Its stats go to ``prefit.json`` and ``result.json``. Left out of the run id when off, and for
            ``none`` arms, where it changes nothing. Pair it with ``cfdg.online_batch_fraction=0.5``
            (docs/fidelity.md, "Pre-fit and label-balanced batches").
        eval_every: steps between evaluations (online steps online, gradient steps offline).
        eval_episodes: greedy episodes per evaluation (their mean is the D4RL normalised score).
        checkpoint_every: steps between checkpoints (online: at the next episode end at which no
            background refresh, ``cfdg.refresh_lag > 0``, or pre-fit is still fitting).
        batch_size: None = the algorithm's default (256).
        online_capacity: FIFO size of the online pool (None = online_steps).
        cfdg: CFDGConfig fields replacing the profile's (``CFDGConfig.small`` / ``.paper``).
        algo_kwargs: fields of the d3rlpy algorithm config replacing ours.
    """

    algo: str = "iql"
    augmentation: str = "cfdg"
    dataset: str = "embedded"
    profile: str = "small"
    seed: int = 0
    env_id: str | None = None
    offline_steps: int = 10_000
    online_steps: int = 10_000
    updates_per_step: int = 1
    warmup_steps: int = 0
    online_lr_schedule: str = "constant"
    online_actor_lr: float | None = None
    online_weight_temp: float | None = None
    exploration_scale: float = 1.0
    actor_data: str = "all"
    prefit_generator: bool = False
    eval_every: int = 2_500
    eval_episodes: int = 5
    checkpoint_every: int = 2_500
    batch_size: int | None = None
    online_capacity: int | None = None
    cfdg: Mapping[str, Any] = field(default_factory=dict)
    algo_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if self.online_actor_lr is not None and (isinstance(self.online_actor_lr, bool) or not isinstance(
                self.online_actor_lr, (int, float)) or not 0 < self.online_actor_lr < float("inf")):
            raise ConfigError(f"online_actor_lr must be a positive number or None, got {self.online_actor_lr!r}")
        if self.online_weight_temp is not None:
            if isinstance(self.online_weight_temp, bool) or not isinstance(self.online_weight_temp, (int, float)) \
                    or not 0 <= self.online_weight_temp < float("inf"):
                raise ConfigError(f"online_weight_temp must be a finite number >= 0 or None, got {self.online_weight_temp!r}")
            if self.algo not in ("iql", "pex"):
                raise ConfigError(f"online_weight_temp is IQL's advantage temperature: it applies to algo 'iql' and "
                                  f"'pex' only, got algo {self.algo!r}")
        if isinstance(self.exploration_scale, bool) or not isinstance(self.exploration_scale, (int, float)) \
                or not 0 <= self.exploration_scale <= 1:
            raise ConfigError(f"exploration_scale must be a number in [0, 1] (0 = greedy, 1 = the policy's own "
                              f"sampling), got {self.exploration_scale!r}")
        if self.online_lr_schedule not in ONLINE_LR_SCHEDULES:
            raise ConfigError(f"online_lr_schedule must be one of {ONLINE_LR_SCHEDULES}, got {self.online_lr_schedule!r}")
        if self.actor_data not in ACTOR_DATA:
            raise ConfigError(f"actor_data must be one of {ACTOR_DATA}, got {self.actor_data!r}")
        if self.actor_data != "all" and self.algo != "iql":
            raise ConfigError(f"actor_data={self.actor_data!r} is implemented for algo 'iql' only "
                              f"(PEX's and APL's actor losses differ), got algo {self.algo!r}")
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if not isinstance(self.prefit_generator, bool):
            raise ConfigError(f"prefit_generator must be true or false, got {self.prefit_generator!r}")
        for name in ("seed", "offline_steps", "warmup_steps"):
            _check_int(name, getattr(self, name), 0)
        if isinstance(self.online_steps, bool) or not isinstance(self.online_steps, int) or self.online_steps < 1:
            # d3rlpy fails on an empty online buffer with an IndexError, after pre-training.
            raise ConfigError(f"online_steps must be an int >= 1 (a run fine-tunes online after pre-training; "
                              f"offline-only runs are not supported), got {self.online_steps!r}")
        for name in ("updates_per_step", "eval_every", "eval_episodes", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("batch_size", "online_capacity"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.algo == "pex" and self.offline_steps < 1:
            raise ConfigError("offline_steps must be >= 1 for pex (it expands a pre-trained IQL)")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset must be a non-empty string, got {self.dataset!r}")
        if self.env_id is not None and (not isinstance(self.env_id, str) or not self.env_id):
            raise ConfigError(f"env_id must be None or a gymnasium id such as 'Hopper-v4', got {self.env_id!r}")
        for name, prefix in (("cfdg", "cfdg"), ("algo_kwargs", "algo")):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"{name} must be a mapping of field -> value (--set {prefix}.FIELD=VALUE), "
                                  f"got {getattr(self, name)!r}")
        self._check_run_owned_overrides()
        try:
            self.cfdg_config()  # validates the CFDG overrides now (unknown names included), not mid-run
        except ConfigError as e:
            # CFDGConfig names its own field ("batch_size must be ..."), which here is cfdg.batch_size
            fields = {f.name for f in dataclasses.fields(CFDGConfig)}
            raise ConfigError(f"cfdg.{e}" if str(e).split(" ", 1)[0] in fields else str(e)) from None
        if self.algo == "apl":
            self._check_apl_batch_mix()
        if self.prefit_generator and self.augmentation != "none" and not self.cfdg_config().warm_start:
            raise ConfigError("prefit_generator=true needs cfdg.warm_start=true: without it every refresh fits the "
                              "generator from scratch and the pre-fit would be thrown away")

    def _check_run_owned_overrides(self) -> None:
        """Overrides of what the runner decides itself would be replaced or half-used while still
        changing the run id (and ``algo.*`` the pre-training key): ``cfdg.augmentation`` is refused,
        ``algo.batch_size`` and APL's ``algo.utd_ratio`` unless they equal what runs."""
        if "augmentation" in self.cfdg:
            # cfdg_config() replaces it with the run's augmentation.
            raise ConfigError(f"cfdg.augmentation is set by the run's augmentation (--augmentation; a grid's "
                              f"augmentations), not by an override: remove cfdg.augmentation="
                              f"{self.cfdg['augmentation']!r}")
        bs = self.batch_size or 256
        if "batch_size" in self.algo_kwargs and self.algo_kwargs["batch_size"] != bs:
            # Both loops draw batch_size rows per update; the d3rlpy config's value would differ from them.
            v = self.algo_kwargs["batch_size"]
            if self.batch_size is not None:
                raise ConfigError(f"algo.batch_size={v!r} conflicts with batch_size={self.batch_size!r}: "
                                  "set batch_size only")
            raise ConfigError(f"algo.batch_size={v!r} is not the batch size the runner draws (batch_size, "
                              f"unset: {bs}): set batch_size={v!r} instead and drop algo.batch_size")
        if self.algo == "apl" and "utd_ratio" in self.algo_kwargs \
                and self.algo_kwargs["utd_ratio"] != self.updates_per_step:
            # APLConfig.utd_ratio is read by APL's own fit_online only; the runner's loop is not it.
            v = self.algo_kwargs["utd_ratio"]
            raise ConfigError(f"algo.utd_ratio={v!r} is read by APL's own fit_online only; the runner runs "
                              f"updates_per_step={self.updates_per_step} updates per environment step: set "
                              f"updates_per_step={v!r} instead and drop algo.utd_ratio")

    def _check_apl_batch_mix(self) -> None:
        """APL draws each branch batch itself (integrations/d3rlpy/apl.py), so it reads none of the
        buffer's batch-mix settings: a changed one is refused, not ignored. The control arm's pair
        (``offline_only``) is honoured as ``APLConfig.learn_from_online=False`` (:func:`build_algo`)."""
        if "learn_from_online" in self.algo_kwargs:
            raise ConfigError("algo.learn_from_online is set by the arm, not by an override: use --augmentation "
                              "offline_only for APL learning from no online row")
        default = CFDGConfig.small() if self.profile == "small" else CFDGConfig.paper()
        ours = self.cfdg_config()
        allowed = CONTROL_ARMS["offline_only"][1] if arm_name(self.to_dict()) == "offline_only" else {}
        for f in BATCH_MIX_FIELDS:
            if getattr(ours, f) != getattr(default, f) and f not in allowed:
                raise ConfigError(f"cfdg.{f} sets the buffer's batch mix, which APL does not read (it draws each "
                                  f"branch batch itself): use algo.synthetic_fraction for its synthetic share, "
                                  f"--augmentation offline_only for its control; got cfdg.{f}={getattr(ours, f)!r}")

    def cfdg_config(self) -> CFDGConfig:
        base = CFDGConfig.small if self.profile == "small" else CFDGConfig.paper
        return base(**{**dict(self.cfdg), "augmentation": self.augmentation})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["online_actor_lr"] is None:  # unset: left out, so the ids of runs made before it stay valid
            del d["online_actor_lr"]
        if d["online_weight_temp"] is None:  # likewise
            del d["online_weight_temp"]
        if d["exploration_scale"] == 1:  # likewise
            del d["exploration_scale"]
        if d["actor_data"] == "all" or self.augmentation == "none":  # likewise; and without synthetic
            del d["actor_data"]  # rows it changes nothing, so the none arms keep their ids
        if not d["prefit_generator"] or self.augmentation == "none":  # likewise (it changes nothing for none)
            del d["prefit_generator"]
        d["cfdg"] = dict(sorted(dict(self.cfdg).items()))
        d["algo_kwargs"] = dict(sorted(dict(self.algo_kwargs).items()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        check_known_fields(cls, d, "run setting")
        return cls(**d)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict` (device and output folder excluded:
        they do not change what is computed, up to floating-point non-determinism).

        Augmented arms also hash the resolved generator config (:meth:`cfdg_config`): a change of
        the profile's generator defaults (``CFDGConfig.small``) is a different run, which a sweep
        must not skip as finished. ``none`` arms never build a generator, so theirs is left out and
        their ids survive generator changes."""
        d = self.to_dict()
        for k, before in SAVED_BEFORE_FIELD.items():
            if k in d["cfdg"] and d["cfdg"][k] == before:
                # What every run made before the field did: left out of the hash (not of the config the
                # run carries), so grids that pin it keep their runs' ids.
                del d["cfdg"][k]
        if self.augmentation != "none":
            resolved = self.cfdg_config()
            d["cfdg_resolved"] = resolved.to_dict()
            if d["cfdg_resolved"]["refresh_lag"] == 0:  # unset: left out, so the ids of earlier runs stay valid
                del d["cfdg_resolved"]["refresh_lag"]
            for k, before in SAVED_BEFORE_FIELD.items():  # likewise, at the value runs made before it had
                if d["cfdg_resolved"][k] == before:
                    del d["cfdg_resolved"][k]
            if resolved.behaviour_quantile is None:  # no filter: its statistic changes nothing
                d["cfdg_resolved"].pop("behaviour_score", None)
            if not resolved.behaviour_redraws:  # no redraw: a run draws nothing given states
                for k in REDRAW_SETTINGS:
                    d["cfdg"].pop(k, None)
                    d["cfdg_resolved"].pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def run_id(self) -> str:
        stem = Path(self.dataset).stem if not self.dataset.startswith("minari:") else self.dataset[7:]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        return f"{self.algo}-{self.augmentation}-{stem}-s{self.seed}-{self.config_hash()[:8]}"


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["online_steps=500", "cfdg.train_steps=30", "algo.expectile=0.8"]`` -> nested overrides.

    Values are parsed as YAML scalars (``500`` -> int, ``0.5`` -> float, ``true``, ``null``,
    ``[1, 2]``); keys ``cfdg.X`` go to the CFDG config, ``algo.X`` to the algorithm config. The
    list-valued generator settings (:data:`LIST_SETTINGS`) also take comma-separated numbers
    (``cfdg.guidance_candidates=0,1,2`` = ``[0,1,2]``), the syntax of ``fidelity --w``.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from e
        if isinstance(value, str) and key in LIST_SETTINGS and "," in value:
            value = _number_list(key, raw)
        if isinstance(value, str):
            # YAML 1.1 reads "6e-4" (no dot) as a string; a number is what anyone typing it means.
            try:
                value = float(value) if raw.strip().lower() not in ("nan", "inf", "-inf", ".nan") else value
            except ValueError:
                pass
        if key.startswith("cfdg."):
            out.setdefault("cfdg", {})[key[5:]] = value
        elif key.startswith("algo."):
            out.setdefault("algo_kwargs", {})[key[5:]] = value
        else:
            out[key] = value
    return out


LIST_SETTINGS: tuple[str, ...] = ("cfdg.guidance_candidates", "cfdg.guidance_interval")
"""``--set`` keys whose value is a list of numbers (``[0,1,2]`` or ``0,1,2``)."""


def _number_list(key: str, raw: str) -> list[Any]:
    import yaml

    out: list[Any] = []
    for part in raw.split(","):
        try:
            v = yaml.safe_load(part) if part.strip() else None
            v = float(v) if isinstance(v, str) else v
        except (yaml.YAMLError, ValueError):
            v = None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"--set {key}: expected a list of numbers such as {key}=[0,1,2], got {raw!r}")
        out.append(v)
    return out


#: Settings with their own argument (``--algo``, ``--seed``, a grid's ``seeds``, ...): an override
#: of them would be silently replaced by the argument, so a differing one is refused.
_RUN_ARGUMENTS: tuple[str, ...] = ("algo", "augmentation", "dataset", "profile", "seed")

#: Control arms: an augmentation run with settings that make it a control, by name, for
#: ``--augmentation`` and a grid's ``augmentations``. ``offline_only`` is ``none`` whose batches hold
#: real offline rows only: the environment is stepped, the online pool filled, the lr schedule
#: followed and the agent evaluated exactly as in ``none``, but no online row is learned from, so
#: ``none`` − ``offline_only`` is what online data adds over continued offline training
#: (docs/results/baseline.md, "Is the rise fine-tuning?"). A control is stored as what it runs
#: (augmentation ``none`` plus these ``cfdg`` settings; the run id too): :func:`arm_name` reads the
#: name back from a stored config, so runs made with the explicit ``--set`` are the same runs.
CONTROL_ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "offline_only": ("none", {"real_mix": "fixed", "ratio_online": 0}),
}
ARMS: tuple[str, ...] = (*AUGMENTATIONS, *CONTROL_ARMS)
"""Every name ``--augmentation`` accepts: the augmentations and the control arms."""
#: The CFDG settings that compose the buffer's batches (``AugmentedReplayBuffer.sample``). APL reads
#: none of them (:meth:`ExperimentConfig._check_apl_batch_mix`).
BATCH_MIX_FIELDS: tuple[str, ...] = ("ratio_offline", "ratio_online", "ratio_synthetic",
                                     "synthetic_online_fraction", "real_mix")


def arm_name(config: Mapping[str, Any]) -> str:
    """The arm of a stored run config (``config.json``'s ``config``): its augmentation, or the
    control arm whose settings it has. A setting the config leaves out is the profile's generator
    default (``CFDGConfig.small`` / ``.paper``)."""
    aug = config["augmentation"]
    cfdg = config.get("cfdg")
    cfdg = cfdg if isinstance(cfdg, Mapping) else {}
    defaults = CFDGConfig.paper() if config.get("profile") == "paper" else CFDGConfig.small()
    for name, (base, settings) in CONTROL_ARMS.items():
        if aug == base and all(cfdg.get(k, getattr(defaults, k)) == v for k, v in settings.items()):
            return name
    return aug



def resolve_config(algo: str, augmentation: str, dataset: str, profile: str, seed: int,
                   overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Profile budgets for ``algo`` + ``overrides`` (as returned by :func:`parse_set`).

    An override of a setting that has its own argument (``seed``, ``algo``, ...) is refused when
    it differs from the argument (it would be ignored otherwise)."""
    if profile not in PROFILE_BUDGETS:
        raise ConfigError(f"profile must be one of {PROFILES}, got {profile!r}")
    if algo not in ALGOS:
        raise ConfigError(f"algo must be one of {ALGOS}, got {algo!r}")
    if augmentation not in ARMS:
        raise ConfigError(f"augmentation must be one of {ARMS}, got {augmentation!r}")
    base = dict(PROFILE_BUDGETS[profile][algo])
    cfdg = dict(base.pop("cfdg", {}))
    algo_kwargs = dict(base.pop("algo_kwargs", {}))
    ov = dict(overrides or {})
    given = {"algo": algo, "augmentation": augmentation, "dataset": str(dataset), "profile": profile, "seed": seed}
    for key in _RUN_ARGUMENTS:
        if key in ov and ov[key] != given[key]:
            if key == "seed":
                _check_int("seed", ov[key], 0)
            raise ConfigError(f"{key} is set by its own argument (--{key}; a grid's {key}s), not by an override: "
                              f"got {key}={ov[key]!r} for a run with {key}={given[key]!r}")
    for name, prefix in (("cfdg", "cfdg"), ("algo_kwargs", "algo")):
        if not isinstance(ov.get(name) or {}, Mapping):
            raise ConfigError(f"{name} must be a mapping of field -> value (--set {prefix}.FIELD=VALUE), "
                              f"got {ov[name]!r}")
    user_cfdg = dict(ov.pop("cfdg", {}) or {})
    cfdg.update(user_cfdg)
    algo_kwargs.update(ov.pop("algo_kwargs", {}) or {})
    runs, settings = CONTROL_ARMS.get(augmentation, (augmentation, {}))
    for k, v in settings.items():
        if k in user_cfdg and user_cfdg[k] != v:
            raise ConfigError(f"augmentation {augmentation!r} is {runs!r} with cfdg.{k}={v!r}; "
                              f"got --set cfdg.{k}={user_cfdg[k]!r}")
    cfdg.update(settings)
    d: dict[str, Any] = {**base, **ov, "algo": algo, "augmentation": runs, "dataset": str(dataset),
                         "profile": profile, "seed": seed, "cfdg": cfdg, "algo_kwargs": algo_kwargs}
    return ExperimentConfig.from_dict(d)


# --- small file helpers -----------------------------------------------------------------------------
def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, rows, METRIC_COLUMNS)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics CSV as dicts of strings (empty list when the file is absent)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_finished(run_dir: Path) -> bool:
    return (run_dir / RESULT_FILE).is_file()


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on the run directory (released by the OS if the process dies, SIGKILL too)."""
    fh = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RunError(f"{run_dir} is being run by another process (lock held on {run_dir / '.lock'})") from e
        yield
    finally:
        fh.close()


# --- RNG state ---------------------------------------------------------------------------------------
def _rng_state(env: Any | None) -> dict[str, Any]:
    import torch

    mt: Any = np.random.get_state()
    st: dict[Any, Any] = {
        "numpy_global": {"keys": mt[1].tolist(), "pos": int(mt[2]), "has_gauss": int(mt[3]), "cached_gaussian": float(mt[4])},
        "python": _py_state_to_json(random.getstate()),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # d3rlpy's sample_action and APL's CQL samples draw from the CUDA generators on --device cuda
        st["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    if env is not None:
        st["env"] = env.unwrapped.np_random.bit_generator.state
    return st


def _py_state_to_json(s: Any) -> Any:
    return [s[0], list(s[1]), s[2]]


def _restore_rng(st: Mapping[str, Any], env: Any | None) -> None:
    import torch

    g = st["numpy_global"]
    np.random.set_state(("MT19937", np.asarray(g["keys"], dtype=np.uint32), g["pos"], g["has_gauss"], g["cached_gaussian"]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    if "torch_cuda" in st:
        cuda = st["torch_cuda"]
        if not torch.cuda.is_available() or torch.cuda.device_count() != len(cuda):
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            warnings.warn(f"the checkpoint holds the RNG state of {len(cuda)} CUDA device(s), this machine has "
                          f"{have}: the resumed run does not replay the same transitions", stacklevel=2)
        else:
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
    if env is not None and "env" in st:
        gen = env.unwrapped.np_random
        gen.bit_generator.state = st["env"]


# --- algorithms -------------------------------------------------------------------------------------
def iql_kwargs(family: str, *, offline_steps: int, batch_size: int | None = None) -> dict[str, Any]:
    """``IQLConfig`` keyword arguments with the paper's hyperparameters for an env family (the one
    place they are written).

    Locomotion: expectile 0.7, temperature 3, rewards scaled by 1000 / (max - min episode return).
    AntMaze: expectile 0.9, temperature 10, rewards shifted by -1 (Kostrikov et al. 2021; d3rlpy's
    reproductions). Both: observations standardised with the offline data's statistics (CORL),
    batch 256, lr 3e-4, two 256x256 critics, max advantage weight 100, actor lr with cosine decay
    over the offline phase (reset online, see :func:`reset_actor_lr`). Profiles may override
    fields (the small profile's temperature: :data:`PROFILE_BUDGETS`).
    """
    import d3rlpy

    antmaze = family == "antmaze"
    return dict(
        # Observations standardised with the offline data's mean / std (CORL's IQL): measured on
        # hopper-medium-50k, IQL 18-23 without, up to 49 with (docs/results/baseline.md).
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=batch_size or 256,
        weight_temp=10.0 if antmaze else 3.0, max_weight=100.0, expectile=0.9 if antmaze else 0.7,
        reward_scaler=(d3rlpy.preprocessing.ConstantShiftRewardScaler(shift=-1.0) if antmaze
                       else d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)),
        # Cosine decay of the actor lr over the offline phase (IQL paper); removed online.
        actor_optim_factory=d3rlpy.optimizers.AdamFactory(
            lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=max(1, offline_steps))),
    )


ONLINE_LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
ACTOR_DATA: tuple[str, ...] = ("all", "real")


def explore(algo: Any, obs: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Actions to collect online: ``greedy + scale * (sampled - greedy)``.

    Args:
        algo: anything with d3rlpy's ``sample_action`` and ``predict`` (IQL, PEX, APL, SAC).
        obs: observations, shape (batch, obs_dim), float32.
        scale: 1 = ``sample_action`` as is; 0 = ``predict`` (see ``ExperimentConfig.exploration_scale``).

    Returns:
        actions, shape (batch, action_dim).

    ``sample_action`` is called whatever the scale, so the random stream, and with it the rest of
    the run, does not depend on the scale apart from the actions themselves.
    """
    sampled = algo.sample_action(obs)
    if scale == 1:
        return sampled
    greedy = algo.predict(obs)
    return greedy + scale * (sampled - greedy)


def set_weight_temp(algo: Any, beta: float) -> None:
    """Set the advantage temperature of a built IQL or PEX (``exp(beta * (Q - V))``, clipped at
    ``max_weight``). The config keeps the offline value; the impl's field is what the actor
    loss reads. Not saved in a checkpoint: a resumed run sets it again."""
    if not hasattr(algo.impl, "_weight_temp"):
        raise ConfigError(f"{type(algo).__name__} has no advantage temperature (online_weight_temp applies to IQL and PEX)")
    algo.impl._weight_temp = float(beta)


def reset_actor_lr(algo: Any, schedule: str = "constant", updates: int = 0, lr: float | None = None) -> None:
    """After pre-training: actor lr back to its initial value (the offline cosine schedule has
    brought it to ~0; continued past T_max it would rise again), or to ``lr`` when given, then
    ``"constant"`` (d3rlpy's fine-tuning reproduction) or ``"cosine"``: decayed to 0 over the
    ``updates`` online updates, as offline, so the policy evaluated at the end is not the noisy
    iterate of a large constant step."""
    import torch

    modules = getattr(algo.impl, "modules", None)
    optim = getattr(modules, "actor_optim", None)
    if optim is None:
        return
    lr = getattr(algo.config, "actor_learning_rate", None) if lr is None else lr
    if lr is not None:
        for g in optim.optim.param_groups:
            g["lr"] = lr
            g["initial_lr"] = lr
    if hasattr(optim, "_lr_scheduler"):
        optim._lr_scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optim.optim, T_max=max(1, updates))
                               if schedule == "cosine" else None)


class Evaluation(typing.NamedTuple):
    """One evaluation of the greedy policy (see :func:`evaluate`)."""

    score: float
    """Normalised score of the mean return."""
    return_mean: float
    return_std: float
    length_mean: float
    """Mean episode length: on hopper and walker2d, short episodes are falls."""

    def row(self) -> dict[str, float]:
        return {"normalized_score": self.score, "return_mean": self.return_mean, "return_std": self.return_std,
                "eval_length_mean": self.length_mean}


def evaluate(algo: Any, env: Any, env_id: str, episodes: int, seed: int) -> Evaluation:
    """Greedy returns over ``episodes`` episodes, env reset with seeds ``seed, seed+1, ...``."""
    from cfdg_aug.datasets import normalized_score

    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, length, done = 0.0, 0, False
        while not done:
            act = algo.predict(np.asarray(obs, dtype=np.float32)[None])[0]
            obs, rew, term, trunc, _ = env.step(act)
            total += float(rew)
            length += 1
            done = term or trunc
        returns.append(total)
        lengths.append(length)
    mean = float(np.mean(returns))
    return Evaluation(float(normalized_score(env_id, mean)), mean, float(np.std(returns)), float(np.mean(lengths)))


def critic_probe_row(algo: Any, buffer: Any) -> dict[str, float]:
    """``probe_<pool>_<stat>`` columns for one evaluation row (see :data:`METRIC_COLUMNS`).

    ``buffer`` is the core :class:`~cfdg_aug.buffer.AugmentedReplayBuffer`. Draws no random numbers
    from the run: the offline subset comes from its own fixed generator.
    """
    from cfdg_aug.integrations.d3rlpy.probe import critic_probe

    row: dict[str, float] = {}
    for name, size in buffer.pool_sizes.items():
        if size == 0:
            continue
        data = buffer.pool_data(name)
        if name == "real_online":
            rows = np.arange(max(0, size - PROBE_ROWS), size)
        elif name == "real_offline":
            rows = np.sort(np.random.default_rng(0).choice(size, min(size, PROBE_ROWS), replace=False))
        else:
            rows = np.arange(min(size, PROBE_ROWS))
        row.update({f"probe_{name}_{k}": v for k, v in critic_probe(algo, data[rows]).items()})
    return row


class _LossMeans:
    """Running sums of an algorithm's update losses between two evaluations (``loss_*`` columns)."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.count = int(state["count"]) if state else 0

    def add(self, loss: Mapping[str, float]) -> None:
        for col, keys in _LOSS_KEYS.items():
            key = next((k for k in keys if k in loss), None)
            if key is not None:
                self.sums[col] = self.sums.get(col, 0.0) + float(loss[key])
        self.count += 1

    def pop(self) -> dict[str, float]:
        """The means since the last ``pop`` (empty before any update), and start a new window."""
        out = {col: v / self.count for col, v in self.sums.items()} if self.count else {}
        self.sums, self.count = {}, 0
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}


def d3rlpy_device(device: str) -> str:
    """``device`` as d3rlpy must be given it: a GPU with its index (``"cuda"`` becomes
    ``"cuda:<current GPU>"``). d3rlpy creates an algorithm on a bare ``"cuda"``, but its
    ``load_model`` then fails ("not enough values to unpack": ``map_location`` splits the device
    on ``":"``), so a run on ``--device cuda`` could not resume its own checkpoints (seen on an H200)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def build_algo(cfg: ExperimentConfig, env_id: str, device: str) -> Any:
    """The (unbuilt) d3rlpy algorithm for the *offline* phase (IQL for both iql and pex; pex's
    ``algo_kwargs`` that are IQL fields configure the IQL it pre-trains too)."""
    import d3rlpy

    from cfdg_aug.datasets import env_family

    device = d3rlpy_device(device)
    bs = cfg.batch_size or 256
    extra = dict(cfg.algo_kwargs)
    if cfg.algo in ("iql", "pex"):
        # IQL (Kostrikov et al. 2021): expectile 0.7 / temperature 3 on locomotion, 0.9 / 10 on
        # AntMaze with rewards shifted by -1; locomotion rewards scaled by 1000 / return range.
        kw: dict[str, Any] = iql_kwargs(env_family(env_id), offline_steps=cfg.offline_steps, batch_size=bs)
        if cfg.algo == "pex":  # PEX = IQL + expansion: the IQL fields (expectile, weight_temp, ...)
            # hold offline and online, PEX's own fields only online (see _online_algo).
            iql_fields = {f.name for f in dataclasses.fields(d3rlpy.algos.IQLConfig)}
            extra = {k: v for k, v in extra.items() if k in iql_fields}
        kw.update(extra)
        return d3rlpy.algos.IQLConfig(**kw).create(device=device)
    if cfg.algo == "apl":
        from cfdg_aug.integrations.d3rlpy.apl import APLConfig

        # Observations standardised with the offline data's statistics, as for IQL (CORL does it
        # for every algorithm; hopper's velocity dimensions have standard deviations up to ~6).
        # The control arm: no online row in any branch batch (learn_from_online=False), the same
        # offline phase, so it shares the pre-trained agent (pretrain_key_info).
        control = {"learn_from_online": False} if arm_name(cfg.to_dict()) == "offline_only" else {}
        return APLConfig(**{"batch_size": bs, "seed": cfg.seed, "utd_ratio": cfg.updates_per_step,
                            "observation_scaler": d3rlpy.preprocessing.StandardObservationScaler(),
                            **extra, **control}).create(device=device)
    kw = dict(actor_learning_rate=3e-4, critic_learning_rate=3e-4, temp_learning_rate=3e-4, batch_size=bs)
    kw.update(extra)
    return d3rlpy.algos.SACConfig(**kw).create(device=device)


def _pex_config(cfg: ExperimentConfig, iql_config: Any) -> Any:
    """PEX's config: the pre-trained IQL's, with every ``algo_kwargs`` field (PEX's own ones too)."""
    from cfdg_aug.integrations.d3rlpy.pex import PEXConfig

    pex_cfg = PEXConfig.from_iql_config(iql_config)
    return dataclasses.replace(pex_cfg, **dict(cfg.algo_kwargs)) if cfg.algo_kwargs else pex_cfg


def _online_algo(cfg: ExperimentConfig, offline_algo: Any, device: str) -> Any:
    """PEX expands the pre-trained IQL; every other algorithm continues as it is."""
    if cfg.algo != "pex":
        return offline_algo
    from cfdg_aug.integrations.d3rlpy.pex import PEX

    return PEX.from_iql(offline_algo, _pex_config(cfg, offline_algo.config), device=d3rlpy_device(device))


def algo_config_class(algo: str) -> type:
    """The d3rlpy config dataclass whose fields ``algo.FIELD`` overrides set (PEX: its own config,
    which holds IQL's fields plus the expansion's)."""
    import d3rlpy

    if algo == "iql":
        return d3rlpy.algos.IQLConfig
    if algo == "sac":
        return d3rlpy.algos.SACConfig
    if algo == "pex":
        from cfdg_aug.integrations.d3rlpy.pex import PEXConfig

        return PEXConfig
    if algo == "apl":
        from cfdg_aug.integrations.d3rlpy.apl import APLConfig

        return APLConfig
    raise ConfigError(f"algo must be one of {ALGOS}, got {algo!r}")


_SCALARS: dict[type, str] = {bool: "True or False", int: "an int", float: "a finite number", str: "a string"}


def _scalar_type(hint: Any) -> tuple[type | None, bool]:
    """(bool / int / float / str or None for anything else, whether None is allowed) of a field's type."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            return None, optional
        hint = rest[0]
    return (hint if hint in _SCALARS else None), optional


def _scalar_ok(kind: type, v: Any) -> bool:
    if kind is bool:
        return isinstance(v, bool)
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, str)


def check_algo_kwargs(algo: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse ``algo.FIELD`` overrides that are not fields of the algorithm's d3rlpy config
    (:func:`algo_config_class`) or whose value does not match the field's type (int, float, bool,
    str; fields of other types, such as the optimiser and encoder factories, cannot be set by an
    override). d3rlpy itself accepts any value and fails once training starts."""
    cls = algo_config_class(algo)
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) for algo {algo}: "
                          f"{', '.join(f'algo.{k}' for k in unknown)}; known: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    for k, v in kwargs.items():
        kind, optional = _scalar_type(hints.get(k))
        if kind is None:
            raise ConfigError(f"algo.{k} cannot be overridden: {cls.__name__}.{k} is of type "
                              f"{getattr(hints.get(k), '__name__', hints.get(k))}, and only int, float, bool "
                              "and str fields can be set this way")
        if not (v is None and optional) and not _scalar_ok(kind, v):
            raise ConfigError(f"algo.{k} must be {_SCALARS[kind]}{' or null' if optional else ''} "
                              f"({cls.__name__}.{k} is of type {'optional ' if optional else ''}{kind.__name__}), "
                              f"got {v!r}")
        bound = _algo_range(k)
        if bound is not None and v is not None and not bound[0](v):
            raise ConfigError(f"algo.{k} must be {bound[1]}, got {v!r}")
    # Our own configs (PEX, APL) check their fields on construction; d3rlpy's accept anything.
    try:
        cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"algo.{e}" if str(e).split(" ", 1)[0] in known else str(e)) from None


def _algo_range(name: str) -> tuple[Callable[[Any], bool], str] | None:
    """The valid range of a numeric d3rlpy config field, by the names d3rlpy uses (d3rlpy checks
    none and fails mid-training: a negative learning rate in Adam's constructor, 0 critics in
    ``torch.cat``)."""
    if name in ("temp_learning_rate", "alpha_learning_rate"):  # 0 = a fixed temperature / alpha (SAC, APL)
        return (lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0"
    if name.endswith("learning_rate"):
        return (lambda v: math.isfinite(v) and v > 0), "a finite number > 0"
    ranges: dict[str, tuple[Callable[[Any], bool], str]] = {
        "gamma": ((lambda v: 0 <= v <= 1), "in [0, 1]"),
        "tau": ((lambda v: 0 < v <= 1), "in (0, 1]"),
        "expectile": ((lambda v: 0 < v < 1), "in (0, 1)"),
        "weight_temp": ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0"),
        "max_weight": ((lambda v: v > 0), "> 0"),
        "n_critics": ((lambda v: v >= 1), ">= 1"),
        "batch_size": ((lambda v: v >= 1), ">= 1"),
        "n_action_samples": ((lambda v: v >= 1), ">= 1"),
    }
    return ranges.get(name)


def trained_sources(algo: Any, buffer: Any) -> np.ndarray:
    """(4,) rows per source (``SOURCE_NAMES`` order) the online agent has trained on so far. APL
    draws its own branch batches (``APL.source_counts``); the batch the loop hands it, which the
    buffer's ``source_histogram`` counts, is drawn as d3rlpy's ``fit_online`` draws it and unused."""
    counts = getattr(algo, "source_counts", None)
    return counts if counts is not None else buffer.source_histogram


def _apl_state(algo: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """APL's non-model state: branch RNG, subset generator, counters, the recent-online FIFO."""
    rec = algo._recent
    meta = {"rng": algo._rng.bit_generator.state, "branch_counts": algo.branch_counts.tolist(),
            "source_counts": algo.source_counts.tolist(),
            "recent_size": rec.size, "recent_next": rec._next,
            "subset_gen": algo.impl._subset_gen.get_state().tolist() if algo.impl is not None else None}
    arrays = dict(rec._arrays) if rec._arrays is not None else {}
    return meta, arrays


def _restore_apl(algo: Any, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    import torch

    algo._rng.bit_generator.state = meta["rng"]
    algo.branch_counts[:] = np.asarray(meta["branch_counts"], dtype=np.int64)
    if "source_counts" in meta:  # checkpoints written before APL counted its own rows have none
        algo.source_counts[:] = np.asarray(meta["source_counts"], dtype=np.int64)
    rec = algo._recent
    rec.size, rec._next = int(meta["recent_size"]), int(meta["recent_next"])
    rec._arrays = {k: np.array(v) for k, v in arrays.items()} if arrays else None
    if meta.get("subset_gen") is not None:
        algo.impl._subset_gen.set_state(torch.tensor(meta["subset_gen"], dtype=torch.uint8))


# --- shared pre-training ---------------------------------------------------------------------------------
PRETRAINED_DIR = "pretrained"
"""Default folder (beside the run directories) of the shared pre-trained agents."""

PRETRAIN_FORMAT = 1
"""Version of the offline loop (batch sampling, checkpoint content); part of the key."""


def _offline_rng(seed: int) -> np.random.Generator:
    """The offline batch sampler's RNG (its own stream, so it does not depend on anything else)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))


def dataset_sha256(data: Any) -> str:
    """sha256 of a TransitionBatch's arrays (whatever file or loader it came from)."""
    h = hashlib.sha256()
    for name in ("obs", "act", "rew", "next_obs", "done", "timeout"):
        a = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def device_tag(device: str) -> str:
    """The device as a pre-training key records it: ``"cpu"`` for any CPU spelling, ``"cuda (<GPU
    name>)"`` for a GPU. The hardware decides the numerics, not the index: ``"cuda"``, ``"cuda:0"``
    and ``"cuda:1"`` on two GPUs of one model share an agent, two GPU models do not."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda ({torch.cuda.get_device_name(index)})"


def host_info(device: str) -> dict[str, Any]:
    """The machine a run is made on, as its config.json records it (``host``): the CPU's vendor and
    model (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), the instruction set torch dispatches
    to, whether the CPU has bf16 units, the GPU for a CUDA device, and torch's thread count. Not part
    of any key: the same seed gives the same run on one machine only, and on walker2d-random an AMD
    EPYC and an Intel Xeon pre-train different IQL agents from one seed (docs/troubleshooting.md),
    so a reader needs to see which machine made a run."""
    import platform

    import torch

    from cfdg_aug.generator import bf16_supported

    vendor = model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and vendor is None:
                vendor = value.strip()
            elif key.strip() == "model name" and model is None:
                model = value.strip()
    dev = torch.device(device)
    return {"cpu_vendor": vendor, "cpu_model": model or platform.processor() or None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": bf16_supported("cpu"),
            "gpu": device_tag(device) if dev.type == "cuda" else None, "torch_threads": torch.get_num_threads()}


def pretrain_key_info(cfg: ExperimentConfig, offline_algo: Any, data: Any, device: str) -> dict[str, Any]:
    """Everything that determines the pre-trained agent: the offline algorithm's full d3rlpy config
    (so IQL and PEX, which pre-trains the same IQL, share it), the data, the offline budget, batch
    size, seed, device and library versions. Not the augmentation, the online settings or the
    evaluation (evaluations are cached per env and episode count beside the agent)."""
    import d3rlpy
    import torch

    import cfdg_aug

    algo_cfg = json.loads(offline_algo.config.serialize()) if hasattr(offline_algo.config, "serialize") else None
    if cfg.algo == "apl" and algo_cfg is not None:
        # APL's control differs from its arm online only (no greedy branch, no online row), so they
        # share the agent; left out of the key, the keys made before the field existed still hold.
        algo_cfg.pop("learn_from_online", None)
    return {
        "format": PRETRAIN_FORMAT, "offline_algo": "iql" if cfg.algo in ("iql", "pex") else cfg.algo,
        "algo_config": algo_cfg, "dataset": cfg.dataset, "dataset_sha256": dataset_sha256(data),
        "offline_steps": cfg.offline_steps, "batch_size": cfg.batch_size or 256, "seed": cfg.seed,
        "device": device_tag(device), "versions": {"cfdg_aug": cfdg_aug.__version__, "d3rlpy": d3rlpy.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
    }


def pretrain_key(info: Mapping[str, Any]) -> str:
    """``<offline algo>-s<seed>-<sha256[:16]>`` of the canonical JSON of ``info`` without the
    dataset spec (the data's hash stands for it: the same file under another path is the same data)."""
    core = {k: v for k, v in info.items() if k != "dataset"}
    digest = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]
    return f"{info['offline_algo']}-s{info['seed']}-{digest}"


@contextlib.contextmanager
def _key_lock(path: Path, log: Any, doing: str = "pre-training") -> Iterator[None]:
    """Exclusive, blocking lock on one shared key (released by the OS if the holder dies)."""
    fh = _try_key_lock(path)
    try:
        if fh is None:
            log(f"[cfdg-aug] waiting for another run {doing} {path.stem} ...")
            fh = open(path, "a+")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        if fh is not None:
            fh.close()


def _try_key_lock(path: Path) -> TextIO | None:
    """The lock of :func:`_key_lock` if it is free now (closing the file releases it), else None."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


# --- shared pre-fit -----------------------------------------------------------------------------------
PREFIT_FORMAT = 1
"""Version of the shared pre-fit's files; part of its key."""


def prefit_key_info(cfg: ExperimentConfig, data_sha256: str, env_id: str, device: str) -> dict[str, Any]:
    """Everything that determines a generator's pre-fit (the runner's ``prefit_generator``): the
    generator settings a first fit on offline rows reads (:meth:`CFDGConfig.prefit_fields`), the
    data, the env (its termination rule), the seed, the training precision "auto" resolved to,
    device and library versions. Not the algorithm, the pre-training or what acts after the fit
    (the sampler, pool sizes, refresh schedule, batch mix: ``PREFIT_INDEPENDENT_FIELDS``)."""
    import torch

    import cfdg_aug
    from cfdg_aug.generator import resolved_precisions

    gen_cfg = cfg.cfdg_config()
    return {
        "format": PREFIT_FORMAT, "augmentation": gen_cfg.augmentation, "generator": gen_cfg.prefit_fields(),
        "dataset_sha256": data_sha256, "env_id": env_id, "seed": cfg.seed,
        "training_precision": resolved_precisions(gen_cfg, device)["training"], "device": device_tag(device),
        "versions": {"cfdg_aug": cfdg_aug.__version__, "torch": torch.__version__, "numpy": np.__version__},
    }


def prefit_key(info: Mapping[str, Any]) -> str:
    """``prefit-<augmentation>-s<seed>-<sha256[:16]>`` of the canonical JSON of ``info``."""
    digest = hashlib.sha256(json.dumps(dict(info), sort_keys=True).encode()).hexdigest()[:16]
    return f"prefit-{info['augmentation']}-s{info['seed']}-{digest}"


# --- pre-flight ---------------------------------------------------------------------------------------
AUTO_GUIDANCE_MIN_ONLINE = 100
"""Online transitions a refresh needs with ``guidance="auto"``: it holds 10% of the online pool out
of the fit to choose w and needs >= 10 held-out rows (``AugmentedReplayBuffer``)."""


def check_run_config(cfg: ExperimentConfig, device: str = "cpu") -> None:
    """Pre-flight checks of a run's settings that need no data, run by :func:`run_experiment` (and
    by a sweep for every run) before anything is created or trained; each failure is a
    :class:`ConfigError` naming the setting.

    - ``device``: a torch device this machine has (:func:`cfdg_aug.config.check_device`);
    - ``algo.*`` overrides: fields of the algorithm's d3rlpy config, of the field's type
      (:func:`check_algo_kwargs`);
    - augmented arms: the first generator refresh (after ``max(cfdg.min_online,
      cfdg.refresh_every)`` online transitions) happens within ``online_steps``, or the generator
      would never run (nor after it ``cfdg.refresh_lag``, when its pools are installed); with ``cfdg.guidance="auto"``, the online pool then holds at least
      :data:`AUTO_GUIDANCE_MIN_ONLINE` transitions (w is chosen on 10% of it held out);
    - ``warmup_steps`` < ``online_steps`` (else no online update would happen);
    - the online pool (``online_capacity``, else ``online_steps``) > the batch size (else the replay store
      never holds more than a batch and no online update would happen);
    - ``actor_data="real"`` is not combined with d3rlpy's CUDA graphs (``algo.compile_graph``).
    """
    check_device(device)
    check_algo_kwargs(cfg.algo, cfg.algo_kwargs)
    if cfg.warmup_steps >= cfg.online_steps:
        raise ConfigError(f"warmup_steps={cfg.warmup_steps} >= online_steps={cfg.online_steps}: the run would only "
                          "collect data and never update online; set warmup_steps below online_steps")
    bs = cfg.batch_size or 256
    capacity = cfg.online_capacity or cfg.online_steps
    if capacity <= bs:
        # The d3rlpy store is FIFOBuffer(capacity): its transition_count never exceeds capacity, and the
        # loop updates only once it holds more than a batch (a limit of 1 fails outright in FIFOBuffer).
        size = (f"online_capacity={capacity}" if cfg.online_capacity is not None
                else f"online_steps={capacity} (the online pool's size while online_capacity is unset)")
        batch = f"batch_size={bs}" + ("" if cfg.batch_size is not None else " (unset: the default)")
        raise ConfigError(f"{size} is not above {batch}: the replay store never holds more than {capacity} "
                          f"transitions and an online update needs more than a batch, so none would run; set "
                          f"online_capacity above {bs} (or a smaller batch_size)")
    if cfg.actor_data == "real" and cfg.algo_kwargs.get("compile_graph") and str(device).startswith("cuda"):
        # checked for every arm: the runner restricts the actor whatever the augmentation
        raise ConfigError("actor_data='real' cannot be combined with algo.compile_graph=true on CUDA: the captured "
                          "CUDA graph fixes the actor's row count at capture, before any synthetic row exists; set "
                          "algo.compile_graph=false or actor_data=all")
    if cfg.augmentation == "none":
        return
    c = cfg.cfdg_config()
    first = max(c.min_online, c.refresh_every)
    if first > cfg.online_steps:
        late = [f"cfdg.{n}={getattr(c, n)}" for n in ("refresh_every", "min_online") if getattr(c, n) > cfg.online_steps]
        raise ConfigError(f"{' and '.join(late)} put the first generator refresh after {first} online transitions, "
                          f"beyond this run's online_steps={cfg.online_steps}, so the {cfg.augmentation} augmentation "
                          f"would never run: set {'them' if len(late) > 1 else 'it'} to <= {cfg.online_steps} "
                          "(or run with augmentation none)")
    if first + c.refresh_lag > cfg.online_steps:
        raise ConfigError(f"cfdg.refresh_lag={c.refresh_lag} installs the first generator refresh (started after {first} "
                          f"online transitions) after {first + c.refresh_lag}, beyond this run's "
                          f"online_steps={cfg.online_steps}, so the {cfg.augmentation} augmentation would never run: set "
                          f"it to <= {cfg.online_steps - first}")
    capacity = cfg.online_capacity or cfg.online_steps
    if c.augmentation == "cfdg" and c.guidance == "auto" and min(first, capacity) < AUTO_GUIDANCE_MIN_ONLINE:
        raise ConfigError(f"cfdg.guidance='auto' chooses w on 10% of the online pool held out of the fit and needs "
                          f">= {AUTO_GUIDANCE_MIN_ONLINE} online transitions at the first refresh, but this run's "
                          f"first refresh sees {min(first, capacity)} (cfdg.min_online={c.min_online}, "
                          f"cfdg.refresh_every={c.refresh_every}, online_capacity={capacity}): raise cfdg.min_online "
                          f"(and online_capacity) to >= {AUTO_GUIDANCE_MIN_ONLINE} or set a numeric cfdg.guidance")


def _check_spaces(cfg: ExperimentConfig, data: Any, env_id: str, env: Any) -> None:
    """The dataset's observation / action sizes against the environment's spaces (a mismatch
    otherwise surfaces as a matrix-shape error at the first online step, after pre-training)."""
    import gymnasium as gym

    problems = []
    want_obs = int(gym.spaces.flatdim(env.observation_space))
    if data.obs_dim != want_obs:
        problems.append(f"{data.obs_dim}-dim observations where {env_id} has {want_obs}")
    if isinstance(env.action_space, gym.spaces.Box):
        want_act = int(np.prod(env.action_space.shape))
        if data.act_dim != want_act:
            problems.append(f"{data.act_dim}-dim actions where {env_id} has {want_act}")
    if problems:
        raise ConfigError(f"dataset {cfg.dataset!r} does not fit env_id {env_id}: it has {' and '.join(problems)}; "
                          "use a dataset recorded in that environment or set env_id to the dataset's "
                          "(--set env_id=...)")


def _check_pool_memory(cfg: ExperimentConfig, data: Any) -> None:
    """The replay pools' memory against what is available, before anything is allocated: the
    offline rows, ``online_capacity`` and, for augmented arms, the synthetic pools counted three
    times (the pools, plus the new samples a refresh builds beside them before replacing them)."""
    from cfdg_aug.buffer import check_memory
    from cfdg_aug.transitions import TransitionLayout

    row = 4 * TransitionLayout(data.obs_dim, data.act_dim).dim + 1  # float32 columns + the timeout flag
    parts = [("dataset", len(data), row), ("online_capacity", cfg.online_capacity or cfg.online_steps, row)]
    if cfg.augmentation != "none":
        c = cfg.cfdg_config()
        parts += [("cfdg.synthetic_online_size", c.synthetic_online_size, 3 * row),
                  ("cfdg.synthetic_offline_size", c.synthetic_offline_size, 3 * row)]
    largest = max(parts, key=lambda p: p[1] * p[2])[0]
    check_memory(parts, what=f"for this run's replay pools ({row} bytes per transition, the synthetic pools "
                 "three times for a refresh)",
                 hint="use a smaller dataset" if largest == "dataset" else f"lower {largest}")


def _preflight_data(cfg: ExperimentConfig, device: str) -> tuple[Any, str]:
    """Load the dataset and check it against the environment, the memory and the algorithm's
    config (built, not trained); returns (dataset, env id)."""
    import gymnasium as gym

    from cfdg_aug.datasets import load_dataset, make_env

    data = load_dataset(cfg.dataset)
    env_id = cfg.env_id or data.env_id
    if env_id is None:
        raise ConfigError(f"dataset {cfg.dataset!r} records no env id: set env_id (--set env_id=Hopper-v4)")
    try:
        env = make_env(env_id)
    except (gym.error.Error, ValueError, ImportError) as e:
        raise ConfigError(f"env_id {env_id!r} cannot be made: {e}") from None
    try:
        _check_spaces(cfg, data, env_id, env)
    finally:
        env.close()
    _check_pool_memory(cfg, data)
    try:  # d3rlpy / our configs validate (some) values at construction: now, not after pre-training
        algo = build_algo(cfg, env_id, device)
        if cfg.algo == "pex":
            _pex_config(cfg, algo.config)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the {cfg.algo} config refuses the algo.* settings {dict(cfg.algo_kwargs)}: {e}") from None
    return data, env_id


# --- quiet output ---------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _RunLog:
    """A text sink for a run's log: held in memory until the run directory exists (pre-flight runs
    before it is created), then appended to ``RUN_DIR/run.log``."""

    def __init__(self) -> None:
        self._pending = io.StringIO()
        self._fh: TextIO | None = None

    def write(self, text: str) -> int:
        # Terminal colour codes (gymnasium colours its warnings) are noise in a file.
        (self._fh or self._pending).write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def isatty(self) -> bool:
        return False

    def line(self, msg: str) -> None:
        self.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        self.flush()

    def open(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8")
        self._fh.write(self._pending.getvalue())
        self._pending = io.StringIO()
        self.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@contextlib.contextmanager
def quiet_output(sink: Any | None) -> Iterator[None]:
    """Send the libraries' chatter to ``sink`` (a text file-like) while the block runs: gym's
    deprecation banner (printed to stderr when d3rlpy first imports it), Python warnings such as
    gymnasium's "The environment Hopper-v4 is out of date", and d3rlpy's structlog debug / info
    lines (stdout by default), and MuJoCo's own warnings (written by its C library to the process's
    stderr and to ``MUJOCO_LOG.TXT`` in the working directory, e.g. HalfCheetah's deprecated
    ``settotalmass``). Progress bars and our own log lines are untouched. ``sink=None``: nothing is
    redirected (``--verbose``)."""
    if sink is None:
        yield
        return
    with contextlib.redirect_stderr(sink), contextlib.suppress(ImportError):
        import d3rlpy  # noqa: F401  (imported first: importing it reconfigures structlog)

    def to_sink(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                line: str | None = None) -> None:
        sink.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings(), mujoco_warnings_to(lambda m: sink.write(f"MuJoCo warning: {m}\n")):
        warnings.showwarning = to_sink
        old = None
        try:
            import structlog
        except ImportError:
            structlog = None  # type: ignore[assignment]
        if structlog is not None:
            old = structlog.get_config()
            renderer = structlog.dev.ConsoleRenderer
            procs = [renderer(colors=False) if isinstance(p, renderer) else p for p in old["processors"]]
            structlog.configure(processors=procs, logger_factory=structlog.PrintLoggerFactory(file=sink))
        try:
            yield
        finally:
            if structlog is not None and old is not None:
                structlog.configure(**old)


def _remove_failed_start(run_dir: Path, error: BaseException) -> None:
    """Remove a run directory a failed start created, if it holds only what the start wrote (the
    lock and the log), or if bad input (``error``: a setting, a damaged shared agent) stopped it
    before any checkpoint was committed: nothing in it can be resumed, and an orphan folder would
    only be refused later as a different configuration. After a crash (a bug, an interrupt) the
    folder stays, with its ``run.log``."""
    with contextlib.suppress(OSError):
        names = {p.name for p in run_dir.iterdir()}
        bad_input = isinstance(error, (ConfigError, RunError)) and "checkpoints" not in names
        if names <= {".lock", LOG_FILE} or bad_input:
            shutil.rmtree(run_dir)


def _read_json_file(path: Path, fix: str) -> dict[str, Any]:
    """``json.loads`` of a file the runner wrote; unreadable or not JSON: a :class:`RunError` naming
    it and saying what to do (``fix``)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({e}): the file is damaged; {fix}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path} holds a JSON {type(obj).__name__}, not an object: the file is damaged; {fix}")
    return obj


def _verify_files(folder: Path, state: Mapping[str, Any], fix: str) -> None:
    """Check the files of a checkpoint against the sha256 its ``state.json`` recorded at save
    (checkpoints written before hashes were recorded carry none and pass)."""
    for name, digest in state.get("sha256", {}).items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != digest:
            raise RunError(f"{path} is damaged: {'missing' if not path.is_file() else 'its sha256 differs from the one'}"
                           f"{'' if not path.is_file() else ' recorded when it was saved'}; {fix}")


def _save_model_atomic(algo: Any, path: Path) -> None:
    """d3rlpy ``save_model`` to a temp file beside ``path``, fsynced and renamed over it: a crash
    leaves the previous file or none, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        algo.save_model(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def _load_model(algo: Any, path: Path, fix: str) -> None:
    """d3rlpy ``load_model``; a file it cannot read is a :class:`RunError` naming it. Not every
    failure means a damaged file (another torch or d3rlpy version can fail too), so the message
    says what to do only if it is."""
    import torch

    try:
        algo.load_model(str(path))
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:  # torch / zip / weights-only unpickler errors
        first = (str(e).splitlines() or [""])[0]
        raise RunError(f"{path} cannot be loaded ({type(e).__name__}: {first}); if the file is damaged, {fix}") from None


# --- the run ------------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """What :func:`run_experiment` did: ``status`` is "finished" (ran to the end now),
    "already-finished" (nothing to do) or "resumed" is folded into ``resumed_from``."""

    run_dir: Path
    status: str
    resumed_from: str | None
    final_score: float | None


class _TB:
    """TensorBoard writer when ``tensorboard`` is installed, else a no-op (events are optional)."""

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        self.w: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.w = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if self.w is not None and value is not None and np.isfinite(value):
            self.w.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def run_experiment(cfg: ExperimentConfig, out_dir: str | os.PathLike[str], *, device: str = "cpu",
                   run_name: str | None = None, progress: bool = True, threads: int | None = None,
                   log: Callable[[str], Any] = print, pretrained_dir: str | os.PathLike[str] | None = None,
                   share_pretrained: bool = True, verbose: bool = False) -> RunOutcome:
    """Run (or resume, or skip) one configuration under ``out_dir / (run_name or cfg.run_id())``.

    Pre-training is shared (``share_pretrained``): the pre-trained agent is kept in
    ``pretrained_dir / <key>/`` (default ``out_dir / "pretrained"``), the key hashing everything
    that determines it (:func:`pretrain_key_info`), and a later run with the same key (another
    augmentation arm, PEX after IQL) starts from it instead of pre-training again.

    Pre-flight (module docstring) runs before the run directory is created; a start that fails
    after creating it removes it again when it holds nothing but the lock and the log, or when bad
    input stopped it before its first checkpoint (:func:`_remove_failed_start`). ``log``
    gets our progress lines (they also go to ``run.log``); the libraries' chatter goes only to
    ``run.log`` unless ``verbose`` (:func:`quiet_output`). ``cfg.online_steps`` is >= 1: offline-only
    runs are refused by :class:`ExperimentConfig`, not supported.

    Raises:
        ConfigError: a setting that cannot work (the message names it), found before training.
        RunError: the directory holds a run of a different configuration (the message names the
            settings that differ), or is locked by another live process.
        DatasetError / FileNotFoundError: the dataset cannot be loaded.
    """
    import torch

    _check_run_paths(out_dir, run_name, pretrained_dir, share_pretrained)
    if threads is not None:
        torch.set_num_threads(threads)
    run_dir = Path(out_dir) / (run_name or cfg.run_id())
    runlog = _RunLog()

    def say(msg: str) -> None:
        log(msg)
        runlog.line(msg)

    with quiet_output(None if verbose else runlog):
        _refuse_other_config(run_dir, cfg)
        if run_finished(run_dir):  # read-only: a finished run needs no checks, data or lock
            return _already_finished(run_dir, log)
        check_run_config(cfg, device)
        # a run with neither pre-training nor a pre-fit never writes there
        if share_pretrained and (cfg.offline_steps > 0 or cfg.prefit_generator and cfg.augmentation != "none"):
            _check_pretrained_writable(out_dir, pretrained_dir)
        data, env_id = _preflight_data(cfg, device)
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {run_dir} under out_dir (--out) {out_dir}: "
                              f"{e.strerror or e}") from None
        try:
            with _run_lock(run_dir):  # a start that loses the lock to another process removes nothing
                try:
                    runlog.open(run_dir / LOG_FILE)
                    _refuse_other_config(run_dir, cfg)  # again under the lock: another start may have won
                    if run_finished(run_dir):
                        return _already_finished(run_dir, log)
                    root = None
                    if share_pretrained:
                        root = Path(pretrained_dir) if pretrained_dir is not None else Path(out_dir) / PRETRAINED_DIR
                    return _Run(cfg, run_dir, device, progress, say, root, data=data, env_id=env_id).execute()
                except BaseException as e:
                    runlog.close()
                    if created:  # still under the lock: no other start can be using the folder
                        _remove_failed_start(run_dir, e)
                    raise
        finally:
            runlog.close()


def _check_run_paths(out_dir: str | os.PathLike[str], run_name: str | None,
                     pretrained_dir: str | os.PathLike[str] | None, share_pretrained: bool) -> None:
    """The folders of :func:`run_experiment`, checked before anything is created."""
    if run_name is not None and (not isinstance(run_name, str) or run_name in ("", ".", "..")
                                 or "/" in run_name or os.sep in run_name or "\0" in run_name):
        raise ConfigError(f"run_name (--name) must be a single folder name (no '/', not '.' or '..'), got {run_name!r}")
    if pretrained_dir is not None and not share_pretrained:
        raise ConfigError("pretrained_dir (--pretrained-dir) is only used with share_pretrained (--share-pretrained); "
                          "drop one of the two")
    check_folder(out_dir, "out_dir (--out)")
    if pretrained_dir is not None:
        check_folder(pretrained_dir, "pretrained_dir (--pretrained-dir)")


def _check_pretrained_writable(out_dir: str | os.PathLike[str], pretrained_dir: str | os.PathLike[str] | None) -> None:
    """The shared pre-trained folder accepts new files (nothing is created): otherwise the run would
    fail once its directory holds its first files, in an error naming no option, and leave it behind."""
    root = Path(pretrained_dir) if pretrained_dir is not None else Path(out_dir) / PRETRAINED_DIR
    what = (f"pretrained_dir (--pretrained-dir) {root}" if pretrained_dir is not None
            else f"the shared pre-trained folder {root} (under out_dir (--out); --pretrained-dir sets another)")
    problem = folder_write_problem(root)
    if problem is not None:
        raise ConfigError(f"{what}: {problem}")


def _already_finished(run_dir: Path, log: Callable[[str], Any]) -> RunOutcome:
    res = _read_json_file(run_dir / RESULT_FILE, f"delete {run_dir} to run it again from the start")
    log(f"[cfdg-aug] {run_dir} is already finished (final normalised score {res.get('final_score')}); nothing to do")
    return RunOutcome(run_dir, "already-finished", None, res.get("final_score"))


def _refuse_other_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    stored = run_dir / CONFIG_FILE
    if not stored.exists():
        return
    old = _read_json_file(stored, f"delete {run_dir} or choose another --out / --name")
    if old.get("config_hash") != cfg.config_hash():
        diff = _config_diff(old.get("config", {}), cfg.to_dict(), old.get("cfdg_config"), cfg.cfdg_config().to_dict())
        raise RunError(f"{run_dir} holds a run of a different configuration ({diff}); "
                       "choose another --out / --name or delete that directory")


def _flat_settings(d: Mapping[str, Any], resolved_cfdg: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored config as ``--set`` paths: ``online_steps``, ``cfdg.width``, ``algo.expectile``; the
    generator settings as resolved (profile defaults included) when ``resolved_cfdg`` is given."""
    out: dict[str, Any] = {k: v for k, v in d.items() if k not in ("cfdg", "algo_kwargs")}
    out.update({f"algo.{k}": v for k, v in dict(d.get("algo_kwargs") or {}).items()})
    cfdg = dict(d.get("cfdg") or {})
    if resolved_cfdg is not None:  # augmentation is a run setting already
        cfdg.update({k: v for k, v in resolved_cfdg.items() if k != "augmentation"})
    out.update({f"cfdg.{k}": v for k, v in cfdg.items()})
    return out


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any], old_cfdg: Mapping[str, Any] | None = None,
                 new_cfdg: Mapping[str, Any] | None = None) -> str:
    """The settings that differ, one ``path: stored X, requested Y`` each (``cfdg.ratio_synthetic:
    stored 1.0, requested 0.25``), not two whole configs; ``old_cfdg`` / ``new_cfdg``: the resolved
    generator configs, so a change of the profile's generator defaults is named too."""
    both = old_cfdg is not None and new_cfdg is not None
    a, b = _flat_settings(old, old_cfdg if both else None), _flat_settings(new, new_cfdg if both else None)
    unset = object()
    shown = [(k, a.get(k, unset), b.get(k, unset)) for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]
    parts = [f"{k}: stored {'unset' if x is unset else repr(x)}, requested {'unset' if y is unset else repr(y)}"
             for k, x, y in shown]
    return "; ".join(parts) or "the same settings, but the stored config hash differs (another version's hashing)"


class _Run:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path, device: str, progress: bool, log: Callable[[str], Any],
                 pretrained_root: Path | None = None, *, data: Any, env_id: str) -> None:
        self.cfg, self.run_dir, self.device, self.progress, self.log = cfg, run_dir, device, progress, log
        self.data, self.env_id = data, env_id  # loaded and checked by the pre-flight
        self.pretrained_root = pretrained_root
        self.pretrained_reused = False
        self.pretrain_info: dict[str, Any] = {}
        # Shared pre-fit (``prefit_generator`` with a shared folder): the entry this run publishes
        # and the lock it holds until then; or the entry another run is fitting, taken after
        # pre-training; or the entry this run reused.
        self._prefit_publish: tuple[Path, TextIO] | None = None
        self._prefit_wait: Path | None = None
        self._prefit_reused: str | None = None
        self._prefit_info: dict[str, Any] = {}
        self.ckpt_root = run_dir / "checkpoints"
        self.rows: list[dict[str, Any]] = []
        self.wall_before = 0.0
        self.t0 = time.perf_counter()
        self._refresh_bars: Any = None
        self._announced: str | None = None

    # -- bookkeeping
    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def add_row(self, row: dict[str, Any]) -> None:
        row.setdefault("wall_seconds", round(self.wall(), 3))
        self.rows.append(row)
        write_metrics(self.run_dir / METRICS_FILE, self.rows)

    @property
    def _start_over(self) -> str:
        return f"delete {self.run_dir} to run it again from the start"

    def latest(self) -> dict[str, Any] | None:
        p = self.ckpt_root / "latest.json"
        return _read_json_file(p, self._start_over) if p.exists() else None

    def _metrics_at(self, name: str, rows: int) -> list[dict[str, Any]]:
        """The first ``rows`` rows of ``metrics.csv``, the count checkpoint ``name`` recorded: fewer is a
        file truncated or replaced since, which a resume would otherwise continue with a gap."""
        path = self.run_dir / METRICS_FILE
        try:
            have = read_metrics(path)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise RunError(f"{path} cannot be read ({e}): the file is damaged; {self._start_over}") from None
        if len(have) < rows:
            raise RunError(f"{path} holds {len(have)} rows but checkpoint {name} recorded {rows}: the file was "
                           f"truncated or replaced since; {self._start_over}")
        return have[:rows]

    def _checkpoint_state(self, name: str) -> dict[str, Any]:
        """The committed checkpoint ``name``'s ``state.json``, its files checked against their sha256."""
        folder = self.ckpt_root / name
        state = _read_json_file(folder / "state.json", self._start_over)
        _verify_files(folder, state, self._start_over)
        return state

    def save_checkpoint(self, phase: str, step: int, algo: Any, extra: dict[str, Any],
                        buffer: Any | None = None, env: Any | None = None) -> None:
        from safetensors.numpy import save_file

        name = f"ckpt-{phase}-{step}"
        d = self.ckpt_root / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        algo.save_model(str(d / "model.pt"))
        state: dict[str, Any] = {"phase": phase, "step": step, "metrics_rows": len(self.rows),
                                 "wall_seconds": self.wall(), "rng": _rng_state(env), **extra}
        if self.cfg.algo == "apl":  # offline too: the branch RNG is drawn by every update
            meta, arrays = _apl_state(algo)
            state["apl"] = meta
            if arrays:
                save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(d / "state.safetensors"))
        state["sha256"] = {f: file_sha256(d / f) for f in ("model.pt", "state.safetensors") if (d / f).exists()}
        if buffer is not None:
            buffer.save_state(d / "buffer")  # verified by its own load (CFDGReplayBuffer.load_state)
        write_json(d / "state.json", state)
        # The commit: until latest.json names the new folder, the previous checkpoint stands.
        write_json(self.ckpt_root / "latest.json", {"name": name, "phase": phase, "step": step})
        for old in self.ckpt_root.glob("ckpt-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    # -- phases
    def execute(self) -> RunOutcome:
        import d3rlpy
        import torch
        from d3rlpy.algos.utility import build_scalers_with_transition_picker
        from d3rlpy.dataset import InfiniteBuffer

        from cfdg_aug.datasets import make_env
        from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

        cfg = self.cfg
        d3rlpy.seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        env_id = self.env_id
        offline_tb = self.data.to_transition_batch()
        algo = build_algo(cfg, env_id, self.device)
        # Scalers (observation standardisation, IQL's return-based reward scale) are fitted on the
        # offline episodes: a deterministic function of the dataset, so a resumed run recomputes
        # them identically.
        scaler_buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=offline_tb,
                                      config=CFDGConfig.small(augmentation="none"), seed=cfg.seed)
        build_scalers_with_transition_picker(algo, scaler_buf)
        # What determines pre-training (the fitted scalers included: a function of the data).
        self.pretrain_info = pretrain_key_info(cfg, algo, offline_tb, self.device)
        algo.build_with_dataset(scaler_buf)
        del scaler_buf

        eval_env = make_env(env_id)
        latest = self.latest()
        prefitted = None  # (buffer, its env) of a pre-fit started before pre-training
        if cfg.prefit_generator and cfg.augmentation != "none" and (
                latest is None or self._checkpoint_state(latest["name"])["phase"] == "offline"):
            prefit_env = make_env(env_id)
            prefitted = (self._start_prefit(offline_tb, prefit_env, self.pretrain_info["dataset_sha256"]), prefit_env)
        resumed_from = None
        if latest is None:
            self._write_config(algo)
            self.rows = []
            write_metrics(self.run_dir / METRICS_FILE, self.rows)
            self.tb = _TB(self.run_dir / "tb", purge_step=None)
            if self.shared_pretraining:
                self._pretrain_shared(algo, offline_tb, eval_env)
            else:
                self._offline(algo, offline_tb, _offline_rng(cfg.seed), 0, eval_env)
            latest = self.latest()
            assert latest is not None
            state: dict[str, Any] | None = self._checkpoint_state(latest["name"])
        else:
            state = self._checkpoint_state(latest["name"])
            resumed_from = latest["name"]
            self.rows = self._metrics_at(latest["name"], int(state["metrics_rows"]))
            write_metrics(self.run_dir / METRICS_FILE, self.rows)
            self.wall_before = float(state["wall_seconds"])
            self.log(f"[cfdg-aug] resuming {self.run_dir.name} from {latest['name']} "
                     f"({len(self.rows)} metrics rows kept)")
            self._warn_if_other_host()
            global_step_ck = state["step"] if state["phase"] == "offline" else cfg.offline_steps + state["step"]
            self.tb = _TB(self.run_dir / "tb", purge_step=global_step_ck)
        assert state is not None
        try:
            # --- offline phase: every run, fresh or resumed, continues from its committed checkpoint
            # (a fresh run has just written it), so sharing a pre-trained agent changes nothing
            # downstream.
            if state["phase"] == "offline":
                ck = self.ckpt_root / latest["name"]
                off_rng = _offline_rng(cfg.seed)
                _load_model(algo, ck / "model.pt", self._start_over)
                _restore_rng(state["rng"], None)
                off_rng.bit_generator.state = state["offline_rng"]
                algo._grad_step = int(state.get("grad_step", state["step"]))
                if cfg.algo == "apl":
                    _restore_apl(algo, state["apl"], {})
                if not state.get("offline_done"):
                    self._offline(algo, offline_tb, off_rng, int(state["step"]), eval_env)
                    if self.shared_pretraining:  # publish what this resumed run pre-trained
                        self._publish_pretrained(self.pretrained_root / self.pretrain_key)  # type: ignore[operator]
                state = None  # the online phase starts fresh from the pre-trained weights
            # --- online phase
            online = _online_algo(cfg, algo, self.device)
            reset_actor_lr(online, cfg.online_lr_schedule,
                           max(0, cfg.online_steps - cfg.warmup_steps) * cfg.updates_per_step, lr=cfg.online_actor_lr)
            if cfg.online_weight_temp is not None:
                set_weight_temp(online, cfg.online_weight_temp)
            env = prefitted[1] if prefitted is not None else make_env(env_id)
            if state is not None:  # resuming inside the online phase
                ck = self.ckpt_root / latest["name"]
                _load_model(online, ck / "model.pt", self._start_over)
                buffer = CFDGReplayBuffer.load_state(ck / "buffer", device=self.device,
                                                     refresh_progress=self.refresh_progress)
                if cfg.prefit_generator and cfg.augmentation != "none" and not (self.run_dir / PREFIT_FILE).is_file():
                    # The checkpoint holds a pre-fit not installed yet: record it when it is. (Not
                    # published to a shared folder: that run's lock is gone; later runs fit it again.)
                    aug = buffer.augmented
                    aug.add_prefit_hook(lambda _stats: self._prefit_installed(aug))
                if cfg.algo == "apl":
                    arrays: dict[str, np.ndarray] = {}
                    if (ck / "state.safetensors").exists():
                        from safetensors.numpy import load_file

                        arrays = load_file(str(ck / "state.safetensors"))
                    _restore_apl(online, state["apl"], arrays)
                online._grad_step = int(state["grad_step"])
                env.reset(seed=cfg.seed)  # creates the env RNG; its state is overwritten next
                _restore_rng(state["rng"], env)
            elif prefitted is not None:
                buffer = prefitted[0]
                self._finish_prefit(buffer)
            else:
                buffer = self._online_buffer(offline_tb, env)
            if cfg.actor_data == "real":
                from cfdg_aug.integrations.d3rlpy.actor_rows import (
                    real_rows_of,
                    restrict_actor_to_leading_rows,
                )

                restrict_actor_to_leading_rows(online.impl, real_rows_of(buffer))
            final = self._online(online, buffer, env, eval_env, state)
            env.close()
            eval_env.close()
            return RunOutcome(self.run_dir, "finished", resumed_from, final)
        finally:
            self.tb.close()
            if self._prefit_publish is not None:  # failed before publishing: let a waiting run fit it
                self._prefit_publish[1].close()

    def _online_buffer(self, offline_tb: Any, env: Any) -> Any:
        """The online phase's buffer: a FIFO of ``online_capacity`` beside the offline data."""
        from d3rlpy.dataset import FIFOBuffer

        from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

        cfg = self.cfg
        capacity = cfg.online_capacity or max(1, cfg.online_steps)
        return CFDGReplayBuffer(FIFOBuffer(capacity), env=env, offline_dataset=offline_tb,
                                config=cfg.cfdg_config(), online_capacity=capacity, seed=cfg.seed,
                                device=self.device, refresh_progress=self.refresh_progress)

    def _start_prefit(self, offline_tb: Any, env: Any, offline_sha256: str) -> Any:
        """Build the online buffer now and pre-fit its generator (``prefit_generator``) in a background
        process, so that pre-training runs meanwhile (the generator is the one a synchronous pre-fit
        makes, so a synchronous refresh schedule gains the overlap too).

        With a shared folder (that of the pre-trained agents), a pre-fit is shared like an agent:
        published to ``PRETRAINED/<prefit key>/`` by the run that fits it (:func:`prefit_key_info`)
        and installed by later runs of the same key instead of fitting; while another run is
        fitting that key, this one pre-trains and takes that run's generator afterwards
        (:meth:`_finish_prefit`). Same seed, same generator either way."""
        buffer = self._online_buffer(offline_tb, env)
        aug = buffer.augmented
        if self.pretrained_root is not None:
            self._prefit_info = prefit_key_info(self.cfg, offline_sha256, self.env_id, self.device)
            entry = self.pretrained_root / prefit_key(self._prefit_info)
            self.pretrained_root.mkdir(parents=True, exist_ok=True)
            if self._reuse_prefit(aug, entry):
                return buffer
            lock = _try_key_lock(entry.parent / f"{entry.name}.lock")
            if lock is None:
                self._prefit_wait = entry
                self.log(f"[cfdg-aug] {self.run_dir.name}: another run is pre-fitting this generator ({entry.name}); "
                         "this run takes its pre-fit after pre-training")
                return buffer
            self._prefit_publish = (entry, lock)
        self.log(f"[cfdg-aug] {self.run_dir.name}: pre-fitting the generator on the offline data in a "
                 "background process")
        aug.prefit(background=True)
        return buffer

    def _finish_prefit(self, buffer: Any) -> None:
        """Before the first online step: install the pre-fit of another run fitting the same shared
        key (waiting for it), or this run's background pre-fit if it has finished. One still fitting
        is left to the buffer, which waits for it only when the first refresh starts (nothing uses the
        generator before): the learner goes on meanwhile, and :meth:`_prefit_installed` publishes and
        records it once installed."""
        aug = buffer.augmented
        if self._prefit_wait is not None:
            t0 = time.perf_counter()
            entry = self._prefit_wait
            with _key_lock(entry.parent / f"{entry.name}.lock", self.log, doing="pre-fitting"):
                if not self._reuse_prefit(aug, entry):  # that run stopped before publishing: fit here
                    self.log(f"[cfdg-aug] {self.run_dir.name}: pre-fitting the generator on the offline data")
                    aug.prefit()
                    self._publish_prefit(aug, entry)
            self._record_prefit(aug, background=False, wait=time.perf_counter() - t0)
            return
        background = aug.refresh_pending
        aug.maybe_refresh()  # no online rows yet: installs a background pre-fit that has finished
        if aug.refresh_pending:
            aug.add_prefit_hook(lambda _stats: self._prefit_installed(aug))
            self.log(f"[cfdg-aug] {self.run_dir.name}: the pre-fit is still fitting; online steps go on, and "
                     "the first refresh waits for it if it has not finished by then")
            return
        self._prefit_installed(aug, background=background)

    def _prefit_installed(self, aug: Any, *, background: bool = True) -> None:
        """This run's own pre-fit is installed (and nothing has refitted it yet): publish it if it
        fitted a shared key; record it."""
        if self._prefit_publish is not None:
            entry, lock = self._prefit_publish
            try:
                self._publish_prefit(aug, entry)
            finally:
                lock.close()
                self._prefit_publish = None
        self._record_prefit(aug, background=background, wait=aug.prefit_wait_seconds if background else 0.0)

    def _record_prefit(self, aug: Any, *, background: bool, wait: float) -> None:
        """Write ``prefit.json`` and log it."""
        st = aug.prefit_stats
        reused = self._prefit_reused is not None
        info = {"background": background, "wait_seconds": wait,
                "steps": getattr(st, "steps", None), "fit_seconds": 0.0 if reused else getattr(st, "seconds", None),
                "final_loss": getattr(st, "final_loss", None), "diverged": getattr(st, "diverged", None),
                "reused_from": self._prefit_reused}
        write_json(self.run_dir / PREFIT_FILE, info)
        self.log(f"[cfdg-aug] {self.run_dir.name}: generator pre-fitted ({info['steps']} steps, "
                 + (f"reused from {self._prefit_reused}" if reused else f"{info['fit_seconds'] or 0:.0f} s")
                 + (f"; waited {wait:.0f} s for it" if info["wait_seconds"] else "") + ")")

    def _reuse_prefit(self, aug: Any, entry: Path) -> bool:
        """Install the shared pre-fit ``entry`` if it exists (a damaged one is a :class:`RunError`)."""
        from cfdg_aug._background import fit_stats_from_json
        from cfdg_aug.generator import CFDGGenerator, CheckpointError

        if not entry.is_dir():
            return False
        fix = f"delete {entry} (the next run pre-fits it again)"
        try:
            gen = CFDGGenerator.load(entry / "generator.safetensors", device=self.device, config=aug.config,
                                     expected_dims=(aug.obs_dim, aug.act_dim))
            aug.install_prefit(gen, fit_stats_from_json(_read_json_file(entry / "fit.json", fix)))
        except (CheckpointError, FileNotFoundError, TypeError, ValueError) as e:
            raise RunError(f"the shared pre-fit {entry} cannot be used ({e}); {fix}") from None
        self._prefit_reused = entry.name
        self.log(f"[cfdg-aug] {self.run_dir.name}: generator pre-fit reused from {entry}")
        return True

    def _publish_prefit(self, aug: Any, entry: Path) -> None:
        """Write this run's pre-fit to ``entry`` (tmp folder + rename: all or nothing); a diverged
        pre-fit (generator left unfitted) is not shared."""
        st, gen = aug.prefit_stats, aug.generator
        if entry.is_dir() or st is None or st.diverged or gen is None or not gen.is_fitted:
            return
        tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        gen.save(tmp / "generator.safetensors")
        write_json(tmp / "fit.json", dataclasses.asdict(st))
        write_json(tmp / "key.json", {"key": entry.name, **self._prefit_info, "made_by": self.run_dir.name})
        try:
            os.rename(tmp, entry)
        except OSError:  # published meanwhile by a run that did not wait for the lock (a resumed one)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        fsync_dir(entry.parent)
        self.log(f"[cfdg-aug] {self.run_dir.name}: generator pre-fit shared as {entry}")

    def refresh_progress(self, stage: str, done: int, total: int) -> None:
        """Progress of a refresh (``ProgressFn``): the online bar stands still while the generator
        fits and samples, so each stage is announced (terminal and run.log) and, with progress bars
        on, gets its own bar."""
        if done == 0 and stage != self._announced:  # extra draws of a sampling stage: announced once
            self._announced = stage
            # a stage without a count of its own ("waiting for the background fit", "choosing
            # guidance") reports total 1: no count is logged for it
            unit = "rows" if "sampling" in stage else "steps" if "fitting" in stage else None
            self.log(f"[cfdg-aug] {self.run_dir.name}: {stage}" + (f" ({total} {unit})" if unit else ""))
        if self.progress:
            if self._refresh_bars is None:
                from cfdg_aug.generator import TqdmProgress

                self._refresh_bars = TqdmProgress()
            self._refresh_bars(stage, done, total)

    # -- shared pre-training
    @property
    def shared_pretraining(self) -> bool:
        return self.pretrained_root is not None and self.cfg.offline_steps > 0

    @property
    def pretrain_key(self) -> str:
        return pretrain_key(self.pretrain_info)

    def _pretrain_shared(self, algo: Any, data: Any, eval_env: Any) -> None:
        """Pre-train, or reuse the agent another run pre-trained with the same key.

        Under an exclusive lock per key (so the arms of one seed started together pre-train once):
        if ``PRETRAINED/<key>/`` exists, its checkpoint becomes this run's committed offline
        checkpoint (and its evaluation this run's ``offline`` row; evaluated now if this number of
        episodes was never run); otherwise this run pre-trains and publishes its final offline
        checkpoint there. Either way the run then continues from that checkpoint, exactly as a
        resumed run does.
        """
        assert self.pretrained_root is not None
        root = self.pretrained_root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # checked at pre-flight; a ConfigError here still removes the new run folder
            raise ConfigError(f"the shared pre-trained folder {root} (pretrained_dir, --pretrained-dir) cannot be "
                              f"created: {e.strerror or e}") from None
        entry = root / self.pretrain_key
        with _key_lock(root / f"{entry.name}.lock", self.log):
            if entry.is_dir():
                self._install_pretrained(algo, entry, eval_env)
                self.pretrained_reused = True
            else:
                self._offline(algo, data, _offline_rng(self.cfg.seed), 0, eval_env)
                self._publish_pretrained(entry)

    def _eval_file(self, entry: Path) -> Path:
        return entry / f"eval-{self.env_id}-{self.cfg.eval_episodes}ep.json"

    def _publish_pretrained(self, entry: Path) -> None:
        """Copy the committed offline checkpoint to ``entry`` (tmp folder + rename: all or nothing)."""
        if entry.is_dir():
            return
        latest = self.latest()
        assert latest is not None and latest["phase"] == "offline"
        src = self.ckpt_root / latest["name"]
        tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("model.pt", "state.json", "state.safetensors"):
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        write_json(tmp / "key.json", {"key": entry.name, **self.pretrain_info})
        row = self.rows[0]
        write_json(self._eval_file(tmp), {k: row.get(k) for k in ("normalized_score", "return_mean", "return_std",
                                                                  "eval_length_mean", "episodes")})
        try:
            os.rename(tmp, entry)
        except OSError:  # published meanwhile by a run that did not wait for the lock (a resumed one)
            shutil.rmtree(tmp, ignore_errors=True)
        self.log(f"[cfdg-aug] {self.run_dir.name}: pre-trained agent shared as {entry}")

    def _install_pretrained(self, algo: Any, entry: Path, eval_env: Any) -> None:
        """Make the shared pre-trained checkpoint this run's committed offline checkpoint."""
        cfg = self.cfg
        fix = f"delete {entry} (the next run pre-trains it again)"
        state = _read_json_file(entry / "state.json", fix)
        _verify_files(entry, state, fix)  # before anything is copied into this run
        ev_path = self._eval_file(entry)
        if ev_path.exists():
            # Files written before the episode length was recorded have no eval_length_mean.
            ev = {k: v for k, v in _read_json_file(ev_path, fix).items() if k != "episodes"}
        else:  # another number of evaluation episodes than the run that pre-trained it
            _load_model(algo, entry / "model.pt", fix)
            ev = self._eval(algo, eval_env).row()
            write_json(ev_path, {**ev, "episodes": cfg.eval_episodes})
        score = ev["normalized_score"]
        self.tb.scalar("eval/normalized_score", score, cfg.offline_steps)
        self.add_row({"phase": "offline", "step": cfg.offline_steps, "online_step": 0, **ev,
                      "episodes": cfg.eval_episodes, "num_refreshes": 0})
        self.log(f"[cfdg-aug] {self.run_dir.name}: pre-trained agent reused from {entry} "
                 f"(normalised score {float(score):.1f})")
        state.update(metrics_rows=len(self.rows), wall_seconds=self.wall())
        name = f"ckpt-offline-{cfg.offline_steps}"
        d = self.ckpt_root / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for f in ("model.pt", "state.safetensors"):
            if (entry / f).exists():
                shutil.copy2(entry / f, d / f)
        write_json(d / "state.json", state)
        write_json(self.ckpt_root / "latest.json", {"name": name, "phase": "offline", "step": cfg.offline_steps})

    def _write_config(self, algo: Any) -> None:
        from cfdg_aug.generator import resolved_precisions

        cfg = self.cfg
        algo_cfg = None
        if hasattr(algo.config, "serialize"):
            with contextlib.suppress(Exception):
                algo_cfg = json.loads(algo.config.serialize())
        write_json(self.run_dir / CONFIG_FILE, {
            "config": cfg.to_dict(), "config_hash": cfg.config_hash(), "run_id": cfg.run_id(),
            "env_id": self.env_id, "device": self.device, "cfdg_config": cfg.cfdg_config().to_dict(),
            # "auto" precisions as decided on this machine (bf16 where the hardware has bf16 units).
            "generator_precision": resolved_precisions(cfg.cfdg_config(), self.device),
            "algo_config": algo_cfg, "metric_columns": list(METRIC_COLUMNS),
            "pretrain_key": pretrain_key(self.pretrain_info) if self.pretrain_info else None,
            "host": host_info(self.device),
        })

    def _warn_if_other_host(self) -> None:
        """A run resumed on another machine continues correctly, but not as the first machine would
        have continued it (floating-point kernels differ): say so in the run's log (printed by the
        CLI), naming what differs."""
        stored = _read_json_file(self.run_dir / CONFIG_FILE, f"delete {self.run_dir} to run it again from the start").get("host")
        here = host_info(self.device)
        if not stored:
            return
        keys = ("cpu_vendor", "cpu_model", "cpu_capability", "cpu_bf16", "gpu")
        differ = [f"{k}: {stored.get(k)!r} then, {here[k]!r} now" for k in keys if stored.get(k) != here[k]]
        if differ:
            self.log(f"[cfdg-aug] warning: {self.run_dir.name} was started on another machine ({'; '.join(differ)}); "
                     "it resumes correctly, but its numbers will not match an uninterrupted run on either machine")

    def _eval(self, algo: Any, eval_env: Any) -> Evaluation:
        return evaluate(algo, eval_env, self.env_id, self.cfg.eval_episodes, 10_000 + 1000 * self.cfg.seed)

    def _offline(self, algo: Any, data: Any, rng: np.random.Generator, start: int, eval_env: Any) -> None:
        from tqdm.auto import tqdm

        from cfdg_aug.integrations.d3rlpy import transition_batch_to_minibatch

        cfg = self.cfg
        n = len(data.rew)
        bs = cfg.batch_size or 256
        bar = tqdm(total=cfg.offline_steps, initial=start, desc=f"{self.run_dir.name} offline",
                   disable=not self.progress, dynamic_ncols=True)
        for step in range(start + 1, cfg.offline_steps + 1):
            idx = rng.integers(0, n, bs)
            loss = algo.update(transition_batch_to_minibatch(data[idx]))
            bar.update(1)
            if step % 100 == 0:
                for k, v in loss.items():
                    self.tb.scalar(f"offline/{k}", v, step)
            if step % cfg.checkpoint_every == 0 and step < cfg.offline_steps:
                self.save_checkpoint("offline", step, algo, {"offline_rng": rng.bit_generator.state,
                                                             "grad_step": int(algo._grad_step)})
        bar.close()
        ev = self._eval(algo, eval_env)
        self.tb.scalar("eval/normalized_score", ev.score, cfg.offline_steps)
        self.add_row({"phase": "offline", "step": cfg.offline_steps, "online_step": 0, **ev.row(),
                      "episodes": cfg.eval_episodes, "num_refreshes": 0})
        self.log(f"[cfdg-aug] {self.run_dir.name}: pre-trained policy normalised score {ev.score:.1f}")
        # Pre-training and its evaluation are done: a crash from here on does not redo them.
        self.save_checkpoint("offline", cfg.offline_steps, algo,
                             {"offline_rng": rng.bit_generator.state, "offline_done": True,
                              "grad_step": int(algo._grad_step)})

    def _online(self, algo: Any, buffer: Any, env: Any, eval_env: Any, state: dict[str, Any] | None) -> float | None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        off = cfg.offline_steps

        def on_refresh(stats: Any) -> None:
            d = stats.as_dict()
            # When the new pools entered the batches (refresh_lag > 0: later than the fit's data snapshot).
            n = int(stats.installed_count if stats.installed_count is not None else stats.online_count)
            fidelity = buffer_refresh_fidelity(buffer.augmented, env_id=self.env_id, seed=stats.refresh_index)
            self.add_row({"phase": "refresh", "step": off + n, "online_step": n, "num_refreshes": stats.refresh_index,
                          "refresh_fit_seconds": d.get("fit_seconds"), "refresh_sample_seconds": d.get("sample_seconds"),
                          "refresh_fit_final_loss": d.get("fit_final_loss"), "refresh_fit_steps": d.get("fit_steps"),
                          **{f"refresh_fit_seconds_{k}": d.get(f"fit_seconds_{k}") for k in FIT_STAGES},
                          "refresh_behaviour_accept_rate": d.get("behaviour_accept_rate"),
                          "n_synthetic_offline": d.get("n_synthetic_offline"),
                          "n_synthetic_online": d.get("n_synthetic_online"), **fidelity})
            self.tb.scalar("refresh/fit_final_loss", d.get("fit_final_loss"), off + n)
            for k, v in fidelity.items():
                self.tb.scalar(k.replace("fidelity_", "fidelity/", 1), v, off + n)

        buffer.augmented.add_hook(on_refresh)

        if cfg.algo == "apl":
            algo.bind_buffer(buffer)
        if state is None:
            start, window = 0, np.zeros(len(SOURCE_NAMES), dtype=np.int64)
            returns: list[float] = []
            losses = _LossMeans()
            obs, _ = env.reset(seed=cfg.seed)
        else:
            start = int(state["step"])
            window = np.asarray(state["window"], dtype=np.int64)
            if cfg.algo == "apl" and "source_counts" not in state.get("apl", {}):
                # A checkpoint from before APL counted its own rows: rows are counted from here on.
                algo.source_counts[:] = window
            returns = list(state["returns"])
            losses = _LossMeans(state.get("losses"))  # absent in checkpoints from before the loss columns
            obs, _ = env.reset()  # the env RNG was restored: the same episode start as uninterrupted
        ep_return = 0.0
        ckpt_pending = False
        bs = cfg.batch_size or 256
        bar = tqdm(total=cfg.online_steps, initial=start, desc=f"{self.run_dir.name} online",
                   disable=not self.progress, dynamic_ncols=True)
        for step in range(start + 1, cfg.online_steps + 1):
            act = explore(algo, np.asarray(obs, dtype=np.float32)[None], cfg.exploration_scale)[0]
            nxt, rew, term, trunc, _ = env.step(act)
            ep_return += float(rew)
            if cfg.algo == "apl":
                algo.observe_online(obs, act, float(rew), nxt, float(term))
            buffer.append(obs, act, float(rew))
            if step > cfg.warmup_steps and buffer.transition_count > bs:
                for _ in range(cfg.updates_per_step):
                    # APL ignores this batch once the buffer is bound and draws its own (as under
                    # d3rlpy's fit_online, which draws it too): trained_sources counts APL's rows.
                    loss = algo.update(buffer.sample_transition_batch(bs))
                    losses.add(loss)
                if step % 100 == 0:
                    for k, v in loss.items():
                        self.tb.scalar(f"online/{k}", v, off + step)
            if step % cfg.eval_every == 0 or step == cfg.online_steps:
                ev = self._eval(algo, eval_env)
                counts = trained_sources(algo, buffer) - window
                window = trained_sources(algo, buffer).copy()
                self.tb.scalar("eval/normalized_score", ev.score, off + step)
                self.add_row({"phase": "online", "step": off + step, "online_step": step, **ev.row(),
                              "episodes": cfg.eval_episodes, "num_refreshes": buffer.augmented.num_refreshes,
                              **{f"src_{n}": int(c) for n, c in zip(SOURCE_NAMES, counts, strict=True)},
                              "rollout_return_mean": float(np.mean(returns)) if returns else None,
                              "rollout_episodes": len(returns), **losses.pop(),
                              **critic_probe_row(algo, buffer.augmented)})
                returns = []
                bar.set_postfix(score=f"{ev.score:.1f}")
            if step % cfg.checkpoint_every == 0:
                ckpt_pending = True
            bar.update(1)
            if term or trunc:
                buffer.clip_episode(bool(term))
                returns.append(ep_return)
                self.tb.scalar("online/rollout_return", ep_return, off + step)
                ep_return = 0.0
                # Not while a background refresh is still fitting: the checkpoint would wait for it (it
                # holds the refresh's result) and stop the learner for the fit refresh_lag is there to
                # hide. Where checkpoints fall changes nothing computed: a resumed run is the run.
                if ckpt_pending and step < cfg.online_steps and not buffer.augmented.refresh_running:
                    if buffer.augmented.refresh_pending:
                        # A pre-fit finished since the last poll: installed (or its failure raised) here,
                        # not inside the checkpoint's save. Nothing else is due now.
                        buffer.augmented.maybe_refresh()
                    # Episode boundary: nothing half-written; the next reset draws from the saved RNG.
                    self.save_checkpoint("online", step, algo, {"window": window.tolist(), "returns": returns, "losses": losses.state(),
                                                                "grad_step": int(algo._grad_step)},
                                         buffer=buffer, env=env)
                    ckpt_pending = False
                obs, _ = env.reset()
            else:
                obs = nxt
        bar.close()
        return self._finish(algo, buffer)

    def _finish(self, algo: Any, buffer: Any) -> float | None:
        from cfdg_aug.experiments.plots import plot_learning_curves

        cfg = self.cfg
        _save_model_atomic(algo, self.run_dir / "model_final.pt")
        curve = [(int(r["online_step"]), float(r["normalized_score"])) for r in self.rows
                 if r.get("phase") in ("offline", "online") and r.get("normalized_score") not in (None, "")]
        plot_learning_curves({cfg.augmentation: curve}, self.run_dir / "learning_curve.png",
                             title=f"{cfg.algo.upper()} {self.env_id} {cfg.augmentation} (seed {cfg.seed})")
        offline = [s for st, s in curve if st == 0]
        final = curve[-1][1] if curve and curve[-1][0] > 0 else None
        write_json(self.run_dir / RESULT_FILE, {
            "run_id": self.run_dir.name, "config": cfg.to_dict(), "env_id": self.env_id,
            "offline_score": offline[0] if offline else None, "final_score": final, "curve": curve,
            "source_counts": {n: int(c)
                              for n, c in zip(SOURCE_NAMES, trained_sources(algo, buffer), strict=True)},
            "num_refreshes": buffer.augmented.num_refreshes, "wall_seconds": self.wall(),
            "pretrained": ({"key": self.pretrain_key, "reused": self.pretrained_reused}
                           if self.shared_pretraining else None),
            "prefit": (_read_json_file(self.run_dir / PREFIT_FILE, self._start_over)
                       if (self.run_dir / PREFIT_FILE).is_file() else None),
        })
        # The final weights and result are written: the checkpoint is no longer needed.
        shutil.rmtree(self.ckpt_root, ignore_errors=True)
        self.log(f"[cfdg-aug] {self.run_dir.name}: finished, final normalised score "
                 f"{final if final is None else round(final, 2)} -> {self.run_dir}")
        return final


__all__ = [
    "ALGOS", "ARMS", "AUTO_GUIDANCE_MIN_ONLINE", "CONTROL_ARMS", "arm_name", "SMOKE_SET", "CONFIG_FILE", "Evaluation", "PROBE_ROWS", "LIST_SETTINGS", "LOG_FILE", "METRICS_FILE",
    "METRIC_COLUMNS", "PROFILES", "PROFILE_BUDGETS", "RESULT_FILE", "ExperimentConfig", "PRETRAINED_DIR", "RunError",
    "RunOutcome", "algo_config_class", "build_algo", "check_algo_kwargs", "check_run_config", "dataset_sha256",
    "device_tag", "evaluate", "host_info", "iql_kwargs", "parse_set", "pretrain_key", "pretrain_key_info", "quiet_output",
    "critic_probe_row", "read_metrics", "reset_actor_lr", "resolve_config", "run_experiment", "run_finished", "tensorboard_available", "write_json",
    "write_metrics",
]
