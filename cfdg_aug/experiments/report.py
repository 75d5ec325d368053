"""``cfdg-aug report``: aggregate finished runs with rliable (Agarwal et al., 2021).

Per run the score is the normalised score of its *last* online evaluation, or the mean of its last
``last`` evaluations (``--last``: single evaluations of hopper swing by tens of points). A method is an
(algorithm, arm) pair, the arm being the augmentation or a control arm read back from the run's
settings (``offline_only``: ``none`` learning from offline rows only; runner.CONTROL_ARMS); a task
is a dataset. For each method the scores form a
(num_runs x num_tasks) matrix (runs = seeds; a method with unequal seed counts across tasks is cut
to the smallest count, and the report says so). Written to ``--out``:

    report.md            table per algorithm x augmentation: IQM and mean with 95% stratified
                         bootstrap CIs, mean pre-trained score and how many runs end above
                         theirs, per-task means (all of the runs in the IQM); probability of
                         improvement table; CFDG paired with each baseline by (task, seed) (arms of a
                         seed share the pre-trained agent), and ``none`` with ``offline_only`` (what
                         online data adds over continued offline training); the generator's fidelity at each refresh
                         against the return that followed
    scores.csv           one row per run (algo, augmentation, task, seed, final score, pre-trained score
                         (empty when the run has none), run dir relative to the output folder)
    aggregates.json      the numbers of the tables
    curves_<algo>_<task>.png   IQM learning curves (normalised score vs online steps) with 95% CI bands
    poi_<algo>.png       P(CFDG > baseline) with 95% CIs, for each baseline augmentation
    fidelity_<algo>.png  per augmented run: mean online-labelled classifier AUC over its refreshes
                         against its final score

Point estimates come from ``rliable.metrics`` (IQM = 25% trimmed mean over all runs and tasks,
probability of improvement = Mann-Whitney U statistic / (n_x n_y), averaged over the tasks both
arms have). The paired comparison uses every (task, seed) both arms have, without the seed cut: the
mean of the differences with a bootstrap CI (pairs resampled within each task), an exact two-sided
sign test and a two-sided paired sign-flip permutation test of that mean (exact over all 2^n sign
patterns up to 20 pairs, a seeded Monte Carlo of 100,000 patterns above; :func:`sign_flip_test`).
At a handful of pairs per task the bootstrap CI is too narrow (it treats the pairs drawn as their
population); the permutation p-value is exact under "no difference" (differences symmetric about 0).

The IQM at small n: rliable's ``aggregate_iqm`` is ``scipy.stats.trim_mean(scores, 0.25, axis=None)``
over the *flattened* (runs x tasks) matrix, which cuts ``int(0.25 N)`` of the N values from each end,
not the middle half within each task: with 5 seeds x 2 tasks (N = 10) it keeps the middle 6 values of
all 10, a task with higher scores filling the top; with N <= 3 nothing is cut and the IQM equals the
mean. Per-task cells report the mean and the sample standard deviation (ddof 1; 0 for a single run).

The report's notes say what the tables cannot: methods with a single seed (zero-width CIs), methods
missing a task (aggregated over their own tasks only), and runs pooled or compared although their
settings differ. A run's settings are its config minus its seed and its arm (the augmentation and a
control arm's defining settings, runner.CONTROL_ARMS), with the profile's defaults filled in, the
generator's resolved settings and precision (``config.json``'s ``generator_precision``, decided per
machine from ``"auto"``) for generator arms, and the dataset's path with the task's name taken out.
Runs that differ are still aggregated as before (no number changes, so committed reports still
regenerate); the note names the settings, their values, how many runs have each and which runs
hold the less common values.
Intervals are percentile intervals of a stratified bootstrap (runs resampled with replacement
within each task), rliable's ``StratifiedBootstrap``: through ``rliable.library`` when it imports,
otherwise the same resampling implemented here (``rliable.library`` needs the ``arch`` package,
whose 7.2.0 release fails to import with pandas 3).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cfdg_aug._io import atomic_save_figure, atomic_write_text

BASELINE_ORDER = ("none", "offline_only", "unconditional", "cfdg")
SEED_MAX = 2**32 - 1
"""Largest bootstrap seed (``np.random.seed``'s range, used with rliable)."""


class ReportError(ValueError):
    """Nothing to report, or unreadable run directories."""


@dataclass
class RunRecord:
    run_dir: Path
    algo: str
    #: the arm (runner.arm_name): an augmentation, or a control arm such as ``offline_only``
    augmentation: str
    task: str
    seed: int
    final_score: float
    curve: list[tuple[int, float]]
    pretrained_score: float | None = None
    #: one dict per generator refresh: ``online_step`` and the run's ``fidelity_*`` / ``refresh_*``
    #: columns of that refresh (numbers; missing columns left out)
    refreshes: list[dict[str, float]] = field(default_factory=list)
    #: the run's settings besides its seed and arm (:func:`run_settings`): setting -> value as text
    settings: dict[str, str] = field(default_factory=dict)


@dataclass
class ReportResult:
    markdown: str
    files: list[Path]
    aggregates: dict[str, Any] = field(default_factory=dict)


def _task_name(dataset: str) -> str:
    return dataset[len("minari:"):] if dataset.startswith("minari:") else Path(dataset).stem


def load_runs(dirs: Sequence[str | os.PathLike[str]], last: int = 1) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs under ``dirs`` (searched recursively) and the unfinished run dirs found. A run's
    score is the mean of its last ``last`` online evaluations. Two finished runs of the same
    (algorithm, augmentation, task, seed) are refused: they would be counted as one method's seeds.
    So is a finished run (one with ``result.json``) whose ``result.json``, ``config.json`` or
    ``metrics.csv`` cannot be read: :class:`ReportError` naming the file."""
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ReportError(f"last must be an int >= 1, got {last!r}")
    from cfdg_aug.experiments.runner import CONFIG_FILE, METRICS_FILE, RESULT_FILE, arm_name, read_metrics

    runs: list[RunRecord] = []
    unfinished: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise ReportError(f"{root}: no such folder")
        if not root.is_dir():
            raise ReportError(f"{root} is not a folder")
        for cfg_path in sorted(root.rglob(CONFIG_FILE)):
            rd = cfg_path.parent.resolve()
            if rd in seen or not (rd / METRICS_FILE).exists():
                continue
            seen.add(rd)
            if not (rd / RESULT_FILE).exists():
                unfinished.append(rd)
                continue
            # A broken file of a finished run is refused, naming it: leaving the run out would
            # silently drop a seed from the aggregates.
            _check_result(rd / RESULT_FILE)
            stored = _read_config(cfg_path)
            cfg = stored["config"]
            try:
                rows = read_metrics(rd / METRICS_FILE)
                curve = [(int(float(r["online_step"])), float(r["normalized_score"])) for r in rows
                         if r.get("phase") in ("offline", "online") and r.get("normalized_score") not in (None, "")]
                refreshes = _refreshes(rows)
            except (OSError, ValueError, ArithmeticError, TypeError, KeyError, csv.Error) as e:
                raise ReportError(f"{rd / METRICS_FILE} is unreadable: {_why(e)}") from None
            online = [c for c in curve if c[0] > 0]
            if not online:
                unfinished.append(rd)
                continue
            offline = [v for step, v in curve if step == 0]
            arm = arm_name(cfg)
            runs.append(RunRecord(rd, cfg["algo"], arm, _task_name(cfg["dataset"]),
                                  cfg["seed"], float(np.mean([v for _, v in online[-last:]])), curve,
                                  offline[0] if offline else None, refreshes, run_settings(stored, arm)))
    by_key: dict[tuple[str, str, str, int], Path] = {}
    for r in runs:
        k = (r.algo, r.augmentation, r.task, r.seed)
        if k in by_key:
            raise ReportError(f"two finished runs of {r.algo}/{r.augmentation} on {r.task}, seed {r.seed}: "
                              f"{by_key[k]} and {r.run_dir} (other settings? report them from separate folders)")
        by_key[k] = r.run_dir
    return runs, unfinished


def _why(e: BaseException) -> str:
    """An exception as the reason of a one-line message."""
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, KeyError):
        return f"no column {e.args[0]!r}" if e.args else "a column is missing"
    return " ".join(str(e).split()) or type(e).__name__


def _check_result(path: Path) -> None:
    """``result.json`` of a run: a JSON object (the runner writes it last, when the run finished)."""
    if path.is_dir():
        raise ReportError(f"{path} is a folder, expected the run's JSON result file")
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} is unreadable: {_why(e)}") from None
    if not isinstance(res, dict):
        raise ReportError(f"{path} is unreadable: expected a JSON object, got {type(res).__name__}")


def _read_config(path: Path) -> dict[str, Any]:
    """A run's ``config.json`` (its ``config`` beside what the runner resolved on its machine, such
    as ``generator_precision``), with the fields of ``config`` the report uses checked."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} is unreadable: {_why(e)}") from None
    cfg = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(cfg, dict):
        raise ReportError(f"{path} is unreadable: expected a JSON object with a 'config' object")
    bad = [k for k in ("algo", "augmentation", "dataset") if not isinstance(cfg.get(k), str)]
    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed"), int):
        bad.append("seed")
    if bad:
        raise ReportError(f"{path} is unreadable: its config has no valid {', '.join(bad)}")
    return stored


