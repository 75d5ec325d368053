"""`CFDGConfig`: every hyperparameter of the generator, the buffer mix and the refresh schedule.

A frozen dataclass in the style of d3rlpy's algorithm configs: build it once, validate it on
creation, pass it around, save it as JSON next to checkpoints. Two profiles are provided:

- :meth:`CFDGConfig.paper` — the values of the CFDG paper, which follows SynthER (Lu et al. 2023)
  and EDM (Karras et al. 2022). Sized for a GPU.
- :meth:`CFDGConfig.small` — a CPU profile sized from measurements on a 2-core machine
  (see the docstring of :meth:`small` and docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Augmentation = Literal["cfdg", "unconditional", "none"]
LabelInjection = Literal["embedding", "concat"]
Guidance = float | Literal["auto"]
RealMix = Literal["fixed", "proportional", "keep_online"]
NextObsTarget = Literal["model", "delta", "absolute"]
Termination = Literal["model", "column"]
BehaviourScore = Literal["mahalanobis", "log_prob"]

#: Fields added after configs were first saved, with the value a file written before them meant:
#: a generator saved before ``behaviour_score`` holds log-likelihood thresholds; one saved before
#: ``behaviour_redraws`` replaced rejected rows by rejection sampling alone (and the RePaint
#: settings, with no redraw, change nothing: at these values they leave run ids as they were); one
#: saved before ``redraw_resample_sigma_max`` resampled RePaint's every noise level, and one saved
#: before ``redraw_in_terminal_search`` redrew the rows its terminal-rate search scanned; one saved
#: before ``warm_start_lr`` refitted at ``lr``.
SAVED_BEFORE_FIELD: dict[str, Any] = {"behaviour_score": "log_prob", "behaviour_redraws": 0,
                                      "redraw_steps": 20, "redraw_resample": 10,
                                      "redraw_resample_sigma_max": None, "redraw_in_terminal_search": True,
                                      "warm_start_lr": None}
DEFAULT_DONE_THRESHOLD = 0.5
#: The settings of the behaviour filter's redraws: with ``behaviour_redraws=0`` they change nothing
#: a run computes (run ids and reports leave them out then).
REDRAW_SETTINGS: tuple[str, ...] = ("redraw_steps", "redraw_resample", "redraw_resample_sigma_max",
                                    "redraw_in_terminal_search")

#: Fields a first fit on offline rows alone never reads: they act when sampling (solver, schedule,
#: guidance, redraws, clipping, pool sizes, precision), on the buffer's batches and refresh
#: schedule, or on later fits (``warm_start_steps``, ``warm_start_lr``; ``online_batch_fraction`` weights online rows,
#: of which a pre-fit has none). Two configs that agree outside them make the same pre-fit from the
#: same data and seed, so one pre-fit can serve both (:meth:`CFDGConfig.prefit_fields`; checked by
#: fitting both in tests/test_prefit.py).
PREFIT_INDEPENDENT_FIELDS: tuple[str, ...] = (
    "behaviour_redraws", "redraw_steps", "redraw_resample", "redraw_resample_sigma_max", "redraw_in_terminal_search",
    "online_batch_fraction", "guidance",
    "guidance_candidates", "guidance_interval", "sigma_min", "sigma_max", "rho", "sampler", "num_sample_steps",
    "s_churn", "s_tmin", "s_tmax", "s_noise", "warm_start_steps", "warm_start_lr", "synthetic_online_size",
    "synthetic_offline_size", "sampling_precision", "sampling_compile", "sample_batch_size", "clip_rewards",
    "clip_observations", "done_threshold", "ratio_offline", "ratio_online", "ratio_synthetic",
    "synthetic_online_fraction", "real_mix", "refresh_every", "min_online", "refresh_lag",
)

AUGMENTATIONS: tuple[str, ...] = ("cfdg", "unconditional", "none")
SAMPLING_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "auto")


class ConfigError(ValueError):
    """A configuration field holds a value outside its documented domain."""


@dataclass(frozen=True)
class CFDGConfig:
    """Hyperparameters of CFDG.

    Every field is validated in ``__post_init__``; a bad value raises :class:`ConfigError` naming
    the field and what was expected.
    """

    # --- which augmentation the buffer performs -------------------------------------------------
    augmentation: Augmentation = "cfdg"
    """``"cfdg"``: one label-conditioned model, guided samples fill a synthetic offline and a
    synthetic online pool. ``"unconditional"``: one unlabelled model over offline + online data
    (SynthER-style), its samples fill a single synthetic pool. ``"none"``: real data only."""

    # --- denoiser network (SynthER residual MLP) -----------------------------------------------
    width: int = 1024
    """Hidden width of the residual MLP."""
    depth: int = 6
    """Number of residual blocks."""
    fourier_features: int = 16
    """Number of random-Fourier features of the noise-level embedding (SynthER: 16)."""
    label_injection: LabelInjection = "embedding"
    """How the offline/online/null label enters the denoiser. ``"embedding"``: a learned vector per
    label (3 x width) added to the noise-level embedding, so every residual block sees it through
    the shared input projection, and the null label is a real learned token (what CFG needs).
    ``"concat"``: a one-hot of the 3 labels concatenated to the input, as SynthER's ``cond_dim``."""
    p_uncond: float = 0.15
    """Probability of replacing the label by the null label during training (CFG label dropout;
    the paper does not state it, common values are 0.1-0.25)."""

    # --- what the model generates -----------------------------------------------------------------
    next_obs_target: NextObsTarget = "model"
    """How s' is generated. ``"model"``: the diffusion model generates (s, a, r) and s' = s + f(s, a)
    with f a regression MLP fitted on the real transitions at each fit (:mod:`cfdg_aug.dynamics`;
    exact enough for a learner on deterministic envs, where diffusion is not at CPU budgets);
    ``"delta"``: the diffusion model generates s' - s (standardised on its own), s' = s + (s' - s);
    ``"absolute"``: it generates s' directly (SynthER). Measured in docs/fidelity.md."""
    dynamics_steps: int | None = None
    """With ``next_obs_target="model"`` (refused otherwise): gradient steps (batch 256) of the
    dynamics model's first fit (None = half of ``train_steps``); a warm-started refit takes the
    same share of them as ``refit_steps`` of ``train_steps``. More is the lever on the generated
    next-state error:
    20,000 steps (4x the small profile's default of 5,000, half its ``train_steps``) cut it by
    35-40% on hopper and walker2d, both labels (walker2d online 0.39 -> 0.27), for 12-21% more fit
    CPU (docs/fidelity.md, "Learned next states on walker2d"). Not the default: in IQL runs on the
    random sets it lowered walker2d's return in 5 of 5 seeds and cost 11% of a run's wall time
    (docs/results/room/dynamics_xeon/README.md)."""
    behaviour_quantile: float | None = 0.2
    """Keep a generated row only if its action is as plausible in its state, under a behaviour model
    p(a | s, label) fitted on the real data at each fit, as all but this share of the real rows'
    actions are (by the statistic ``behaviour_score``; rejection sampling; None = no filter; box
    actions only). A diffusion model matches the joint (s, a) long before the conditional a | s
    that an actor imitates: unfiltered, a third of hopper's generated actions are less likely under
    the pre-trained IQL policy than 95% of the real ones, and they dominate IQL's actor loss. 0.2
    keeps about half of hopper's generated rows (~30% of walker2d's) and brings that third down to
    a tenth (9% thresholding the log-likelihood, 11% the distance; :mod:`cfdg_aug.behaviour`;
    docs/fidelity.md, "Actions a policy would take")."""
    behaviour_score: BehaviourScore = "mahalanobis"
    """With ``behaviour_quantile``: the statistic the filter thresholds. ``"mahalanobis"``: the
    action's squared distance from the behaviour model's mean in that state, in its standard
    deviations there (a row passes when it is no farther than all but the ``behaviour_quantile``
    share of the real rows are); ``"log_prob"``: log p(a | s, label), which also ranks states (it
    rejects more in states where the data's policy is broad), so the kept rows' states drift from
    the real ones and a classifier tells them apart: on walker2d (medium offline, expert online)
    online AUC 0.66 against 0.60 with ``"mahalanobis"``, same fit and quantile, mean of 5
    evaluations; on hopper 0.59 and 0.58; under the IQL policy both keep actions of about the
    same quality (docs/fidelity.md, "Which statistic the filter thresholds"). ``"log_prob"`` is
    the filter of runs made before this field existed."""
    behaviour_steps: int | None = None
    """With ``behaviour_quantile`` (refused without): gradient steps (batch 256) of the behaviour
    model's first fit (None = ``train_steps``: a model fitted for 2,000 steps is too broad to tell
    generated actions from real ones); a warm-started refit takes the same share of them as
    ``refit_steps`` of ``train_steps``."""
    behaviour_redraws: int = 0
    """With ``behaviour_quantile`` (refused without): how many times a rejected row keeps its
    generated state and gets a new action, reward, next state and done, drawn by the same model
    given that state (RePaint, :func:`~cfdg_aug.diffusion.edm.sample_repaint`), before the row is
    replaced by rejection sampling (0: rejection sampling alone). Rejection sampling rejects more in
    the states where the generated actions are worse, so the kept states are narrower than the
    data's (walker2d, medium offline, expert online: smallest per-dimension spread 0.69 of the real
    one, state-only classifier AUC 0.58 against 0.54 unfiltered); three redraws keep them (0.80,
    0.53) at an equal or better action quality, for up to ``redraws * redraw_steps *
    redraw_resample`` network evaluations per rejected row (fewer with ``redraw_resample_sigma_max``) (docs/fidelity.md, "Where walker2d's
    online AUC comes from"). 3 in the small profile (:meth:`small`, since 2026-12-02; IQL on the
    random sets: docs/results/room/redraws/); 0 here and in the paper profile, where its cost on a
    GPU was not measured."""
    redraw_steps: int = 20
    """Noise levels of a draw given the observations (the filter's redraws,
    ``sample_normalized(given_obs=...)``): a Karras schedule from ``sigma_max`` to ``sigma_min``,
    Euler steps."""
    redraw_resample: int = 10
    """Evaluations per noise level of a draw given the observations (RePaint's U); 1 is the
    replacement method, whose actions pass the filter at real walker2d states 7% of the time
    against 62% at 10."""
    redraw_resample_sigma_max: float | None = None
    """Resample (``redraw_resample`` evaluations) only the noise levels at or below this sigma of
    a draw given the observations; the levels above take one evaluation (None: every level, as
    RePaint). 3.0 in the small profile (since 2026-12-04): 128 evaluations per redraw instead of
    200 (``redraw_steps=20``, ``redraw_resample=10``; the count is the small profile schedule's)
    with the same online and offline AUC over five fits on walker2d and hopper; resampling only
    sigma <= 1 (92) raised the offline AUC in 5 of 5 fits (by 0.02 on average), and resampling
    only sigma >= 5 lost the redraws' gain (docs/benchmarks.md, "What a refresh's sampling
    costs"). The redraws were ~90% of a refresh's sampling time."""
    redraw_in_terminal_search: bool = False
    """With ``behaviour_redraws`` and ``match_terminal_rate``: whether the rows scanned for
    terminals, when a sample holds fewer than the real rate asks for, get the filter's redraws too.
    The search scans up to ``2 n`` rows for a handful of terminals (walker2d's online rate, 0.004%,
    asks for at most one row in 16,000) and drops the rest, so redrawing them made a refresh's
    sampling 1.4-2x longer whenever it ran; without, the scanned rows are filtered by rejection
    alone and the terminals found are the model's terminal rows that pass the filter
    (docs/benchmarks.md, "What a refresh's sampling costs"). True is what runs made before
    2026-12-04 did."""
    termination: Termination = "model"
    """How the ``done`` flag of a generated transition is decided. ``"model"``: computed from the
    generated (s, a, s') by the env's termination rule when the generator knows it (the
    integrations pass the env) or by a classifier fitted on the real transitions
    (:mod:`cfdg_aug.termination`); ``"column"``: ``done`` is a diffused column thresholded at
    ``done_threshold`` (SynthER; generates no terminals at real rates, docs/fidelity.md)."""
    terminal_oversample: float = 10.0
    """Sampling weight of terminal rows relative to the other rows of their label in generator
    training batches (1 = none): falls are rare tails the model under-generates (0.7-0.8x the real
    rate on hopper without it), and ``match_terminal_rate`` brings the rate back to the real one."""
    match_terminal_rate: bool = True
    """With ``termination="model"``: each sampled batch keeps as many of its terminal rows as the
    label's real terminal rate calls for (``CFDGGenerator.sample``), so a model that generates
    falls more (``terminal_oversample``) or less often than the data does not change the rate a
    learner sees."""
    online_batch_fraction: float | None = None
    """Share of each generator training batch drawn from the online label (None: rows drawn
    uniformly, so the smaller online label is seen in proportion to its size). 0.5 is what lets the
    warm refit that follows a :meth:`~cfdg_aug.buffer.AugmentedReplayBuffer.prefit` learn the
    online label, and it helped a first fit from scratch too (docs/fidelity.md, "Pre-fit and
    label-balanced batches"); the profiles keep None, under which the committed studies ran."""
    divergence_ratio: float = 3.0
    """A fit whose final loss is non-finite or above this multiple of the previous fit's final
    loss is treated as diverged: the previous model is restored and the buffer keeps its pools."""

    # --- classifier-free guidance ---------------------------------------------------------------
    guidance: Guidance = 0.0
    """Guidance weight w in eps = (1 + w) eps(x, c) - w eps(x, null). 0 = plain conditional
    sampling. The paper leaves w open; measured here, no w > 0 brought the generated online-like
    data closer to the real online data than w = 0, and w >= 1 moved it away on every task and budget
    tried, so 0 is the default
    (docs/method.md, "Where we depart from the paper"). ``"auto"`` picks w at each refresh from
    fidelity on a held-out split (see ``guidance_candidates``)."""
    guidance_candidates: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    """Weights tried when ``guidance == "auto"``."""
    guidance_interval: tuple[float, float] | None = None
    """Noise levels (sigma_lo, sigma_hi) where guidance is applied; plain conditional denoising
    outside (None: at every level). Guidance limited to the middle of the schedule is a known
    remedy for the loss of diversity strong guidance causes (docs/method.md)."""

    # --- EDM (Karras et al. 2022), SynthER values ---------------------------------------------
    sigma_data: float = 1.0
    """Standard deviation of the (normalised) data in EDM's preconditioning (1 after standardisation)."""
    sigma_min: float = 0.002
    """Smallest noise level of the sampling schedule."""
    sigma_max: float = 80.0
    """Largest noise level of the sampling schedule."""
    rho: float = 7.0
    """Curvature of the Karras sampling schedule (EDM Eq. 5)."""
    p_mean: float = -1.2
    """Mean of log(sigma) in the log-normal training noise distribution."""
    p_std: float = 1.2
    """Std of log(sigma) in the log-normal training noise distribution."""
    sampler: Literal["heun", "dpmpp_2m"] = "heun"
    """ODE solver of the sampler: ``"heun"`` (EDM Algorithm 2, 2 network evaluations per step but
    the last; the only one with churn) or ``"dpmpp_2m"`` (DPM-Solver++(2M), 1 evaluation per step,
    made for guided sampling). Measured against each other in docs/benchmarks.md."""
    num_sample_steps: int = 128
    """Steps of the sampling schedule (network evaluations: 2 per step but the last for Heun, 1 for
    DPM-Solver++(2M))."""
    s_churn: float = 0.0
    """EDM stochastic churn (0 = deterministic Heun sampler, the SynthER default)."""
    s_tmin: float = 0.05
    """Churn is applied only for sigma in [s_tmin, s_tmax]."""
    s_tmax: float = 50.0
    """Upper end of the churn range."""
    s_noise: float = 1.003
    """Scale of the churn noise (EDM's S_noise)."""

    # --- optimisation ---------------------------------------------------------------------------
    lr: float = 3e-4
    """Adam learning rate (SynthER: 3e-4)."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule over the steps of one (re)training."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    batch_size: int = 256
    """Generator training batch size."""
    train_steps: int = 100_000
    """Gradient steps per (re)training of the generator."""
    warm_start: bool = False
    """Continue from the previous fit's weights at each refresh instead of re-initialising
    (SynthER retrains from scratch; warm starts make refreshes cheaper)."""
    warm_start_steps: int | None = None
    """Gradient steps for a warm-started refit (None = ``train_steps``); refused unless ``warm_start``
    (the small profile drops its 2,500 when an override turns ``warm_start`` off)."""
    warm_start_lr: float | None = None
    """Peak learning rate of the denoiser's warm-started refit, under the same ``lr_schedule``
    (None = ``lr``); refused unless ``warm_start``. The dynamics and behaviour models keep their own.
    A 1,000-step refit at 2x ``lr`` did not match the 2,500-step refit at ``lr`` (docs/benchmarks.md,
    "How long a warm refit must be")."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of weights used for sampling."""
    grad_clip: float | None = 1.0
    """Gradient-norm clipping (None = off)."""
    bf16_autocast: bool | Literal["auto"] = "auto"
    """Train the denoiser under bfloat16 autocast. ``"auto"``: where the device has bf16 matrix units
    (CPUs with AVX512-BF16/AMX, GPUs with bf16), float32 elsewhere (emulated bf16 is slower). Measured
    on hopper at equal fidelity per CPU-second in docs/fidelity.md ("The generator's defaults");
    the resolved choice is ``CFDGGenerator.training_precision``. On one H200, eager bf16 trained the
    small and paper networks at 0.78-0.94x the steps/s of eager float32 at batch 256 and 1,024
    (kernel launches dominate there, and autocast adds casts), while bf16 with ``training_compile``
    was the fastest variant measured (compiled float32 was not measured; docs/benchmarks.md, "On a
    GPU"). ``"auto"`` still resolves to bf16 on such GPUs (one GPU model measured, and the choice
    keys shared pre-fits); for eager training there, ``False`` is faster."""
    training_compile: bool = False
    """``torch.compile`` the training loss (forward and backward of the denoiser): 1.31x more steps
    per CPU-second at the small profile's batch in bf16 on a 2-core CPU (docs/benchmarks.md,
    "Generator training step"), same arithmetic up to fused-kernel rounding. The first step of each
    process compiles (~10-20 s on a CPU); needs a C++ compiler on a CPU (Triton on a GPU), and
    without one it warns and trains eagerly. Off by default: a one-refresh run does not earn back
    the compile time, and the fidelity benchmarks ran eagerly."""

    # --- sampling and the synthetic pools ------------------------------------------------------
    synthetic_online_size: int = 800_000
    """Transitions generated with the online label at each refresh (size of the pool)."""
    synthetic_offline_size: int = 200_000
    """Transitions generated with the offline label at each refresh (size of the pool)."""
    sampling_precision: Literal["float32", "bfloat16", "auto"] = "auto"
    """Precision of the denoiser network while sampling. ``"bfloat16"`` evaluates a bf16 copy of the
    EMA network (the noise embedding, the sampler state and the guidance combination stay float32):
    2-4x faster on CPUs with AVX512-BF16/AMX, slow on CPUs without bf16 units, and 0.8-0.9x
    float32 on one H200 at chunks of 1,000 rows, where kernel launches dominate (larger chunks not
    measured; docs/benchmarks.md, "On a GPU"); sample
    fidelity matches float32 within seed noise (docs/fidelity.md). ``"auto"``: bfloat16 where the
    device has bf16 matrix units, float32 elsewhere (resolved: ``CFDGGenerator.sampling_dtype``).
    Samples then depend on the hardware's bf16 support, as they do on the device anyway."""
    sampling_compile: bool = False
    """``torch.compile`` the sampling network (fuses LayerNorm, SiLU and the residual adds around the
    matmuls). On a 2-core CPU (docs/benchmarks.md), guided sampling at width 256 runs 1.0-1.7x
    faster in either precision; at width 1024, where matmuls dominate, 0.9-1.4x. The first call
    compiles, 1-10 s per network and batch shape; a short last chunk is padded to the full one. Needs a C++
    compiler on a CPU (Triton on a GPU); without one it warns and samples eagerly. Samples differ
    from eager ones in the last bits (fused kernels round differently) and are deterministic on
    one machine. Off by default: the first refresh pays the compile time."""
    sample_batch_size: int = 100_000
    """Transitions generated per sampler chunk. On a GPU, large; on a CPU, small enough that the
    (2 x chunk, width) activations of the guided pass stay in cache (the small profile's 1,024 is
    ~1.7x faster than 5,000 in float32 on a 2-core machine, ~1.1x in bfloat16; docs/benchmarks.md)."""
    clip_rewards: bool = True
    """Clip generated rewards to the range of the real rewards."""
    clip_observations: bool = True
    """Clip generated observations to the range of the real observations."""
    done_threshold: float = DEFAULT_DONE_THRESHOLD
    """With ``termination="column"``: generated ``done`` values >= this become 1, others 0 (another
    value with ``termination="model"`` is refused: it would be ignored)."""

    # --- batch mix ------------------------------------------------------------------------------
    ratio_offline: float = 1.0
    """Share of real offline data in a batch (1 : 1 : 1 in the paper)."""
    ratio_online: float = 1.0
    """Share of real online data in a batch."""
    ratio_synthetic: float = 1.0
    """Share of synthetic data in a batch."""
    synthetic_online_fraction: float = 0.8
    """Fraction of the synthetic share drawn from the online-like pool (the paper's reweighting,
    online : offline = 8 : 2)."""
    real_mix: RealMix = "fixed"
    """How the real share of a batch (``ratio_offline + ratio_online``) is split between the real
    offline and real online pools. ``"fixed"``: ``ratio_offline : ratio_online`` from the first
    online transition on (the paper's 1 : 1). ``"proportional"``: in proportion to the pools'
    current sizes, i.e. uniformly over all real transitions, so the online share grows with the
    online pool (IQL's and CORL's fine-tuning append online data to the offline buffer).
    ``"keep_online"``: the real online pool gets the share of the batch it has under
    ``"proportional"`` *without* augmentation (its size over all real transitions), the synthetic
    share is as configured, and real offline rows fill the rest: synthetic rows replace offline
    ones only, so augmentation never dilutes the fresh data. With the default 1 : 1 : 1 it ends at
    the paper's mix once the online pool is half the offline one. Without augmentation it equals
    ``"proportional"``."""

    # --- refresh schedule -----------------------------------------------------------------------
    refresh_every: int = 100_000
    """Retrain the generator and regenerate the synthetic pools every this many online transitions
    (paper: 100K for IQL/PEX, 10K for APL)."""
    min_online: int = 10_000
    """No refresh before this many online transitions are stored."""
    refresh_lag: int = 0
    """Online transitions between the start of a refresh and the moment its synthetic pools replace
    the previous ones. 0: the refresh runs to completion when it is due (the paper's schedule; the
    learner waits for it). ``> 0``: it runs in a background process with the caller's torch thread
    count, fitted on the data stored when it started, while the learner keeps training on the
    previous pools; its pools are installed once this many more online transitions have been added,
    waiting for the process then if it has not finished (the install point is set by the count,
    never by the clock: same seed, same run). Worth it where the machine has a core to spare per
    learner; it needs a termination rule given as an env id, not a callable. Must be smaller than
    ``refresh_every``."""

    def __post_init__(self) -> None:
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        _check_choice("label_injection", self.label_injection, ("embedding", "concat"))
        _check_choice("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        _check_choice("sampling_precision", self.sampling_precision, SAMPLING_PRECISIONS)
        _check_choice("real_mix", self.real_mix, ("fixed", "proportional", "keep_online"))
        _check_choice("sampler", self.sampler, ("heun", "dpmpp_2m"))
        if self.sampler != "heun" and self.s_churn != 0:
            raise ConfigError(f"s_churn must be 0 with sampler={self.sampler!r} (a deterministic solver), "
                              f"got {self.s_churn!r}")
        _check_choice("next_obs_target", self.next_obs_target, ("model", "delta", "absolute"))
        _check_choice("termination", self.termination, ("model", "column"))
        _check_choice("behaviour_score", self.behaviour_score, ("mahalanobis", "log_prob"))
        _check_positive("terminal_oversample", self.terminal_oversample)
        if self.online_batch_fraction is not None:
            _check_range("online_batch_fraction", self.online_batch_fraction, 0.0, 1.0)
        _check_positive("divergence_ratio", self.divergence_ratio)
        if self.divergence_ratio <= 1:
            raise ConfigError(f"divergence_ratio must be > 1, got {self.divergence_ratio!r}")
        if self.bf16_autocast != "auto" and not isinstance(self.bf16_autocast, bool):
            raise ConfigError(f"bf16_autocast must be True, False or 'auto', got {self.bf16_autocast!r}")
        for name in ("sampling_compile", "training_compile", "warm_start", "clip_rewards", "clip_observations",
                     "match_terminal_rate", "redraw_in_terminal_search"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("width", "depth", "fourier_features", "num_sample_steps", "batch_size",
                     "train_steps", "sample_batch_size", "refresh_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("synthetic_online_size", "synthetic_offline_size", "min_online", "refresh_lag"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.refresh_lag >= self.refresh_every:
            raise ConfigError(f"refresh_lag must be smaller than refresh_every ({self.refresh_every}) so that one "
                              f"refresh is installed before the next starts, got {self.refresh_lag}")
        if self.warm_start_steps is not None:
            _check_int("warm_start_steps", self.warm_start_steps, minimum=1)
        if self.warm_start_lr is not None:
            _check_positive("warm_start_lr", self.warm_start_lr)
        if self.dynamics_steps is not None:
            _check_int("dynamics_steps", self.dynamics_steps, minimum=1)
        if self.behaviour_quantile is not None:
            _check_range("behaviour_quantile", self.behaviour_quantile, 0.0, 0.5)
        if self.behaviour_steps is not None:
            _check_int("behaviour_steps", self.behaviour_steps, minimum=1)
        _check_int("behaviour_redraws", self.behaviour_redraws, minimum=0)
        _check_int("redraw_steps", self.redraw_steps, minimum=1)
        _check_int("redraw_resample", self.redraw_resample, minimum=1)
        if self.redraw_resample_sigma_max is not None:
            _check_positive("redraw_resample_sigma_max", self.redraw_resample_sigma_max)
        inapplicable = self.inapplicable_settings()
        if inapplicable:
            raise ConfigError(next(iter(inapplicable.values())))
        if self.fourier_features % 2:
            raise ConfigError(f"fourier_features must be even (sin and cos halves), got {self.fourier_features}")
        _check_range("p_uncond", self.p_uncond, 0.0, 1.0, hi_open=True)
        _check_range("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        _check_range("synthetic_online_fraction", self.synthetic_online_fraction, 0.0, 1.0)
        _check_range("done_threshold", self.done_threshold, 0.0, 1.0)
        for name in ("sigma_data", "sigma_min", "sigma_max", "rho", "p_std", "lr", "s_noise"):
            _check_positive(name, getattr(self, name))
        for name in ("weight_decay", "s_churn", "s_tmin", "s_tmax", "ratio_offline", "ratio_online",
                     "ratio_synthetic"):
            _check_finite(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        _check_finite("p_mean", self.p_mean)
        if self.sigma_min >= self.sigma_max:
            raise ConfigError(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")
        if self.ratio_offline + self.ratio_online + self.ratio_synthetic <= 0:
            raise ConfigError("ratio_offline + ratio_online + ratio_synthetic must be > 0")
        if self.grad_clip is not None:
            _check_positive("grad_clip", self.grad_clip)
        if isinstance(self.guidance, str):
            if self.guidance != "auto":
                raise ConfigError(f"guidance must be a number >= 0 or 'auto', got {self.guidance!r}")
        else:
            _check_finite("guidance", self.guidance)
            if self.guidance < 0:
                raise ConfigError(f"guidance must be >= 0 or 'auto', got {self.guidance!r}")
        if self.guidance_interval is not None:
            gi = self.guidance_interval
            if (not isinstance(gi, (tuple, list)) or len(gi) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in gi)
                    or gi[0] > gi[1]):
                raise ConfigError(f"guidance_interval must be None or (sigma_lo, sigma_hi) with 0 <= sigma_lo <= "
                                  f"sigma_hi, got {gi!r}")
            object.__setattr__(self, "guidance_interval", (float(gi[0]), float(gi[1])))
        gc = self.guidance_candidates
        # A string would be iterated character by character ("0,1,2" -> "0", ","): refuse it whole,
        # showing the list syntax that works in Python, YAML and ``--set``.
        if not isinstance(gc, (tuple, list)):
            raise ConfigError(f"guidance_candidates must be a list of finite numbers >= 0, e.g. [0, 1, 2] "
                              f"(--set cfdg.guidance_candidates=[0,1,2]), got {gc!r}")
        if not gc:
            raise ConfigError("guidance_candidates must not be empty: give a list such as [0, 1, 2] "
                              "(--set cfdg.guidance_candidates=[0,1,2])")
        for w in gc:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"guidance_candidates must hold finite numbers >= 0, e.g. [0, 1, 2] "
                                  f"(--set cfdg.guidance_candidates=[0,1,2]), got {w!r} in {gc!r}")
        # A tuple, as annotated (a list from JSON or YAML would make the frozen config unhashable);
        # the values are kept as given, so the config's JSON (and a run id hashing it) is unchanged.
        object.__setattr__(self, "guidance_candidates", tuple(gc))

    def inapplicable_settings(self) -> dict[str, str]:
        """Settings that only apply together with another one that is off, each with the sentence
        that refuses it: set, they would be ignored, so the config refuses them instead (a profile
        drops its own value of one when an override turns its parent off)."""
        return _inapplicable({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    # --- profiles ---------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> CFDGConfig:
        """The paper's sizes and schedule (SynthER network and EDM settings, batch 256, 100K steps,
        128 Heun steps, 1 : 1 : 1 mix with 8 : 2 reweighting, refresh every 100K online steps), with
        this library's data guarantees (s' from the dynamics model, terminals from the env's rule,
        w = 0; docs/method.md says why); pass ``next_obs_target="delta"`` / ``guidance=...`` for the
        paper's single-model form. Needs a GPU."""
        check_known_fields(cls, overrides, "CFDGConfig field")
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> CFDGConfig:
        """A CPU profile for a 2-core machine, chosen by fidelity per CPU-second (docs/fidelity.md,
        "The generator's defaults").

        Width 256 / depth 3, batch 1,024 at lr 6e-4 under bf16 autocast where the CPU has bf16
        units: 10,000 steps (~190 CPU-seconds on one thread of an AVX512-BF16 CPU; in float32 on
        an AVX2-only CPU a first fit takes ~4.5-5 minutes on 2 threads) reach next-state physics
        error 0.03-0.05 and online AUC 0.55 unfiltered, 0.58 with the behaviour filter (means of
        five evaluations; one evaluation sat up to 0.06 from their mean) on hopper (medium offline, expert
        online), which 6,000 steps at batch 256 (the previous default) left at 0.23 and 0.80.
        A warm refit adds a quarter of that (docs/fidelity.md, "Verification at today's defaults");
        1,000 or 500 refit steps lose fidelity on both tasks (docs/benchmarks.md, "How long a warm
        refit must be").

        Sampling: DPM-Solver++(2M), 10 steps from sigma 20 to 0.06 (10 network evaluations per
        branch), which matches 32-step Heun (63 evaluations) within seed noise on hopper and
        walker2d (``benchmarks/bench_sampler.py``; docs/benchmarks.md "Few-step sampling").
        A row the behaviour filter rejects gets up to three new actions for its state
        (``behaviour_redraws=3``, since 2026-12-02; dropped with ``behaviour_quantile=None``): over
        three fits walker2d's online AUC goes from 0.601 to 0.574 (hopper's stays at 0.560), and
        IQL on the random sets feels no difference (docs/results/room/redraws/). A redraw resamples
        RePaint's noise levels up to sigma 3 only (``redraw_resample_sigma_max=3.0``, since
        2026-12-04: 128 network evaluations instead of 200, same fidelity). To turn the
        filter off on a config made here with :meth:`replace`, pass ``behaviour_redraws=0`` too.
        """
        base: dict[str, Any] = dict(
            width=256, depth=3, sampler="dpmpp_2m", num_sample_steps=10, sigma_max=20.0, sigma_min=0.06,
            train_steps=10_000, batch_size=1_024, lr=6e-4,
            warm_start=True, warm_start_steps=2_500, ema_decay=0.995, synthetic_online_size=16_000,
            synthetic_offline_size=4_000, sample_batch_size=1_024, refresh_every=5_000,
            min_online=2_000, behaviour_redraws=3, redraw_resample_sigma_max=3.0,
        )
        # Unknown names are refused here with the known ones, not by dataclass __init__'s TypeError.
        check_known_fields(cls, overrides, "CFDGConfig field")
        if overrides.get("warm_start") is False:  # the profile's refit length goes with its warm start
            base.pop("warm_start_steps")
        if "behaviour_quantile" in overrides and overrides["behaviour_quantile"] is None:
            base.pop("behaviour_redraws")  # and its redraws with its behaviour filter
        base.update(overrides)
        return cls(**base)

    # --- (de)serialisation ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> CFDGConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["guidance_candidates"] = list(self.guidance_candidates)
        if self.guidance_interval is not None:
            d["guidance_interval"] = list(self.guidance_interval)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CFDGConfig:
        check_known_fields(cls, d, "CFDGConfig field")
        d = dict(d)
        if "guidance_candidates" in d:
            d["guidance_candidates"] = tuple(d["guidance_candidates"])
        if d.get("guidance_interval") is not None:
            d["guidance_interval"] = tuple(d["guidance_interval"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> CFDGConfig:
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> CFDGConfig:
        """The config of a saved generator or buffer: like :meth:`from_dict`, but a field the file
        predates takes the value that reproduces what was saved (:data:`SAVED_BEFORE_FIELD`), not
        today's default, and a setting that had no effect there (:meth:`inapplicable_settings`;
        versions before 2026-12-02 accepted them) is dropped."""
        d = {**SAVED_BEFORE_FIELD, **d}
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name in _inapplicable({**defaults, **d}):
            d[name] = defaults[name]
        return cls.from_dict(d)

    def prefit_fields(self) -> dict[str, Any]:
        """The fields a pre-fit (a first fit on offline rows alone) depends on: :meth:`to_dict`
        without :data:`PREFIT_INDEPENDENT_FIELDS`. Equal for two configs means one pre-fit serves both."""
        return {k: v for k, v in self.to_dict().items() if k not in PREFIT_INDEPENDENT_FIELDS}

    # --- derived quantities -----------------------------------------------------------------------
    @property
    def refit_steps(self) -> int:
        """Gradient steps of a warm-started refit."""
        return self.warm_start_steps if self.warm_start_steps is not None else self.train_steps

    @property
    def refit_lr(self) -> float:
        """Peak learning rate of a warm-started refit."""
        return self.warm_start_lr if self.warm_start_lr is not None else self.lr

    @property
    def behaviour_fit_steps(self) -> int:
        """Gradient steps of the behaviour model's first fit (``behaviour_steps``, default ``train_steps``)."""
        return self.behaviour_steps if self.behaviour_steps is not None else self.train_steps

    @property
    def dynamics_fit_steps(self) -> int:
        """Gradient steps of the dynamics model's first fit (``dynamics_steps``, default half of
        ``train_steps``)."""
        return self.dynamics_steps if self.dynamics_steps is not None else max(1, self.train_steps // 2)


def check_known_fields(cls: type, d: Any, what: str) -> None:
    """Raise :class:`ConfigError` naming the keys of ``d`` that are not fields of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def check_device(device: Any, name: str = "device", *, available: bool = True) -> str:
    """Refuse a device torch cannot parse (or, with ``available``, one this machine lacks), naming
    the setting ``name``; returns the device as a string.

    Checked up front because torch and d3rlpy accept a device string lazily: "banana" fails at
    the first tensor placed on it (the generator's first refresh), "cuda" on a CPU-only build
    ends in ``AssertionError: Torch not compiled with CUDA enabled`` once training starts."""
    import torch

    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise ConfigError(f"{name} must be a torch device string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:0', got {device!r}") from None
    text = str(device)
    if not available or dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support (a CPU-only build)" if not torch.backends.cuda.is_built()
                   else "torch.cuda.is_available() is False (no visible GPU or driver)")
            raise ConfigError(f"{name} {text!r} is not available: {why}; use 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{name} {text!r} is not available: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}")
        return text
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        raise ConfigError(f"{name} {text!r} is not available: torch.{dev.type}.is_available() is False; use 'cpu'")
    return text


def _inapplicable(v: dict[str, Any]) -> dict[str, str]:
    """:meth:`CFDGConfig.inapplicable_settings` on a mapping of every field's value."""
    out = {}
    if v["warm_start_steps"] is not None and not v["warm_start"]:
        out["warm_start_steps"] = (f"warm_start_steps={v['warm_start_steps']!r} applies only with warm_start=True "
                                   f"(a refit starts cold otherwise): set warm_start=True or drop warm_start_steps")
    if v["warm_start_lr"] is not None and not v["warm_start"]:
        out["warm_start_lr"] = (f"warm_start_lr={v['warm_start_lr']!r} applies only with warm_start=True "
                                f"(a refit starts cold otherwise): set warm_start=True or drop warm_start_lr")
    if v["dynamics_steps"] is not None and v["next_obs_target"] != "model":
        out["dynamics_steps"] = (f"dynamics_steps={v['dynamics_steps']!r} applies only with next_obs_target='model' "
                                 f"(got {v['next_obs_target']!r}, which fits no dynamics model): drop it or set "
                                 f"next_obs_target='model'")
    if v["behaviour_steps"] is not None and v["behaviour_quantile"] is None:
        out["behaviour_steps"] = (f"behaviour_steps={v['behaviour_steps']!r} applies only with a behaviour filter "
                                  f"(behaviour_quantile is None, so no behaviour model is fitted): drop it or set "
                                  f"behaviour_quantile")
    if v["behaviour_score"] != "mahalanobis" and v["behaviour_quantile"] is None:
        out["behaviour_score"] = (f"behaviour_score={v['behaviour_score']!r} applies only with a behaviour filter "
                                  f"(behaviour_quantile is None): drop it or set behaviour_quantile")
    if v["behaviour_redraws"] and v["behaviour_quantile"] is None:
        out["behaviour_redraws"] = (f"behaviour_redraws={v['behaviour_redraws']!r} applies only with a behaviour "
                                    f"filter (behaviour_quantile is None: no row is rejected): drop it or set "
                                    f"behaviour_quantile")
    if v["done_threshold"] != DEFAULT_DONE_THRESHOLD and v["termination"] != "column":
        out["done_threshold"] = (f"done_threshold={v['done_threshold']!r} applies only with termination='column' "
                                 f"(got {v['termination']!r}: done comes from the termination rule or its "
                                 f"classifier): drop it or set termination='column'")
    return out


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    _check_finite(name, value)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _check_range(name: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> None:
    _check_finite(name, value)
    if value < lo or value > hi or (hi_open and value == hi):
        bracket = ")" if hi_open else "]"
        raise ConfigError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")


def check_folder(path: str | os.PathLike[str], name: str) -> None:
    """Refuse an output folder ``path`` (the setting ``name``) that is a file or sits under one,
    before anything is computed for it (``mkdir`` would otherwise fail at the end, after the work)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{name} {p} is a file, expected a folder")
    ancestor = p
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{name} {p} cannot be created: {ancestor} is a file")


__all__ = ["AUGMENTATIONS", "PREFIT_INDEPENDENT_FIELDS", "CFDGConfig", "ConfigError", "check_device", "check_folder", "check_known_fields"]
