"""The learner diagnostics of runs side by side, per evaluation (``metrics.csv`` columns
``eval_length_mean``, ``loss_*`` and ``probe_*``; see ``cfdg_aug.experiments.runner.METRIC_COLUMNS``).

    python docs/results/study2_200k/diagnostics/learner.py RUN_DIR [RUN_DIR ...] [--pools real_online,...]
    python docs/results/study2_200k/diagnostics/learner.py --finals RUN_DIR [RUN_DIR ...]

One markdown table per run: online step, score, mean evaluation episode length, the loss means
over the window, and for each pool asked for the critic's mean Q, V, Q - V, the spread of Q - V and
the TD residual on it. ``--finals``: one row per run instead, with its arm (``none, no online rows``
is ``none`` with ``cfdg.ratio_online=0`` and ``cfdg.real_mix=fixed``: the same updates on offline rows
only), pre-trained score, final score (mean of the last 3 evaluations, as ``cfdg-aug report --last 3``)
and the mean evaluation episode length over those 3 evaluations.
"""
import argparse
import csv
import json
from pathlib import Path

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
    cfg = json.load(open(run / "config.json"))["config"]
    if cfg["augmentation"] == "none" and cfg.get("cfdg", {}).get("ratio_online") == 0:
        return "none, no online rows"
    return cfg["augmentation"]


def finals(runs: list[Path], last: int = 3) -> list[str]:
    out = ["| task | seed | arm | pre-trained | final | eval length (last 3) |", "|---|---:|---|---:|---:|---:|"]
    keyed = []
    for run in runs:
        cfg = json.load(open(run / "config.json"))["config"]
        rows = online_rows(run)
        tail = [r for r in rows if r["phase"] == "online"][-last:]
        score = sum(float(r["normalized_score"]) for r in tail) / last
        lengths = [float(r["eval_length_mean"]) for r in tail if r.get("eval_length_mean")]
        length = f"{sum(lengths) / len(lengths):.0f}" if len(lengths) == last else "–"
        task = Path(cfg["dataset"]).stem.replace("-medium-200k", "")
        keyed.append(((task, cfg["seed"], arm(run)),
                      f"| {task} | {cfg['seed']} | {arm(run)} | {float(rows[0]['normalized_score']):.1f} | "
                      f"{score:.1f} | {length} |"))
    return out + [line for _, line in sorted(keyed)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--pools", default="real_offline,real_online,synthetic_online")
    ap.add_argument("--finals", action="store_true", help="one row per run: pre-trained and final score")
    args = ap.parse_args()
    if args.finals:
        print("\n".join(finals([r for r in args.runs if (r / "result.json").exists()])))
        return
    pools = args.pools.split(",")
    for run in args.runs:
        print("\n".join(table(run, pools)))


if __name__ == "__main__":
    main()
