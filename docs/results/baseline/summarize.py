"""Tables and curves of docs/results/baseline.md from the committed run folders.

    python docs/results/baseline/summarize.py docs/results/baseline/runs docs/results/study2/runs --out docs/results/baseline

Per run: the pre-trained score (the ``offline`` row), the fine-tuned score (the mean of the last
``--last`` online evaluations) and their difference; per (algo, task, recipe): the runs improved,
the mean and IQM over seeds of both scores, and the learning curve (mean and min-max over seeds,
one point per evaluation of ``eval_episodes`` episodes). Writes ``summary.md`` and
``curves_<algo>_<task>.png``. BC references come from the offline probe CSVs
(``probe/<dataset>-bc+obsnorm-s<seed>.csv``) at the runs' offline budget.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def iqm(x: list[float]) -> float:
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(x, dtype=float), 0.25))


def load_runs(root: Path, last: int) -> list[dict]:
    runs = []
    for res_path in sorted(root.glob("*/result.json")):
        res = json.loads(res_path.read_text())
        cfg = res["config"]
        rows = list(csv.DictReader(open(res_path.parent / "metrics.csv")))
        evals = [r for r in rows if r["phase"] in ("offline", "online")]
        online = [r for r in evals if r["phase"] == "online"]
        task = Path(cfg["dataset"]).stem  # e.g. hopper-medium-50k, hopper-medium-200k
        if cfg.get("augmentation", "none") != "none":
            continue
        parts = (cfg.get("warmup_steps", 0), cfg["cfdg"].get("real_mix", "fixed"), cfg.get("online_lr_schedule", "constant"))
        actor_lr = float(cfg.get("algo_kwargs", {}).get("actor_learning_rate", 3e-4))
        online_lr = cfg.get("online_actor_lr")
        if parts == (5000, "proportional", "cosine") and online_lr is not None:
            recipe = f"small profile, actor lr {actor_lr:g} offline / {online_lr:g} online"
        elif parts == (5000, "proportional", "cosine"):
            recipe = "small profile" if actor_lr == 1e-3 else f"small profile, actor lr {actor_lr:g} (before)"
        else:
            recipe = f"warm-up {parts[0]}, real mix {parts[1]}, online lr {parts[2]}, actor lr {actor_lr:g}"
        if cfg["online_steps"] != 25_000:
            recipe += f", {cfg['online_steps'] // 1000}K online steps"
        if cfg.get("online_weight_temp") is not None:
            recipe += f", online temperature {cfg['online_weight_temp']:g}"
        if cfg.get("exploration_scale", 1) != 1:
            recipe += f", exploration scale {cfg['exploration_scale']:g}"
        runs.append({
            "dir": res_path.parent, "algo": cfg["algo"], "task": task, "seed": cfg["seed"], "recipe": recipe,
            "pre": float(evals[0]["normalized_score"]),
            "fine": float(np.mean([float(r["normalized_score"]) for r in online[-last:]])),
            "curve": [(int(r["online_step"]), float(r["normalized_score"])) for r in evals],
            "spread": [(int(r["online_step"]), float(r["return_std"])) for r in evals],
            "episodes": int(evals[0]["episodes"]), "wall": float(res["wall_seconds"]),
            "reused": bool((res.get("pretrained") or {}).get("reused")),
        })
    return runs


def bc_scores(probe: Path, task: str, step: int) -> dict[int, float]:
    out = {}
    for p in sorted(probe.glob(f"{task}-bc+obsnorm-s*.csv")):
        seed = int(p.stem.rsplit("-s", 1)[1])
        for r in csv.DictReader(open(p)):
            if int(r["step"]) == step:
                out[seed] = float(r["score"])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", type=Path, nargs="+", help="folders of run folders (augmentation none is read)")
    p.add_argument("--out", type=Path, default=Path("docs/results/baseline"))
    p.add_argument("--last", type=int, default=3)
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for root in a.runs for r in load_runs(root, a.last)]
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["algo"], r["task"], r["recipe"])].append(r)
    lines = [f"Fine-tuned = mean of the last {a.last} online evaluations; each evaluation is the mean of "
             f"{runs[0]['episodes'] if runs else '?'} greedy episodes.", "",
             "| algo | task | online recipe | seed | BC (same data, same offline steps) | pre-trained | fine-tuned | change |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for (algo, task, recipe), rs in sorted(groups.items()):
        off_steps = json.loads((rs[0]["dir"] / "result.json").read_text())["config"]["offline_steps"]
        bc = bc_scores(a.out / "probe", task, off_steps)
        for r in sorted(rs, key=lambda r: r["seed"]):
            b = bc.get(r["seed"])
            lines.append(f"| {algo} | {task} | {recipe} | {r['seed']} | {'' if b is None else f'{b:.1f}'} | "
                         f"{r['pre']:.1f} | {r['fine']:.1f} | {r['fine'] - r['pre']:+.1f} |")
    lines += ["", "| algo | task | online recipe | seeds | improved | pre-trained mean / IQM | fine-tuned mean / IQM | BC mean |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for (algo, task, recipe), rs in sorted(groups.items()):
        off_steps = json.loads((rs[0]["dir"] / "result.json").read_text())["config"]["offline_steps"]
        bc = list(bc_scores(a.out / "probe", task, off_steps).values())
        pre, fine = [r["pre"] for r in rs], [r["fine"] for r in rs]
        lines.append(f"| {algo} | {task} | {recipe} | {len(rs)} | {sum(f > q for f, q in zip(fine, pre, strict=True))}/{len(rs)} | "
                     f"{np.mean(pre):.1f} / {iqm(pre):.1f} | {np.mean(fine):.1f} / {iqm(fine):.1f} | "
                     f"{np.mean(bc):.1f} |" if bc else
                     f"| {algo} | {task} | {recipe} | {len(rs)} | {sum(f > q for f, q in zip(fine, pre, strict=True))}/{len(rs)} | "
                     f"{np.mean(pre):.1f} / {iqm(pre):.1f} | {np.mean(fine):.1f} / {iqm(fine):.1f} | |")
    lines.append("")
    size = lambda r: r["task"].rsplit("-", 1)[1]  # noqa: E731  (50k, 200k: the datasets' sizes)
    for recipe, n in sorted({(r["recipe"], size(r)) for r in runs if r["algo"] == "iql"}):
        eng = [r for r in runs if r["recipe"] == recipe and size(r) == n and r["algo"] == "iql"]
        if len({r["task"] for r in eng}) < 2:
            continue
        d = [r["fine"] - r["pre"] for r in eng]
        lines.append(f"IQL, {recipe}, all {n} tasks: {sum(x > 0 for x in d)}/{len(d)} runs improved; change mean "
                     f"{np.mean(d):+.1f}, IQM {iqm(d):+.1f}; pre-trained IQM {iqm([r['pre'] for r in eng]):.1f}, "
                     f"fine-tuned IQM {iqm([r['fine'] for r in eng]):.1f}.")
    walls = [r["wall"] for r in runs if not r["reused"] and r["algo"] == "iql"]
    if walls:
        lines.append(f"Wall time per IQL run that pre-trained (1 torch thread, shared 2-core machine): "
                     f"{np.mean(walls) / 60:.0f} min (min {min(walls) / 60:.0f}, max {max(walls) / 60:.0f}).")
    text = "\n".join(lines) + "\n"
    (a.out / "summary.md").write_text(text)
    print(text)

    for (algo, task), _ in sorted({(k[0], k[1]): 0 for k in groups}.items()):
        fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
        for (g_algo, g_task, recipe), rs in sorted(groups.items()):
            if (g_algo, g_task) != (algo, task):
                continue
            steps = [s for s, _ in rs[0]["curve"]]
            ys = np.array([[v for _, v in r["curve"]] for r in rs if len(r["curve"]) == len(steps)])
            label = f"{recipe} ({len(ys)} seed{'s' if len(ys) > 1 else ''})"
            ax.plot(steps, ys.mean(0), marker="o", ms=3, label=label)
            if len(ys) > 1:
                ax.fill_between(steps, ys.min(0), ys.max(0), alpha=0.2)
        ax.set_xlabel("online environment steps (0 = pre-trained)")
        ax.set_ylabel("D4RL normalised score")
        ax.set_title(f"{algo.upper()} {task}, augmentation none: mean, min-max over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: curves stay visible
        fig.tight_layout()
        fig.savefig(a.out / f"curves_{algo}_{task}.png")
        plt.close(fig)


if __name__ == "__main__":
    main()
