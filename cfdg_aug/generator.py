"""`CFDGGenerator`: one diffusion model over flat transitions, conditioned on offline / online.

Usable on its own (generate a dataset, measure fidelity) or inside :class:`AugmentedReplayBuffer`::

    gen = CFDGGenerator(obs_dim=11, act_dim=3, config=CFDGConfig.small(), seed=0)
    stats = gen.fit(offline_batch, online_batch)          # labels 0 / 1, dropout to null
    online_like = gen.sample(10_000, label="online")       # guided, eps~ = (1 + w) eps(x, c) - w eps(x)
    gen.save("gen.safetensors"); gen = CFDGGenerator.load("gen.safetensors")

Training: EDM loss on the normalised model columns (``[s, a, r]`` by default, see :class:`CFDGGenerator`)
drawn from offline + online data, terminal rows weighted ``terminal_oversample`` times (10 by default)
within their label and, with ``online_batch_fraction``, the online label given that share of each
batch; each label replaced by the null label with probability ``p_uncond``; Adam with cosine decay;
an EMA copy of the weights is used for sampling. An unconditional generator (``conditional=False``) has no label
input at all (the SynthER-style ablation).

Determinism: all randomness (initialisation, minibatches, noise levels, label dropout, sampling
noise) comes from the generator's own torch RNG seeded by ``seed``; the global torch RNG is not
touched. The same seed gives the same samples on the same machine and device; results across
devices or thread counts can differ in the last bits (floating-point reduction order).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cfdg_aug._fit import cpu_seeded
from cfdg_aug._io import fsync_dir, write_error
from cfdg_aug.behaviour import BehaviourModel
from cfdg_aug.config import SAMPLING_PRECISIONS, CFDGConfig, check_device
from cfdg_aug.diffusion.denoiser import NUM_LABELS, ResidualMLPDenoiser, SamplingNetwork
from cfdg_aug.diffusion.edm import SAMPLERS, CFGDenoiser, EDMDenoiser, karras_sigmas, sample_repaint
from cfdg_aug.dynamics import DynamicsModel
from cfdg_aug.normalizer import Normalizer
from cfdg_aug.spaces import SpaceEncoding, check_dim
from cfdg_aug.termination import TerminationClassifier, TerminationFn, termination_rule
from cfdg_aug.transitions import (
    LABEL_NAMES,
    LABEL_NULL,
    LABEL_OFFLINE,
    LABEL_ONLINE,
    TransitionBatch,
    TransitionLayout,
)

FORMAT = "cfdg_aug.generator/2"
Label = Literal["online", "offline"] | None
_LABEL_KEYS = {LABEL_OFFLINE: "offline", LABEL_ONLINE: "online"}
#: With ``match_terminal_rate``, how many rows per requested row :meth:`CFDGGenerator.sample` may
#: draw in addition to look for terminal rows the model generated too few of. At 2, a model that
#: generates falls at a third of the real rate still reaches it; the search is cheap next to fitting
#: (20,000 rows take ~1.3 CPU-s with the small profile's sampler) as long as it does not redraw the
#: rows it scans (``CFDGConfig.redraw_in_terminal_search``).
TERMINAL_SEARCH_ROWS = 2

ProgressFn = Callable[[str, int, int], None]
"""``fn(stage, done, total)``: receives the progress of long work (see :data:`Progress`)."""
Progress = bool | None | ProgressFn
"""How long work reports its progress: ``False`` / ``None`` nothing; ``True`` one tqdm bar per stage
on stderr; a callable ``fn(stage: str, done: int, total: int) -> None`` is called for each stage
with ``done = 0`` when the stage starts, then as it advances (at most about every 1% of ``total``),
and last with ``done == total`` when the stage completes (a fit that diverges stops early: its last
call has ``done < total``). A stage may run more than once (the terminal-rate search of
:meth:`CFDGGenerator.sample` draws more rows); each run starts again at ``done = 0``. An exception
raised by the callable propagates and aborts the work (a host can cancel a refresh this way).

Stages and their units, as :class:`CFDGGenerator` names them: :data:`STAGE_FIT_GENERATOR`
(gradient steps), :data:`STAGE_FIT_DYNAMICS` (gradient steps, with ``next_obs_target="model"``),
:data:`STAGE_FIT_BEHAVIOUR` (gradient steps, with ``behaviour_quantile``), ``sampling_stage(label)`` (generated
rows, once per draw: the behaviour filter and the terminal search draw more rows than they keep). :class:`~cfdg_aug.buffer.AugmentedReplayBuffer` prefixes
each with ``"refresh k: "`` and adds ``"choosing guidance"`` (``guidance="auto"``, total 1)."""
STAGE_FIT_GENERATOR = "fitting generator"
STAGE_FIT_DYNAMICS = "fitting dynamics"
STAGE_FIT_BEHAVIOUR = "fitting behaviour model"
#: With ``behaviour_quantile``, how many rows per requested row :meth:`CFDGGenerator.sample` may
#: draw in all to find enough whose action passes the behaviour model (about half is rejected on
#: hopper at the small profile's defaults, ~70% on walker2d); beyond it the best-scoring rejected
#: rows fill the rest.
BEHAVIOUR_MAX_DRAW = 4
#: Safetensors metadata key of the checksum :func:`atomic_save_safetensors` writes.
CHECKSUM_KEY = "cfdg_aug.sha256"


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def sampling_stage(label: str | None) -> str:
    """The progress stage of sampling ``label``: ``"sampling online-like"``, ``"sampling
    offline-like"`` or ``"sampling unlabelled"`` (the null label / an unconditional model)."""
    return f"sampling {label}-like" if label is not None else "sampling unlabelled"