def _refreshes(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    for r in rows:
        if r.get("phase") != "refresh":
            continue
        d = {k: float(v) for k, v in r.items()
             if (k == "online_step" or k.startswith(("fidelity_", "refresh_"))) and v not in (None, "")}
        d = {k: v for k, v in d.items() if math.isfinite(v)}  # a measurement that failed is not one
        if "online_step" in d:
            out.append(d)
    return out


# --- settings -----------------------------------------------------------------------------------------
#: Settings compared among the runs of one task only: a run may name its task's environment.
PER_TASK_SETTINGS: tuple[str, ...] = ("env_id",)
#: The generator settings that arms without a generator read: the mix of real rows in a batch
#: (``base_weights``). The others configure a generator they never build.
REAL_ONLY_GENERATOR_SETTINGS: tuple[str, ...] = ("ratio_offline", "ratio_online", "real_mix")
#: Settings stored for generator arms only (``ExperimentConfig.to_dict``): without synthetic rows
#: they change nothing.
GENERATOR_ONLY_SETTINGS: tuple[str, ...] = ("actor_data", "prefit_generator")
_TASK = "{task}"
"""Stands for the task's name in the ``dataset`` setting (the dataset path differs by task)."""


def run_settings(stored: Mapping[str, Any], arm: str) -> dict[str, str]:
    """The settings fingerprint of a run from its ``config.json`` (``stored``): what it ran with
    besides its seed and its arm, as setting -> value text (:func:`_setting_text`).

    Left out: ``algo`` (part of the method), ``seed``, ``augmentation`` and a control arm's
    defining generator settings (``runner.CONTROL_ARMS``: ``offline_only``'s ``real_mix`` and
    ``ratio_online`` are what makes it the control, not a difference from ``none``). Settings a
    stored config leaves out hold their default (``to_dict`` leaves defaults out), so they are
    filled in: a run that spells out a default is not flagged against one that does not. The
    generator settings are the resolved ones (``cfdg_config``, recorded by the runner; the profile's
    defaults plus the run's overrides where it is not recorded), all of them for generator arms and
    only the real-row batch mix for arms without one; generator arms add the generator's precision
    as resolved on the run's machine (``generator_precision``; ``not recorded`` for runs that have
    none). ``dataset`` is the dataset's path with the task's name replaced by ``{task}``, so runs on
    other tasks compare equal while another folder or file type does not. ``algo.*`` settings are
    the run's algorithm overrides (``unset`` where another run has one)."""
    from cfdg_aug.experiments.runner import CONTROL_ARMS, ExperimentConfig

    cfg = stored["config"]
    generator = cfg["augmentation"] != "none"
    defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)
                if f.default is not dataclasses.MISSING}
    skip = {"algo", "seed", "augmentation", "dataset", "cfdg", "algo_kwargs",
            *(() if generator else GENERATOR_ONLY_SETTINGS)}
    out = {k: _setting_text(cfg.get(k, defaults.get(k))) for k in sorted((set(defaults) | set(cfg)) - skip)}
    out["dataset"] = _dataset_pattern(cfg["dataset"])
    algo_kwargs = cfg.get("algo_kwargs")
    if isinstance(algo_kwargs, Mapping):
        out.update({f"algo.{k}": _setting_text(v) for k, v in algo_kwargs.items()})
    gen = _resolved_generator(stored)
    keep = set(gen) if generator else set(REAL_ONLY_GENERATOR_SETTINGS)
    keep -= set(CONTROL_ARMS.get(arm, ("", {}))[1])  # the control arm's definition
    out.update({f"cfdg.{k}": _setting_text(v) for k, v in gen.items() if k in keep})
    if generator:
        precision = stored.get("generator_precision")
        if isinstance(precision, Mapping):
            out.update({f"generator_precision.{k}": _setting_text(v) for k, v in precision.items()})
        else:
            out["generator_precision"] = "not recorded"
    return dict(sorted(out.items()))


