"""`make demo`: IQL offline -> online on the embedded hopper set, with and without CFDG, through the
same engine as ``cfdg-aug run`` (:func:`cfdg_aug.experiments.runner.run_experiment`).

    python -m cfdg_aug.experiments.demo --out demo_out

Two runs, the arms ``none`` (real offline + real online replay) and ``cfdg`` (plus the two
synthetic pools, refreshed on schedule), each exactly what ``cfdg-aug run --augmentation ARM
--dataset embedded --set ...`` computes with the settings printed at the start. The first run
pre-trains IQL and shares the pre-trained agent (``OUT/pretrained/<key>/``); the second starts from
the same weights and the same online seed, so the arms differ only by the augmentation. Prints the
pre-trained score, each arm's final score with its spread over the evaluation episodes, the mean of
its last evaluations and the per-source composition of the batches used (counted from the
batches); writes ``comparison.png``, ``summary.txt`` and ``summary.json`` into ``--out`` beside the
two run directories.

Budget: sized to finish in about 10-15 minutes on 2 CPU cores at one torch thread (the study's
recipe, docs/results/baseline.md, at a smaller budget): see :data:`DEMO_SET`. One thread because two
torch threads collapse when anything else runs on a 2-core machine; ``--threads 2`` is faster on an
idle one. These budgets are far below the paper's (1M + 1M steps): the demo shows the machinery
working end to end; one seed at this budget is not a comparison of the arms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cfdg_aug.transitions import SOURCE_NAMES

#: ``--set`` overrides of the small IQL profile for the demo: the study's recipe (shared 10K-step
#: pre-training, updates after a warm-up, real data mixed by pool size, 10 evaluation episodes) with
#: a shorter online phase (15K steps, 3K of warm-up) and 3 generator refreshes (every 4,000 online
#: steps; first fit 4,000 steps, warm refits 2,000, 8,000 + 2,000 synthetic transitions each).
DEMO_SET: tuple[str, ...] = (
    "offline_steps=10000", "online_steps=15000", "warmup_steps=3000", "eval_every=3000", "eval_episodes=10",
    "checkpoint_every=3000", "cfdg.refresh_every=4000", "cfdg.min_online=3000", "cfdg.train_steps=4000",
    "cfdg.warm_start_steps=2000", "cfdg.synthetic_online_size=8000", "cfdg.synthetic_offline_size=2000",
)

#: ``--quick``: a smoke test of the same path in well under a minute.
QUICK_SET: tuple[str, ...] = (
    "offline_steps=300", "online_steps=900", "eval_every=300", "eval_episodes=2", "checkpoint_every=300",
    "warmup_steps=100", "cfdg.refresh_every=300", "cfdg.min_online=300", "cfdg.train_steps=150",
    "cfdg.warm_start_steps=60", "cfdg.synthetic_online_size=2000", "cfdg.synthetic_offline_size=500",
    "cfdg.num_sample_steps=8", "cfdg.redraw_steps=4", "cfdg.redraw_resample=2",
)

ARMS: tuple[str, ...] = ("none", "cfdg")
LAST_EVALS = 3
"""The fine-tuned score is also reported as the mean of the last this many evaluations."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cfdg_aug.experiments.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see the module docstring)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides, as for cfdg-aug run (applied after the demo's)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test in well under a minute")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true",
                   help="also show the libraries' messages, which otherwise go only to each run's run.log")
    return p.parse_args(argv)


