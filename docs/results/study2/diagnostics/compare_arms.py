"""Per-seed final scores (mean of the last 3 evaluations, as ``cfdg-aug report --last 3``) of Study 2's
IQL arms and of the diagnostic cfdg variants, side by side, with each run's pre-trained score.

    python docs/results/study2/diagnostics/compare_arms.py [TASK ...]    # default: all three

The variants are ordinary ``cfdg-aug run`` folders outside the grid (their commands: README.md in
this folder): ``keep_online/runs`` (``--set cfdg.real_mix=keep_online``) and ``actor_real/runs``
(``--set actor_data=real``); both reuse Study 2's pre-trained agents."""
import csv
import glob
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ARMS = {"none": ROOT.parent / "runs" / "iql-none-{task}-*", "cfdg": ROOT.parent / "runs" / "iql-cfdg-{task}-*",
        "unconditional": ROOT.parent / "runs" / "iql-unconditional-{task}-*",
        "keep_online": ROOT / "keep_online" / "runs" / "iql-cfdg-{task}-*",
        "actor_real": ROOT / "actor_real" / "runs" / "iql-cfdg-{task}-*"}


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


for task in sys.argv[1:] or ["hopper", "walker2d", "halfcheetah"]:
    arms = {name: by_seed(str(p).format(task=f"{task}-medium-50k")) for name, p in ARMS.items()}
    seeds = sorted(set().union(*arms.values()))
    print(f"{task}: seed | pre-trained | " + " | ".join(ARMS))
    for s in seeds:
        pre = next((a[s][1] for a in arms.values() if s in a), float("nan"))
        print(f"  {s} | {pre:.1f} | " + " | ".join(f"{arms[n][s][0]:.1f}" if s in arms[n] else "-" for n in ARMS))
    means = [sum(v[0] for v in arms[n].values()) / len(arms[n]) if arms[n] else float("nan") for n in ARMS]
    print("  mean | | " + " | ".join(f"{m:.1f}" for m in means))
