"""`AugmentedReplayBuffer`: the four pools of CFDG, the batch mix and the refresh schedule.

Framework-agnostic core (numpy + the generator; never d3rlpy or stable-baselines3). The d3rlpy
and SB3 integrations wrap it.

Pools
-----
Every pool stores transitions in one preallocated float32 matrix in the flat layout of
:class:`~cfdg_aug.transitions.TransitionLayout` (``[s, a, r, s', done]``, ``D = 2*obs_dim +
act_dim + 2`` columns; ``done`` is the last column, 0.0 or 1.0) plus a bool ``timeout`` vector
(time-limit truncation: the episode ended but the transition is not terminal). No per-transition
Python objects, so a stored transition costs ``4*D + 1`` bytes.

====  ======================  ===========================================================
src   pool                    contents
====  ======================  ===========================================================
0     ``real_offline``        :meth:`add_offline` data. Never evicted. Fixed capacity
                              (``offline_capacity``) or, with ``offline_capacity=None``,
                              grows by amortised doubling (first add allocates exactly).
1     ``real_online``         :meth:`add` data. Ring buffer (FIFO) of ``online_capacity``:
                              when full, the oldest transitions are overwritten.
2     ``synthetic_offline``   ``augmentation="cfdg"``: ``synthetic_offline_size`` samples with
                              the offline label. Rewritten at each refresh.
3     ``synthetic_online``    ``augmentation="cfdg"``: ``synthetic_online_size`` samples with
                              the online label. ``augmentation="unconditional"``: the single
                              synthetic pool, ``synthetic_online_size + synthetic_offline_size``
                              unlabelled samples (source 3 then means "synthetic, unlabelled";
                              pool 2 stays empty). Rewritten at each refresh.
====  ======================  ===========================================================

The mix: exact per-source counts
--------------------------------
:meth:`sample` (batch size ``B``) draws ``source_counts(B) = (k0, k1, k2, k3)`` transitions from
the pools, computed as follows (all arithmetic in exact rationals, ``fractions.Fraction`` of the
float config values, so the result never depends on float rounding):

1. Base weights ``w = (ratio_offline, ratio_online, ratio_synthetic * (1 - f),
   ratio_synthetic * f)`` with ``f = synthetic_online_fraction`` for ``"cfdg"``;
   ``(ratio_offline, ratio_online, 0, ratio_synthetic)`` for ``"unconditional"``;
   ``(ratio_offline, ratio_online, 0, 0)`` for ``"none"``. With ``real_mix="proportional"`` the
   first two are replaced by ``R * n_off / (n_off + n_on)`` and ``R * n_on / (n_off + n_on)``,
   ``R = ratio_offline + ratio_online`` and ``n_*`` the real pools' current sizes (uniform over
   the union of real data; unchanged when both are empty). With ``real_mix="keep_online"`` and
   augmentation, the online weight is ``T * n_on / (n_off + n_on)`` with ``T`` the sum of the
   three ratios (the online share of a batch without augmentation), at most ``T - S`` with ``S``
   the synthetic weight, and the offline weight is what is left, ``T - S - w_on``.
2. A pool is *available* when it holds at least one transition (synthetic pools are empty before
   the first refresh and always in mode ``"none"``). Unavailable pools get weight 0 and their
   total weight ``U`` is redistributed to the available **real** pools (0, 1) proportionally to
   their weights: ``e_i = w_i * (1 + U / R)`` with ``R`` the summed weight of the available real
   pools. If ``R == 0`` the weights of the available pools are used as they are (after the
   normalisation in step 4 this also spreads ``U`` proportionally); if every available pool then
   has weight 0, each available pool gets weight 1 (equal split).
3. If no pool is available, sampling raises :class:`EmptyBufferError`.
4. Largest-remainder (Hamilton) apportionment of ``B`` over ``e``: quota ``q_i = B * e_i / sum(e)``,
   ``k_i = floor(q_i)``, then the ``B - sum(k)`` remaining rows go one each to the pools with the
   largest fractional parts ``q_i - floor(q_i)``; ties go to the lower source index. A pool of
   weight 0 therefore never receives a row.

Example (defaults 1:1:1, f = 0.8, all pools filled, B = 256): quotas 85.33, 85.33, 17.07, 68.27
-> floors (85, 85, 17, 68), the one remaining row goes to source 0 (fractional part 1/3, tied
with source 1) -> (86, 85, 17, 68). Before the first refresh: (128, 128, 0, 0).

Within a pool, rows are drawn uniformly **with replacement** with the buffer's own seeded
``np.random.Generator``: one ``random(B)`` call per batch, row ``j`` (drawn for pool ``i``) is
``min(floor(u_j * size_i), size_i - 1)`` (a bias below ``size_i / 2**53``), so the same seed and
the same sequence of calls give the same batches. The returned batch is ordered by
source (all source-0 rows, then source 1, ...); ``batch.source`` tells which is which. Algorithms
that do not route by source do not care about the order; shuffle if yours does.

Refresh schedule
----------------
Let ``n = online_added_total`` (every transition ever passed to :meth:`add`, including those the
FIFO has since evicted) and ``m`` its value at the last refresh (0 before the first). A refresh is
*due* when ``augmentation != "none"``, ``n >= min_online`` and
``n // refresh_every > m // refresh_every``: once per crossing of a multiple of ``refresh_every``
(a batched add that jumps several multiples yields one refresh). With ``min_online <=
refresh_every`` the refreshes happen at ``refresh_every, 2*refresh_every, ...``; with a larger
``min_online`` the first one happens as soon as ``min_online`` is reached. :meth:`add` never
refreshes by itself (a refresh can take minutes); callers poll :meth:`maybe_refresh`, which the
integrations do after each environment step. :meth:`refresh` fits the generator on all stored real
data (offline with label 0, online with label 1; unlabelled in mode ``"unconditional"``), rewrites
the synthetic pools and calls the ``on_refresh`` hooks with :class:`RefreshStats`.

With ``refresh_lag > 0`` a due refresh starts in a background process instead
(:mod:`cfdg_aug._background`) on the data stored at that moment (``m`` is set then), batches keep
drawing from the previous pools, and :meth:`maybe_refresh` installs its generator and pools, calls
the hooks and returns its stats at the first call with ``n >= start + refresh_lag`` (waiting for the
process if it is still running). The count, not the clock, decides: a run is the same whatever the
fit's speed. :attr:`refresh_pending` says whether one is under way; :meth:`cancel_refresh` stops it.

Pre-fit
-------
The first refresh fits the generator from scratch (``train_steps``), later ones warm-start
(``refit_steps``, a quarter as many in the small profile). :meth:`prefit`, called once the offline
data is in and before the online phase, does that first fit on the real data stored then (the
offline data alone, when called before the online phase), so that
every scheduled refresh is a warm refit; pools and schedule are unchanged (batches draw real rows
until the first scheduled refresh, as without it). ``prefit(background=True)`` runs it in a
background process while the host pre-trains its agent; :meth:`maybe_refresh` installs the
generator at its first call after the process has finished, and waits for the process only when
the generator is first needed, at the start of the first scheduled refresh (or at :meth:`refresh`;
:meth:`save` waits for it too and stores it pending). Nothing before that refresh uses the generator, so where the install falls changes
nothing computed, and the learner goes on through the first ``min_online`` online steps instead of
waiting for a pre-fit that outlasts pre-training. The generator it installs is the one a
synchronous pre-fit makes: the same seed gives the same run either way. Pair it with
``online_batch_fraction=0.5``: a warm refit then learns the online label as well as a first fit
does (docs/fidelity.md, "Pre-fit and label-balanced batches").

Progress of a refresh
---------------------
A refresh takes seconds to minutes. ``refresh(progress=...)`` (and ``maybe_refresh``) report it:
``False`` silent; ``True`` one tqdm bar per stage on stderr; a callable
``fn(stage: str, done: int, total: int) -> None`` receives each stage (semantics in
:data:`cfdg_aug.generator.Progress`). The stages of refresh ``k`` (``k`` = :attr:`num_refreshes`
after it), in order: ``"refresh k: fitting dynamics"`` (gradient steps; only with
``next_obs_target="model"``), ``"refresh k: fitting behaviour model"`` (gradient steps; with
``behaviour_quantile`` and box actions), ``"refresh k: fitting generator"`` (gradient steps),
``"refresh k: choosing guidance"`` (``guidance="auto"`` only; total 1), then
``"refresh k: sampling offline-like"`` and ``"refresh k: sampling online-like"`` (rows; mode
``"unconditional"``: ``"refresh k: sampling unlabelled"``). A background refresh reports only
``"refresh k: waiting for the background fit"`` (total 1), and only when it must be waited for.
``progress=None`` uses the buffer's :attr:`~AugmentedReplayBuffer.refresh_progress` (constructor
argument, default ``False``), which is what refreshes triggered on schedule by the integrations use.

Memory
------
The constructor refuses (:class:`~cfdg_aug.config.ConfigError`, naming the settings) capacities and
synthetic pool sizes whose pools need more memory than the machine has available, and
:meth:`~AugmentedReplayBuffer.refresh` checks again before fitting that the synthetic pools can be
sampled, so that a size too large is never first noticed by a ``MemoryError`` minutes into a run.

Persistence
-----------
:meth:`save` writes one safetensors file (pools, counters, RNG state, config and the generator's
tensors and metadata, plus a sha256 checksum of all of them) to a temporary file in the same
directory and renames it into place; :meth:`load` reads it without unpickling and refuses a file
whose checksum does not match (:class:`BufferFileError` naming the file). Hooks and
``refresh_progress`` are not saved (they are code): set them again.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from cfdg_aug.config import CFDGConfig, ConfigError, check_device
from cfdg_aug.spaces import SpaceEncoding, check_dim
from cfdg_aug.termination import TerminationFn
from cfdg_aug.transitions import (
    SOURCE_NAMES,
    SOURCE_REAL_OFFLINE,
    SOURCE_REAL_ONLINE,
    SOURCE_SYNTHETIC_OFFLINE,
    SOURCE_SYNTHETIC_ONLINE,
    TransitionBatch,
    TransitionError,
    TransitionLayout,
)

if TYPE_CHECKING:  # the generator is imported lazily: only refresh/save/load touch it
    import torch

    from cfdg_aug._background import BackgroundRefresh
    from cfdg_aug.generator import CFDGGenerator, FitStats, Progress, ProgressFn

FORMAT_NAME = "cfdg_aug.AugmentedReplayBuffer"
FORMAT_VERSION = 2
_GEN_PREFIX = "generator."
_PENDING_PREFIX = "pending."
NUM_SOURCES = 4


class EmptyBufferError(ValueError):
    """Sampling was requested from a buffer (or pool) that holds no transitions."""


class BufferFileError(ValueError):
    """A saved buffer file is malformed, corrupt, or does not match what the caller expected."""


def available_memory_bytes() -> int | None:
    """Bytes of memory the OS can give this process now, or None when it cannot tell.

    ``MemAvailable`` of ``/proc/meminfo`` on Linux (free memory plus the page cache the kernel can
    drop), else ``os.sysconf`` free pages (macOS, other Unixes). One small function so that tests
    can monkeypatch it."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


