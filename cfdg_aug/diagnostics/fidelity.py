"""Fidelity of generated transitions, guidance sweeps and the ``guidance="auto"`` rule.

What is measured for each label (online-labelled samples vs real online data, offline-labelled
samples vs real offline data; for an unconditional generator its one unlabelled sample vs each):

- ``auc``: two-sample classifier ROC AUC on a held-out split (:func:`stats.classifier_auc`);
  0.5 = indistinguishable from the real data;
- ``mmd2``: unbiased MMD^2, Gaussian kernel, median-heuristic bandwidth, on columns standardised
  by the real data (:func:`stats.mmd2`);
- a per-dimension summary (Wasserstein-1 per column in real standard deviations);
- with an ``env_id`` and MuJoCo installed: the physics error of the generated transitions
  (:mod:`physics`) against the real data's noise floor;
- optionally marginal and PCA plots (:mod:`plots`).

Sampling inside these functions reseeds the generator's own RNG from ``seed`` and restores its
state afterwards, so a report is reproducible and does not shift the samples the generator (or
the buffer holding it) draws next. Every guidance weight of a sweep starts from the SAME initial
noise (common random numbers), so differences between weights are not sampling noise.

The ``guidance="auto"`` rule (:func:`choose_guidance`), on real data held out for scoring:

    score(w) = (1 - lam) * |AUC_online(w) - 0.5| + lam * |AUC_offline(w) - 0.5|     (criterion "auc")
    score(w) = (1 - lam) * MMD2_online(w) + lam * MMD2_offline(w)                   (criterion "mmd")

with ``lam = offline_weight`` (default 0: only the online-labelled samples count; they make
up most of the synthetic data). The chosen w is the SMALLEST candidate whose score is within
``tol`` of the best score (default tol 0.02 in AUC, 2e-4 in MMD^2), because weaker guidance
keeps more diversity and a difference within the estimator's noise is no evidence for more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cfdg_aug.diagnostics import physics as _physics
from cfdg_aug.diagnostics.stats import classifier_auc, dimension_names, mmd2, per_dimension_summary
from cfdg_aug.transitions import SOURCE_SYNTHETIC_OFFLINE, SOURCE_SYNTHETIC_ONLINE, TransitionBatch

if TYPE_CHECKING:
    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.generator import CFDGGenerator

Criterion = Literal["auc", "mmd"]
DEFAULT_TOL: dict[str, float] = {"auc": 0.02, "mmd": 2e-4}
LABELS: tuple[str, str] = ("online", "offline")


# --- helpers ---------------------------------------------------------------------------------------
def _batch_or_none(name: str, b: Any) -> TransitionBatch | None:
    if b is None:
        return None
    if not isinstance(b, TransitionBatch):
        to_batch = getattr(b, "to_transition_batch", None)
        b = to_batch() if callable(to_batch) else TransitionBatch.validated(b)
    return b if len(b) > 0 else None


@contextlib.contextmanager
def _seeded(generator: Any, seed: int) -> Iterator[None]:
    """Reseed the generator's private torch RNG for the block, then restore its stream."""
    rng = getattr(generator, "_rng", None)
    if rng is None:
        yield
        return
    state = rng.get_state()
    rng.manual_seed(int(seed))
    try:
        yield
    finally:
        rng.set_state(state)


def _effective_guidance(generator: Any, guidance: float | None) -> float | None:
    if not generator.conditional:
        return None
    if guidance is not None:
        return float(guidance)
    g = generator.config.guidance
    if g != "auto":
        return float(g)
    # "auto" before any choice: sample() itself raises with the explanation.
    return None if generator.default_guidance is None else float(generator.default_guidance)


