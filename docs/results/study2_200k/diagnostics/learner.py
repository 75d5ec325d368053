"""The learner diagnostics of runs side by side, per evaluation (``metrics.csv`` columns
``eval_length_mean``, ``loss_*`` and ``probe_*``; see ``cfdg_aug.experiments.runner.METRIC_COLUMNS``).

    python docs/results/study2_200k/diagnostics/learner.py RUN_DIR [RUN_DIR ...] [--pools real_online,...]
    python docs/results/study2_200k/diagnostics/learner.py --finals [--paired A:B [--any-precision]] RUN_DIR [RUN_DIR ...]
    python docs/results/study2_200k/diagnostics/learner.py --refresh-cost RUN_DIR [RUN_DIR ...]

One markdown table per run: online step, score, mean evaluation episode length, the loss means
over the window, and for each pool asked for the critic's mean Q, V, Q - V, the spread of Q - V and
the TD residual on it. ``--finals``: one row per run instead, with its arm (``offline_only``
is ``none`` with ``cfdg.ratio_online=0`` and ``cfdg.real_mix=fixed``, ``--augmentation offline_only``: the same
updates on offline rows only; ``cfdg, float32``: a generator trained in float32), pre-trained score, final score (mean of the last 3 evaluations, as ``cfdg-aug report --last 3``)
and the mean evaluation episode length over those 3 evaluations. ``--refresh-cost``: per arm,
task and refresh, the means over the runs of the refresh columns (fit and sampling seconds, the
behaviour filter's acceptance, online AUC and next-state error): what a generator setting costs
a run, beside what its synthetic rows look like to the classifier.
"""
import argparse
import csv
import json
from pathlib import Path

import numpy as np

STATS = ("q", "v", "adv", "adv_std", "td")


def online_rows(run: Path) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r["phase"] in ("offline", "online")]


def fmt(v: str, nd: int = 2) -> str:
    return f"{float(v):.{nd}f}" if v not in ("", None) else "–"