# Settings only the buffer reads (the mix, the pools' sizes, the schedule, the guidance it passes to
# sample()): a given generator may differ in these; in every other field its config is the one that
# trains and samples, so a different value in the buffer's config would be silently ignored.
_BUFFER_ONLY_FIELDS = frozenset({
    "synthetic_online_size", "synthetic_offline_size", "ratio_offline", "ratio_online", "ratio_synthetic",
    "synthetic_online_fraction", "real_mix", "refresh_every", "min_online", "refresh_lag", "guidance",
    "guidance_candidates",
})


def _check_generator_config(generator_config: Any, config: CFDGConfig) -> None:
    """Refuse a generator whose config differs from the buffer's in a field the generator reads."""
    if not isinstance(generator_config, CFDGConfig) or generator_config == config:
        return
    theirs, ours = generator_config.to_dict(), config.to_dict()
    diff = [f"{k} (generator {theirs[k]!r}, config {ours[k]!r})" for k in ours
            if k not in _BUFFER_ONLY_FIELDS and theirs.get(k) != ours[k]]
    if diff:
        raise ValueError(
            f"generator.config differs from config in what the generator reads: {', '.join(diff)}; the "
            "generator's would apply and the buffer's be ignored: build the buffer with config=generator.config "
            "(changing only the mix, pool sizes, schedule or guidance) or a generator with this config"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_memory(parts: Sequence[tuple[str, int, int]], *, what: str, hint: str | None = None) -> None:
    """Raise :class:`~cfdg_aug.config.ConfigError` when arrays need more than the available memory.

    ``parts``: ``(setting, rows, bytes per row)`` for each array a setting sizes (the integrations add
    their host's own arrays). The error is one sentence naming each setting with its rows and bytes,
    the total against :func:`available_memory_bytes`, ``what`` the memory is for, and ``hint`` (what
    to change; default: lower the setting that needs the most). Nothing is checked when the available
    memory cannot be read."""
    needed = sum(rows * row_bytes for _, rows, row_bytes in parts)
    available = available_memory_bytes()
    if available is None or needed <= available:
        return
    listed = ", ".join(f"{name}={rows:,} rows ({_gib(rows * row_bytes)})" for name, rows, row_bytes in parts if rows)
    if hint is None:
        largest = max(parts, key=lambda p: p[1] * p[2])[0]
        hint = f"lower {largest}"
    raise ConfigError(
        f"{listed} need {_gib(needed)} of memory {what}, but only {_gib(available)} is available: {hint}"
    )


@dataclass
class RefreshStats:
    """What one refresh did; passed to the ``on_refresh`` hooks.

    ``refresh_index`` counts refreshes from 1; ``online_count`` is ``online_added_total`` when the
    refresh ran; ``fit`` is the generator's :class:`~cfdg_aug.generator.FitStats`. Wall-clock
    seconds: ``fit_seconds`` (training the generator), ``guidance_seconds`` (choosing w when
    ``guidance="auto"``, else 0) and ``sample_seconds`` (filling the synthetic pools).
    """

    refresh_index: int
    online_count: int
    fit: FitStats | None
    n_synthetic_offline: int
    n_synthetic_online: int
    fit_seconds: float
    sample_seconds: float
    guidance: float | None
    guidance_seconds: float = 0.0
    behaviour_accept_rate: float | None = None
    """Share of the generated rows that passed the behaviour filter when the online-like pool (the
    unlabelled pool of an unconditional model) was sampled; None without the filter."""
    diverged: bool = False
    """The generator fit diverged (:class:`~cfdg_aug.generator.FitStats`): the previous generator
    and synthetic pools were kept, nothing was sampled."""
    installed_count: int | None = None
    """``online_added_total`` when the new pools replaced the old ones: ``online_count`` for a
    synchronous refresh, ``online_count + refresh_lag`` for one run in the background."""
    wait_seconds: float = 0.0
    """Wall-clock seconds the caller waited at the install of a background refresh for its process
    to finish (0 when it had; a synchronous refresh's whole cost is in the other fields)."""

    def __repr__(self) -> str:
        # The fit's loss history (one float per step) is summarised as <N values, first, last>; the
        # full list stays at ``stats.fit.loss_history`` / :attr:`loss_history`.
        from cfdg_aug.generator import compact_repr

        return compact_repr(self)

    @property
    def loss_history(self) -> list[float]:
        """The fit's loss per gradient step (empty without fit stats)."""
        return list(getattr(self.fit, "loss_history", None) or [])

    def as_dict(self) -> dict[str, float | int | None]:
        """Flat scalars for loggers (the fit's loss history is left out)."""
        d: dict[str, float | int | None] = {
            "refresh_index": self.refresh_index,
            "online_count": self.online_count,
            "n_synthetic_offline": self.n_synthetic_offline,
            "n_synthetic_online": self.n_synthetic_online,
            "fit_seconds": self.fit_seconds,
            "sample_seconds": self.sample_seconds,
            "guidance_seconds": self.guidance_seconds,
            "guidance": self.guidance,
            "diverged": int(self.diverged),
            "behaviour_accept_rate": self.behaviour_accept_rate,
            "installed_count": self.installed_count,
            "wait_seconds": self.wait_seconds,
        }
        fit = self.fit
        for name in ("steps", "final_loss", "mean_loss", "n_offline", "n_online"):
            d[f"fit_{name}"] = getattr(fit, name, None) if fit is not None else None
        from cfdg_aug.generator import FIT_STAGES

        stages = getattr(fit, "stage_seconds", None) or {}
        for name in FIT_STAGES:  # always the same keys, None for a model the fit did not train
            d[f"fit_seconds_{name}"] = stages.get(name)
        return d


class _Pool:
    """Rows ``[0, size)`` of a preallocated ``(capacity, D)`` float32 matrix + bool timeouts."""

    __slots__ = ("flat", "timeout", "size")

    def __init__(self, dim: int, capacity: int) -> None:
        # np.empty: pages are only committed when written, so a 1M-row online pool costs
        # nothing until it fills.
        self.flat = np.empty((capacity, dim), dtype=np.float32)
        self.timeout = np.zeros(capacity, dtype=np.bool_)
        self.size = 0

    @property
    def capacity(self) -> int:
        return int(self.flat.shape[0])

    def resize(self, capacity: int) -> None:
        flat = np.empty((capacity, self.flat.shape[1]), dtype=np.float32)
        timeout = np.zeros(capacity, dtype=np.bool_)
        flat[: self.size] = self.flat[: self.size]
        timeout[: self.size] = self.timeout[: self.size]
        self.flat, self.timeout = flat, timeout

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes + self.timeout.nbytes)


