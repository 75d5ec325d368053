"""Per-seed final scores (mean of the last 3 evaluations, as ``cfdg-aug report --last 3``) of Study 2's
IQL arms and of the diagnostic cfdg variants, side by side, with each run's pre-trained score.

    python docs/results/study2/diagnostics/compare_arms.py [--markdown] [TASK ...]    # default: all three

``--markdown``: the rows of the table in docs/results/README.md (bold: above ``none`` on the seed).

Arms: the grid's ``none`` and ``cfdg`` (IQL's actor on real rows, the small profile since
2026-11-30) in ``../runs``; ``cfdg_actor_all`` and ``uncond_actor_all`` (the paper's actor on every
row) in ``../cfdg_actor_all``; ``keep_online`` (actor on every row, ``--set cfdg.real_mix=keep_online``)
in ``keep_online/runs``. All reuse the grid's pre-trained agents (README.md here)."""
import csv
import glob
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ARMS = {"none": ROOT.parent / "runs" / "iql-none-{task}-*",
        "cfdg": ROOT.parent / "runs" / "iql-cfdg-{task}-*",
        "unconditional": ROOT.parent / "runs" / "iql-unconditional-{task}-*",
        "cfdg_actor_all": ROOT.parent / "cfdg_actor_all" / "iql-cfdg-{task}-*",
        "uncond_actor_all": ROOT.parent / "cfdg_actor_all" / "iql-unconditional-{task}-*",
        "keep_online": ROOT / "keep_online" / "runs" / "iql-cfdg-{task}-*"}


def final(run: Path, last: int = 3) -> float:
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["phase"] == "online" and r["normalized_score"]]
    return sum(float(r["normalized_score"]) for r in rows[-last:]) / last


def by_seed(pattern: str) -> dict[int, tuple[float, float]]:
    out = {}
    for f in glob.glob(pattern + "/result.json"):
        run = Path(f).parent
        seed = json.load(open(run / "config.json"))["config"]["seed"]
        out[seed] = (final(run), json.load(open(f))["offline_score"])
    return out


args = sys.argv[1:]
markdown = "--markdown" in args
tasks = [a for a in args if a != "--markdown"] or ["hopper", "walker2d", "halfcheetah"]
if markdown:
    print("| task | seed | pre-trained | " + " | ".join(ARMS) + " |")
    print("|---|---:|---:|" + "---:|" * len(ARMS))
for task in tasks:
    arms = {name: by_seed(str(p).format(task=f"{task}-medium-50k")) for name, p in ARMS.items()}
    seeds = sorted(set().union(*arms.values()))
    if not markdown:
        print(f"{task}: seed | pre-trained | " + " | ".join(ARMS))
    for s in seeds:
        pre = next((a[s][1] for a in arms.values() if s in a), float("nan"))
        if markdown:
            base = arms["none"].get(s, (float("inf"),))[0]
            cells = ["–" if s not in arms[n] else
                     (f"**{arms[n][s][0]:.1f}**" if n != "none" and arms[n][s][0] > base else f"{arms[n][s][0]:.1f}")
                     for n in ARMS]
            print(f"| {task} | {s} | {pre:.1f} | " + " | ".join(cells) + " |")
        else:
            print(f"  {s} | {pre:.1f} | " + " | ".join(f"{arms[n][s][0]:.1f}" if s in arms[n] else "-" for n in ARMS))
    means = [sum(v[0] for v in arms[n].values()) / len(arms[n]) if arms[n] else float("nan") for n in ARMS]
    if not markdown:
        print("  mean | | " + " | ".join(f"{m:.1f}" for m in means))
