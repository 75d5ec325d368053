"""Does a `cfdg` run's generation quality go with its score? Spearman's rho, over the seeds of one
task, of a run's mean online AUC (``fidelity_online_auc`` over its refreshes) against its final score
(mean of the last 3 evaluations, as ``cfdg-aug report --last 3``), against its lead over the `none`
run of the same seed, and against that `none` run's final score.

    python docs/results/room/apl/auc_vs_score.py docs/results/room/runs/apl-*-hopper-random-20k-s*/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "study2_200k" / "diagnostics"))
import learner  # noqa: E402  (final scores and arm names, as the paired tables use them)


def main(paths: list[str]) -> None:
    runs = [Path(p) for p in paths]
    scores = learner.final_scores(runs)
    final = {(k[1], k[2], k[3]): v[1] for k, v in scores.items()}
    auc: dict[tuple[str, int], float] = {}
    for run in runs:
        cfg = json.load(open(run / "config.json"))["config"]
        if learner.arm(run) == "cfdg":
            auc[(cfg["dataset"], cfg["seed"])] = float(pd.read_csv(run / "metrics.csv")["fidelity_online_auc"].dropna().mean())
    for task in sorted({t for t, _ in auc}):
        seeds = sorted(s for t, s in auc if t == task and (t, s, "none") in final)
        a = np.array([auc[(task, s)] for s in seeds])
        cf = np.array([final[(task, s, "cfdg")] for s in seeds])
        no = np.array([final[(task, s, "none")] for s in seeds])
        print(f"{Path(task).stem}, {len(seeds)} seeds: mean online AUC against")
        for name, y in (("the final score", cf), ("the lead over none", cf - no), ("none's final score", no)):
            rho, p = spearmanr(a, y)
            print(f"  {name}: rho {rho:+.2f}, p = {p:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