def _normalised_spread(env_id: str, mean: float, std: float) -> float:
    from cfdg_aug.datasets import normalized_score

    return float(normalized_score(env_id, mean + std) - normalized_score(env_id, mean))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    from cfdg_aug._io import atomic_write_text, write_json
    from cfdg_aug.config import ConfigError
    from cfdg_aug.datasets import DatasetError
    from cfdg_aug.experiments.plots import plot_learning_curves
    from cfdg_aug.experiments.runner import RunError, parse_set, read_metrics, resolve_config, run_experiment

    sets = [*(QUICK_SET if args.quick else DEMO_SET), *args.set_]
    out = Path(args.out)
    t0 = time.perf_counter()
    try:  # bad --set values: one "error:" line and exit 2, as cfdg-aug run
        overrides = parse_set(sets)
        cfgs = {arm: resolve_config("iql", arm, "embedded", "small", args.seed, overrides) for arm in ARMS}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    cli = " ".join(f"--set {s}" for s in sets)
    print(f"[demo] IQL on the embedded hopper-medium set, arms {', '.join(ARMS)}, seed {args.seed}; each arm is\n"
          f"[demo]   cfdg-aug run --algo iql --augmentation ARM --dataset embedded --seed {args.seed} "
          f"--threads {args.threads} --out {out} {cli}")
    runs: dict[str, Any] = {}
    for arm, cfg in cfgs.items():
        try:
            outcome = run_experiment(cfg, out, progress=not args.no_progress, threads=args.threads,
                                     verbose=args.verbose)
        except (ConfigError, RunError, DatasetError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        runs[arm] = outcome.run_dir
    total = time.perf_counter() - t0

    import json

    summary: dict[str, Any] = {"arms": {}, "seconds": total, "settings": sets}
    curves: dict[str, list[tuple[int, float]]] = {}
    pre = None
    for arm, rd in runs.items():
        res = json.loads((rd / "result.json").read_text())
        rows = read_metrics(rd / "metrics.csv")
        env_id = res["env_id"]
        evals = [r for r in rows if r["phase"] in ("offline", "online")]
        online = [r for r in evals if r["phase"] == "online"]
        off = evals[0]
        pre = (float(off["normalized_score"]), _normalised_spread(env_id, float(off["return_mean"]),
                                                                 float(off["return_std"])), int(off["episodes"]))
        last = online[-1]
        tail = [float(r["normalized_score"]) for r in online[-LAST_EVALS:]]
        counts = res["source_counts"]
        summary["env_id"] = env_id
        summary["arms"][arm] = {
            "run_dir": str(rd), "pretrained_score": pre[0], "final_score": float(last["normalized_score"]),
            "final_spread": _normalised_spread(env_id, float(last["return_mean"]), float(last["return_std"])),
            "mean_last_evals": sum(tail) / len(tail), "curve": res["curve"], "source_counts": counts,
            "refreshes": res["num_refreshes"], "pretrained": res.get("pretrained"), "wall_seconds": res["wall_seconds"],
        }
        curves[arm] = [(int(s), float(v)) for s, v in res["curve"]]
    assert pre is not None
    episodes = pre[2]
    lines = [
        "",
        f"IQL on {summary['env_id']} (embedded hopper-medium set, 28K transitions), seed {args.seed}, "
        f"{overrides.get('offline_steps')} offline + {overrides.get('online_steps')} online steps, "
        f"{episodes} evaluation episodes per point (score ± std over the episodes)",
        f"pre-trained (shared by both arms): {pre[0]:.1f} ± {pre[1]:.1f}",
        f"{'arm':<6}{'final':>15}{f'mean last {LAST_EVALS}':>14}{'change':>9}{'refreshes':>11}   batch composition "
        "(real off / real on / syn off / syn on, counted)",
    ]
    for arm, a in summary["arms"].items():
        n = max(1, sum(a["source_counts"].values()))
        comp = " / ".join(f"{100 * a['source_counts'][s] / n:4.1f}%" for s in SOURCE_NAMES)
        lines.append(f"{arm:<6}{a['final_score']:>8.1f} ± {a['final_spread']:<4.1f}{a['mean_last_evals']:>14.1f}"
                     f"{a['mean_last_evals'] - pre[0]:>+9.1f}{a['refreshes']:>11}   {comp}")
    lines += [
        "caveat: one seed and a small budget (the paper: 1M + 1M steps, 5 seeds); single evaluations of hopper "
        "swing by tens of points, so this is a demonstration of the machinery, not a comparison of the arms "
        "(the evidence: docs/results/).",
        f"total wall time {total / 60:.1f} min; runs in {out}/",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(out / "summary.txt", text + "\n")
    write_json(out / "summary.json", summary)
    plot_learning_curves(curves, out / "comparison.png",
                         title=f"IQL {summary['env_id']}: online fine-tuning, none vs CFDG (seed {args.seed})")
    return summary


if __name__ == "__main__":
    main()