def _check_capacity(name: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def base_weights(config: CFDGConfig, real_sizes: tuple[int, int] | None = None, *,
                 synthetic_available: bool = True) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """Step 1 of the mix rule (module docstring): exact per-source weights before redistribution.

    ``real_sizes``: (real offline, real online) pool sizes, needed with ``real_mix="proportional"``
    or ``"keep_online"``. ``synthetic_available=False`` (no synthetic pool filled yet):
    ``"keep_online"`` splits the real share as ``"proportional"`` does, as without augmentation.
    """
    r_off, r_on, r_syn = (Fraction(config.ratio_offline), Fraction(config.ratio_online),
                          Fraction(config.ratio_synthetic))
    if config.real_mix in ("proportional", "keep_online"):
        if real_sizes is None:
            raise ValueError(f"real_mix={config.real_mix!r} needs real_sizes=(n_offline, n_online)")
        n_off, n_on = (int(n) for n in real_sizes)
        if n_off + n_on > 0:
            if config.real_mix == "keep_online" and config.augmentation != "none" and synthetic_available:
                # The online rows a batch would have without augmentation; synthetic rows come
                # out of the offline share only.
                total = r_off + r_on + r_syn
                r_on = min(total * Fraction(n_on, n_off + n_on), total - r_syn)
                r_off = total - r_syn - r_on
            else:
                real = r_off + r_on
                r_off, r_on = real * Fraction(n_off, n_off + n_on), real * Fraction(n_on, n_off + n_on)
    if config.augmentation == "cfdg":
        f = Fraction(config.synthetic_online_fraction)
        return r_off, r_on, r_syn * (1 - f), r_syn * f
    if config.augmentation == "unconditional":
        return r_off, r_on, Fraction(0), r_syn
    return r_off, r_on, Fraction(0), Fraction(0)


def apportion(batch_size: int, weights: tuple[Fraction, ...], available: tuple[bool, ...]) -> tuple[int, ...]:
    """Steps 2-4 of the mix rule (module docstring): exact per-source row counts.

    ``weights`` are the base weights per source, ``available`` whether each pool is non-empty.
    """
    if not any(available):
        raise EmptyBufferError("cannot sample from an empty buffer: every pool holds 0 transitions")
    e = [w if a else Fraction(0) for w, a in zip(weights, available, strict=True)]
    unavailable = sum((w for w, a in zip(weights, available, strict=True) if not a), Fraction(0))
    real = (SOURCE_REAL_OFFLINE, SOURCE_REAL_ONLINE)
    r = sum((e[i] for i in real), Fraction(0))
    if unavailable > 0 and r > 0:
        for i in real:
            e[i] += unavailable * e[i] / r
    total = sum(e, Fraction(0))
    if total == 0:
        e = [Fraction(1) if a else Fraction(0) for a in available]
        total = sum(e, Fraction(0))
    quotas = [batch_size * x / total for x in e]
    counts = [math.floor(q) for q in quotas]
    remaining = batch_size - sum(counts)
    # Largest fractional part first; sorted() is stable, so equal parts keep source order.
    order = sorted(range(len(e)), key=lambda i: quotas[i] - counts[i], reverse=True)
    for i in order[:remaining]:
        counts[i] += 1
    return tuple(counts)


class AugmentedReplayBuffer:
    """Real offline + real online (FIFO) + two synthetic pools, mixed per batch; see the module
    docstring for the exact mix rule, the refresh schedule and the file format.

    Args:
        obs_dim, act_dim: sizes of one observation / action vector.
        online_capacity: FIFO size of the real online pool.
        offline_capacity: fixed size of the real offline pool, or None to grow it as needed.
        config: the CFDG configuration (default ``CFDGConfig.small()``, the CPU profile, as everywhere in
            the library; pass ``CFDGConfig.paper()`` on a GPU).
        seed: seeds the sampling RNG and (when the buffer builds it) the generator.
        device: torch device of the generator.
        generator: an existing generator (e.g. pre-trained); by default one is built on first use.
            Its config trains and samples, so it must equal ``config`` except in what only the
            buffer reads (the mix, the synthetic pool sizes, the refresh schedule, guidance);
            otherwise :class:`ValueError` names the differing fields.
        on_refresh: a hook called with :class:`RefreshStats` after each refresh.
        obs_encoding, act_encoding: the observation / action spaces as
            :class:`~cfdg_aug.spaces.SpaceEncoding` (None = unbounded real vectors). Generated
            rows are projected onto them: e.g. actions clipped to the env's bounds. The
            integrations build them from the host's spaces.
        termination: the env's termination rule for generated transitions (a callable or an env
            id with a known rule, see :mod:`cfdg_aug.termination`); None = a classifier fitted on
            the real data. Passed to the generator the buffer builds.
        refresh_progress: how refreshes report their progress when :meth:`refresh` /
            :meth:`maybe_refresh` get ``progress=None``, i.e. every refresh the integrations trigger
            on schedule: ``False`` (default) silent, ``True`` tqdm bars on stderr, or a callable
            ``fn(stage, done, total)`` (module docstring, "Progress of a refresh"). Also a
            settable attribute.

    Raises:
        ConfigError: the pools would need more memory than is available (module docstring, "Memory").
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        online_capacity: int = 1_000_000,
        offline_capacity: int | None = None,
        config: CFDGConfig | None = None,
        seed: int = 0,
        device: str = "cpu",
        generator: CFDGGenerator | None = None,
        on_refresh: Callable[[RefreshStats], None] | None = None,
        obs_encoding: SpaceEncoding | None = None,
        act_encoding: SpaceEncoding | None = None,
        termination: TerminationFn | str | None = None,
        refresh_progress: Progress = False,
    ) -> None:
        from cfdg_aug.generator import check_progress

        self.layout = TransitionLayout(obs_dim, act_dim)  # validates the dims
        self.obs_encoding = check_dim("obs_encoding", obs_encoding, obs_dim)
        self.act_encoding = check_dim("act_encoding", act_encoding, act_dim)
        self._termination = termination
        _check_capacity("online_capacity", online_capacity, allow_none=False)
        _check_capacity("offline_capacity", offline_capacity, allow_none=True)
        self.config: CFDGConfig = config if config is not None else CFDGConfig.small()
        if not isinstance(self.config, CFDGConfig):
            raise TypeError(f"config must be a CFDGConfig, got {type(self.config).__name__}")
        if self.config.augmentation == "none" and self.config.ratio_offline + self.config.ratio_online <= 0:
            raise ValueError(
                "augmentation='none' samples real data only, so ratio_offline + ratio_online must be > 0, "
                f"got {self.config.ratio_offline} + {self.config.ratio_online}"
            )
        if generator is not None and self.config.augmentation == "none":
            raise ValueError("generator must be None when config.augmentation == 'none'")
        if generator is not None:
            conditional = getattr(generator, "conditional", None)
            want = self.config.augmentation == "cfdg"
            if conditional is not None and bool(conditional) != want:
                raise ValueError(
                    f"generator.conditional is {conditional} but config.augmentation="
                    f"{self.config.augmentation!r} needs conditional={want}"
                )
            _check_generator_config(getattr(generator, "config", None), self.config)
        check_progress("refresh_progress", refresh_progress)
        if self.config.refresh_lag > 0 and generator is not None:
            from cfdg_aug.generator import CFDGGenerator

            if not isinstance(generator, CFDGGenerator):
                raise ValueError(
                    "refresh_lag > 0 refits the generator in another process, which rebuilds it from its "
                    f"saved state: generator must be a CFDGGenerator, got {type(generator).__name__} "
                    "(or set refresh_lag=0)"
                )
        self._check_lag_termination(termination)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.seed = int(seed)
        # Checked now: the generator (and with it the first use of the device) is built only at the
        # first refresh, minutes into a run.
        check_device(device, "device")
        self.device = device
        self._online_capacity = int(online_capacity)
        self._offline_fixed = offline_capacity is not None
        dim = self.layout.dim
        # Before allocating anything: numpy would fail with a MemoryError that names no setting (or,
        # for the synthetic pools, only after the first generator fit, minutes in).
        cfg, row = self.config, self._row_bytes
        parts = [("online_capacity", self._online_capacity, row), ("offline_capacity", int(offline_capacity or 0), row)]
        if cfg.augmentation != "none":
            parts += [("synthetic_online_size", cfg.synthetic_online_size, row),
                      ("synthetic_offline_size", cfg.synthetic_offline_size, row)]
        check_memory(parts, what=f"for the replay pools ({row} bytes per transition)")
        self.refresh_progress: Progress = refresh_progress
        """Progress reporting of refreshes called with ``progress=None`` (see the constructor)."""
        self._pools: list[_Pool] = [
            _Pool(dim, int(offline_capacity) if offline_capacity is not None else 0),
            _Pool(dim, self._online_capacity),
            _Pool(dim, 0),
            _Pool(dim, 0),
        ]
        self._online_pos = 0  # next ring slot to write
        self._online_added_total = 0
        self._added_at_last_refresh = 0
        self._num_refreshes = 0
        self._last_guidance: float | None = None
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._generator: CFDGGenerator | None = generator
        self._pending: BackgroundRefresh | None = None
        self.prefit_stats: FitStats | None = None
        """The stats of :meth:`prefit`'s fit, once it is done (not saved with the buffer)."""
        self.prefit_wait_seconds: float = 0.0
        """Seconds the caller waited at the install of a background :meth:`prefit` (0 if it had finished)."""
        self._prefit_hooks: list[Callable[[FitStats], None]] = []
        self._hooks: list[Callable[[RefreshStats], None]] = []
        self.last_guidance_choice: dict[str, Any] | None = None
        """With ``guidance="auto"``: the per-candidate scores of the last refresh's choice."""
        if on_refresh is not None:
            self.add_hook(on_refresh)
        self._proportional = self.config.real_mix in ("proportional", "keep_online")
        self._weights = base_weights(self.config, (0, 0) if self._proportional else None)
        self._count_cache: dict[tuple[int, tuple[bool, ...]], tuple[int, ...]] = {}
        self._source_cache: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def termination(self) -> TerminationFn | str | None:
        """The termination rule in effect for generated transitions: the constructor's, or the last
        :meth:`set_termination`'s (a callable, an env id, or None for a fitted classifier)."""
        return self._termination

    def set_termination(self, termination: TerminationFn | str | None) -> None:
        """The env's termination rule for generated transitions (a callable or an env id with a
        known rule), as the constructor's ``termination``; applies to the generator now and after
        :meth:`load` (an env id is saved, a callable is not)."""
        self._check_lag_termination(termination)
        self._termination = termination
        gen = self.generator
        if gen is not None:
            gen.set_termination(termination)

    def _check_lag_termination(self, termination: TerminationFn | str | None) -> None:
        if self.config.refresh_lag > 0 and termination is not None and not isinstance(termination, str):
            raise ValueError(
                "refresh_lag > 0 fits the generator in another process, which cannot receive a termination "
                "callable: pass the env id of a known rule (cfdg_aug.termination), None, or set refresh_lag=0"
            )

    # --- properties -------------------------------------------------------------------------------
    @property
    def generator(self) -> CFDGGenerator | None:
        """The generator (None for ``augmentation="none"``); built on first access."""
        if self._generator is None and self.config.augmentation != "none":
            from cfdg_aug.generator import CFDGGenerator

            self._generator = CFDGGenerator(
                self.obs_dim, self.act_dim, self.config, obs_encoding=self.obs_encoding,
                act_encoding=self.act_encoding, termination=self._termination,
                conditional=self.config.augmentation == "cfdg", device=self.device, seed=self.seed,
            )
        return self._generator

    @property
    def pool_sizes(self) -> dict[str, int]:
        """Number of stored transitions per pool, keyed by ``SOURCE_NAMES``."""
        return {name: p.size for name, p in zip(SOURCE_NAMES, self._pools, strict=True)}

    @property
    def num_offline(self) -> int:
        return self._pools[SOURCE_REAL_OFFLINE].size

    @property
    def num_online(self) -> int:
        return self._pools[SOURCE_REAL_ONLINE].size

    @property
    def online_added_total(self) -> int:
        """Every online transition ever added (evicted ones included)."""
        return self._online_added_total

    @property
    def num_refreshes(self) -> int:
        return self._num_refreshes

    @property
    def refresh_pending(self) -> bool:
        """Whether a background refresh (``refresh_lag > 0``) or pre-fit (:meth:`prefit`) has started and
        is not installed yet."""
        return self._pending is not None

    @property
    def refresh_running(self) -> bool:
        """Whether a background refresh (or pre-fit) is still fitting. Saving the buffer now would
        wait for it (the saved state holds its result), so a host that checkpoints can wait for a
        moment when this is False rather than stop its learner for the fit."""
        return self._pending is not None and not self._pending.done

    @property
    def online_capacity(self) -> int:
        return self._online_capacity

    @property
    def offline_capacity(self) -> int | None:
        """The fixed offline capacity, or None when the offline pool grows."""
        return self._pools[SOURCE_REAL_OFFLINE].capacity if self._offline_fixed else None

    @property
    def _row_bytes(self) -> int:
        """Bytes of one stored transition: ``D`` float32 columns plus the bool timeout."""
        return 4 * self.layout.dim + 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool arrays (allocated capacity, not just the stored rows)."""
        return sum(p.nbytes for p in self._pools)

    @property
    def rng(self) -> np.random.Generator:
        """The sampling RNG (exposed so wrappers can draw from the same stream)."""
        return self._rng

    # --- adding data ------------------------------------------------------------------------------
    def _validate(self, what: str, obs: Any, act: Any, rew: Any, next_obs: Any, done: Any,
                  timeout: Any) -> TransitionBatch:
        if isinstance(obs, (TransitionBatch, Mapping)):
            extra = [n for n, v in (("act", act), ("rew", rew), ("next_obs", next_obs), ("done", done),
                                    ("timeout", timeout)) if v is not None]
            if extra:
                raise TransitionError(
                    f"{what}: pass either a TransitionBatch/mapping as the first argument or separate arrays, "
                    f"not both (got extra {', '.join(extra)})"
                )
            return TransitionBatch.validated(obs, obs_dim=self.obs_dim, act_dim=self.act_dim)
        missing = [n for n, v in (("act", act), ("rew", rew), ("next_obs", next_obs), ("done", done))
                   if v is None]
        if missing:
            raise TransitionError(f"{what}: missing field(s) {', '.join(missing)}")
        return TransitionBatch.from_arrays(obs, act, rew, next_obs, done, timeout,
                                           obs_dim=self.obs_dim, act_dim=self.act_dim)

    def _flat_rows(self, batch: TransitionBatch) -> tuple[np.ndarray, np.ndarray]:
        flat = batch.flatten()
        timeout = (np.zeros(len(batch), dtype=np.bool_) if batch.timeout is None
                   else np.asarray(batch.timeout, dtype=np.bool_))
        return flat, timeout

    def add_offline(self, obs: Any, act: Any = None, rew: Any = None, next_obs: Any = None,
                    done: Any = None, timeout: Any = None) -> None:
        """Append real offline transitions (one or many; arrays, a mapping with our or D4RL names,
        or a :class:`TransitionBatch`). Shapes: obs/next_obs (N, obs_dim) or (obs_dim,), act
        (N, act_dim), rew/done/timeout (N,). Raises :class:`TransitionError` (bad input) or
        ``ValueError`` (fixed capacity exceeded); on error nothing is stored."""
        batch = self._validate("add_offline", obs, act, rew, next_obs, done, timeout)
        n = len(batch)
        pool = self._pools[SOURCE_REAL_OFFLINE]
        needed = pool.size + n
        if needed > pool.capacity:
            if self._offline_fixed:
                raise ValueError(
                    f"offline_capacity {pool.capacity} exceeded: {pool.size} stored + {n} added; "
                    "the offline pool never evicts (pass offline_capacity=None to grow it)"
                )
            new_cap = needed if pool.capacity == 0 else max(needed, 2 * pool.capacity)
            flat, timeout_a = self._flat_rows(batch)
            pool.resize(new_cap)
        else:
            flat, timeout_a = self._flat_rows(batch)
        pool.flat[pool.size:needed] = flat
        pool.timeout[pool.size:needed] = timeout_a
        pool.size = needed

    def add(self, obs: Any, act: Any = None, rew: Any = None, next_obs: Any = None,
            done: Any = None, timeout: Any = None) -> None:
        """Append real online transitions to the FIFO (same input forms as :meth:`add_offline`).

        When the FIFO is full the oldest transitions are overwritten. Never refreshes by itself:
        call :meth:`maybe_refresh`. On error nothing is stored and no counter moves."""
        batch = self._validate("add", obs, act, rew, next_obs, done, timeout)
        flat, timeout_a = self._flat_rows(batch)
        n = flat.shape[0]
        pool = self._pools[SOURCE_REAL_ONLINE]
        cap = pool.capacity
        if n >= cap:  # only the newest `cap` survive; they fill the ring from slot 0
            pool.flat[:] = flat[n - cap:]
            pool.timeout[:] = timeout_a[n - cap:]
            self._online_pos = 0
            pool.size = cap
        else:
            pos = self._online_pos
            first = min(n, cap - pos)
            pool.flat[pos:pos + first] = flat[:first]
            pool.timeout[pos:pos + first] = timeout_a[:first]
            rest = n - first
            if rest:
                pool.flat[:rest] = flat[first:]
                pool.timeout[:rest] = timeout_a[first:]
            self._online_pos = (pos + n) % cap
            pool.size = min(cap, pool.size + n)
        self._online_added_total += n

    # --- reading data -----------------------------------------------------------------------------
    def _batch_from_flat(self, flat: np.ndarray, timeout: np.ndarray, source: np.ndarray | None) -> TransitionBatch:
        """Field views into one (N, D) block: no per-field copies (they cost more than the gather
        on the sampling hot path). The views are strided, not C-contiguous; torch.from_numpy and
        torch.as_tensor accept them; call np.ascontiguousarray if a consumer needs contiguity."""
        lay = self.layout
        return TransitionBatch(
            obs=flat[:, lay.obs], act=flat[:, lay.act], rew=flat[:, lay.rew], next_obs=flat[:, lay.next_obs],
            done=flat[:, lay.done], timeout=timeout, source=source,
        )

    def _ordered_rows(self, source: int) -> tuple[np.ndarray, np.ndarray]:
        pool = self._pools[source]
        if source == SOURCE_REAL_ONLINE and pool.size == pool.capacity and self._online_pos:
            p = self._online_pos
            return (np.concatenate([pool.flat[p:], pool.flat[:p]]),
                    np.concatenate([pool.timeout[p:], pool.timeout[:p]]))
        return pool.flat[: pool.size].copy(), pool.timeout[: pool.size].copy()

    def pool_data(self, pool: int | str) -> TransitionBatch:
        """A copy of one pool's transitions (oldest first for the online FIFO), with ``source``."""
        i = self._pool_index(pool)
        flat, timeout = self._ordered_rows(i)
        return self._batch_from_flat(flat, timeout, np.full(flat.shape[0], i, dtype=np.int8))

    def offline_data(self) -> TransitionBatch:
        """A copy of the real offline pool, in insertion order."""
        return self.pool_data(SOURCE_REAL_OFFLINE)

    def online_data(self) -> TransitionBatch:
        """A copy of the real online pool, oldest first."""
        return self.pool_data(SOURCE_REAL_ONLINE)

    # --- sampling ---------------------------------------------------------------------------------
    def _available(self) -> tuple[bool, ...]:
        p = self._pools
        return (p[0].size > 0, p[1].size > 0, p[2].size > 0, p[3].size > 0)

    def source_counts(self, batch_size: int) -> tuple[int, int, int, int]:
        """Rows per source (0..3) that :meth:`sample` draws now for ``batch_size`` (module docstring)."""
        batch_size = _check_count("batch_size", batch_size, 1)
        if self._proportional:  # the weights follow the pool sizes: nothing worth caching
            sizes, available = (self._pools[0].size, self._pools[1].size), self._available()
            weights = base_weights(self.config, sizes, synthetic_available=available[2] or available[3])
            return apportion(batch_size, weights, available)  # type: ignore[return-value]
        key = (batch_size, self._available())
        counts = self._count_cache.get(key)
        if counts is None:
            counts = apportion(batch_size, self._weights, key[1])
            if len(self._count_cache) > 4096:  # batch sizes vary only in odd callers; bound the cache
                self._count_cache.clear()
            self._count_cache[key] = counts
        return counts  # type: ignore[return-value]

    def _source_column(self, counts: tuple[int, ...]) -> np.ndarray:
        col = self._source_cache.get(counts)
        if col is None:
            col = np.repeat(np.arange(NUM_SOURCES, dtype=np.int8), counts)
            if len(self._source_cache) > 4096:
                self._source_cache.clear()
            self._source_cache[counts] = col
        return col.copy()

    def sample(self, batch_size: int) -> TransitionBatch:
        """A mixed batch of ``batch_size`` transitions, rows ordered by source, ``.source`` set.

        Shapes: obs/next_obs (B, obs_dim), act (B, act_dim), rew/done (B,) float32 (strided views
        into one fresh (B, D) block owned by the batch), timeout (B,) bool, source (B,) int8.
        Raises :class:`EmptyBufferError` when every pool is empty."""
        counts = self.source_counts(batch_size)
        dim = self.layout.dim
        flat = np.empty((batch_size, dim), dtype=np.float32)
        timeout = np.empty(batch_size, dtype=np.bool_)
        # One RNG call for the whole batch (a Generator call costs more than the arithmetic):
        # row j of pool i is floor(u_j * size_i), clipped because u * size can round up to size.
        u = self._rng.random(batch_size)
        start = 0
        for pool, k in zip(self._pools, counts, strict=True):
            if k:
                end = start + k
                idx = (u[start:end] * pool.size).astype(np.intp)
                np.minimum(idx, pool.size - 1, out=idx)
                np.take(pool.flat, idx, axis=0, out=flat[start:end])
                np.take(pool.timeout, idx, out=timeout[start:end])
                start = end
        return self._batch_from_flat(flat, timeout, self._source_column(counts))

    def _pool_index(self, pool: int | str) -> int:
        if isinstance(pool, str):
            if pool not in SOURCE_NAMES:
                raise ValueError(f"pool must be one of {SOURCE_NAMES} or 0..3, got {pool!r}")
            return SOURCE_NAMES.index(pool)
        if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or not 0 <= pool < NUM_SOURCES:
            raise ValueError(f"pool must be one of {SOURCE_NAMES} or 0..3, got {pool!r}")
        return int(pool)

    def sample_from(self, pool: int | str, n: int) -> TransitionBatch:
        """``n`` transitions drawn uniformly with replacement from one pool (a ``SOURCE_*`` int or a
        name from ``SOURCE_NAMES``), with ``.source`` set. Uses the same RNG stream as :meth:`sample`."""
        i = self._pool_index(pool)
        n = _check_count("n", n, 0)
        p = self._pools[i]
        if p.size == 0:
            raise EmptyBufferError(f"cannot sample from pool {SOURCE_NAMES[i]!r}: it holds 0 transitions")
        idx = (self._rng.random(n) * p.size).astype(np.intp)
        np.minimum(idx, p.size - 1, out=idx)
        return self._batch_from_flat(p.flat[idx], p.timeout[idx], np.full(n, i, dtype=np.int8))

    # --- refresh ----------------------------------------------------------------------------------
    def _refresh_starts(self) -> bool:
        n, m, every = self._online_added_total, self._added_at_last_refresh, self.config.refresh_every
        return n >= self.config.min_online and n // every > m // every

    def _first_refresh_start(self) -> int:
        """The ``online_added_total`` at which the next scheduled refresh starts (:meth:`_refresh_starts`)."""
        every = self.config.refresh_every
        return max(self._online_added_total, self.config.min_online, (self._added_at_last_refresh // every + 1) * every)

    def _install_due(self) -> bool:
        job = self._pending
        # A background pre-fit only swaps the generator, which no batch uses before the first refresh:
        # installed as soon as it has finished, and waited for only at its install point (that refresh).
        return job is not None and (self._online_added_total >= job.install_at or (job.kind == "prefit" and job.done))

    def refresh_due(self) -> bool:
        """Whether :meth:`maybe_refresh` would do something now: the schedule in the module docstring
        calls for a refresh, or (``refresh_lag > 0``) a background refresh is due to be installed, or a
        background pre-fit has finished (or the first refresh needs it)."""
        if self.config.augmentation == "none":
            return False
        return self._refresh_starts() or self._install_due()

    def maybe_refresh(self, progress: Progress = None) -> RefreshStats | None:
        """What the schedule calls for now, else None. ``progress`` as for :meth:`refresh`
        (None: :attr:`refresh_progress`).

        ``refresh_lag == 0``: :meth:`refresh` when due. ``refresh_lag > 0``: first installs a
        background refresh whose lag has passed (waiting for its process if needed; returns its
        stats and calls the hooks), then starts the next one in the background when due. Either
        way a background :meth:`prefit` is installed first once its process has finished, or,
        waiting for it, when the first refresh starts (nothing returned for it; the pre-fit hooks
        are called)."""
        if self.config.augmentation == "none":
            return None
        stats = self._install_pending(progress) if self._install_due() else None
        if self._refresh_starts():
            if self.config.refresh_lag == 0:
                return self.refresh(progress=progress)
            self._start_background()
        return stats

    def _start_background(self) -> None:
        import torch

        from cfdg_aug._background import BackgroundRefresh

        self._check_refreshable()
        # Drawn here, from the buffer's stream, so that the child's held-out split (guidance="auto")
        # is reproducible while this process goes on sampling batches.
        seed = int(self._rng.integers(2**63))
        self._pending = BackgroundRefresh(self, install_at=self._online_added_total + self.config.refresh_lag,
                                          seed=seed, threads=torch.get_num_threads())
        self._added_at_last_refresh = self._online_added_total

    def cancel_refresh(self) -> bool:
        """Stop a background refresh that is not installed yet (its process is killed, its result
        dropped; the current pools stay). The schedule goes on from the next multiple of
        ``refresh_every``. Returns whether there was one. For the end of a run: the process would
        otherwise be stopped only when the buffer is garbage-collected."""
        if self._pending is None:
            return False
        self._pending.cancel()
        self._pending = None
        return True

    def _install_pending(self, progress: Progress = None) -> RefreshStats | None:
        """Wait for the background refresh, then install its generator and pools and call the hooks.
        A background :meth:`prefit` installs its generator only and returns None."""
        from cfdg_aug._background import RESULT_KEY, fit_stats_from_json, stats_from_json
        from cfdg_aug.generator import CFDGGenerator, TqdmProgress

        job, self._pending = self._pending, None  # a failed job is dropped: the schedule goes on
        assert job is not None
        report = self._progress_fn(progress) if not job.done else None
        what = "pre-fit" if job.kind == "prefit" else f"refresh {job.refresh_index}"
        name = f"{what}: waiting for the background fit"
        t0 = time.perf_counter()
        try:
            if report is not None:
                report(name, 0, 1)
            tensors, metadata = job.result()
            if report is not None:
                report(name, 1, 1)
            if job.kind == "prefit":
                self.prefit_wait_seconds = time.perf_counter() - t0
        finally:
            if isinstance(report, TqdmProgress):
                report.close()
        info = json.loads(metadata[RESULT_KEY])
        self._generator = CFDGGenerator.from_state_tensors(
            tensors, metadata, prefix=_GEN_PREFIX, device=self.device, expected_dims=(self.obs_dim, self.act_dim))
        # The rule in effect now, not the one of when the job started (set_termination since then).
        self._generator.set_termination(self._termination)
        if job.kind == "prefit":
            self._prefit_done(fit_stats_from_json(info["fit"]), background=True)
            return None
        stats = stats_from_json(info["stats"])
        stats.installed_count, stats.wait_seconds = self._online_added_total, time.perf_counter() - t0
        for source in (SOURCE_SYNTHETIC_OFFLINE, SOURCE_SYNTHETIC_ONLINE):
            flat = tensors[f"pool{source}.flat"].numpy()
            self._fill_synthetic(source, (flat, tensors[f"pool{source}.timeout"].numpy()) if len(flat) else None)
        self._num_refreshes = stats.refresh_index
        self._last_guidance = stats.guidance
        self.last_guidance_choice = info["guidance_choice"]
        if stats.diverged:
            fit = stats.fit
            warnings.warn(
                f"refresh {stats.refresh_index} (background, started at {stats.online_count} online transitions): "
                f"the generator fit diverged (final loss {getattr(fit, 'final_loss', float('nan')):.4g}, previous fit "
                f"{getattr(fit, 'previous_final_loss', None)}); the previous generator and synthetic pools are kept",
                RuntimeWarning, stacklevel=3,
            )
        for hook in self._hooks:
            hook(stats)
        return stats

    def add_hook(self, fn: Callable[[RefreshStats], None]) -> None:
        """Call ``fn(stats)`` after every refresh (hooks are not saved with the buffer)."""
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        self._hooks.append(fn)

    def _choose_guidance(
        self, heldout: tuple[TransitionBatch | None, TransitionBatch | None] | None
    ) -> tuple[float, dict[str, Any] | None]:
        """The guidance weight for this refresh, after the fit.

        A number in the config is used as is. ``"auto"`` scores each of
        ``config.guidance_candidates`` on the held-out real rows that :meth:`refresh` kept out of
        the fit (``cfdg_aug.diagnostics.choose_guidance``: the w whose online-labelled samples a
        classifier tells apart from held-out real online data the least, ties to the smaller w).
        """
        g = self.config.guidance
        if not isinstance(g, str):
            return float(g), None
        from cfdg_aug.diagnostics import auto_guidance_for_buffer  # lazy: diagnostics is optional at import

        gen = self.generator
        assert gen is not None
        w, info = auto_guidance_for_buffer(gen, None, None, self.config, self._rng, heldout=heldout)
        gen.default_guidance = w
        return w, info

    def _split_for_auto_guidance(
        self, offline: TransitionBatch | None, online: TransitionBatch | None
    ) -> tuple[TransitionBatch | None, TransitionBatch | None, tuple[TransitionBatch | None, TransitionBatch | None] | None]:
        """With ``guidance="auto"``, hold 10% of the real rows (at most 2,000 per pool) out of the
        fit so that w is chosen on transitions the generator has not seen."""
        if self.config.guidance != "auto" or self.config.augmentation != "cfdg":
            return offline, online, None
        from cfdg_aug.diagnostics import split_heldout

        def split(b: TransitionBatch | None) -> tuple[TransitionBatch | None, TransitionBatch | None]:
            if b is None or len(b) < 20:
                return b, None
            return split_heldout(b, 0.1, self._rng, max_heldout=2000)

        (off_fit, off_h), (on_fit, on_h) = split(offline), split(online)
        if on_h is None or len(on_h) < 10:
            # Checked before the fit so that a refresh that cannot choose w changes nothing.
            raise ValueError(
                f"guidance='auto' needs >= 10 held-out online transitions (10% of the online pool), but the "
                f"pool holds {0 if online is None else len(online)}: raise min_online to >= 100 or set a numeric guidance"
            )
        return off_fit, on_fit, (off_h, on_h)

    def _real_view(self, source: int) -> TransitionBatch | None:
        """Stored rows of a real pool as field views (no copy; order irrelevant for fitting)."""
        p = self._pools[source]
        if p.size == 0:
            return None
        flat = p.flat[: p.size]
        lay = self.layout
        return TransitionBatch(obs=flat[:, lay.obs], act=flat[:, lay.act], rew=flat[:, lay.rew],
                               next_obs=flat[:, lay.next_obs], done=flat[:, lay.done],
                               timeout=p.timeout[: p.size])

    def _check_synthetic(self, name: str, batch: TransitionBatch | None) -> tuple[np.ndarray, np.ndarray] | None:
        if batch is None or len(batch) == 0:
            return None
        try:
            checked = TransitionBatch.validated(batch, obs_dim=self.obs_dim, act_dim=self.act_dim)
        except TransitionError as e:
            raise TransitionError(f"generator output for pool {name!r} is invalid: {e}") from None
        return self._flat_rows(checked)

    def _fill_synthetic(self, source: int, rows: tuple[np.ndarray, np.ndarray] | None) -> None:
        pool = self._pools[source]
        if rows is None:
            pool.size = 0
            return
        flat, timeout = rows
        n = flat.shape[0]
        if pool.capacity != n:
            pool.flat = np.empty((n, self.layout.dim), dtype=np.float32)
            pool.timeout = np.zeros(n, dtype=np.bool_)
        pool.flat[:] = flat
        pool.timeout[:] = timeout
        pool.size = n

    def _progress_fn(self, progress: Progress) -> ProgressFn | None:
        """The callable a refresh reports to (None: silent); ``progress=None`` is :attr:`refresh_progress`."""
        from cfdg_aug.generator import TqdmProgress, check_progress

        check_progress("progress", progress)
        if progress is None:
            progress = self.refresh_progress
            check_progress("refresh_progress", progress)  # an attribute: may have been set to anything
        if callable(progress):
            return progress
        return TqdmProgress() if progress else None

    def prefit(self, *, background: bool = False, progress: Progress = None) -> FitStats | None:
        """Fit the generator on the real data stored now, without sampling (module docstring, "Pre-fit").

        Call it once the offline data is in and before the online phase: the generator's first fit
        (``config.train_steps`` steps) then happens here instead of inside the first scheduled
        refresh, which warm-starts from it (``config.refit_steps``). The pools, the refresh schedule
        and the batches are unchanged.

        Args:
            background: fit in a background process (:mod:`cfdg_aug._background`, with this
                process's torch thread count) and return at once, so the host can pre-train its
                agent meanwhile. :meth:`maybe_refresh` installs the generator once the process has
                finished, and waits for it only at the start of the first scheduled refresh (as does
                :meth:`refresh` called earlier, and :meth:`save`, which stores it pending;
                :attr:`prefit_wait_seconds` says how long an install waited). The generator is the one a synchronous pre-fit makes.
            progress: as for :meth:`refresh` (stages ``"pre-fit: fitting generator"`` ...).

        Returns:
            The fit's :class:`~cfdg_aug.generator.FitStats` (synchronous), None in the background
            (then :attr:`prefit_stats` once installed). A fit that diverged leaves the generator
            unfitted (warned): the first refresh then fits from scratch, as without a pre-fit.

        Raises:
            ValueError: ``augmentation="none"``; ``config.warm_start`` off (every refresh would fit
                from scratch, so a pre-fit is wasted); the generator was already fitted; a
                background refresh or pre-fit is under way.
            EmptyBufferError: both real pools are empty.
        """
        from cfdg_aug.generator import TqdmProgress

        self._check_prefit_allowed("prefit()")
        if background:
            import torch

            from cfdg_aug._background import BackgroundRefresh

            if self._termination is not None and not isinstance(self._termination, str):
                raise ValueError("prefit(background=True) fits the generator in another process, which cannot "
                                 "receive a termination callable: pass the env id of a known rule "
                                 "(cfdg_aug.termination), None, or pre-fit with background=False")
            # The child draws nothing from the buffer's stream: a seed of 0, so a background pre-fit
            # leaves the sampling RNG exactly where a synchronous one does.
            self._pending = BackgroundRefresh(self, install_at=self._first_refresh_start(), seed=0,
                                              threads=torch.get_num_threads(), kind="prefit")
            return None
        report = self._progress_fn(progress)
        stage: ProgressFn | None = None
        if report is not None:
            def stage(name: str, done: int, total: int) -> None:
                report(f"pre-fit: {name}", done, total)
        gen = self.generator
        assert gen is not None
        # Duck-typed generators may not take ``progress``: pass it only when someone listens.
        with_progress: dict[str, Any] = {} if stage is None else {"progress": stage}
        try:
            stats = gen.fit(self._real_view(SOURCE_REAL_OFFLINE), self._real_view(SOURCE_REAL_ONLINE), **with_progress)
        finally:
            if isinstance(report, TqdmProgress):
                report.close()
        return self._prefit_done(stats, background=False)

    def _check_prefit_allowed(self, what: str) -> None:
        self._check_refreshable(what)
        if not self.config.warm_start:
            raise ValueError("prefit() needs config.warm_start=True: without it every refresh fits the generator "
                             "from scratch and the pre-fit would be thrown away"
                             + (f" (called as {what})" if what != "prefit()" else ""))
        if self._pending is not None:
            raise ValueError(f"{what} cannot start while a background refresh or pre-fit is under way")
        if getattr(self._generator, "is_fitted", False):
            raise ValueError(f"{what} is for the generator's first fit, but the generator is already fitted")

    def install_prefit(self, generator: CFDGGenerator, stats: FitStats) -> FitStats:
        """Take a generator pre-fitted elsewhere as this buffer's :meth:`prefit` (a pre-fit shared
        between runs: ``prefit_generator`` in ``cfdg_aug.experiments``).

        The caller vouches that ``generator`` was pre-fitted on this buffer's offline data with its
        seed, termination rule and a config equal to this one outside
        :data:`~cfdg_aug.config.PREFIT_INDEPENDENT_FIELDS` (load it with
        ``CFDGGenerator.load(path, config=buffer.config)``); the run then goes on exactly as after
        its own pre-fit. What can be checked is: the config, dimensions, encodings, labels, seed,
        termination rule and the number of rows the fit saw.

        Args:
            generator: the fitted generator (it becomes this buffer's; not copied).
            stats: the :class:`~cfdg_aug.generator.FitStats` of its pre-fit (:attr:`prefit_stats`).

        Raises:
            ValueError: as :meth:`prefit`, or ``generator`` does not match this buffer.
        """
        self._check_prefit_allowed("install_prefit()")
        own = self.generator
        assert own is not None
        n_offline = self._pools[SOURCE_REAL_OFFLINE].size
        checks = {
            "config": (generator.config, self.config), "fitted": (generator.is_fitted, True),
            "dimensions": ((generator.obs_dim, generator.act_dim), (self.obs_dim, self.act_dim)),
            "space encodings": ((generator.obs_encoding.to_dict(), generator.act_encoding.to_dict()),
                                (own.obs_encoding.to_dict(), own.act_encoding.to_dict())),
            "conditional": (generator.conditional, own.conditional), "seed": (generator.seed, own.seed),
            "termination rule": (generator.termination_env, own.termination_env),
            "rows fitted on (offline, online)": ((stats.n_offline, stats.n_online), (n_offline, 0)),
        }
        wrong = [f"{name} {got!r} (this buffer: {want!r})" for name, (got, want) in checks.items() if got != want]
        if wrong or own.termination_fn is not None and own.termination_env is None:
            raise ValueError("install_prefit(): the generator was not pre-fitted for this buffer: "
                             + ("; ".join(wrong) or "this buffer's termination rule is a callable, which a "
                                "generator loaded from a file cannot carry"))
        self._generator = generator
        return self._prefit_done(stats, background=False)

    def add_prefit_hook(self, fn: Callable[[FitStats], None]) -> None:
        """Call ``fn(stats)`` once a pre-fit is in place (:meth:`prefit`, :meth:`install_prefit`; a
        background one when it is installed, before any refresh warm-starts from it, so
        :attr:`generator` is then the pre-fit itself). Not saved with the buffer."""
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        self._prefit_hooks.append(fn)

    def _prefit_done(self, stats: FitStats, *, background: bool) -> FitStats:
        self.prefit_stats = stats
        for hook in self._prefit_hooks:
            hook(stats)
        if getattr(stats, "diverged", False):
            warnings.warn(
                f"the generator's pre-fit{' (background)' if background else ''} diverged (final loss "
                f"{stats.final_loss:.4g}): the generator stays unfitted and the first refresh fits it from scratch",
                RuntimeWarning, stacklevel=4,
            )
        return stats

    def refresh(self, progress: Progress = None) -> RefreshStats:
        """Fit the generator on all stored real data and regenerate the synthetic pools.

        ``"cfdg"``: fit with labels (offline 0, online 1), then ``synthetic_offline_size`` samples
        with the offline label and ``synthetic_online_size`` with the online label, both at the
        guidance of :meth:`_choose_guidance`. ``"unconditional"``: fit without labels, then
        ``synthetic_offline_size + synthetic_online_size`` unlabelled samples into pool 3. The
        synthetic pools are replaced only after both samples succeeded.

        ``progress``: ``False`` silent; ``True`` a tqdm bar per stage on stderr
        (``"refresh 3: fitting generator"``); a callable ``fn(stage: str, done: int, total: int)``
        called with ``done = 0`` when each stage starts, as it advances, and with ``done == total``
        when it ends (module docstring, "Progress of a refresh", lists the stages); ``None``
        (default): :attr:`refresh_progress`. A generator passed in by the caller must accept
        ``progress=`` in ``fit`` and ``sample`` for its stages to be reported.

        Raises :class:`~cfdg_aug.config.ConfigError` before the fit, changing nothing, when the
        synthetic pools could not be sampled in the memory available now.

        A background refresh not installed yet (``refresh_lag > 0``) is installed first (waiting
        for it); this refresh then runs here, to completion."""
        from cfdg_aug.generator import TqdmProgress

        if self._pending is not None and self.config.augmentation != "none":
            self._install_pending(progress)
        report = self._progress_fn(progress)
        try:
            return self._refresh(report)
        finally:
            if isinstance(report, TqdmProgress):  # ours: no bar left drawn after an error
                report.close()

    def _check_refreshable(self, what: str = "refresh()") -> None:
        """What a refresh (or a pre-fit) needs, checked before anything is fitted or started."""
        if self.config.augmentation == "none":
            raise ValueError(f"{what} needs a generator, but config.augmentation == 'none'")
        if self._pools[SOURCE_REAL_OFFLINE].size == 0 and self._pools[SOURCE_REAL_ONLINE].size == 0:
            raise EmptyBufferError(f"{what} needs real data to fit the generator, but both real pools are empty")
        cfg = self.config
        # Sampling builds the new pools next to the old ones plus the sampler's working copies (about
        # twice the pools' size): check before the fit, not after it with a MemoryError.
        row = 2 * self._row_bytes
        check_memory([("synthetic_online_size", cfg.synthetic_online_size, row),
                      ("synthetic_offline_size", cfg.synthetic_offline_size, row)],
                     what=f"to sample the synthetic pools of refresh {self._num_refreshes + 1} (twice their size)",
                     hint="lower synthetic_online_size / synthetic_offline_size, or free memory")

    def _refresh(self, report: ProgressFn | None) -> RefreshStats:
        self._check_refreshable()
        mode, cfg = self.config.augmentation, self.config
        offline, online = self._real_view(SOURCE_REAL_OFFLINE), self._real_view(SOURCE_REAL_ONLINE)
        gen = self.generator
        assert gen is not None
        offline, online, heldout = self._split_for_auto_guidance(offline, online)
        k = self._num_refreshes + 1
        stage: ProgressFn | None = None
        if report is not None:
            def stage(name: str, done: int, total: int) -> None:
                report(f"refresh {k}: {name}", done, total)
        # Duck-typed generators may not take ``progress``: pass it only when someone listens.
        with_progress: dict[str, Any] = {} if stage is None else {"progress": stage}
        t0 = time.perf_counter()
        fit_stats = gen.fit(offline, online, **with_progress)
        t_fit = time.perf_counter()
        if getattr(fit_stats, "diverged", False):  # duck-typed generators may not report it
            return self._diverged_refresh(fit_stats, t_fit - t0)
        choose = mode == "cfdg" and isinstance(cfg.guidance, str)
        if stage is not None and choose:
            stage("choosing guidance", 0, 1)
        guidance, self.last_guidance_choice = self._choose_guidance(heldout) if mode == "cfdg" else (None, None)
        if stage is not None and choose:
            stage("choosing guidance", 1, 1)
        t1 = time.perf_counter()
        if mode == "cfdg":
            # A label with no real data behind it was never trained (its embedding is still random):
            # leave that synthetic pool empty, and the mix hands its share to the real pools.
            syn_off = gen.sample(cfg.synthetic_offline_size, "offline", guidance=guidance, **with_progress) \
                if cfg.synthetic_offline_size and offline is not None else None
            syn_on = gen.sample(cfg.synthetic_online_size, "online", guidance=guidance, **with_progress) \
                if cfg.synthetic_online_size and online is not None else None
        else:
            total = cfg.synthetic_offline_size + cfg.synthetic_online_size
            syn_off, syn_on = None, (gen.sample(total, None, **with_progress) if total else None)
        t2 = time.perf_counter()
        # Generators passed in by the caller may be simpler objects without the filter's stats.
        behaviour = getattr(gen, "last_behaviour_stats", None) if syn_on is not None else None
        # Validate both before writing either, so a bad sample leaves the old pools intact.
        rows_off = self._check_synthetic(SOURCE_NAMES[SOURCE_SYNTHETIC_OFFLINE], syn_off)
        rows_on = self._check_synthetic(SOURCE_NAMES[SOURCE_SYNTHETIC_ONLINE], syn_on)
        self._fill_synthetic(SOURCE_SYNTHETIC_OFFLINE, rows_off)
        self._fill_synthetic(SOURCE_SYNTHETIC_ONLINE, rows_on)
        self._num_refreshes += 1
        self._added_at_last_refresh = self._online_added_total
        self._last_guidance = guidance
        stats = RefreshStats(
            refresh_index=self._num_refreshes, online_count=self._online_added_total, fit=fit_stats,
            n_synthetic_offline=self._pools[SOURCE_SYNTHETIC_OFFLINE].size,
            n_synthetic_online=self._pools[SOURCE_SYNTHETIC_ONLINE].size,
            fit_seconds=t_fit - t0, sample_seconds=t2 - t1, guidance=guidance, guidance_seconds=t1 - t_fit,
            behaviour_accept_rate=None if not behaviour else float(behaviour["accept_rate"]),
            installed_count=self._online_added_total,
        )
        for hook in self._hooks:
            hook(stats)
        return stats

    def _diverged_refresh(self, fit_stats: FitStats, fit_seconds: float) -> RefreshStats:
        """The generator restored its previous model: keep the synthetic pools as they are."""
        warnings.warn(
            f"refresh {self._num_refreshes + 1} at {self._online_added_total} online transitions: the generator fit "
            f"diverged (final loss {fit_stats.final_loss:.4g}, previous fit {fit_stats.previous_final_loss}); the "
            "previous generator and synthetic pools are kept", RuntimeWarning, stacklevel=4,
        )
        self._num_refreshes += 1
        self._added_at_last_refresh = self._online_added_total
        stats = RefreshStats(
            refresh_index=self._num_refreshes, online_count=self._online_added_total, fit=fit_stats,
            n_synthetic_offline=self._pools[SOURCE_SYNTHETIC_OFFLINE].size,
            n_synthetic_online=self._pools[SOURCE_SYNTHETIC_ONLINE].size,
            fit_seconds=fit_seconds, sample_seconds=0.0, guidance=self._last_guidance, diverged=True,
            installed_count=self._online_added_total,
        )
        for hook in self._hooks:
            hook(stats)
        return stats

    # --- persistence ------------------------------------------------------------------------------
    def state_tensors(
        self, prefix: str = "", *, include_generator: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything needed to restore the buffer as CPU tensors + string metadata (no pickle).

        Tensors: ``pool{i}.flat`` (size_i, D) float32 and ``pool{i}.timeout`` (size_i,) bool for
        each source i (the online pool is stored in ring order; ``online_pos`` is in the
        metadata), plus the generator's tensors, keys prefixed ``generator.``. Metadata:
        ``cfdg_aug.buffer`` holds JSON (config, dims, capacities, counters, RNG state); the
        generator's own metadata keys follow, prefixed ``generator.`` (absent when the generator
        was never built). ``prefix`` is prepended to every tensor and metadata key (for embedding
        in another file, as the generator does). ``include_generator=False`` leaves the generator
        out (hosts that pickle the buffer and keep the model in a file of its own).

        A background refresh not installed yet (``refresh_lag > 0``) is waited for, and its result
        is stored too (its tensors and metadata keys prefixed ``pending.``, always with its
        generator), so that a buffer restored from the state installs it at the same online count."""
        import torch

        tensors: dict[str, torch.Tensor] = {}
        for i, p in enumerate(self._pools):
            # Copies: safetensors wants tensors that own exactly their storage.
            tensors[f"{prefix}pool{i}.flat"] = torch.from_numpy(p.flat[: p.size].copy())
            tensors[f"{prefix}pool{i}.timeout"] = torch.from_numpy(p.timeout[: p.size].copy())
        state = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "obs_encoding": self.obs_encoding.to_dict(),
            "act_encoding": self.act_encoding.to_dict(),
            "termination": self._termination if isinstance(self._termination, str) else None,
            "online_capacity": self._online_capacity,
            "offline_capacity": self.offline_capacity,
            "offline_allocated": self._pools[SOURCE_REAL_OFFLINE].capacity,
            "online_pos": self._online_pos,
            "online_added_total": self._online_added_total,
            "added_at_last_refresh": self._added_at_last_refresh,
            "num_refreshes": self._num_refreshes,
            "last_guidance": self._last_guidance,
            "rng": self._rng.bit_generator.state,
        }
        metadata = {f"{prefix}cfdg_aug.buffer": json.dumps(state)}
        if self._generator is not None and include_generator:
            gen_tensors, gen_meta = self._generator.state_tensors(prefix=prefix + _GEN_PREFIX)
            tensors.update(gen_tensors)
            metadata.update(gen_meta)
        if self._pending is not None:
            job = self._pending
            result_tensors, result_meta = job.result()
            tensors.update({f"{prefix}{_PENDING_PREFIX}{k}": v for k, v in result_tensors.items()})
            metadata.update({f"{prefix}{_PENDING_PREFIX}{k}": v for k, v in result_meta.items()})
            metadata[f"{prefix}{_PENDING_PREFIX}cfdg_aug.pending"] = json.dumps(
                {"install_at": job.install_at, "refresh_index": job.refresh_index, "kind": job.kind})
        return tensors, metadata

    @classmethod
    def from_state_tensors(
        cls,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        *,
        device: str = "cpu",
        expected_config: CFDGConfig | None = None,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        generator_cls: Any = None,
        prefix: str = "",
        generator: CFDGGenerator | None = None,
    ) -> AugmentedReplayBuffer:
        """Rebuild a buffer from :meth:`state_tensors` output (written with the same ``prefix``).

        ``expected_config`` / ``obs_dim`` / ``act_dim``, when given, must match what was saved
        (else :class:`BufferFileError` naming the fields). ``generator_cls`` (default
        :class:`~cfdg_aug.generator.CFDGGenerator`) must provide ``from_state_tensors``.
        ``generator``: use this generator instead of one stored in the state (whose tensors,
        if any, are then ignored)."""
        try:
            state = json.loads(metadata[f"{prefix}cfdg_aug.buffer"])
        except (KeyError, json.JSONDecodeError) as e:
            raise BufferFileError(f"not a saved AugmentedReplayBuffer (metadata 'cfdg_aug.buffer': {e})") from None
        if state.get("format") != FORMAT_NAME:
            raise BufferFileError(f"not a saved AugmentedReplayBuffer (format {state.get('format')!r})")
        if state.get("version") != FORMAT_VERSION:
            raise BufferFileError(f"unsupported buffer file version {state.get('version')!r}, expected {FORMAT_VERSION}")
        for name, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
            if want is not None and state[name] != want:
                raise BufferFileError(f"{name} mismatch: the file holds {name}={state[name]}, expected {want}")
        config = CFDGConfig.from_saved(state["config"])
        if expected_config is not None and expected_config != config:
            saved, want_d = config.to_dict(), expected_config.to_dict()
            diff = [f"{k} (file {saved[k]!r}, expected {want_d[k]!r})" for k in want_d if saved.get(k) != want_d[k]]
            raise BufferFileError("config mismatch: " + "; ".join(diff))
        buf = cls(
            state["obs_dim"], state["act_dim"], online_capacity=state["online_capacity"],
            offline_capacity=state["offline_capacity"], config=config, seed=state["seed"], device=device,
            obs_encoding=SpaceEncoding.from_dict(state["obs_encoding"]),
            act_encoding=SpaceEncoding.from_dict(state["act_encoding"]), termination=state["termination"],
        )
        dim = buf.layout.dim
        for i, p in enumerate(buf._pools):
            try:
                flat = tensors[f"{prefix}pool{i}.flat"].cpu().numpy()
                timeout = tensors[f"{prefix}pool{i}.timeout"].cpu().numpy()
            except KeyError as e:
                raise BufferFileError(f"buffer file lacks tensor {e}") from None
            if flat.dtype != np.float32 or flat.ndim != 2 or flat.shape[1] != dim:
                raise BufferFileError(f"pool{i}.flat must be float32 (N, {dim}), got {flat.dtype} {flat.shape}")
            if timeout.dtype != np.bool_ or timeout.shape != (flat.shape[0],):
                raise BufferFileError(f"pool{i}.timeout must be bool ({flat.shape[0]},), got {timeout.dtype} {timeout.shape}")
            n = flat.shape[0]
            if i == SOURCE_REAL_OFFLINE:
                cap = int(state["offline_allocated"])
            elif i == SOURCE_REAL_ONLINE:
                cap = p.capacity
            else:
                cap = n
            if n > cap:
                raise BufferFileError(f"pool{i} holds {n} rows, more than its capacity {cap}")
            if p.capacity != cap:
                p.flat = np.empty((cap, dim), dtype=np.float32)
                p.timeout = np.zeros(cap, dtype=np.bool_)
            p.flat[:n] = flat
            p.timeout[:n] = timeout
            p.size = n
        buf._online_pos = int(state["online_pos"])
        buf._online_added_total = int(state["online_added_total"])
        buf._added_at_last_refresh = int(state["added_at_last_refresh"])
        buf._num_refreshes = int(state["num_refreshes"])
        buf._last_guidance = state["last_guidance"]
        rng_state = state["rng"]
        if rng_state.get("bit_generator") != "PCG64":
            raise BufferFileError(f"unsupported RNG {rng_state.get('bit_generator')!r}, expected PCG64")
        buf._rng.bit_generator.state = rng_state
        pending_key = f"{prefix}{_PENDING_PREFIX}cfdg_aug.pending"
        if pending_key in metadata:
            from cfdg_aug._background import BackgroundRefresh

            job = json.loads(metadata[pending_key])
            pre = prefix + _PENDING_PREFIX
            buf._pending = BackgroundRefresh.completed(
                job["install_at"], job["refresh_index"], job.get("kind", "refresh"),
                {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)},
                {k[len(pre):]: v for k, v in metadata.items() if k.startswith(pre) and k != pending_key},
            )
        gen_prefix = prefix + _GEN_PREFIX
        if generator is not None:
            if (generator.obs_dim, generator.act_dim) != (buf.obs_dim, buf.act_dim):
                raise BufferFileError(
                    f"generator has obs_dim={generator.obs_dim}, act_dim={generator.act_dim}; the buffer needs "
                    f"obs_dim={buf.obs_dim}, act_dim={buf.act_dim}"
                )
            buf._generator = generator
        elif any(k.startswith(gen_prefix) for k in metadata):
            if generator_cls is None:
                from cfdg_aug.generator import CFDGGenerator as generator_cls
            buf._generator = generator_cls.from_state_tensors(
                dict(tensors), dict(metadata), prefix=gen_prefix, device=device,
                expected_dims=(buf.obs_dim, buf.act_dim),
            )
        return buf

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole buffer to one safetensors file, atomically (temp file in the same
        folder, fsync, ``os.replace``: a crash leaves the previous file or the new one), with a
        sha256 checksum of its tensors and metadata that :meth:`load` verifies. Missing folders are
        created. A path that cannot be written raises the ``OSError`` the OS gave, as one sentence
        naming it (``"cannot write buffer to <path>: <reason>"``); an existing file is left as it was."""
        from cfdg_aug.generator import atomic_save_safetensors

        tensors, metadata = self.state_tensors()
        atomic_save_safetensors(tensors, metadata, path, what="buffer")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        expected_config: CFDGConfig | None = None,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        generator_cls: Any = None,
    ) -> AugmentedReplayBuffer:
        """Read a file written by :meth:`save` (no unpickling); see :meth:`from_state_tensors`.
        A missing file raises ``FileNotFoundError``; an unreadable one, or one whose tensors or
        metadata no longer match the checksum stored at save (a damaged disk or copy),
        :class:`BufferFileError` naming the file. Files saved before checksums were stored load
        without the check."""
        from cfdg_aug.generator import load_safetensors

        tensors, metadata = load_safetensors(path, error=BufferFileError, what="buffer file")
        return cls.from_state_tensors(
            tensors, metadata, device=device, expected_config=expected_config, obs_dim=obs_dim,
            act_dim=act_dim, generator_cls=generator_cls,
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.pool_sizes.items())
        return (f"AugmentedReplayBuffer(obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
                f"augmentation={self.config.augmentation!r}, {sizes}, refreshes={self._num_refreshes})")


__all__ = [
    "AugmentedReplayBuffer", "BufferFileError", "EmptyBufferError", "RefreshStats", "apportion",
    "available_memory_bytes", "base_weights", "check_memory",
]