def _resolved_generator(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The generator settings a run ran with, ``augmentation`` left out: the recorded
    ``cfdg_config`` over the profile's defaults plus the run's overrides (a run recorded before a
    setting existed ran with its default then, which is today's default except for the fields of
    :data:`~cfdg_aug.config.SAVED_BEFORE_FIELD`)."""
    from cfdg_aug.config import REDRAW_SETTINGS, SAVED_BEFORE_FIELD, CFDGConfig

    cfg = stored["config"]
    over = cfg.get("cfdg") if isinstance(cfg.get("cfdg"), Mapping) else {}
    base = CFDGConfig.paper if cfg.get("profile") == "paper" else CFDGConfig.small
    try:
        out = base(**{**over, "augmentation": cfg["augmentation"]}).to_dict()
    except (ValueError, TypeError):  # a setting this version no longer knows or accepts: as stored
        out = {**base().to_dict(), **over}
    recorded = stored.get("cfdg_config")
    if isinstance(recorded, Mapping):
        out.update({**SAVED_BEFORE_FIELD, **recorded})
    else:
        out.update({k: v for k, v in SAVED_BEFORE_FIELD.items() if k not in over})
    out.pop("augmentation", None)
    if not out.get("behaviour_redraws"):  # nothing drawn given states: as in run ids, the settings do not differ
        for k in REDRAW_SETTINGS:
            out.pop(k, None)
    return out


def _dataset_pattern(dataset: str) -> str:
    """``../data/hopper-medium.hdf5`` -> ``../data/{task}.hdf5``; ``minari:ID`` -> ``minari:{task}``."""
    if dataset.startswith("minari:"):
        return "minari:" + _TASK
    name = Path(dataset).name
    if not name or not dataset.endswith(name):
        return dataset
    return dataset[: len(dataset) - len(name)] + _TASK + Path(dataset).suffix


def _setting_text(v: Any) -> str:
    """A setting's value as compared and shown: numbers by value (``10000`` = ``10000.0``), strings
    bare, ``None`` as ``unset``, containers as canonical JSON."""
    def canon(x: Any) -> Any:
        if isinstance(x, bool) or x is None or isinstance(x, str):
            return x
        if isinstance(x, (int, float)):
            f = float(x)
            return int(f) if f.is_integer() and abs(f) < 2**53 else f
        if isinstance(x, Mapping):
            return {str(k): canon(val) for k, val in x.items()}
        if isinstance(x, (list, tuple)):
            return [canon(val) for val in x]
        return str(x)

    c = canon(v)
    if c is None:
        return "unset"
    return c if isinstance(c, str) else json.dumps(c, sort_keys=True)


# --- statistics ---------------------------------------------------------------------------------------
def iqm(scores: np.ndarray) -> float:
    from rliable import metrics

    return float(metrics.aggregate_iqm(scores))


def mean(scores: np.ndarray) -> float:
    from rliable import metrics

    return float(metrics.aggregate_mean(scores))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    from rliable import metrics

    return float(metrics.probability_of_improvement(x, y))


def stratified_bootstrap_ci(fn: Callable[..., float], *mats: np.ndarray, reps: int = 2000, seed: int = 0,
                            alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of ``fn(*mats)`` under resampling of runs (rows) with replacement, independently
    within each task (column) and each matrix: rliable's ``StratifiedBootstrap``."""
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for i in range(reps):
        boot = []
        for m in mats:
            n, t = m.shape
            idx = rng.integers(0, n, size=(n, t))
            boot.append(np.take_along_axis(m, idx, axis=0))
        stats[i] = fn(*boot)
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _interval_estimates(score_dict: dict[str, np.ndarray], fn: Callable[[np.ndarray], float], reps: int,
                        seed: int) -> dict[str, tuple[float, float, float]]:
    """name -> (point, lo, hi). Uses rliable.library.get_interval_estimates when importable."""
    try:
        from rliable import library as rly
    except Exception:  # arch/pandas incompatibility: same algorithm, our implementation
        rly = None
    out: dict[str, tuple[float, float, float]] = {}
    if rly is not None:
        np.random.seed(seed)
        pts, cis = rly.get_interval_estimates(score_dict, lambda s: np.array([fn(s)]), reps=reps)
        for k in score_dict:
            out[k] = (float(pts[k][0]), float(cis[k][0, 0]), float(cis[k][1, 0]))
        return out
    for k, m in score_dict.items():
        lo, hi = stratified_bootstrap_ci(fn, m, reps=reps, seed=seed)
        out[k] = (fn(m), lo, hi)
    return out


def sign_test(above: int, below: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each non-tied pair is a fair coin)."""
    n = above + below
    if n == 0:
        return 1.0
    k = min(above, below)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


SIGN_FLIP_EXACT_MAX = 20
"""Up to this many non-zero paired differences :func:`sign_flip_test` enumerates every sign pattern."""
SIGN_FLIP_DRAWS = 100_000
"""Random sign patterns :func:`sign_flip_test` draws above :data:`SIGN_FLIP_EXACT_MAX` differences."""


def sign_flip_test(diffs_by_task: Sequence[np.ndarray], *, seed: int = 0,
                   exact_max: int = SIGN_FLIP_EXACT_MAX, draws: int = SIGN_FLIP_DRAWS) -> float:
    """Two-sided paired sign-flip permutation test of the mean of all paired differences.

    Under "no difference between the arms" each pair's difference is as likely negative as positive,
    so its sign is flipped (within its task: the statistic, the sum over tasks divided by the number
    of pairs, is the paired section's mean difference). The p-value is the share of sign patterns
    whose mean is at least as far from 0 as the observed one: over all 2^n patterns when the n
    non-zero differences number at most ``exact_max`` (a zero is the same under either sign and
    leaves that share unchanged), else ``(1 + hits) / (1 + draws)`` over ``draws`` patterns drawn
    with ``seed``, which is never 0 and deterministic for a seed. Unlike the bootstrap CI it does
    not treat a few pairs per task as their population: with n = 5 the smallest p is 2/32."""
    d = np.concatenate([np.asarray(x, dtype=float).ravel() for x in diffs_by_task]) if len(diffs_by_task) \
        else np.empty(0)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(float(d.sum()))  # same n for every pattern: |sum| orders the patterns as |mean| does
    tol = 1e-9 * float(np.abs(d).sum())  # a pattern summing the same values in another order ties
    chunk = 1 << 16
    hits = 0
    if n <= exact_max:
        bits = np.arange(n)
        for start in range(0, 1 << n, chunk):
            idx = np.arange(start, min(start + chunk, 1 << n))
            signs = 1.0 - 2.0 * ((idx[:, None] >> bits) & 1)
            hits += int((np.abs(signs @ d) >= observed - tol).sum())
        return hits / (1 << n)
    rng = np.random.default_rng(seed)
    for start in range(0, draws, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, draws - start), n))
        hits += int((np.abs(signs @ d) >= observed - tol).sum())
    return (1 + hits) / (1 + draws)


def paired_difference_ci(diffs_by_task: Sequence[np.ndarray], reps: int = 2000, seed: int = 0,
                         alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the mean of all paired differences, the pairs resampled with replacement
    within each task (tasks may hold different numbers of pairs)."""
    rng = np.random.default_rng(seed)
    n_total = sum(len(d) for d in diffs_by_task)
    stats = np.empty(reps)
    for i in range(reps):
        stats[i] = sum(float(d[rng.integers(0, len(d), len(d))].sum()) for d in diffs_by_task if len(d)) / n_total
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (average ranks for ties); nan with fewer than 3 points or a constant side."""
    if len(x) < 3:
        return float("nan")

    def ranks(v: Sequence[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for val in np.unique(a):  # ties share their mean rank
            tie = a == val
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# --- report ---------------------------------------------------------------------------------------------
def _matrices(runs: list[RunRecord]) -> tuple[dict[tuple[str, str], list[list[RunRecord]]], list[str], list[str]]:
    """(algo, aug) -> (seeds x tasks) grid of the runs aggregated, over the tasks the method has;
    the tasks of all runs; notes on cuts. Row i holds the i-th lowest seed of each task (seeds need
    not be aligned across tasks); a method with unequal seed counts is cut to the smallest."""
    by: dict[tuple[str, str], dict[str, dict[int, RunRecord]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        by[(r.algo, r.augmentation)][r.task][r.seed] = r
    tasks = sorted({r.task for r in runs})
    notes: list[str] = []
    grids: dict[tuple[str, str], list[list[RunRecord]]] = {}
    for key, per_task in sorted(by.items()):
        missing = [t for t in tasks if t not in per_task]
        if missing:
            # Its IQM and mean are over fewer tasks than the rows beside it: a task's level moves them.
            notes.append(f"{key[0]}/{key[1]} has no runs on {', '.join(missing)}: aggregated over its own "
                         "tasks only, so its IQM and mean are not comparable with those of rows over more "
                         "tasks")
        ts = [t for t in tasks if t in per_task]
        n = min(len(per_task[t]) for t in ts)
        cut = any(len(per_task[t]) != n for t in ts)
        if cut:
            notes.append(f"{key[0]}/{key[1]}: unequal seed counts per task, cut to {n} seeds (lowest seeds kept)")
        if n == 1:
            # Resampled within its task, a single run is always itself: the interval has no width.
            notes.append(f"{key[0]}/{key[1]} has one seed per task{' after that cut' if cut else ''}: its "
                         "bootstrap CIs have zero width, which says nothing about its uncertainty (run more "
                         "seeds)")
        grids[key] = [[per_task[t][sorted(per_task[t])[i]] for t in ts] for i in range(n)]
    return grids, tasks, notes


def _sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof 1), 0 for a single value (which has no spread to estimate)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _settings_notes(runs: list[RunRecord]) -> list[str]:
    """Notes on runs aggregated or compared although their settings (:func:`run_settings`) differ:
    within each method (over its tasks and seeds), and between the two arms of each comparison
    (:func:`_comparisons`: the paired section and the probability of improvement) on the tasks both
    have: a setting is named where a task's runs hold other values in one arm than in the other
    (what the probability of improvement compares) or where a (task, seed) pair's two runs differ.
    A setting one arm has and the other has not (a generator setting beside an arm without a
    generator, the control's defining settings) is not compared between them; one mixed alike in
    both arms, pair by pair, is named by the arms' own notes only."""
    notes: list[str] = []
    by_method: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_method[(r.algo, r.augmentation)].append(r)
    for (algo, arm), rs in sorted(by_method.items(), key=lambda kv: (kv[0][0], _aug_key(kv[0][1]))):
        diff = [k for k in sorted({k for r in rs for k in r.settings}) if _differs_within(rs, k)]
        if diff:
            notes.append(f"{algo}/{arm} pools runs that differ in "
                         + "; ".join(f"{k} ({_value_counts(rs, k)})" for k in diff)
                         + ": its aggregates and pairs mix these settings (report them from separate folders "
                         "to separate them)")
    for algo in sorted({r.algo for r in runs}):
        for arm, base in _comparisons(runs, algo):
            xs, ys = by_method[(algo, arm)], by_method[(algo, base)]
            common = sorted({r.task for r in xs} & {r.task for r in ys})
            keys = {k for r in xs for k in r.settings} & {k for r in ys for k in r.settings}
            keys |= {k for r in xs + ys for k in r.settings if k.startswith("algo.")}  # unset on the other
            parts = []
            for k in sorted(keys):
                where = [t for t in common if _differs_between([r for r in xs if r.task == t],
                                                               [r for r in ys if r.task == t], k)]
                if where:
                    tx, ty = [r for r in xs if r.task in where], [r for r in ys if r.task in where]
                    parts.append(f"{k} on {', '.join(where)} ({arm}: {_value_counts(tx, k)}; "
                                 f"{base}: {_value_counts(ty, k)})")
            if parts:
                notes.append(f"{algo}: {arm} − {base} (paired and probability of improvement) compares runs "
                             "that differ in " + "; ".join(parts))
    return notes


def _applies(run: RunRecord, key: str) -> bool:
    """Whether ``key`` is one of ``run``'s settings: an algorithm override another run has is
    ``unset`` for this one; any other setting a run lacks does not apply to its arm."""
    return key in run.settings or key.startswith("algo.")


def _setting(run: RunRecord, key: str) -> str:
    return run.settings.get(key, "unset")


def _values(runs: list[RunRecord], key: str) -> set[str]:
    return {_setting(r, key) for r in runs if _applies(r, key)}


def _differs_within(runs: list[RunRecord], key: str) -> bool:
    """Whether ``key`` takes more than one value over ``runs`` (per-task settings: within a task)."""
    if key in PER_TASK_SETTINGS:
        return any(len(_values([r for r in runs if r.task == t], key)) > 1 for t in {r.task for r in runs})
    return len(_values(runs, key)) > 1


def _differs_between(xs: list[RunRecord], ys: list[RunRecord], key: str) -> bool:
    """Whether two arms' runs of one task hold ``key`` at other values, or a seed's two runs do."""
    if _values(xs, key) != _values(ys, key):
        return True
    by_seed = {r.seed: _setting(r, key) for r in ys}
    return any(r.seed in by_seed and _setting(r, key) != by_seed[r.seed] for r in xs)


def _value_counts(runs: list[RunRecord], key: str) -> str:
    """``bfloat16: 14 runs, float32: 1 run (walker2d s4)``: each value with its run count, most
    runs first; the runs of the others named (task and seeds)."""
    held: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        if _applies(r, key):
            held[_setting(r, key)].append(r)
    parts = []
    for i, (v, rs) in enumerate(sorted(held.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
        parts.append(f"{v}: {len(rs)} run{'s' if len(rs) != 1 else ''}" + (f" ({_which(rs)})" if i else ""))
    return ", ".join(parts)


def _which(runs: list[RunRecord]) -> str:
    """``walker2d s4; hopper s0-2, s4``: runs by task and seed."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for r in runs:
        by_task[r.task].append(r.seed)
    out = []
    for task, seeds in sorted(by_task.items()):
        spans: list[list[int]] = []
        for s in sorted(set(seeds)):
            if spans and s == spans[-1][-1] + 1:
                spans[-1].append(s)
            else:
                spans.append([s])
        out.append(f"{task} " + ", ".join(f"s{sp[0]}" if len(sp) == 1 else f"s{sp[0]}-{sp[-1]}"
                                          for sp in spans))
    return "; ".join(out)


def _scores(grid: list[list[RunRecord]]) -> np.ndarray:
    """(seeds, tasks) final scores of a grid from :func:`_matrices`."""
    return np.array([[r.final_score for r in row] for row in grid])


def _aug_key(a: str) -> tuple[int, str]:
    return (BASELINE_ORDER.index(a) if a in BASELINE_ORDER else len(BASELINE_ORDER), a)


def make_report(dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, reps: int = 2000,
                seed: int = 0, last: int = 1) -> ReportResult:
    """Aggregate the finished runs under ``dirs`` into ``out`` (see the module docstring)."""
    # Before anything is read, created or computed: the bootstrap would fail only after --out exists.
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ReportError(f"reps must be an int >= 1 (bootstrap resamples), got {reps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise ReportError(f"seed must be an int from 0 to {SEED_MAX} (the bootstrap seed), got {seed!r}")
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise ReportError(f"--out {outp} is a file, expected a folder")
    runs, unfinished = load_runs(dirs, last)
    if not runs:
        raise ReportError(f"no finished runs under {', '.join(str(d) for d in dirs)}"
                          + (f" ({len(unfinished)} unfinished)" if unfinished else ""))
    try:  # created only once there is something to write, before the bootstrap
        outp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create --out {outp}: {_why(e)}") from None
    if not os.access(outp, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write to --out {outp}: permission denied")
    files: list[Path] = []
    grids, tasks, notes = _matrices(runs)
    notes += _settings_notes(runs)
    mats = {k: _scores(g) for k, g in grids.items()}
    keys = sorted(mats, key=lambda k: (k[0], _aug_key(k[1])))
    names = {k: f"{k[0]}/{k[1]}" for k in keys}
    score_dict = {names[k]: mats[k] for k in keys}
    iqms = _interval_estimates(score_dict, iqm, reps, seed)
    means = _interval_estimates(score_dict, mean, reps, seed)

    agg: dict[str, Any] = {"tasks": tasks, "methods": {}, "probability_of_improvement": {}, "paired": {},
                           "fidelity": {}, "notes": notes}
    what = "last online evaluation" if last == 1 else f"mean of the last {last} online evaluations"
    lines = ["# Results", "", f"Final normalised score ({what}) over {len(runs)} finished runs; "
             f"tasks: {', '.join(tasks)}. IQM and mean with 95% stratified bootstrap CIs ({reps} resamples); "
             "pre-trained: mean over the same runs of the score before the online phase; "
             "improved: runs whose final score is above their own pre-trained score.", ""]
    per_task_hdr = " | ".join(tasks)
    lines += [f"| algorithm | augmentation | runs | IQM [95% CI] | mean [95% CI] | pre-trained | improved | {per_task_hdr} |",
              "|---|---|---:|---|---|---:|---:|" + "---:|" * len(tasks)]
    for k in keys:
        m = mats[k]
        # Every column of a row describes the same runs: the ones in the IQM (after any seed cut).
        used = [r for row in grids[k] for r in row]
        by_task = defaultdict(list)
        for r in used:
            by_task[r.task].append(r.final_score)
        cells = [f"{np.mean(by_task[t]):.1f} ± {_sample_std(by_task[t]):.1f}" if t in by_task else "–"
                 for t in tasks]
        i, mn = iqms[names[k]], means[names[k]]
        with_pre = [r for r in used if r.pretrained_score is not None]
        pre_cell = f"{np.mean([r.pretrained_score for r in with_pre]):.1f}" if with_pre else "–"
        improved = sum(r.final_score > r.pretrained_score for r in with_pre)  # type: ignore[operator]
        improved_cell = f"{improved}/{len(with_pre)}" if with_pre else "–"
        lines.append(f"| {k[0]} | {k[1]} | {m.size} | {i[0]:.1f} [{i[1]:.1f}, {i[2]:.1f}] | "
                     f"{mn[0]:.1f} [{mn[1]:.1f}, {mn[2]:.1f}] | {pre_cell} | {improved_cell} | " + " | ".join(cells) + " |")
        agg["methods"][names[k]] = {"runs": int(m.size), "seeds": int(m.shape[0]), "iqm": i, "mean": mn,
                                    "per_task_mean": {t: float(np.mean(v)) for t, v in by_task.items()},
                                    "pretrained_mean": (float(np.mean([r.pretrained_score for r in with_pre]))
                                                        if with_pre else None),
                                    "improved": [int(improved), len(with_pre)]}
    lines.append("")
    lines.append("Per-task cells: mean ± sample std (ddof 1; 0 with a single run) over seeds of the final "
                 "normalised score.")
    agg["last"] = last

    # Probability of improvement: CFDG vs each baseline, per algorithm.
    poi_rows = []
    for algo in sorted({k[0] for k in keys}):
        if (algo, "cfdg") not in mats:
            continue
        pairs = []
        for base in sorted({k[1] for k in keys if k[0] == algo and k[1] != "cfdg"}, key=_aug_key):
            # Compared task by task over the tasks both arms have (a task one arm lacks has no pairs).
            tx, ty = ([r.task for r in grids[(algo, a)][0]] for a in ("cfdg", base))
            common = [t for t in tx if t in ty]
            if not common:
                notes.append(f"{algo}: cfdg and {base} share no task; no probability of improvement")
                continue
            if common != tx or common != ty:
                notes.append(f"{algo}: P(cfdg > {base}) over the tasks both have: {', '.join(common)}")
            x = mats[(algo, "cfdg")][:, [tx.index(t) for t in common]]
            y = mats[(algo, base)][:, [ty.index(t) for t in common]]
            p = probability_of_improvement(x, y)
            lo, hi = stratified_bootstrap_ci(probability_of_improvement, x, y, reps=reps, seed=seed)
            pairs.append((base, p, lo, hi))
            poi_rows.append(f"| {algo} | cfdg > {base} | {p:.2f} [{lo:.2f}, {hi:.2f}] |")
            agg["probability_of_improvement"][f"{algo}/cfdg>{base}"] = (p, lo, hi)
        if pairs:
            files.append(_plot_poi(algo, pairs, outp / f"poi_{algo}.png"))
    if poi_rows:
        lines += ["", "## Probability of improvement", "", "| algorithm | comparison | P(X > Y) [95% CI] |",
                  "|---|---|---|", *poi_rows]

    lines += _paired_section(runs, agg, reps=reps, seed=seed)
    fid_lines, fid_files = _fidelity_section(runs, agg, outp)
    lines += fid_lines
    files += fid_files

    # Learning curves per algorithm x task.
    for algo in sorted({r.algo for r in runs}):
        for task in tasks:
            sel = [r for r in runs if r.algo == algo and r.task == task]
            if sel:
                files.append(_plot_curves(sel, outp / f"curves_{algo}_{task}.png", f"{algo.upper()} {task}",
                                          reps=reps, seed=seed))
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    if unfinished:
        lines += ["", f"{len(unfinished)} unfinished run(s) left out: " + ", ".join(p.name for p in unfinished)]
    md = "\n".join(lines) + "\n"
    atomic_write_text(outp / "report.md", md)
    files.insert(0, outp / "report.md")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["algo", "augmentation", "task", "seed", "final_score", "pretrained_score", "run_dir"])
    for r in sorted(runs, key=lambda r: (r.algo, _aug_key(r.augmentation), r.task, r.seed)):
        pre = "" if r.pretrained_score is None else r.pretrained_score
        w.writerow([r.algo, r.augmentation, r.task, r.seed, r.final_score, pre, _relative_to(r.run_dir, outp)])
    atomic_write_text(outp / "scores.csv", buf.getvalue())
    atomic_write_text(outp / "aggregates.json", json.dumps(agg, indent=2))
    files += [outp / "scores.csv", outp / "aggregates.json"]
    return ReportResult(md, files, agg)


def _comparisons(runs: list[RunRecord], algo: str) -> list[tuple[str, str]]:
    """The (arm, baseline) pairs compared run by run for ``algo``: CFDG against every other arm, and
    ``none`` against the ``offline_only`` control (does the baseline learn from online data?)."""
    arms = sorted({r.augmentation for r in runs if r.algo == algo}, key=_aug_key)
    pairs = [("cfdg", a) for a in arms if a != "cfdg"] if "cfdg" in arms else []
    if "none" in arms and "offline_only" in arms:
        pairs.append(("none", "offline_only"))
    return pairs


def _paired_section(runs: list[RunRecord], agg: dict[str, Any], *, reps: int, seed: int) -> list[str]:
    """Arms against their baselines (:func:`_comparisons`) run by run: a (task, seed) pair shares
    the pre-trained agent and the online seed, so the difference removes the seed's luck that the
    unpaired statistics above carry."""
    by_key = {(r.algo, r.augmentation, r.task, r.seed): r for r in runs}
    rows, notes = [], []
    monte_carlo = False  # some comparison has more non-zero differences than are enumerated
    for algo in sorted({r.algo for r in runs}):
        for arm, base in _comparisons(runs, algo):
            xs = {(r.task, r.seed): r for r in runs if r.algo == algo and r.augmentation == arm}
            pairs = [(x, by_key[(algo, base, t, s)]) for (t, s), x in sorted(xs.items()) if (algo, base, t, s) in by_key]
            if not pairs:
                continue
            diffs = np.array([x.final_score - b.final_score for x, b in pairs])
            by_task = {t: np.array([x.final_score - b.final_score for x, b in pairs if x.task == t])
                       for t in sorted({x.task for x, _ in pairs})}
            above, below = int((diffs > 0).sum()), int((diffs < 0).sum())
            lo, hi = paired_difference_ci(list(by_task.values()), reps=reps, seed=seed)
            p = sign_test(above, below)
            p_flip = sign_flip_test(list(by_task.values()), seed=seed)
            exact = int((diffs != 0).sum()) <= SIGN_FLIP_EXACT_MAX
            monte_carlo = monte_carlo or not exact
            same_start = sum(x.pretrained_score is not None and x.pretrained_score == b.pretrained_score
                             for x, b in pairs)
            per_task = "; ".join(f"{t} {d.mean():+.1f} ({len(d)})" for t, d in by_task.items())
            single = [t for t, d in by_task.items() if len(d) == 1]
            if single:  # resampled within its task, one pair is always itself: no spread from that task
                notes.append(f"- {algo}, {arm} − {base}: {', '.join(single)} {'has' if len(single) == 1 else 'have'} "
                             "one pair, which adds no spread to the bootstrap; the CI understates the uncertainty "
                             "(wait for more seeds of that task).")
            rows.append(f"| {algo} | {arm} − {base} | {len(pairs)} | {above} / {below} | "
                        f"{diffs.mean():+.1f} [{lo:+.1f}, {hi:+.1f}] | "
                        f"{_p_text(p_flip)}{'' if exact else '*'} | {p:.2f} | {same_start}/{len(pairs)} | "
                        f"{per_task} |")
            agg["paired"][f"{algo}/{arm}-{base}"] = {
                "pairs": len(pairs), "above": above, "below": below, "mean_difference": (float(diffs.mean()), lo, hi),
                "sign_flip_p": p_flip,
                "sign_flip": "exact" if exact else f"monte carlo, {SIGN_FLIP_DRAWS} patterns",
                "sign_test_p": p, "same_pretrained_score": int(same_start),
                "per_task_mean_difference": {t: float(d.mean()) for t, d in by_task.items()}}
    if not rows:
        return []
    return ["", "## Paired by seed", "",
            "Every (task, seed) that both arms have (no seed cut): the difference of final scores, its mean with a "
            "95% bootstrap CI (pairs resampled within each task), how many pairs the first arm is above / below, an "
            "exact two-sided sign test, and how many pairs started from the same pre-trained score (the arms of a "
            "seed share the pre-trained agent)."
            " The bootstrap CI is too narrow at a few pairs per task (it resamples the pairs drawn as if "
            "they were all there is); the sign-flip p is a two-sided paired permutation test of the same "
            "mean difference: the share of the 2^n ways to flip the signs of the n differences (each within "
            "its task) whose mean is at least as far from 0 as the observed one, exact up to "
            f"{SIGN_FLIP_EXACT_MAX} non-zero differences"
            + (f" (* above: a seeded Monte Carlo of {SIGN_FLIP_DRAWS:,} sign patterns)" if monte_carlo
               else "")
            + "; with n pairs it cannot go below 2/2^n (0.0625 for 5)."
            + (" none − offline_only is what the online rows add over continued offline training: a baseline that "
               "fine-tunes is above its control, not only above its start." if any("offline_only" in k for k in agg["paired"])
               else ""), "",
            "| algorithm | comparison | pairs | above / below | mean difference [95% CI] | sign-flip p | "
            "sign test p | same pre-trained score | per task: mean difference (pairs) |",
            "|---|---|---:|---:|---|---:|---:|---:|---|", *rows, *([""] + notes if notes else [])]


def _p_text(p: float) -> str:
    """A p-value to 3 decimals, in scientific notation below 0.001 (not shown as 0)."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


#: refresh columns shown per refresh, with their headers
_FIDELITY_COLUMNS = (("fidelity_online_auc", "online AUC", 3), ("fidelity_online_next_state_median", "online physics", 3),
                     ("fidelity_offline_auc", "offline AUC", 3), ("fidelity_offline_next_state_median", "offline physics", 3),
                     ("refresh_fit_seconds", "fit s", 0), ("refresh_sample_seconds", "sample s", 1),
                     ("refresh_behaviour_accept_rate", "accept rate", 2))


def _fidelity_section(runs: list[RunRecord], agg: dict[str, Any], outp: Path) -> tuple[list[str], list[Path]]:
    """The generator's fidelity at each refresh (mean over the runs of a method and task) next to the
    score of the first evaluation after it, and per run the mean online AUC against the final score."""
    aug_runs = [r for r in runs if r.refreshes]
    if not aug_runs:
        return [], []

    def fmt(vals: list[float], nd: int) -> str:
        return f"{np.mean(vals):.{nd}f}" if vals else "–"

    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for r in aug_runs:
        groups[(r.algo, r.augmentation, r.task)].append(r)
    hdr = " | ".join(h for _, h, _ in _FIDELITY_COLUMNS)
    lines = ["", "## Generator fidelity at each refresh", "",
             "Mean over the runs of each refresh's fidelity columns (docs/fidelity.md: classifier AUC, 0.5 = "
             "indistinguishable from held-out real rows; physics = next-state error median), of the refresh's cost "
             "(fit s, sample s: wall seconds training the generator and filling the pools; accept rate: the share of "
             "drawn and redrawn rows the behaviour filter kept) and of the normalised score at the first evaluation "
             "after the refresh.", "",
             f"| algorithm | augmentation | task | refresh | online step | runs | {hdr} | score after |",
             "|---|---|---|---:|---:|---:|" + "---:|" * (len(_FIDELITY_COLUMNS) + 1)]
    corr_rows = []
    for (algo, aug, task), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], _aug_key(kv[0][1]), kv[0][2])):
        table = []
        for k in range(max(len(r.refreshes) for r in rs)):
            at = [(r, r.refreshes[k]) for r in rs if len(r.refreshes) > k]
            steps = [int(f["online_step"]) for _, f in at]
            after = [next(v for s, v in r.curve if s > f["online_step"]) for r, f in at
                     if any(s > f["online_step"] for s, _ in r.curve)]
            cols = {c: [f[c] for _, f in at if c in f] for c, _, _ in _FIDELITY_COLUMNS}
            lines.append(f"| {algo} | {aug} | {task} | {k + 1} | {max(set(steps), key=steps.count)} | {len(at)} | "
                         + " | ".join(fmt(cols[c], nd) for c, _, nd in _FIDELITY_COLUMNS) + f" | {fmt(after, 1)} |")
            table.append({"refresh": k + 1, "runs": len(at), "score_after": float(np.mean(after)) if after else None,
                          **{c: float(np.mean(v)) if v else None for c, v in cols.items()}})
        aucs = [(r, [f["fidelity_online_auc"] for f in r.refreshes if "fidelity_online_auc" in f]) for r in rs]
        with_auc = [(r, float(np.mean(a))) for r, a in aucs if a]
        rho = rank_correlation([a for _, a in with_auc], [r.final_score for r, _ in with_auc])
        corr_rows.append(f"| {algo} | {aug} | {task} | {len(with_auc)} | "
                         f"{fmt([a for _, a in with_auc], 3)} | {fmt([r.final_score for r, _ in with_auc], 1)} | "
                         + ("–" if math.isnan(rho) else f"{rho:+.2f}") + " |")
        agg["fidelity"][f"{algo}/{aug}/{task}"] = {"per_refresh": table, "spearman_online_auc_final": None if math.isnan(rho) else rho}
    lines += ["", "Per run, the mean online AUC over its refreshes against its final score (Spearman's rho over the "
              "runs of a task; with a handful of runs only a strong relation would show):", "",
              "| algorithm | augmentation | task | runs | mean online AUC | mean final score | rho(AUC, final) |",
              "|---|---|---|---:|---:|---:|---:|", *corr_rows]
    files = [_plot_fidelity(algo, [r for r in aug_runs if r.algo == algo], outp / f"fidelity_{algo}.png")
             for algo in sorted({r.algo for r in aug_runs})]
    return lines, [f for f in files if f is not None]


def _plot_fidelity(algo: str, runs: list[RunRecord], path: Path) -> Path | None:
    pts = [(r, float(np.mean([f["fidelity_online_auc"] for f in r.refreshes if "fidelity_online_auc" in f])))
           for r in runs if any("fidelity_online_auc" in f for f in r.refreshes)]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    markers = "osD^v"
    augs = sorted({r.augmentation for r, _ in pts}, key=_aug_key)
    for ti, task in enumerate(sorted({r.task for r, _ in pts})):
        for ai, aug in enumerate(augs):
            sel = [(r, a) for r, a in pts if r.task == task and r.augmentation == aug]
            if sel:
                ax.scatter([a for _, a in sel], [r.final_score for r, _ in sel], color=f"C{ti}",
                           marker=markers[ai % len(markers)], label=f"{task} / {aug}")
    ax.axvline(0.5, color="k", ls="--", lw=1)
    ax.set_xlabel("online AUC, mean over refreshes (0.5: indistinguishable)")
    ax.set_ylabel("final normalised score")
    ax.set_title(f"{algo.upper()}: generator fidelity vs return, per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_fig(fig, path)


def _relative_to(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (a committed report then names its runs the same on every
    machine); absolute where no relative path exists (another drive)."""
    try:
        return Path(os.path.relpath(path, base.resolve())).as_posix()
    except ValueError:
        return str(path)


def _save_fig(fig: Any, path: Path) -> Path:
    return atomic_save_figure(fig, path)


def _plot_curves(runs: list[RunRecord], path: Path, title: str, *, reps: int, seed: int) -> Path:
    """IQM over seeds at each evaluation step shared by all runs of an augmentation, 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for aug in sorted({r.augmentation for r in runs}, key=_aug_key):
        sel = [dict(r.curve) for r in runs if r.augmentation == aug]
        steps = sorted(set.intersection(*(set(c) for c in sel)))
        if not steps:
            continue
        pts, los, his = [], [], []
        for s in steps:
            m = np.array([[c[s]] for c in sel])
            pts.append(iqm(m))
            lo, hi = stratified_bootstrap_ci(iqm, m, reps=max(200, reps // 10), seed=seed)
            los.append(lo)
            his.append(hi)
        line = ax.plot(steps, pts, marker="o", ms=3, label=f"{aug} (n={len(sel)})")[0]
        ax.fill_between(steps, los, his, alpha=0.2, color=line.get_color())
    ax.set_xlabel("online environment steps")
    ax.set_ylabel("normalised score (IQM, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_fig(fig, path)


def _plot_poi(algo: str, pairs: list[tuple[str, float, float, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 0.6 + 0.6 * len(pairs)), dpi=110)
    ys = np.arange(len(pairs))
    p = np.array([x[1] for x in pairs])
    err = np.array([[x[1] - x[2] for x in pairs], [x[3] - x[1] for x in pairs]])
    ax.barh(ys, p, xerr=err, color="tab:blue", alpha=0.7, capsize=4)
    ax.axvline(0.5, color="k", ls="--", lw=1)
    ax.set_yticks(ys, [f"CFDG > {x[0]}" for x in pairs])
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement (95% CI)")
    ax.set_title(f"{algo.upper()}: P(CFDG > baseline)")
    fig.tight_layout()
    return _save_fig(fig, path)


__all__ = ["ReportError", "ReportResult", "RunRecord", "iqm", "load_runs", "make_report", "mean",
           "paired_difference_ci", "probability_of_improvement", "rank_correlation", "run_settings",
           "sign_flip_test", "sign_test", "stratified_bootstrap_ci"]