def actions_out_of_bounds(batch: TransitionBatch, low: Any, high: Any, atol: float = 1e-6) -> float:
    """Fraction of rows with an action component outside ``[low, high]`` (per-component (act_dim,)
    arrays or scalars)."""
    act = np.asarray(batch.act, dtype=np.float64)
    out = (act < np.asarray(low) - atol) | (act > np.asarray(high) + atol)
    return float(out.any(axis=1).mean()) if len(act) else 0.0


def compare(
    real: TransitionBatch, generated: TransitionBatch, *, seed: int = 0, max_n: int = 5000,
    per_dimension: bool = True, action_bounds: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Two-sample statistics of ``generated`` against ``real`` (both TransitionBatch of the same dims).

    ``action_bounds``: (low, high) of the action space for ``act_out_of_bounds`` (default: the real
    actions' range).

    Returns ``{"auc", "mmd2", "mmd_bandwidth", "w1_mean", "w1_max", "worst_dim", "mean_shift_max",
    "done_rate_real", "done_rate_generated", "act_out_of_bounds", "n_real", "n_generated"[, "dims"]}``.
    """
    if real.obs_dim != generated.obs_dim or real.act_dim != generated.act_dim:
        raise ValueError(
            f"real has obs_dim/act_dim {real.obs_dim}/{real.act_dim}, generated {generated.obs_dim}/{generated.act_dim}"
        )
    xr, xg = real.flatten(), generated.flatten()
    auc = classifier_auc(xr, xg, seed=seed, max_n=max_n)
    mm = mmd2(xr, xg, seed=seed, max_n=min(max_n, 2000))
    summ = per_dimension_summary(xr, xg, dimension_names(real.obs_dim, real.act_dim))
    out: dict[str, Any] = {
        "auc": auc["auc"], "mmd2": mm["mmd2"], "mmd_bandwidth": mm["bandwidth"],
        "w1_mean": summ["w1_mean"], "w1_max": summ["w1_max"], "worst_dim": summ["worst_dim"],
        "mean_shift_max": summ["mean_shift_max"], "done_rate_real": float(np.mean(real.done)),
        "done_rate_generated": float(np.mean(generated.done)), "n_real": len(real), "n_generated": len(generated),
        "act_out_of_bounds": actions_out_of_bounds(
            generated, *(action_bounds if action_bounds is not None else (real.act.min(0), real.act.max(0)))),
    }
    if per_dimension:
        out["dims"] = summ["dims"]
    return out


def _physics_section(env_id: str | None, floor: dict[str, float] | None, batch: TransitionBatch,
                     physics_n: int) -> dict[str, Any] | None:
    if env_id is None or floor is None:
        return None
    return _physics.physics_error(batch, env_id, max_transitions=physics_n, floor=floor)


def _floor(env_id: str | None, reals: Sequence[TransitionBatch | None], physics_n: int) -> tuple[dict | None, str | None]:
    """(noise floor, reason it is missing)."""
    if env_id is None:
        return None, "no env_id given"
    if not _physics.physics_available():
        return None, "mujoco / gymnasium not importable"
    parts = [b for b in reals if b is not None]
    if not parts:
        return None, "no real data"
    return _physics.noise_floor(TransitionBatch.concat(parts), env_id, max_transitions=physics_n), None


# --- reports -----------------------------------------------------------------------------------------
def fidelity_report(
    generator: CFDGGenerator, offline: Any, online: Any, *, env_id: str | None = None, n: int = 2000,
    guidance: float | None = None, seed: int = 0, physics_n: int = 500, per_dimension: bool = True,
    plot_dir: str | Path | None = None, plot_max_dims: int | None = None, terminal_n: int | None = None,
    evals: int = 1, _floor_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fidelity of a fitted generator's samples against real offline and online data.

    Args:
        generator: a fitted :class:`CFDGGenerator` (conditional or not).
        offline, online: real transitions (TransitionBatch, OfflineDataset or mapping; either may
            be None / empty, its section is then left out). Use data the generator did NOT train
            on where you can; see docs/fidelity.md.
        env_id: Gymnasium id or dataset name; enables the physics error when MuJoCo is installed.
        n: transitions generated per label.
        guidance: w for the labelled samples (None: the generator's configured / chosen weight).
        seed: reseeds sampling and the statistics (the generator's RNG stream is restored).
        physics_n: transitions re-simulated per section (and for the noise floor).
        plot_dir: when given, ``marginals.png`` and ``projection.png`` are written there
            (``plot_max_dims``: marginal panels for the first columns only).
        terminal_n: also generate this many transitions per label for the terminal rate (terminals
            are rare: 0.05-0.25% on hopper, so n = 2,000 holds a handful); reported against the
            real rate of the label in the generator's training data (``generator.terminal_rates``).
        evals: score this many times, with seeds ``seed``, ``seed + 1``, ... (a fresh sample,
            subsample and classifier each), and report the means (:func:`mean_report`). One
            evaluation's AUC sat up to 0.06 from the mean of five on the same generator (0.08
            offline; docs/fidelity.md): compare settings on means.

    Returns:
        ``{"guidance", "conditional", "n", "seed", "online": {...}, "offline": {...},
        "noise_floor", "physics_skipped", "plots"}``; each section holds :func:`compare`'s keys,
        ``"label"`` (the label sampled: "online" / "offline" / None), ``"physics"`` (dict or None)
        and, with ``terminal_n``, ``"terminal_rate"`` / ``"terminal_rate_real"`` /
        ``"terminal_n"``. Actions out of bounds are counted against the generator's action
        encoding where its bounds are finite, else against the real actions' range.
    """
    if not generator.is_fitted:
        raise ValueError("fidelity_report needs a fitted generator (call generator.fit first)")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 10:
        raise ValueError(f"n must be an int >= 10, got {n!r}")
    if isinstance(evals, bool) or not isinstance(evals, (int, np.integer)) or evals < 1:
        raise ValueError(f"evals must be an int >= 1, got {evals!r}")
    if evals > 1:
        cache = {} if _floor_cache is None else _floor_cache
        return mean_report([
            fidelity_report(generator, offline, online, env_id=env_id, n=n, guidance=guidance, seed=seed + j,
                            physics_n=physics_n, per_dimension=per_dimension, plot_dir=plot_dir if j == 0 else None,
                            plot_max_dims=plot_max_dims, terminal_n=terminal_n, _floor_cache=cache)
            for j in range(int(evals))])
    real = {"offline": _batch_or_none("offline", offline), "online": _batch_or_none("online", online)}
    if real["offline"] is None and real["online"] is None:
        raise ValueError("fidelity_report needs real offline or online transitions to compare with")
    if _floor_cache is not None and "floor" in _floor_cache:
        floor, why = _floor_cache["floor"], _floor_cache["why"]
    else:
        floor, why = _floor(env_id, [real["offline"], real["online"]], physics_n)
        if _floor_cache is not None:
            _floor_cache.update(floor=floor, why=why)
    w = _effective_guidance(generator, guidance)
    generated: dict[str, TransitionBatch] = {}
    with _seeded(generator, seed):
        if generator.conditional:
            for lab in LABELS:
                if real[lab] is not None:
                    generated[lab] = generator.sample(n, lab, guidance=guidance)  # type: ignore[arg-type]
        else:
            shared = generator.sample(n, None)
            generated = {lab: shared for lab in LABELS if real[lab] is not None}
    report: dict[str, Any] = {"guidance": w, "conditional": bool(generator.conditional), "n": int(n), "seed": int(seed),
                              "noise_floor": floor, "physics_skipped": why, "plots": None}
    for lab, gen in generated.items():
        rb = real[lab]
        assert rb is not None
        sec = compare(rb, gen, seed=seed, per_dimension=per_dimension, action_bounds=_action_bounds(generator, rb))
        sec["label"] = lab if generator.conditional else None
        sec["physics"] = _physics_section(env_id, floor, gen, physics_n)
        if terminal_n:
            with _seeded(generator, seed + 1):
                big = generator.sample(int(terminal_n), lab if generator.conditional else None,  # type: ignore[arg-type]
                                       guidance=guidance)
            raw = getattr(generator, "last_terminal_stats", None)
            if raw:  # the rate the model itself generated, before matching the real rate
                sec["terminal_rate_model"] = raw["generated_rate"]
            sec.update(terminal_rate=float(np.mean(big.done)), terminal_n=int(terminal_n),
                       terminal_rate_real=getattr(generator, "terminal_rates", {}).get(lab),
                       act_out_of_bounds=max(sec["act_out_of_bounds"],
                                             actions_out_of_bounds(big, *_action_bounds(generator, rb))))
        report[lab] = sec
    if plot_dir is not None:
        report["plots"] = _plots(real, generated, Path(plot_dir), seed, plot_max_dims)
    return report


def mean_report(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`fidelity_report` from several of the same generator under different seeds: every
    number is the mean over them (the share of actions out of bounds: the largest); the rest,
    including lists such as the per-dimension ``dims`` and the ``worst_dim``, is the first report's.
    Each label section gains ``auc_sd`` (sample standard deviation) and ``auc_evals`` (the AUC of
    each evaluation); the report gains ``evals`` and ``seeds``."""
    if not reports:
        raise ValueError("mean_report needs at least one report")

    def merge(key: str, values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            if not all(isinstance(v, dict) for v in values):  # e.g. the plots, drawn by the first only
                return first
            return {k: merge(k, [v[k] for v in values]) if all(k in v for v in values) else first[k] for k in first}
        numbers = [float(v) for v in values if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
        if len(numbers) != len(values) or key in ("seed", "n", "terminal_n", "guidance"):
            return first
        return float(np.max(numbers)) if key == "act_out_of_bounds" else float(np.mean(numbers))

    out = merge("", list(reports))
    out.update(evals=len(reports), seeds=[r["seed"] for r in reports])
    for lab in LABELS:
        if lab in out and out[lab] is not None:
            aucs = [float(r[lab]["auc"]) for r in reports]
            out[lab].update(auc_evals=aucs, auc_sd=float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0)
    return out


def _action_bounds(generator: Any, real: TransitionBatch) -> tuple[np.ndarray, np.ndarray]:
    """The action space's finite bounds (from the generator's encoding), else the real actions' range."""
    low, high = real.act.min(0).astype(np.float64), real.act.max(0).astype(np.float64)
    enc = getattr(generator, "act_encoding", None)
    if enc is not None and enc.is_box:
        lo = np.concatenate([np.asarray(s.low) for s in enc.segments])
        hi = np.concatenate([np.asarray(s.high) for s in enc.segments])
        low, high = np.where(np.isfinite(lo), lo, low), np.where(np.isfinite(hi), hi, high)
    return low, high


def _plots(real: dict[str, TransitionBatch | None], generated: dict[str, TransitionBatch], plot_dir: Path,
           seed: int, max_dims: int | None) -> dict[str, str]:
    from cfdg_aug.diagnostics.plots import plot_marginals, plot_projection

    groups: dict[str, np.ndarray] = {}
    for lab in LABELS:
        rb = real[lab]
        if rb is not None:
            groups[f"real {lab}"] = rb.flatten()
    seen: set[int] = set()
    for lab, gb in generated.items():
        if id(gb) in seen:  # an unconditional generator's one sample serves both sections
            continue
        seen.add(id(gb))
        shared = sum(g is gb for g in generated.values()) > 1
        groups["generated (unlabelled)" if shared else f"generated {lab}"] = gb.flatten()
    any_b = next(iter(generated.values()))
    names = dimension_names(any_b.obs_dim, any_b.act_dim)
    return {
        "marginals": str(plot_marginals(groups, plot_dir / "marginals.png", names, max_dims=max_dims)),
        "projection": str(plot_projection(groups, plot_dir / "projection.png", seed=seed)),
    }


def _check_weights(weights: Sequence[float]) -> list[float]:
    ws = [float(w) for w in weights]
    if not ws:
        raise ValueError("weights / candidates must not be empty")
    for w in ws:
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance weights must be finite numbers >= 0, got {w!r}")
    return ws


def guidance_sweep(
    generator: CFDGGenerator, offline: Any, online: Any, weights: Sequence[float], *, fit_steps: int | None = None,
    env_id: str | None = None, n: int = 2000, seed: int = 0, physics_n: int = 500, per_dimension: bool = False,
    progress: bool = False, terminal_n: int | None = None, evals: int = 1,
) -> list[dict[str, Any]]:
    """Fit once (only if the generator is not fitted yet), then one :func:`fidelity_report` per w.

    Returns one report per weight, in the order given. All weights share the seed, hence the
    same initial noise; the noise floor is computed once. ``evals``: as :func:`fidelity_report`'s.
    """
    if not generator.conditional:
        raise ValueError("guidance_sweep needs a conditional generator (guidance does nothing without labels)")
    ws = _check_weights(weights)
    if not generator.is_fitted:
        generator.fit(_batch_or_none("offline", offline), _batch_or_none("online", online), steps=fit_steps,
                      progress=progress)
    cache: dict[str, Any] = {}
    out = []
    for w in _progress(ws, "guidance sweep", progress):
        out.append(fidelity_report(generator, offline, online, env_id=env_id, n=n, guidance=w, seed=seed,
                                   physics_n=physics_n, per_dimension=per_dimension, terminal_n=terminal_n,
                                   evals=evals, _floor_cache=cache))
    return out


def _progress(it: Sequence[float], desc: str, enabled: bool) -> Any:
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional for the core: no bar then
        return it
    return tqdm(it, desc=desc)


# --- the auto rule -----------------------------------------------------------------------------------
def choose_guidance(
    generator: CFDGGenerator, offline_heldout: Any, online_heldout: Any, candidates: Sequence[float], *,
    n: int = 2000, seed: int = 0, criterion: Criterion = "auc", tol: float | None = None,
    offline_weight: float = 0.0,
) -> tuple[float, list[dict[str, float]]]:
    """Pick the guidance weight from fidelity on held-out real data (the ``guidance="auto"`` rule).

    For each candidate w (same initial noise for all), ``n`` online-labelled samples are compared
    with ``online_heldout`` (and, when ``offline_weight > 0``, ``n`` offline-labelled samples with
    ``offline_heldout``); ``score(w)`` is the weighted ``|AUC - 0.5|`` (criterion ``"auc"``) or
    MMD^2 (``"mmd"``). The result is the smallest w with ``score(w) <= min score + tol``.

    Returns:
        (chosen w, one row per candidate in the given order: ``{"guidance", "score",
        "online_auc" | "online_mmd2", ["offline_auc" | "offline_mmd2"], "chosen"}``).
    """
    if not generator.conditional:
        raise ValueError("choose_guidance needs a conditional generator")
    if not generator.is_fitted:
        raise ValueError("choose_guidance needs a fitted generator (call generator.fit first)")
    if criterion not in DEFAULT_TOL:
        raise ValueError(f"criterion must be 'auc' or 'mmd', got {criterion!r}")
    if not 0.0 <= offline_weight <= 1.0:
        raise ValueError(f"offline_weight must be in [0, 1], got {offline_weight!r}")
    tol = DEFAULT_TOL[criterion] if tol is None else float(tol)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    ws = _check_weights(candidates)
    held = {"online": _batch_or_none("online_heldout", online_heldout),
            "offline": _batch_or_none("offline_heldout", offline_heldout)}
    weights = {"online": 1.0 - offline_weight, "offline": offline_weight}
    for lab in LABELS:
        if weights[lab] > 0 and held[lab] is None:
            raise ValueError(f"choose_guidance: {lab}_heldout is empty but its weight in the score is {weights[lab]}")
    rows: list[dict[str, float]] = []
    for w in ws:
        row: dict[str, float] = {"guidance": w}
        score = 0.0
        for lab in LABELS:
            hb = held[lab]
            if weights[lab] == 0 or hb is None:
                continue
            with _seeded(generator, seed):
                gen = generator.sample(n, lab, guidance=w)  # type: ignore[arg-type]
            xr, xg = hb.flatten(), gen.flatten()
            if criterion == "auc":
                v = classifier_auc(xr, xg, seed=seed)["auc"]
                row[f"{lab}_auc"] = v
                score += weights[lab] * abs(v - 0.5)
            else:
                v = mmd2(xr, xg, seed=seed)["mmd2"]
                row[f"{lab}_mmd2"] = v
                score += weights[lab] * v
        row["score"] = score
        rows.append(row)
    best = min(r["score"] for r in rows)
    chosen = min(r["guidance"] for r in rows if r["score"] <= best + tol)
    for r in rows:
        r["chosen"] = float(r["guidance"] == chosen)
    return chosen, rows


def split_heldout(
    batch: TransitionBatch, fraction: float, rng: np.random.Generator, *, max_heldout: int | None = None,
) -> tuple[TransitionBatch, TransitionBatch]:
    """Random (train, held-out) split of ``batch``: ``round(fraction * N)`` rows held out (at
    least 1 when N >= 2, at most ``max_heldout``)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"heldout fraction must be in (0, 1), got {fraction!r}")
    n = len(batch)
    k = int(round(fraction * n))
    k = max(1, k) if n >= 2 else 0
    if max_heldout is not None:
        k = min(k, max_heldout)
    perm = rng.permutation(n)
    return batch[np.sort(perm[k:])], batch[np.sort(perm[:k])]


def auto_guidance_for_buffer(
    generator: CFDGGenerator, offline: TransitionBatch | None, online: TransitionBatch | None, config: CFDGConfig,
    rng: np.random.Generator, *, heldout_fraction: float = 0.1, max_heldout: int = 2000, n: int = 2000,
    criterion: Criterion = "auc", offline_weight: float = 0.0,
    heldout: tuple[TransitionBatch | None, TransitionBatch | None] | None = None,
) -> tuple[float, dict[str, Any]]:
    """One call for the buffer's refresh when ``config.guidance == "auto"`` (after ``generator.fit``).

    Held-out data: unless ``heldout=(offline_heldout, online_heldout)`` is given, a random
    ``heldout_fraction`` (at most ``max_heldout`` rows) of the real online (and offline) data is
    drawn with ``rng`` and used ONLY for scoring. The generator has been trained on all real data,
    so the held-out rows are not unseen by the generator, only by the scoring classifier; a
    generator that memorised its training rows would look better than it is. To score on
    truly unseen rows, split with :func:`split_heldout` before ``fit``, fit on the train parts
    and pass ``heldout=``.

    Returns ``(w, info)`` with ``info = {"guidance", "criterion", "rows", "n_heldout_online",
    "n_heldout_offline", "heldout"}``; w is one of ``config.guidance_candidates``.
    """
    off = _batch_or_none("offline", offline)
    on = _batch_or_none("online", online)
    if heldout is not None:
        off_h, on_h = (_batch_or_none("offline_heldout", heldout[0]), _batch_or_none("online_heldout", heldout[1]))
        mode = "given"
    else:
        off_h = split_heldout(off, heldout_fraction, rng, max_heldout=max_heldout)[1] if off is not None else None
        on_h = split_heldout(on, heldout_fraction, rng, max_heldout=max_heldout)[1] if on is not None else None
        mode = "score_only"
    if on_h is None or len(on_h) < 10:
        raise ValueError(
            f"guidance='auto' needs at least 10 held-out online transitions, got {0 if on_h is None else len(on_h)} "
            f"(online data: {0 if on is None else len(on)}, heldout_fraction={heldout_fraction})"
        )
    seed = int(rng.integers(2**31 - 1))
    w, rows = choose_guidance(generator, off_h, on_h, config.guidance_candidates, n=n, seed=seed,
                              criterion=criterion, offline_weight=offline_weight)
    return w, {"guidance": w, "criterion": criterion, "rows": rows, "n_heldout_online": len(on_h),
               "n_heldout_offline": 0 if off_h is None else len(off_h), "heldout": mode}


# --- cheap logging at every refresh ------------------------------------------------------------------
def refresh_fidelity(
    real_offline: Any, real_online: Any, synthetic_offline: Any, synthetic_online: Any, *,
    env_id: str | None = None, n: int = 2000, seed: int = 0, physics_n: int = 200,
    floor: dict[str, float] | None = None, prefix: str = "fidelity/",
) -> dict[str, float]:
    """Flat metrics for a logger, from data already at hand (no sampling): AUC and MMD^2 of the
    synthetic online pool vs real online data and of the synthetic offline pool vs real offline
    data (at most ``n`` rows each), plus the physics error when ``env_id`` is given and MuJoCo is
    importable (``floor`` reuses a noise floor; otherwise it is computed from the real data).

    Keys: ``{prefix}{online|offline}_{auc|mmd2}``, ``{prefix}{online|offline}_next_state_median``,
    ``..._next_state_p90``, ``..._reward_median``, ``..._reward_p90``, ``..._frac_within_floor``.
    A pair with a missing side is left out. For an unconditional buffer pass its one synthetic
    pool as ``synthetic_online`` (and, if wanted, again as ``synthetic_offline``).
    """
    rng = np.random.default_rng(seed)
    pairs = {"online": (_batch_or_none("real_online", real_online), _batch_or_none("synthetic_online", synthetic_online)),
             "offline": (_batch_or_none("real_offline", real_offline),
                         _batch_or_none("synthetic_offline", synthetic_offline))}

    def cap(b: TransitionBatch) -> TransitionBatch:
        return b[np.sort(rng.choice(len(b), n, replace=False))] if len(b) > n else b

    if env_id is not None and floor is None and _physics.physics_available():
        floor, _ = _floor(env_id, [p[0] for p in pairs.values()], physics_n)
    out: dict[str, float] = {}
    for lab, (rb, sb) in pairs.items():
        if rb is None or sb is None or len(rb) < 10 or len(sb) < 10:
            continue
        xr, xs = cap(rb).flatten(), cap(sb).flatten()
        out[f"{prefix}{lab}_auc"] = classifier_auc(xr, xs, seed=seed)["auc"]
        out[f"{prefix}{lab}_mmd2"] = mmd2(xr, xs, seed=seed)["mmd2"]
        if env_id is not None and floor is not None:
            ph = _physics.physics_error(sb, env_id, max_transitions=physics_n, floor=floor)
            for k in ("next_state_median", "next_state_p90", "reward_median", "reward_p90", "frac_within_floor",
                      "terminal_mismatch_rate"):
                out[f"{prefix}{lab}_{k}"] = ph[k]
    return out


def fidelity_hook(
    buffer: Any, sink: Callable[[dict[str, float]], None], *, env_id: str | None = None, n: int = 2000,
    seed: int = 0, physics_n: int = 200,
) -> Callable[[Any], None]:
    """A refresh hook for :class:`AugmentedReplayBuffer`: ``buffer.add_hook(fidelity_hook(buffer, log))``.

    At every refresh it calls ``sink({"refresh_index": i, **refresh_fidelity(...)})`` on the
    buffer's real pools and freshly generated synthetic pools (so nothing is sampled again). The
    physics noise floor is computed once, from the first refresh's real data.
    """
    state: dict[str, Any] = {}

    def hook(stats: Any) -> None:
        if env_id is not None and "floor" not in state and _physics.physics_available():
            state["floor"], _ = _floor(env_id, [_batch_or_none("o", buffer.offline_data()),
                                                _batch_or_none("n", buffer.online_data())], physics_n)
        metrics = refresh_fidelity(
            buffer.offline_data(), buffer.online_data(), buffer.pool_data(SOURCE_SYNTHETIC_OFFLINE),
            buffer.pool_data(SOURCE_SYNTHETIC_ONLINE), env_id=env_id, n=n, seed=seed + int(stats.refresh_index),
            physics_n=physics_n, floor=state.get("floor"),
        )
        sink({"refresh_index": float(stats.refresh_index), **metrics})

    return hook


#: Columns that run metrics (``metrics.csv`` of ``cfdg-aug run`` and the d3rlpy pipeline) carry on
#: refresh rows: two-sample AUC, MMD^2 and median relative physics error of each synthetic pool.
FIDELITY_COLUMNS: tuple[str, ...] = tuple(
    f"fidelity_{lab}_{k}" for lab in ("online", "offline") for k in ("auc", "mmd2", "next_state_median")
)


def buffer_refresh_fidelity(buffer: Any, *, env_id: str | None = None, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Fidelity of an :class:`AugmentedReplayBuffer`'s synthetic pools right after a refresh,
    keyed by :data:`FIDELITY_COLUMNS`. An unconditional buffer's single pool is compared with both
    real pools. Uses its own RNG (``seed``), so the run's random streams are not disturbed."""
    syn_on = buffer.pool_data(SOURCE_SYNTHETIC_ONLINE)
    syn_off = buffer.pool_data(SOURCE_SYNTHETIC_OFFLINE)
    if syn_off is None or len(syn_off) == 0:
        syn_off = syn_on
    metrics = refresh_fidelity(buffer.offline_data(), buffer.online_data(), syn_off, syn_on, env_id=env_id, n=n,
                               seed=seed, prefix="fidelity_")
    return {k: metrics[k] for k in FIDELITY_COLUMNS if k in metrics}


# --- presentation (for a CLI such as ``cfdg-aug fidelity``) ---------------------------------------------
def _auc_cell(sec: dict[str, Any]) -> str:
    """The AUC, and with several evaluations (:func:`mean_report`) its standard deviation across them."""
    return f"{sec['auc']:.3f}" + (f" (sd {sec['auc_sd']:.3f})" if len(sec.get("auc_evals", ())) > 1 else "")


def sweep_table(reports: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`guidance_sweep` (or :func:`fidelity_report`) results, one row per
    report and label: w, label, AUC (with ``evals`` > 1: the mean over the evaluations and their
    sd), MMD^2, mean W1 and, when present, the physics medians."""
    lines = ["| w | label | AUC | MMD² | mean W1 | next-state err median | reward err median | terminal rate (real) "
             "| actions out of bounds |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: Any, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    for rep in reports:
        for lab in LABELS:
            sec = rep.get(lab)
            if sec is None:
                continue
            ph = sec.get("physics") or {}
            term = sec.get("terminal_rate", sec["done_rate_generated"])
            real_term = sec.get("terminal_rate_real")
            real_term = sec["done_rate_real"] if real_term is None else real_term
            lines.append(
                f"| {f(rep['guidance'], 'g')} | {lab} | {_auc_cell(sec)} | {sec['mmd2']:.4f} | {sec['w1_mean']:.3f} | "
                f"{f(ph.get('next_state_median'), '.3g')} | {f(ph.get('reward_median'), '.3g')} | "
                f"{term:.4%} ({real_term:.4%}) | {sec['act_out_of_bounds']:.2%} |"
            )
    return "\n".join(lines)