def check_progress(name: str, value: Any) -> None:
    """Refuse anything but a :data:`Progress` value, naming the argument."""
    if value is None or isinstance(value, bool) or callable(value):
        return
    raise TypeError(f"{name} must be True, False, None or a callable (stage, done, total), "
                    f"got {type(value).__name__} {value!r}")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded into the requested configuration, or its file is unreadable
    or corrupt."""


def _summarize_history(values: Any) -> str:
    """``<N values, first a, last b>``: a loss history in one short line (reprs end up in logs)."""
    try:
        n = len(values)
    except TypeError:
        return repr(values)
    if n == 0:
        return "[]"
    return f"<{n} values, first {float(values[0]):.4g}, last {float(values[-1]):.4g}>"


def compact_repr(obj: Any) -> str:
    """``repr`` of a dataclass with its ``loss_history`` summarised (length, first, last): the full
    list stays on the object, logs get one line."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return repr(obj)
    parts = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        parts.append(f"{f.name}={_summarize_history(v) if f.name == 'loss_history' else compact_repr(v)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


FIT_STAGES = ("termination", "dynamics", "behaviour", "generator")
"""The models a fit trains, in order (:attr:`FitStats.stage_seconds`)."""


def _lap(laps: dict[str, float], name: str, since: float, device: torch.device) -> float:
    """Record the seconds from ``since`` to now as ``laps[name]`` (on a GPU, after waiting for it,
    so that a stage is charged for its own kernels) and return now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    laps[name] = now - since
    return now


@dataclass
class FitStats:
    """What one call of :meth:`CFDGGenerator.fit` did."""

    steps: int
    final_loss: float
    mean_loss: float
    seconds: float
    n_offline: int
    n_online: int
    loss_history: list[float] = field(default_factory=list)
    warm_started: bool = False
    diverged: bool = False
    """The loss went non-finite or ended above ``config.divergence_ratio`` x the previous fit's final
    loss: the weights (and normaliser) from before this fit were restored."""
    previous_final_loss: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds of each model the fit trained, in order: ``"termination"`` (the
    classifier, without a termination rule), ``"dynamics"`` (``next_obs_target="model"``),
    ``"behaviour"`` (the behaviour filter) and ``"generator"`` (the diffusion network); a model the
    fit does not train has no entry. What is left of ``seconds`` is the data preparation."""

    def __repr__(self) -> str:
        # loss_history holds one float per step (thousands): summarised here, complete on the attribute.
        return compact_repr(self)


class CFDGGenerator:
    """Classifier-free-guided EDM diffusion model over transitions (s, a, r, s', done).

    What the network models (``model_dim`` columns, each standardised on the real data):
    ``[s, a, r]`` with ``config.next_obs_target == "model"`` (the default: s' = s + f(s, a) from
    :class:`~cfdg_aug.dynamics.DynamicsModel`), ``[s, a, r, s' - s]`` with ``"delta"`` (the change of
    state is small next to the state, and standardising it on its own puts the dynamics at the scale
    the model resolves), ``[s, a, r, s']`` with ``"absolute"``; plus a ``done`` column only with
    ``config.termination == "column"``. Otherwise ``done`` is computed from each generated (s, a, s')
    by the env's rule (``termination``: a callable or an env id with a known rule) or a classifier
    fitted on the real transitions (:mod:`cfdg_aug.termination`).

    What a generated transition promises (:meth:`postprocess`): ``obs``/``next_obs`` lie in the
    real data's range and in ``obs_encoding``; ``act`` is an element of ``act_encoding`` (clipped
    to its finite bounds, else to the real range; Discrete parts one-hot); rewards lie in the real
    range and take the real values when the real rewards take at most two; ``done`` is 0/1.

    Args:
        obs_dim, act_dim: widths of the (encoded) observation and action vectors.
        config: :class:`CFDGConfig` (default ``CFDGConfig.small()``).
        obs_encoding, act_encoding: :class:`~cfdg_aug.spaces.SpaceEncoding` of the observation and
            action spaces (None = unbounded real vectors: clipped to the data's range).
        termination: the env's termination rule, as a :data:`~cfdg_aug.termination.TerminationFn`
            or an env id / dataset name whose rule is known (``"Hopper-v4"``); None = a classifier
            fitted on the real transitions (an env id without a known rule also falls back to it).
        conditional: label-conditioned (default: unless ``config.augmentation == "unconditional"``).
        device, seed: torch device and the seed of every random draw.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: CFDGConfig | None = None,
        *,
        obs_encoding: SpaceEncoding | None = None,
        act_encoding: SpaceEncoding | None = None,
        termination: TerminationFn | str | None = None,
        conditional: bool | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.layout = TransitionLayout(obs_dim, act_dim)
        self.obs_encoding = check_dim("obs_encoding", obs_encoding, obs_dim)
        self.act_encoding = check_dim("act_encoding", act_encoding, act_dim)
        self.config = config if config is not None else CFDGConfig.small()
        if not isinstance(self.config, CFDGConfig):
            raise TypeError(f"config must be a CFDGConfig, got {type(self.config).__name__}")
        self.conditional = (self.config.augmentation != "unconditional") if conditional is None else conditional
        self.device = torch.device(check_device(device, "device"))
        if self.device.type == "cuda" and self.device.index is None:
            # Bind to a GPU now: a generator on plain "cuda" follows torch.cuda.set_device, and after
            # the host switches GPUs its sampling RNG and its weights would sit on different ones.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.seed = int(seed)
        self._rng = torch.Generator(device=self.device)
        self._rng.manual_seed(self.seed)
        self.set_termination(termination)
        self.normalizer: Normalizer | None = None
        self.data_low: np.ndarray | None = None
        """(layout.dim,) smallest real value per flat column in the last fit's data."""
        self.data_high: np.ndarray | None = None
        """(layout.dim,) largest real value per flat column in the last fit's data."""
        self.reward_values: np.ndarray | None = None
        """The real rewards' values when they take at most two (binary rewards stay binary)."""
        self.termination_model: TerminationClassifier | None = None
        self.dynamics_model: DynamicsModel | None = None
        """With ``next_obs_target="model"``: s' = s + f(s, a) (:mod:`cfdg_aug.dynamics`)."""
        self.behaviour_model: BehaviourModel | None = None
        """With ``behaviour_quantile`` (box actions): log p(a | s, label) fitted on the real data
        (:mod:`cfdg_aug.behaviour`)."""
        self.behaviour_thresholds: dict[str, float] = {}
        """Per label ("offline", "online", and "none" for the mixture): the ``behaviour_quantile``
        quantile of the real rows' behaviour score (``config.behaviour_score``; minus the Mahalanobis
        distance or the log-likelihood of the action); generated rows below it are rejected."""
        self.last_behaviour_stats: dict[str, float] | None = None
        """After :meth:`sample` with the behaviour filter: the share of generated rows that passed,
        the rows drawn, and how many rejected rows had to fill the batch."""
        self.terminal_rates: dict[str, float] = {}
        """Real terminal rate per label of the last fit ("offline", "online")."""
        self._label_sizes: dict[str, int] = {}
        self.last_terminal_stats: dict[str, float] | None = None
        """After :meth:`sample` with ``match_terminal_rate``: the terminal rate the model generated,
        the real rate aimed at, the rate kept, and how many extra rows were sampled."""
        self.total_steps = 0
        self.num_fits = 0
        self.last_final_loss: float | None = None
        self._sampling_nets: dict[tuple[str, bool], SamplingNetwork] = {}  # (precision, compile) -> copy
        self._compiled_loss: tuple[torch.nn.Module, Callable[..., torch.Tensor]] | None = None
        self._training_compile_failed = False
        self.default_guidance: float | None = None
        """Guidance used when ``sample(guidance=None)`` and ``config.guidance == "auto"``; set by
        the buffer's automatic choice (diagnostics)."""
        self._build()

    def set_termination(self, termination: TerminationFn | str | None) -> None:
        """Use the env's termination rule (a callable, or an env id with a known rule) for the done
        flag of generated transitions; None = a classifier fitted on the real data. Takes effect
        at the next :meth:`sample`; a classifier is fitted at the next :meth:`fit`."""
        self.termination_env: str | None = None
        self.termination_fn: TerminationFn | None = None
        if isinstance(termination, str):
            self.termination_fn = termination_rule(termination, self.obs_dim)
            self.termination_env = termination if self.termination_fn is not None else None
        elif termination is not None:
            if not callable(termination):
                raise TypeError(f"termination must be a callable, an env id or None, got {type(termination).__name__}")
            self.termination_fn = termination

    def __getstate__(self) -> dict[str, Any]:
        # The sampling copies are a cache (rebuilt on the next sample) and compiled code cannot be
        # pickled: hosts that pickle or deep-copy their replay buffer get the generator without them.
        state = self.__dict__.copy()
        state["_sampling_nets"], state["_compiled_loss"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Defaults first: pickles from before these caches existed.
        self.__dict__.update({"_sampling_nets": {}, "_compiled_loss": None, "_training_compile_failed": False,
                              **state})

    # --- model ---------------------------------------------------------------------------------
    @property
    def model_dim(self) -> int:
        """Columns the diffusion model generates (see the class docstring)."""
        if self.config.next_obs_target == "model":
            return self.layout.next_obs.start + (1 if self.config.termination == "column" else 0)
        return self.layout.dim - (0 if self.config.termination == "column" else 1)

    def _build(self) -> None:
        cfg = self.config
        # Initialise from a CPU generator derived from the seed so the global RNG is untouched and
        # CPU/CUDA runs start from the same weights.
        with cpu_seeded(self.seed):
            net = ResidualMLPDenoiser(
                self.model_dim, cfg.width, cfg.depth, cfg.fourier_features,
                num_labels=NUM_LABELS if self.conditional else 0, label_injection=cfg.label_injection,
            )
        self.model = EDMDenoiser(net, cfg.sigma_data).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self._ema_steps = 0  # the EMA warm-up restarts with every freshly initialised network
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    @property
    def training_precision(self) -> str:
        """``"bfloat16"`` (autocast) or ``"float32"``: ``config.bf16_autocast`` resolved on this device."""
        return resolved_precisions(self.config, self.device)["training"]

    @property
    def sampling_dtype(self) -> str:
        """``config.sampling_precision`` resolved on this device (``"bfloat16"`` or ``"float32"``)."""
        return resolved_precisions(self.config, self.device)["sampling"]

    @property
    def is_fitted(self) -> bool:
        return self.normalizer is not None

    @property
    def obs_dim(self) -> int:
        return self.layout.obs_dim

    @property
    def act_dim(self) -> int:
        return self.layout.act_dim

    # --- the modelled representation -----------------------------------------------------------
    def _to_model(self, flat: np.ndarray) -> np.ndarray:
        """(N, layout.dim) flat transitions -> (N, model_dim) un-normalised model columns."""
        lay, x = self.layout, np.array(flat, dtype=np.float32)
        target = self.config.next_obs_target
        if target == "delta":
            x[:, lay.next_obs] -= x[:, lay.obs]
        keep = list(range(lay.next_obs.start if target == "model" else lay.done))
        if self.config.termination == "column":
            keep.append(lay.done)
        return x[:, keep]

    def _from_model(self, x: np.ndarray) -> np.ndarray:
        """(N, model_dim) un-normalised model columns -> (N, layout.dim) flat (done still raw or 0)."""
        lay, target = self.layout, self.config.next_obs_target
        out = np.zeros((x.shape[0], lay.dim), np.float32)
        head = lay.next_obs.start if target == "model" else lay.done
        out[:, :head] = x[:, :head]
        if self.config.termination == "column":
            out[:, lay.done] = x[:, -1]
        if target == "delta":
            out[:, lay.next_obs] += out[:, lay.obs]
        elif target == "model":
            assert self.dynamics_model is not None
            out[:, lay.next_obs] = self.dynamics_model.predict(out[:, lay.obs], out[:, lay.act])
        return out

    # --- training ------------------------------------------------------------------------------
    def fit(
        self,
        offline: TransitionBatch | None,
        online: TransitionBatch | None = None,
        *,
        steps: int | None = None,
        progress: Progress = False,
    ) -> FitStats:
        """Train on real offline (label 0) and online (label 1) transitions.

        A second call continues from the current weights when ``config.warm_start`` (for
        ``config.refit_steps`` steps), otherwise re-initialises the network. The normaliser, the
        reward support and the termination classifier are refitted on all the data given, every
        call. ``steps`` overrides the number of steps.

        Divergence guard: if the loss goes non-finite, or the fit ends above
        ``config.divergence_ratio`` x the previous fit's final loss, the generator is restored to
        its state before this call (weights, EMA, optimiser, normaliser, classifier) and the
        returned stats say ``diverged=True``; sampling then continues from the previous model.

        ``progress`` (:data:`Progress`): ``True`` draws tqdm bars, a callable receives the stages
        :data:`STAGE_FIT_DYNAMICS` (with ``next_obs_target="model"``), then
        :data:`STAGE_FIT_BEHAVIOUR` (with ``behaviour_quantile``, box actions), then
        :data:`STAGE_FIT_GENERATOR`, in gradient steps.
        """
        check_progress("progress", progress)
        parts = [
            (TransitionBatch.validated(b, obs_dim=self.obs_dim, act_dim=self.act_dim), label)
            for b, label in ((offline, LABEL_OFFLINE), (online, LABEL_ONLINE))
            if b is not None and len(b) > 0
        ]
        if not parts:
            raise ValueError("fit needs at least one non-empty batch of offline or online transitions")
        warm = self.config.warm_start and self.is_fitted
        n_steps = steps if steps is not None else (self.config.refit_steps if warm else self.config.train_steps)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {n_steps!r}")
        start = time.perf_counter()
        before = self._snapshot() if self.is_fitted else None
        if self.is_fitted and not warm:
            self._build()

        batch = TransitionBatch.concat([b for b, _ in parts])
        flat = batch.flatten()
        labels_np = np.concatenate([np.full(len(b), lab, dtype=np.int64) for b, lab in parts])
        self.terminal_rates = {_LABEL_KEYS[lab]: float(np.mean(b.done)) for b, lab in parts}
        self._label_sizes = {_LABEL_KEYS[lab]: len(b) for b, lab in parts}
        self._fit_reward_support(batch.rew)
        self.data_low, self.data_high = flat.min(axis=0), flat.max(axis=0)
        model_x = self._to_model(flat)
        self.normalizer = Normalizer.fit(model_x)
        stage_seconds: dict[str, float] = {}
        t = time.perf_counter()
        if self.config.termination != "column" and self.termination_fn is None:
            rng = self._cpu_rng()
            with cpu_seeded(int(torch.randint(2**62, (1,), generator=rng).item())):  # our stream, not the global RNG
                self.termination_model = TerminationClassifier(2 * self.obs_dim + self.act_dim)
            # Never more classifier steps than model steps (a quick look stays quick).
            self.termination_model.fit(batch.obs, batch.act, batch.next_obs, batch.done, generator=rng,
                                       steps=min(1000, max(50, n_steps)))
            t = _lap(stage_seconds, "termination", t, self.device)
        else:
            self.termination_model = None
        if self.config.next_obs_target == "model":
            self._fit_dynamics(batch, warm, progress)
            t = _lap(stage_seconds, "dynamics", t, self.device)
        if self.uses_behaviour_filter:
            self._fit_behaviour(batch, labels_np, warm, progress)
            t = _lap(stage_seconds, "behaviour", t, self.device)
        else:
            self.behaviour_model, self.behaviour_thresholds = None, {}
        x = torch.from_numpy(self.normalizer.normalize(model_x)).to(self.device)
        labels = torch.from_numpy(labels_np).to(self.device)
        weights = self._row_weights(labels_np, batch.done)
        t = time.perf_counter()
        losses = self._train(x, labels, weights, n_steps, self.config.refit_lr if warm else self.config.lr, progress)
        _lap(stage_seconds, "generator", t, self.device)
        final = float(np.mean(losses[-max(1, n_steps // 20):]))
        previous = self.last_final_loss
        diverged = not math.isfinite(final) or (
            previous is not None and math.isfinite(previous) and final > self.config.divergence_ratio * previous)
        if diverged and before is not None:
            self._restore(before)
        elif diverged:  # nothing to go back to: an unfitted generator stays unfitted
            self._build()
            self.normalizer, self.termination_model, self.reward_values = None, None, None
            self.dynamics_model = None
            self.behaviour_model, self.behaviour_thresholds = None, {}
            self.data_low = self.data_high = None
        else:
            self.last_final_loss = final
            self.num_fits += 1
        n_off = int((labels_np == LABEL_OFFLINE).sum())
        return FitStats(
            steps=len(losses), final_loss=final, mean_loss=float(np.mean(losses)),
            seconds=time.perf_counter() - start, n_offline=n_off, n_online=len(flat) - n_off, loss_history=losses,
            warm_started=warm, diverged=diverged, previous_final_loss=previous, stage_seconds=stage_seconds,
        )

    def _cpu_rng(self) -> torch.Generator:
        """A CPU torch RNG derived from the generator's stream (for CPU-side fits such as the classifier)."""
        g = torch.Generator()
        g.manual_seed(int(torch.randint(2**62, (1,), generator=self._rng, device=self.device).item()))
        return g

    def _fit_dynamics(self, batch: TransitionBatch, warm: bool, progress: Progress) -> None:
        cfg = self.config
        rng = self._cpu_rng()
        refit = warm and self.dynamics_model is not None
        if not refit:
            with cpu_seeded(int(torch.randint(2**62, (1,), generator=rng).item())):  # our stream, not the global RNG
                self.dynamics_model = DynamicsModel(self.obs_dim, self.act_dim)
        steps = cfg.dynamics_fit_steps
        if refit:
            steps = max(1, round(steps * cfg.refit_steps / cfg.train_steps))
        assert self.dynamics_model is not None
        bar = _progress(steps, STAGE_FIT_DYNAMICS, progress)
        self.dynamics_model.fit(batch.obs, batch.act, batch.next_obs, steps=steps, generator=rng, refit=refit,
                                on_step=None if bar is None else bar.update)
        if bar is not None:
            bar.close()

    @property
    def uses_behaviour_filter(self) -> bool:
        """True when generated actions are filtered by the behaviour model: ``behaviour_quantile`` is
        set and the actions are real-valued (a Gaussian likelihood means nothing for one-hot codes)."""
        return self.config.behaviour_quantile is not None and self.act_encoding.is_box

    def _fit_behaviour(self, batch: TransitionBatch, labels: np.ndarray, warm: bool, progress: Progress) -> None:
        cfg = self.config
        assert cfg.behaviour_quantile is not None
        rng = self._cpu_rng()
        refit = warm and self.behaviour_model is not None
        if not refit:
            with cpu_seeded(int(torch.randint(2**62, (1,), generator=rng).item())):  # our stream, not the global RNG
                self.behaviour_model = BehaviourModel(self.obs_dim, self.act_dim)
        steps = cfg.behaviour_fit_steps
        if refit:
            steps = max(1, round(steps * cfg.refit_steps / cfg.train_steps))
        model = self.behaviour_model
        assert model is not None
        bar = _progress(steps, STAGE_FIT_BEHAVIOUR, progress)
        model.fit(batch.obs, batch.act, labels, steps=steps, generator=rng, refit=refit,
                  on_step=None if bar is None else bar.update)
        if bar is not None:
            bar.close()
        self.set_behaviour_thresholds(batch, labels)

    def set_behaviour_thresholds(self, batch: TransitionBatch, labels: np.ndarray) -> None:
        """The filter's thresholds from real rows (N,) ``labels`` (0 offline, 1 online), at
        ``config.behaviour_quantile`` of ``config.behaviour_score``: done by every fit, on the rows it
        fitted on; call it again after changing those two settings (``config`` replaced) to filter
        by them without refitting the behaviour model."""
        q = self.config.behaviour_quantile
        if q is None or self.behaviour_model is None:
            raise RuntimeError("no behaviour filter to set: behaviour_quantile is None or the generator is not fitted")
        # On the rows the model was fitted on, the real data passes at about 1 - q (a little more
        # than unseen rows would, which makes the filter slightly strict, not lenient).
        thresholds = {"none": float(np.quantile(self._behaviour_scores(batch.obs, batch.act, None), q))}
        for lab, key in _LABEL_KEYS.items():
            rows = labels == lab
            if rows.any():
                thresholds[key] = float(np.quantile(self._behaviour_scores(batch.obs[rows], batch.act[rows], lab), q))
        self.behaviour_thresholds = thresholds

    def _behaviour_scores(self, obs: np.ndarray, act: np.ndarray, label: int | None) -> np.ndarray:
        """(N,) how plausible each action is in its state under the behaviour model, higher is more
        (``config.behaviour_score``: log p(a | s, label), or minus the Mahalanobis distance)."""
        model = self.behaviour_model
        assert model is not None
        if self.config.behaviour_score == "log_prob":
            return model.log_prob(obs, act, label)
        return -model.mahalanobis(obs, act, label)

    def _behaviour_filtered(self, draw: Callable[[int], TransitionBatch], n: int, label: Label,
                            redraw: Callable[[np.ndarray], TransitionBatch] | None = None) -> TransitionBatch:
        """``n`` rows whose behaviour score (:meth:`_behaviour_scores`) is at least the label's threshold.

        With ``config.behaviour_redraws`` = K > 0 and ``redraw`` (new rows for given states), ``n``
        rows are drawn once and a rejected row keeps its state and gets a new action up to K times;
        the rows still rejected are then replaced by rejection sampling, which draws whole rows until
        enough pass (at most ``BEHAVIOUR_MAX_DRAW`` times as many; short of that, the best-scoring
        rejected rows fill the batch, counted in the stats)."""
        model = self.behaviour_model
        key = "none" if label is None or label not in self.behaviour_thresholds else label
        if model is None or key not in self.behaviour_thresholds or n == 0 or not self.uses_behaviour_filter:
            return draw(n)
        threshold = self.behaviour_thresholds[key]
        lab = None if key == "none" else (LABEL_ONLINE if key == "online" else LABEL_OFFLINE)
        stats = {"drawn_rows": 0, "accepted_rows": 0, "filled_rows": 0, "redrawn_rows": 0, "redrawn_accepted_rows": 0}
        kept: list[TransitionBatch] = []
        short = n
        if redraw is not None and self.config.behaviour_redraws:
            rows = draw(n)
            stats["drawn_rows"] += n
            for attempt in range(self.config.behaviour_redraws + 1):
                if attempt:
                    rows = redraw(rows.obs)
                    stats["redrawn_rows"] += len(rows)
                ok = self._behaviour_scores(rows.obs, rows.act, lab) >= threshold
                stats["accepted_rows"] += int(ok.sum())
                stats["redrawn_accepted_rows"] += int(ok.sum()) if attempt else 0
                kept.append(rows[ok])
                rows = rows[~ok]
                if not len(rows):
                    break
            short = len(rows)
        if short:
            kept.append(self._rejection_sampled(draw, short, threshold, lab, stats))
        # Summed over the draws of one sample() call (the terminal-rate search draws more).
        prev = self.last_behaviour_stats or {}
        total = {k: prev.get(k, 0) + v for k, v in stats.items()}
        self.last_behaviour_stats = {
            "accept_rate": total["accepted_rows"] / max(1, total["drawn_rows"] + total["redrawn_rows"]), **total}
        batch = TransitionBatch.concat(kept) if len(kept) > 1 else kept[0]
        if len(kept) > 1:  # the terminal-rate matching keeps the first terminal rows: not always first-pass ones
            batch = batch[torch.randperm(len(batch), generator=self._rng, device=self.device).cpu().numpy()]
        return batch

    def _rejection_sampled(self, draw: Callable[[int], TransitionBatch], n: int, threshold: float,
                           lab: int | None, stats: dict[str, int]) -> TransitionBatch:
        """``n`` rows from ``draw`` scoring at least ``threshold`` (:meth:`_behaviour_filtered`);
        adds to ``stats``' ``drawn_rows``, ``accepted_rows`` and ``filled_rows``."""
        parts, scores = [], []
        accepted = drawn = 0
        while accepted < n and drawn < BEHAVIOUR_MAX_DRAW * n:
            # Ask for what is missing, scaled by the acceptance seen so far (at least 16 rows).
            rate = accepted / drawn if drawn else 0.7
            m = min(BEHAVIOUR_MAX_DRAW * n - drawn, max(16, math.ceil(1.1 * (n - accepted) / max(rate, 0.1))))
            b = draw(m)
            lp = self._behaviour_scores(b.obs, b.act, lab)
            parts.append(b)
            scores.append(lp)
            accepted += int((lp >= threshold).sum())
            drawn += len(b)
        allrows = TransitionBatch.concat(parts) if len(parts) > 1 else parts[0]
        lp = np.concatenate(scores)
        ok = np.flatnonzero(lp >= threshold)[:n]
        filled = n - len(ok)
        if filled:
            rejected = np.flatnonzero(lp < threshold)
            ok = np.sort(np.concatenate([ok, rejected[np.argsort(-lp[rejected])[:filled]]]))
        stats["drawn_rows"] += drawn
        stats["accepted_rows"] += accepted
        stats["filled_rows"] += filled
        return allrows[ok]

    def _fit_reward_support(self, rew: np.ndarray) -> None:
        values = np.unique(rew)
        self.reward_values = values.astype(np.float32) if len(values) <= 2 else None

    def _row_weights(self, labels: np.ndarray, done: np.ndarray) -> torch.Tensor | None:
        """Sampling weight of each training row, or None for uniform rows.

        ``online_batch_fraction`` gives the online label that share of each batch (the online data
        is the smaller label; uniform rows would show it a handful of times per fit); terminal rows
        are up-weighted by ``terminal_oversample`` within their label (their done flag is computed,
        but the states around a fall are rare tails the model must still learn).
        """
        cfg = self.config
        if cfg.online_batch_fraction is None and cfg.terminal_oversample == 1.0:
            return None
        w = np.where(done > 0.5, cfg.terminal_oversample, 1.0)
        if cfg.online_batch_fraction is not None:
            on = labels == LABEL_ONLINE
            if on.any() and (~on).any():
                f = cfg.online_batch_fraction
                w = np.where(on, w * f / w[on].sum(), w * (1 - f) / w[~on].sum())
        return torch.from_numpy(w / w.sum())

    def _train(self, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, n_steps: int,
               peak_lr: float, progress: Progress) -> list[float]:
        cfg = self.config
        self.model.train()
        losses: list[float] = []
        bar = _progress(n_steps, STAGE_FIT_GENERATOR, progress)
        n = x.shape[0]
        # Weighted rows: inverse-CDF sampling on a CPU cumulative sum (torch.multinomial re-scans
        # the weights at every call).
        cdf = None if weights is None else torch.cumsum(weights.double(), 0).to(self.device)
        loss_fn = self._training_loss()
        bf16 = self.training_precision == "bfloat16"  # asks the device; once per fit, not per step
        for step in range(n_steps):
            lr = peak_lr * (0.5 * (1 + math.cos(math.pi * step / n_steps)) if cfg.lr_schedule == "cosine" else 1.0)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if cdf is None:
                idx = torch.randint(n, (cfg.batch_size,), generator=self._rng, device=self.device)
            else:
                u = torch.rand(cfg.batch_size, generator=self._rng, device=self.device, dtype=torch.float64)
                idx = torch.searchsorted(cdf, u * cdf[-1]).clamp_(max=n - 1)
            batch_labels = None
            if self.conditional:
                drop = torch.rand(cfg.batch_size, generator=self._rng, device=self.device) < cfg.p_uncond
                batch_labels = torch.where(drop, torch.full_like(labels[idx], LABEL_NULL), labels[idx])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(x[idx], batch_labels, p_mean=cfg.p_mean, p_std=cfg.p_std, generator=self._rng)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self._update_ema()
            self.total_steps += 1
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break  # diverged: the guard in fit() restores the previous model
            if bar is not None:
                bar.update(1)
                if step % 100 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if bar is not None:
            bar.close()
        self.model.eval()
        return losses

    def _training_loss(self) -> Callable[..., torch.Tensor]:
        """``self.model.loss``, compiled with ``config.training_compile`` (cached per network: a cold
        refit builds a new one). A backend that cannot compile warns once and trains eagerly."""
        model = self.model
        if not self.config.training_compile or self._training_compile_failed:
            return model.loss
        if self._compiled_loss is None or self._compiled_loss[0] is not model:
            self._compiled_loss = (model, torch.compile(model.loss))
        compiled = self._compiled_loss[1]

        def loss(*args: Any, **kwargs: Any) -> torch.Tensor:
            if not self._training_compile_failed:
                try:
                    return compiled(*args, **kwargs)
                except torch.OutOfMemoryError:
                    raise
                except Exception as e:  # noqa: BLE001 - any backend failure; a real input error re-raises below
                    warnings.warn(f"torch.compile of the training loss failed ({type(e).__name__}: {e}); "
                                  "training eagerly instead", stacklevel=2)
                    self._training_compile_failed = True
            return model.loss(*args, **kwargs)

        return loss

    def _snapshot(self) -> dict[str, Any]:
        """Everything :meth:`fit` changes, to restore after a diverged fit."""
        return {
            "model": copy.deepcopy(self.model.state_dict()), "ema": copy.deepcopy(self.ema.state_dict()),
            "optim": copy.deepcopy(self.optimizer.state_dict()), "ema_steps": self._ema_steps,
            "normalizer": self.normalizer, "reward_values": self.reward_values,
            "data_range": (self.data_low, self.data_high),
            "termination_model": self.termination_model, "terminal_rates": dict(self.terminal_rates),
            "dynamics_model": copy.deepcopy(self.dynamics_model),
            "behaviour_model": copy.deepcopy(self.behaviour_model),
            "behaviour_thresholds": dict(self.behaviour_thresholds),
            "label_sizes": dict(self._label_sizes),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        self.ema.load_state_dict(snap["ema"])
        self.optimizer.load_state_dict(snap["optim"])
        self._ema_steps = snap["ema_steps"]
        self.normalizer, self.reward_values = snap["normalizer"], snap["reward_values"]
        self.data_low, self.data_high = snap["data_range"]
        self.termination_model, self.terminal_rates = snap["termination_model"], snap["terminal_rates"]
        self._label_sizes = snap["label_sizes"]
        self.dynamics_model = snap["dynamics_model"]
        self.behaviour_model, self.behaviour_thresholds = snap["behaviour_model"], snap["behaviour_thresholds"]

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (as in ema-pytorch / SynthER): early averages follow the weights closely.
        decay = min(self.config.ema_decay, (1 + self._ema_steps) / (10 + self._ema_steps))
        for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            p_ema.lerp_(p, 1 - decay)
        self._ema_steps += 1

    # --- sampling ------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_normalized(
        self, n: int, label: Label = "online", *, guidance: float | None = None, batch_size: int | None = None,
        precision: str | None = None, compile: bool | None = None, progress: Progress = False,
        given_obs: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, model_dim) samples in the normalised model space (before :meth:`postprocess`).
        ``progress`` (:data:`Progress`): stage ``sampling_stage(label)``, in rows.

        ``given_obs``: (n, obs_dim) observations in original units to hold: the other model columns
        (action, reward, and s' or s' - s and done where the model generates them) are drawn given
        them by RePaint (``config.redraw_steps`` noise levels, ``config.redraw_resample``
        evaluations each at the levels up to ``config.redraw_resample_sigma_max``) instead of
        ``config.sampler``, and the rows carry them."""
        check_progress("progress", progress)
        if not self.is_fitted:
            raise RuntimeError("the generator must be fitted before sampling (call fit first)")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if label not in LABEL_NAMES:
            raise ValueError(f"label must be 'online', 'offline' or None, got {label!r}")
        if not self.conditional and label is not None:
            raise ValueError(f"label must be None for an unconditional generator, got {label!r}")
        w = self._resolve_guidance(guidance)
        cfg = self.config
        precision = precision if precision is not None else cfg.sampling_precision
        if precision not in SAMPLING_PRECISIONS:
            raise ValueError(f"precision must be one of {SAMPLING_PRECISIONS}, got {precision!r}")
        if precision == "auto":
            precision = "bfloat16" if bf16_supported(self.device) else "float32"
        compile = cfg.sampling_compile if compile is None else bool(compile)
        chunk = batch_size or cfg.sample_batch_size
        sigmas = karras_sigmas(cfg.num_sample_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, device=self.device)
        denoise = self._denoise_fn(label, w, precision, compile)
        known = self._given_columns(given_obs, n)
        if known is not None:
            sigmas = karras_sigmas(cfg.redraw_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, device=self.device)
            mask = torch.zeros(self.model_dim, dtype=torch.bool, device=self.device)
            mask[self.layout.obs] = True
        out = np.empty((n, self.model_dim), dtype=np.float32)
        bar = _progress(n, sampling_stage(label), progress)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            if known is not None:
                x = sample_repaint(denoise, known[start:start + m], mask, sigmas, resample=cfg.redraw_resample,
                                   resample_sigma_max=_or_inf(cfg.redraw_resample_sigma_max), generator=self._rng)
            else:
                noise = torch.randn((m, self.model_dim), generator=self._rng, device=self.device)
                x = SAMPLERS[cfg.sampler](
                    denoise, noise, sigmas, s_churn=cfg.s_churn, s_tmin=cfg.s_tmin, s_tmax=cfg.s_tmax,
                    s_noise=cfg.s_noise, generator=self._rng,
                )
            out[start:start + m] = x.cpu().numpy()
            if bar is not None:
                bar.update(m)
        if bar is not None:
            bar.close()
        return out

    def _given_columns(self, given_obs: np.ndarray | None, n: int) -> torch.Tensor | None:
        """(n, model_dim) model-space rows holding ``given_obs`` normalised in the observation
        columns (zeros elsewhere), or None."""
        if given_obs is None:
            return None
        obs = np.asarray(given_obs, dtype=np.float32)
        if obs.shape != (n, self.obs_dim):
            raise ValueError(f"given_obs must have shape ({n}, {self.obs_dim}), got {obs.shape}")
        assert self.normalizer is not None
        cols = self.layout.obs
        rows = np.zeros((n, self.model_dim), np.float32)
        rows[:, cols] = (obs - self.normalizer.mean[cols]) / self.normalizer.std[cols]
        return torch.from_numpy(rows).to(self.device)

    def sample(
        self, n: int, label: Label = "online", *, guidance: float | None = None, batch_size: int | None = None,
        precision: str | None = None, compile: bool | None = None, progress: Progress = False,
    ) -> TransitionBatch:
        """Generate n transitions in original units, each a valid transition (:meth:`postprocess`).

        ``label``: ``"online"`` / ``"offline"`` (guided toward that label) or None (the null label,
        i.e. the model's unconditional distribution; the only choice for an unconditional model).
        ``guidance``: w (None = ``config.guidance``). ``batch_size`` (rows per sampler chunk),
        ``precision`` (``"float32"`` / ``"bfloat16"``) and ``compile`` override
        ``config.sample_batch_size``, ``config.sampling_precision`` and ``config.sampling_compile``.

        Terminals (``config.match_terminal_rate``, with ``termination="model"``): a model trained
        with terminal rows up-weighted (``terminal_oversample``) generates falls more often than the
        data holds them; the batch then keeps ``round(rate * n)`` of its terminal rows, ``rate``
        being the real terminal rate of the label's training data (of all of it for ``label=None``),
        and fills the rest with non-terminal rows, sampling more if needed. With fewer terminal
        rows than that, all are kept. :attr:`last_terminal_stats` records what happened.

        Behaviour filter (``config.behaviour_quantile``, continuous actions): a row is kept when its
        action's score under the behaviour model reaches the label's threshold. With
        ``config.behaviour_redraws`` = K, a rejected row first keeps its state and gets a new action
        by RePaint, up to K times; rows still rejected are replaced by rejection sampling.
        :attr:`last_behaviour_stats` counts drawn, accepted, redrawn and filled rows.

        ``progress`` (:data:`Progress`): ``True`` draws a tqdm bar, a callable receives the stage
        ``sampling_stage(label)`` in rows (once more for each extra draw of the behaviour filter, its
        redraws and the terminal search).
        """
        def raw(m: int) -> TransitionBatch:
            return self.postprocess(self.sample_normalized(m, label, guidance=guidance, batch_size=batch_size,
                                                           precision=precision, compile=compile, progress=progress))

        def redraw(obs: np.ndarray) -> TransitionBatch:  # new actions (and what follows) for these states
            return self.postprocess(self.sample_normalized(len(obs), label, guidance=guidance, batch_size=batch_size,
                                                           precision=precision, compile=compile, progress=progress,
                                                           given_obs=obs))

        def draw(m: int) -> TransitionBatch:
            return self._behaviour_filtered(raw, m, label, redraw)

        def search(m: int) -> TransitionBatch:  # rows scanned for terminals, nearly all of them dropped
            return self._behaviour_filtered(raw, m, label, redraw if self.config.redraw_in_terminal_search else None)

        self.last_terminal_stats = self.last_behaviour_stats = None
        batch = draw(n)
        if not (self.config.match_terminal_rate and self.config.termination == "model") or n == 0:
            return batch
        return self._match_terminal_rate(batch, self._real_terminal_rate(label), draw, search)

    def _real_terminal_rate(self, label: Label) -> float:
        rates = self.terminal_rates
        if label is not None and label in rates:
            return rates[label]
        sizes = self._label_sizes
        total = sum(sizes.values())
        return sum(rates[k] * sizes[k] for k in rates) / total if total else 0.0

    def _match_terminal_rate(self, batch: TransitionBatch, rate: float, draw: Callable[[int], TransitionBatch],
                             search: Callable[[int], TransitionBatch]) -> TransitionBatch:
        """Keep ``round(rate * n)`` terminal rows of ``batch`` (stochastic rounding), fill with non-terminals.

        Too few non-terminals: ``draw`` more until there are enough. Too few terminals (a model that
        generates falls below the real rate): ``search`` up to ``TERMINAL_SEARCH_ROWS * n`` more rows
        for them; what that search does not find stays missing (never a relabelled row: a terminal
        must be one by the termination rule).
        """
        n = len(batch)
        want = rate * n
        u = float(torch.rand((), generator=self._rng, device=self.device))
        keep_terminal = int(math.floor(want) + (u < want - math.floor(want)))
        parts = [batch]
        terminal = int((batch.done > 0.5).sum())
        nonterminal = n - terminal
        extra_draws = searched = 0
        while extra_draws < 10:
            if nonterminal < n - min(keep_terminal, terminal):
                more = draw(max(16, int(1.2 * (n - min(keep_terminal, terminal) - nonterminal))))
            elif terminal < keep_terminal and searched < TERMINAL_SEARCH_ROWS * n:
                m = min(n, TERMINAL_SEARCH_ROWS * n - searched)
                searched += m
                more = search(m)
            else:
                break
            parts.append(more)
            t = int((more.done > 0.5).sum())
            terminal, nonterminal, extra_draws = terminal + t, nonterminal + len(more) - t, extra_draws + 1
        allrows = TransitionBatch.concat(parts) if len(parts) > 1 else batch
        is_t = allrows.done > 0.5
        t_idx, n_idx = np.flatnonzero(is_t), np.flatnonzero(~is_t)
        k = min(keep_terminal, len(t_idx))
        idx = np.concatenate([t_idx[:k], n_idx[: n - k]])
        # A seeded shuffle, so terminal rows are not all at the front of the pool.
        perm = torch.randperm(len(idx), generator=self._rng, device=self.device).cpu().numpy()
        self.last_terminal_stats = {
            "generated_rate": float(is_t[:n].mean()), "target_rate": rate, "kept_rate": k / max(1, len(idx)),
            "extra_rows": len(allrows) - n,
        }
        return allrows[idx[perm]]

    def postprocess(self, z: np.ndarray) -> TransitionBatch:
        """Normalised (n, model_dim) samples -> a TransitionBatch of valid transitions in original units.

        Observations: into the real data's range (``clip_observations``) and onto ``obs_encoding``;
        actions: onto ``act_encoding`` (finite bounds, else the real range); rewards: into the real
        range (``clip_rewards``), snapped to the real values when those are at most two; done: the
        termination rule / classifier on (s, a, s'), or the thresholded done column with
        ``termination="column"``.
        """
        assert self.normalizer is not None
        cfg, lay, norm = self.config, self.layout, self.normalizer
        x = self._from_model(norm.unnormalize(z))
        # The real range of each flat column. Not the normaliser's: it ranges over s' - s where the
        # model generates a delta, and s' must keep its own range (falls reach states that never
        # appear as s, since the episode ends there).
        assert self.data_low is not None and self.data_high is not None
        low, high = self.data_low, self.data_high
        for sl, enc in ((lay.obs, self.obs_encoding), (lay.next_obs, self.obs_encoding)):
            if cfg.clip_observations:
                x[:, sl] = np.clip(x[:, sl], low[sl], high[sl])
            x[:, sl] = enc.project(x[:, sl], low[sl], high[sl])
        x[:, lay.act] = self.act_encoding.project(x[:, lay.act], low[lay.act], high[lay.act])
        if cfg.clip_rewards:
            x[:, lay.rew] = np.clip(x[:, lay.rew], low[lay.rew], high[lay.rew])
        if self.reward_values is not None:
            nearest = np.abs(x[:, lay.rew, None] - self.reward_values[None, :]).argmin(axis=1)
            x[:, lay.rew] = self.reward_values[nearest]
        x[:, lay.done] = self._terminal(x).astype(np.float32)
        return lay.unflatten(x)


    def _terminal(self, x: np.ndarray) -> np.ndarray:
        lay = self.layout
        if self.config.termination == "column":
            return x[:, lay.done] >= self.config.done_threshold
        obs, act, nxt = x[:, lay.obs], x[:, lay.act], x[:, lay.next_obs]
        if self.termination_fn is not None:
            return np.asarray(self.termination_fn(obs, act, nxt), dtype=bool).reshape(-1)
        if self.termination_model is None:
            raise RuntimeError("this generator was fitted with a termination callable, which is not saved with "
                               "it: call set_termination(fn) (or pass an env id) after loading")
        return self.termination_model.predict(obs, act, nxt)

    def _resolve_guidance(self, guidance: float | None) -> float:
        if not self.conditional:
            return 0.0
        w: Any = guidance if guidance is not None else self.config.guidance
        if w == "auto":
            if self.default_guidance is None:
                raise ValueError(
                    "config.guidance is 'auto' but no weight has been chosen yet: pass guidance= or let the "
                    "buffer choose one at refresh"
                )
            w = self.default_guidance
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {w!r}")
        return w

    def _denoise_fn(self, label: Label, w: float, precision: str = "float32", compile: bool = False):  # type: ignore[no-untyped-def]
        self.ema.eval()
        ema = self.ema
        if precision == "bfloat16" or compile:
            ema = EDMDenoiser(self._sampling_net(precision, compile), self.ema.sigma_data)
        if not self.conditional:
            return lambda x, sigma: ema(x, sigma, None)
        lab = LABEL_NAMES[label]
        if lab == LABEL_NULL:
            return CFGDenoiser(ema, LABEL_NULL, LABEL_NULL, 0.0)
        return CFGDenoiser(ema, lab, LABEL_NULL, w, interval=self.config.guidance_interval)

    def _sampling_net(self, precision: str, compile: bool) -> SamplingNetwork:
        """The cached bf16 and/or compiled copy of the EMA network, synced to its current weights."""
        net = self.ema.net
        assert isinstance(net, ResidualMLPDenoiser)
        if precision == "bfloat16":
            _warn_if_bf16_is_emulated(self.device)
        key = (precision, compile)
        if key not in self._sampling_nets:
            dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
            self._sampling_nets[key] = SamplingNetwork(net, dtype, compile=compile)
        sampling_net = self._sampling_nets[key]
        sampling_net.sync(net)
        return sampling_net

    # --- persistence -------------------------------------------------------------------------------
    def state_tensors(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything needed to resume, as CPU tensors + string metadata (safetensors-ready, no pickle)."""
        t: dict[str, torch.Tensor] = {}
        for name, module in (("model", self.model), ("ema", self.ema)):
            for k, v in module.state_dict().items():
                t[f"{prefix}{name}.{k}"] = v.detach().cpu().contiguous()
        params = list(self.model.parameters())
        opt_state = self.optimizer.state
        for i, p in enumerate(params):
            for k, v in opt_state.get(p, {}).items():
                t[f"{prefix}optim.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
        t[f"{prefix}rng"] = self._rng.get_state().cpu()
        if self.normalizer is not None:
            t.update(self.normalizer.state_tensors(prefix + "normalizer."))
        if self.data_low is not None and self.data_high is not None:
            t[f"{prefix}data_low"] = torch.from_numpy(self.data_low.copy())
            t[f"{prefix}data_high"] = torch.from_numpy(self.data_high.copy())
        aux: torch.nn.Module | None
        for name, aux in (("termination", self.termination_model), ("dynamics", self.dynamics_model),
                          ("behaviour", self.behaviour_model)):
            if aux is not None:
                for k, v in aux.state_dict().items():
                    t[f"{prefix}{name}.{k}"] = v.detach().cpu().contiguous()
        meta = {
            f"{prefix}format": FORMAT,
            f"{prefix}config": self.config.to_json(),
            f"{prefix}state": json.dumps({
                "obs_dim": self.obs_dim, "act_dim": self.act_dim, "conditional": self.conditional,
                "seed": self.seed, "total_steps": self.total_steps, "num_fits": self.num_fits,
                "default_guidance": self.default_guidance, "fitted": self.is_fitted,
                "ema_steps": self._ema_steps, "rng_device": self.device.type,
                "obs_encoding": self.obs_encoding.to_dict(), "act_encoding": self.act_encoding.to_dict(),
                "termination": ("env:" + self.termination_env if self.termination_env is not None
                                else "callable" if self.termination_fn is not None else None),
                "reward_values": None if self.reward_values is None else self.reward_values.tolist(),
                "terminal_rates": self.terminal_rates, "label_sizes": self._label_sizes,
                "behaviour_thresholds": self.behaviour_thresholds,
                "last_final_loss": self.last_final_loss,
            }),
        }
        return t, meta

    @classmethod
    def from_state_tensors(
        cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, prefix: str = "",
        device: str | torch.device = "cpu", expected_config: CFDGConfig | None = None,
        expected_dims: tuple[int, int] | None = None, config: CFDGConfig | None = None,
    ) -> CFDGGenerator:
        """The generator :meth:`state_tensors` described (``load`` reads the file). ``config``: go on
        with this config instead of the saved one (a pre-fit shared between runs whose settings
        differ after the fit); it must agree with the saved one outside
        :data:`~cfdg_aug.config.PREFIT_INDEPENDENT_FIELDS`, else :class:`CheckpointError`."""
        if metadata.get(f"{prefix}format") != FORMAT:
            raise CheckpointError(
                f"not a CFDGGenerator checkpoint (format {metadata.get(prefix + 'format')!r}, expected {FORMAT!r})"
            )
        state = json.loads(metadata[f"{prefix}state"])
        if expected_dims is not None and (state["obs_dim"], state["act_dim"]) != tuple(expected_dims):
            raise CheckpointError(
                f"checkpoint has obs_dim={state['obs_dim']}, act_dim={state['act_dim']}; expected "
                f"obs_dim={expected_dims[0]}, act_dim={expected_dims[1]}"
            )
        saved = CFDGConfig.from_saved(json.loads(metadata[f"{prefix}config"]))
        if expected_config is not None and expected_config != saved:
            raise CheckpointError("checkpoint was written with another config; differing fields (checkpoint vs "
                                  f"expected): {_config_diff(saved.to_dict(), expected_config.to_dict())}")
        if config is not None and config.prefit_fields() != saved.prefit_fields():
            raise CheckpointError("the config given differs from the checkpoint's in fields its fit depends on "
                                  f"(checkpoint vs given): {_config_diff(saved.prefit_fields(), config.prefit_fields())}")
        config = config if config is not None else saved
        term = state["termination"]
        gen = cls(state["obs_dim"], state["act_dim"], config, conditional=state["conditional"], device=device,
                  seed=state["seed"], obs_encoding=SpaceEncoding.from_dict(state["obs_encoding"]),
                  act_encoding=SpaceEncoding.from_dict(state["act_encoding"]),
                  termination=term[4:] if isinstance(term, str) and term.startswith("env:") else None)
        for name, module in (("model", gen.model), ("ema", gen.ema)):
            sd = {k[len(f"{prefix}{name}."):]: v for k, v in tensors.items() if k.startswith(f"{prefix}{name}.")}
            try:
                module.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"checkpoint weights do not fit the configured network: {e}") from None
        params = list(gen.model.parameters())
        for key, v in tensors.items():
            if key.startswith(f"{prefix}optim."):
                i, k = key[len(f"{prefix}optim."):].split(".", 1)
                # A copy: Adam updates its moments in place, which would otherwise write through to
                # the caller's tensors (two generators restored from one in-memory state).
                gen.optimizer.state[params[int(i)]][k] = v.to(gen.device, copy=True)
        rng_state = tensors[f"{prefix}rng"].to(torch.uint8)
        if state.get("rng_device", "cpu") == gen.device.type:
            gen._rng.set_state(rng_state)
        else:
            # CPU and CUDA generators have different state layouts: continue from a stream derived
            # from (seed, steps so far), so loading on another device is deterministic, if not
            # the same stream the saving device would have produced.
            warnings.warn(f"generator checkpoint RNG was saved on {state['rng_device']!r}, loading on "
                          f"{gen.device.type!r}: the sampling stream is reseeded", stacklevel=2)
            gen._rng.manual_seed(gen.seed * 1_000_003 + int(state["total_steps"]))
        if state["fitted"]:
            gen.normalizer = Normalizer.from_state_tensors(tensors, prefix + "normalizer.")
            try:
                gen.data_low = tensors[f"{prefix}data_low"].cpu().numpy().copy()  # not the caller's memory
                gen.data_high = tensors[f"{prefix}data_high"].cpu().numpy().copy()
            except KeyError as e:
                raise CheckpointError(f"checkpoint lacks tensor {e}") from None
        for name, make in (("termination", lambda: TerminationClassifier(2 * gen.obs_dim + gen.act_dim)),
                           ("dynamics", lambda: DynamicsModel(gen.obs_dim, gen.act_dim)),
                           ("behaviour", lambda: BehaviourModel(gen.obs_dim, gen.act_dim))):
            sd = {k[len(f"{prefix}{name}."):]: v for k, v in tensors.items() if k.startswith(f"{prefix}{name}.")}
            if sd:
                # Initialised from a stream of our own, then overwritten: loading a generator (a
                # background refresh or a shared pre-fit installed mid-run) leaves the host's RNG alone.
                with cpu_seeded(0):
                    aux_model: torch.nn.Module = make()
                try:
                    aux_model.load_state_dict(sd, strict=True)
                except RuntimeError as e:
                    raise CheckpointError(f"checkpoint {name} model does not fit: {e}") from None
                setattr(gen, f"{name}_model", aux_model)
        gen.reward_values = None if state["reward_values"] is None else np.asarray(state["reward_values"], np.float32)
        gen.terminal_rates = dict(state["terminal_rates"])
        # Checkpoints from before the behaviour filter hold none: sampling is then unfiltered.
        gen.behaviour_thresholds = dict(state.get("behaviour_thresholds", {}))
        gen._label_sizes = dict(state["label_sizes"])
        gen.last_final_loss = state["last_final_loss"]
        gen.total_steps, gen.num_fits = state["total_steps"], state["num_fits"]
        gen._ema_steps = int(state.get("ema_steps", state["total_steps"]))
        gen.default_guidance = state["default_guidance"]
        gen.model.eval()
        return gen

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one safetensors file (weights, EMA, optimiser, normaliser, RNG; config as JSON
        metadata, with a sha256 checksum that :meth:`load` verifies) atomically: a temp file in the
        same folder, then ``os.replace``; missing folders are created. An unwritable ``path`` raises
        an ``OSError`` naming it ("cannot write generator checkpoint to <path>: ...")."""
        tensors, meta = self.state_tensors()
        atomic_save_safetensors(tensors, meta, path, what="generator checkpoint")

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
        expected_config: CFDGConfig | None = None, expected_dims: tuple[int, int] | None = None,
        config: CFDGConfig | None = None,
    ) -> CFDGGenerator:
        """Load a checkpoint written by :meth:`save` (no unpickling). With ``expected_config`` /
        ``expected_dims``, a checkpoint from another configuration raises :class:`CheckpointError`;
        so does a damaged file (its checksum does not match, naming the file). A missing file raises
        ``FileNotFoundError``. ``config`` as for :meth:`from_state_tensors`."""
        tensors, meta = load_safetensors(path, what="generator checkpoint")
        return cls.from_state_tensors(tensors, meta, device=device, expected_config=expected_config,
                                      expected_dims=expected_dims, config=config)


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``k=a vs b`` for each field where two config dicts differ."""
    return ", ".join(f"{k}={v!r} vs {b.get(k)!r}" for k, v in a.items() if v != b.get(k))


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` has bfloat16 matrix units: AVX512-BF16/AMX on a CPU (oneDNN's check), bf16
    support on a CUDA GPU. Without them bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        # Compute capability 8 (Ampere) and later have bf16 tensor cores; is_bf16_supported() would
        # also say yes on a V100 / T4, where bf16 is emulated, and asks the current device, not this one.
        return bool(torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolved_precisions(config: CFDGConfig, device: str | torch.device) -> dict[str, str]:
    """``{"training": ..., "sampling": ...}``: the ``"auto"`` precisions of ``config`` decided for
    ``device`` (bfloat16 where it has bf16 units, else float32); what a run records in its config."""
    flag, p = config.bf16_autocast, config.sampling_precision
    bf16 = bf16_supported(device) if "auto" in (flag, p) else False
    return {"training": "bfloat16" if (flag is True or (flag == "auto" and bf16)) else "float32",
            "sampling": ("bfloat16" if bf16 else "float32") if p == "auto" else p}


def _warn_if_bf16_is_emulated(device: torch.device) -> None:
    if device.type in ("cpu", "cuda") and not bf16_supported(device):
        what = ("sampling_precision='bfloat16' on a CPU without bf16 units (AVX512-BF16/AMX)" if device.type == "cpu"
                else "sampling_precision='bfloat16' on a GPU without bf16 tensor cores (compute capability < 8)")
        warnings.warn(f"{what}: bf16 matmuls are emulated and slower than float32", stacklevel=3)


def tensors_checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 (hex) of every tensor's name, dtype, shape and bytes and of every metadata entry
    (except :data:`CHECKSUM_KEY`), in sorted key order: what :func:`atomic_save_safetensors` stores
    and :func:`load_safetensors` checks. Covering the metadata too means a flipped byte in the
    file's JSON header (a config value, a dtype, a shape) is caught, not only one in the payload."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(json.dumps(["t", key, str(t.dtype), list(t.shape)]).encode() + b"\0")
        # A byte view, no copy (bool / bfloat16 tensors have no numpy dtype of their own).
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    for key in sorted(metadata):
        if key != CHECKSUM_KEY:
            h.update(json.dumps(["m", key, metadata[key]]).encode() + b"\0")
    return h.hexdigest()


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike[str], *,
    what: str = "checkpoint",
) -> None:
    """safetensors file written to a temp file beside ``path``, fsynced, then renamed over it (and the
    folder fsynced, so the rename survives a power cut): a crash leaves the old file or the new one,
    never a torn one. Missing parent folders are created. The metadata gets :data:`CHECKSUM_KEY`
    (:func:`tensors_checksum`), which :func:`load_safetensors` verifies.

    A file that cannot be written raises the ``OSError`` subclass the OS gave, as one sentence that
    names ``path``: ``"cannot write <what> to <path>: <reason>"``; the previous file, if any, is
    left as it was."""
    from safetensors.torch import save_file

    path = Path(path)
    if CHECKSUM_KEY in metadata:
        raise ValueError(f"metadata key {CHECKSUM_KEY!r} is reserved for the file's checksum")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {**metadata, CHECKSUM_KEY: tensors_checksum(tensors, metadata)}
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise write_error(e, path, what) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_safetensors(
    path: str | os.PathLike[str], *, error: type[ValueError] = CheckpointError, what: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (no unpickling), checksum verified.

    A missing file raises ``FileNotFoundError``; an unreadable one (not safetensors, a damaged
    header) or one whose tensors or metadata no longer match the checksum stored when it was saved
    raises ``error`` (default :class:`CheckpointError`) as one sentence naming ``path``. The returned
    metadata leaves out :data:`CHECKSUM_KEY`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged header
        raise error(f"{path} is not a readable safetensors {what} (corrupt or another format): {e}") from None
    stored = meta.pop(CHECKSUM_KEY, None)
    # Files written before checksums were stored have none: they load unchecked, as they always did.
    if stored is not None and stored != tensors_checksum(tensors, meta):
        raise error(f"{path} is corrupt: the checksum of its tensors and metadata does not match the one "
                    "stored when it was saved")
    return tensors, meta


class _StageReporter:
    """Reports one stage to a :data:`ProgressFn` with the tqdm methods the loops call: ``(stage, 0,
    total)`` at creation, updates at most about every 1% of ``total``, the last one at :meth:`close`."""

    def __init__(self, fn: ProgressFn, stage: str, total: int) -> None:
        self._fn, self.stage, self.total = fn, stage, int(total)
        self.n = self._last = 0
        self._every = max(1, self.total // 100)
        self._closed = False
        fn(stage, 0, self.total)

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        if self.n < self.total and self.n - self._last >= self._every:
            self._last = self.n
            self._fn(self.stage, self.n, self.total)

    def set_postfix(self, **_: Any) -> None:  # tqdm's; a callable receives counts only
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last:
                self._last = self.n
                self._fn(self.stage, self.n, self.total)


class TqdmProgress:
    """A :data:`ProgressFn` that draws one tqdm bar per stage on stderr, described by the stage
    (``"refresh 2: fitting generator"``). Without tqdm installed it writes a line to stderr when a
    stage starts and when it ends."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._bar is None or stage != self._stage or done < self._bar.n:
            self.close()
            self._stage = stage
            self._bar = _tqdm(total, stage)
        bar = self._bar
        if bar is not None:
            bar.update(done - bar.n)
        elif done == 0 or done >= total:
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._stage = None


def _tqdm(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional for the core
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _progress(total: int, desc: str, progress: Progress):  # type: ignore[no-untyped-def]
    """A bar-like object for one stage (``update``, ``set_postfix``, ``close``), or None when silent."""
    if callable(progress):
        return _StageReporter(progress, desc, total)
    if not progress:
        return None
    return _tqdm(total, desc)


__all__ = [
    "CHECKSUM_KEY", "STAGE_FIT_DYNAMICS", "STAGE_FIT_GENERATOR", "CFDGGenerator", "CheckpointError", "FitStats",
    "Progress", "ProgressFn", "TqdmProgress", "atomic_save_safetensors", "check_progress", "load_safetensors",
    "sampling_stage", "tensors_checksum",
]