def table(run: Path, pools: list[str]) -> list[str]:
    head = ["online step", "score", "eval length", "loss_q", "loss_v", "loss_actor"]
    head += [f"{p} {s}" for p in pools for s in STATS]
    out = [f"### {run.name}", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in online_rows(run):
        cells = [r["online_step"], fmt(r["normalized_score"], 1), fmt(r.get("eval_length_mean", ""), 0),
                 fmt(r.get("loss_q", ""), 3), fmt(r.get("loss_v", ""), 4), fmt(r.get("loss_actor", ""), 3)]
        cells += [fmt(r.get(f"probe_{p}_{s}", ""), 3) for p in pools for s in STATS]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def arm(run: Path) -> str:
    """The run's arm as ``cfdg-aug report`` names it (``offline_only`` for the control), with
    ``, float32`` for a generator trained in float32 (the grid's runs trained in bfloat16 on a CPU
    with bf16 units), ``, mahalanobis`` for a behaviour filter on the Mahalanobis distance (the
    default since 2026-12-02; runs before it filtered by log-likelihood), ``, redraws K`` for
    ``cfdg.behaviour_redraws`` = K > 0 (followed by ``, sigma <= S`` for redraws that resample
    RePaint's levels up to S only and ``, search unredrawn`` for a terminal search that does not
    redraw, the small profile's since 2026-12-04; runs saved before those fields had neither), ``, dynamics K`` for a ``cfdg.dynamics_steps`` = K set
    in the run's settings (the profile's default, recorded as null, adds nothing), and
    ``, pre-fit``, ``, lag N``, ``, online batch F`` for ``prefit_generator``, ``cfdg.refresh_lag``
    = N > 0 and ``cfdg.online_batch_fraction`` = F (the background-refresh package); any arm, ``, utd N``
    for ``updates_per_step`` = N other than its profile's."""
    from cfdg_aug.experiments.runner import PROFILE_BUDGETS, arm_name

    conf = json.load(open(run / "config.json"))
    precision = (conf.get("generator_precision") or {}).get("training")  # None-augmented runs have no generator
    generator = conf["config"]["augmentation"] != "none"
    # Runs saved before behaviour_score existed filtered by the log-likelihood.
    score = (conf.get("cfdg_config") or {}).get("behaviour_score", "log_prob")
    redraws = (conf.get("cfdg_config") or {}).get("behaviour_redraws", 0)
    dynamics = (conf.get("cfdg_config") or {}).get("dynamics_steps")
    lag = (conf.get("cfdg_config") or {}).get("refresh_lag", 0)
    online_fraction = (conf.get("cfdg_config") or {}).get("online_batch_fraction")
    sigma_max = (conf.get("cfdg_config") or {}).get("redraw_resample_sigma_max")
    search_redrawn = (conf.get("cfdg_config") or {}).get("redraw_in_terminal_search", True)
    c = conf["config"]
    utd = c.get("updates_per_step", 1)  # older config files may lack it
    profile_utd = PROFILE_BUDGETS.get(c.get("profile"), {}).get(c["algo"], {}).get("updates_per_step", utd)
    return (arm_name(conf["config"]) + (", float32" if generator and precision == "float32" else "")
            + (", mahalanobis" if generator and score == "mahalanobis" else "")
            + (f", redraws {redraws}" if generator and redraws else "")
            + (f", sigma <= {sigma_max:g}" if generator and redraws and sigma_max is not None else "")
            + (", search unredrawn" if generator and redraws and not search_redrawn else "")
            + (f", dynamics {dynamics}" if generator and dynamics else "")
            + (", pre-fit" if generator and conf["config"].get("prefit_generator") else "")
            + (f", lag {lag}" if generator and lag else "")
            + (f", online batch {online_fraction}" if generator and online_fraction is not None else "")
            + (f", utd {utd}" if utd != profile_utd else ""))


RunKey = tuple[str, str, int, str]
"""(algo, dataset path, seed, arm)."""


def task_name(dataset: str) -> str:
    """The short name shown (hopper-medium-200k -> hopper-200k); keys use the full dataset path."""
    return Path(dataset).stem.replace("-medium", "")


def final_scores(runs: list[Path], last: int = 3, any_precision: bool = False) -> dict[RunKey, tuple[float, float]]:
    """(algo, dataset, seed, arm) -> (pre-trained score, final score: the mean of the last ``last``
    online evaluations). Two runs with one key are refused, naming both: which one counts would
    otherwise depend on the order of the arguments. ``any_precision``: a float32 generator's run
    keys as the same arm as a bfloat16 one's (a grid made on CPUs with and without bf16 units)."""
    out: dict[RunKey, tuple[float, float]] = {}
    seen: dict[RunKey, Path] = {}
    for run in runs:
        cfg = json.load(open(run / "config.json"))["config"]
        rows = online_rows(run)
        tail = [r for r in rows if r["phase"] == "online"][-last:]
        if len(tail) < last:
            raise SystemExit(f"{run}: {len(tail)} online evaluations, fewer than the last {last} a score needs")
        name = arm(run).replace(", float32", "") if any_precision else arm(run)
        key = (cfg["algo"], cfg["dataset"], cfg["seed"], name)
        if key in seen:
            raise SystemExit(f"{seen[key]} and {run} are both {key}: pass one of them")
        seen[key] = run
        out[key] = (float(rows[0]["normalized_score"]), sum(float(r["normalized_score"]) for r in tail) / len(tail))
    return out


def paired(runs: list[Path], a: str, b: str, any_precision: bool = False) -> list[str]:
    """Per (algo, task) and pooled: final(a) - final(b) over the seeds both arms have (b may be
    "pre-trained"), with the seeds only one side has named. ``any_precision``: as in final_scores."""
    from cfdg_aug.experiments.report import paired_difference_ci, sign_flip_test, sign_test

    scores = final_scores(runs, any_precision=any_precision)
    by_task: dict[str, list[float]] = {}
    alone: list[str] = []
    for (algo, dataset, seed, arm_), (pre, fin) in sorted(scores.items()):
        name = f"{algo} {task_name(dataset)}"
        if arm_ == a:
            other = pre if b == "pre-trained" else scores.get((algo, dataset, seed, b), (0.0, None))[1]
            if other is None:
                alone.append(f"{name} seed {seed} ({a} only)")
            else:
                by_task.setdefault(name, []).append(fin - other)
        elif arm_ == b and (algo, dataset, seed, a) not in scores:
            alone.append(f"{name} seed {seed} ({b} only)")
    out = []
    for name, diffs in [*by_task.items(), ("pooled", [d for v in by_task.values() for d in v])]:
        d = np.asarray(diffs)
        groups = [np.asarray(v) for v in by_task.values()] if name == "pooled" else [d]
        lo, hi = paired_difference_ci(groups)
        out.append(f"- {name}: {a} - {b} = {d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}] over {len(d)} seeds "
                   f"(above in {(d > 0).sum()}, sign test p = {sign_test(int((d > 0).sum()), int((d < 0).sum())):.2f}, "
                   f"sign-flip p = {sign_flip_test(groups):.3f}; "
                   f"per seed {', '.join(f'{x:+.1f}' for x in d)})")
    if alone:
        out.append(f"- not paired: {'; '.join(alone)}")
    return out


def finals(runs: list[Path], last: int = 3) -> list[str]:
    out = ["| task | seed | arm | pre-trained | final | eval length (last 3) |", "|---|---:|---|---:|---:|---:|"]
    keyed = []
    for run in runs:
        cfg = json.load(open(run / "config.json"))["config"]
        rows = online_rows(run)
        tail = [r for r in rows if r["phase"] == "online"][-last:]
        score = sum(float(r["normalized_score"]) for r in tail) / max(len(tail), 1)
        lengths = [float(r["eval_length_mean"]) for r in tail if r.get("eval_length_mean")]
        length = f"{sum(lengths) / len(lengths):.0f}" if len(lengths) == last else "–"
        task = task_name(cfg["dataset"])
        keyed.append(((task, cfg["seed"], arm(run)),
                      f"| {task} | {cfg['seed']} | {arm(run)} | {float(rows[0]['normalized_score']):.1f} | "
                      f"{score:.1f} | {length} |"))
    return out + [line for _, line in sorted(keyed)]


COST_COLUMNS = (("refresh_fit_seconds", "fit s", 0), ("refresh_sample_seconds", "sample s", 2),
                ("refresh_behaviour_accept_rate", "accept rate", 2), ("fidelity_online_auc", "online AUC", 3),
                ("fidelity_online_next_state_median", "online physics", 3))


def refresh_cost(runs: list[Path]) -> list[str]:
    """One row per (task, arm, refresh): the runs' mean of each of COST_COLUMNS (blank cells left out)."""
    groups: dict[tuple[str, str, int], list[dict[str, str]]] = {}
    for run in runs:
        cfg = json.load(open(run / "config.json"))["config"]
        rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["phase"] == "refresh"]
        for k, r in enumerate(rows, 1):
            groups.setdefault((task_name(cfg["dataset"]), arm(run), k), []).append(r)
    head = ["task", "arm", "refresh", "runs", *(h for _, h, _ in COST_COLUMNS)]
    out = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|" + "---:|" * len(COST_COLUMNS)]
    for (task, arm_, k), rows in sorted(groups.items()):
        cells = []
        for col, _, nd in COST_COLUMNS:
            vals = [float(r[col]) for r in rows if r.get(col) not in ("", None)]
            cells.append(f"{np.mean(vals):.{nd}f}" if vals else "–")
        out.append(f"| {task} | {arm_} | {k} | {len(rows)} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--pools", default="real_offline,real_online,synthetic_online")
    ap.add_argument("--finals", action="store_true", help="one row per run: pre-trained and final score")
    ap.add_argument("--paired", action="append", default=[], metavar="A:B",
                    help="with --finals: paired differences of final scores, arm A minus arm B (or pre-trained)")
    ap.add_argument("--any-precision", action="store_true",
                    help="with --paired: pair a float32 generator's run with the other arm as a bfloat16 one's")
    ap.add_argument("--refresh-cost", action="store_true",
                    help="per arm, task and refresh: mean fit / sampling seconds, acceptance, online fidelity")
    args = ap.parse_args()
    if args.refresh_cost:
        print("\n".join(refresh_cost([r for r in args.runs if (r / "result.json").exists()])))
        return
    if args.finals:
        done = [r for r in args.runs if (r / "result.json").exists()]
        if len(done) < len(args.runs):
            print(f"(unfinished, left out: {', '.join(r.name for r in args.runs if r not in done)})")
        print("\n".join(finals(done)))
        for spec in args.paired:
            print("\n".join(["", *paired(done, *spec.split(":"), any_precision=args.any_precision)]))
        return
    pools = args.pools.split(",")
    for run in args.runs:
        print("\n".join(table(run, pools)))


if __name__ == "__main__":
    main()
