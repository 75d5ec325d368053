"""Per-seed table of a report's ``scores.csv``: pre-trained score and each arm's final score, side by
side (bold: above ``none`` on the same seed), as in docs/results/README.md.

    python docs/results/study2_200k/per_seed.py [SCORES_CSV]    # default: scores.csv beside this file
"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "scores.csv"
rows = list(csv.DictReader(open(path)))
arms = [a for a in ("none", "offline_only", "cfdg", "unconditional") if any(r["augmentation"] == a for r in rows)]
cell: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
pre: dict[tuple[str, int], float] = {}
for r in rows:
    key = (r["task"], int(r["seed"]))
    cell[key][r["augmentation"]] = float(r["final_score"])
    if r["pretrained_score"]:
        pre[key] = float(r["pretrained_score"])
print("| task | seed | pre-trained | " + " | ".join(arms) + " |")
print("|---|---:|---:|" + "---:|" * len(arms))
for (task, seed), scores in sorted(cell.items()):
    shown = []
    for a in arms:
        v = scores.get(a)
        text = "–" if v is None else f"{v:.1f}"
        above = a != "none" and v is not None and "none" in scores and v > scores["none"]
        shown.append(f"**{text}**" if above else text)
    p = pre.get((task, seed))
    print(f"| {task} | {seed} | {'–' if p is None else f'{p:.1f}'} | " + " | ".join(shown) + " |")
