"""Fidelity of the generator against the CPU-seconds of its first fit: what sets the defaults.

One invocation fits one generator variant on one task and appends a row to a JSON-lines file::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_fidelity_budget --env hopper \
        --set train_steps=15000 --tag delta-15k --out benchmarks/results/fidelity_budget.jsonl
    .venv/bin/python -m benchmarks.bench_fidelity_budget --render JSONL PNG   # table + curve

Task (the yardstick of issue 15, as ``cfdg-aug fidelity --dataset <env>-medium-50k --online
<env>-expert-50k``): offline = ``<env>-medium-50k.hdf5``, online = ``<env>-expert-50k.hdf5``
(../shared/datasets); 10% of each (at most ``--n`` rows) held out with the same seed as
``cfdg-aug fidelity`` and used only for scoring. The generator gets the env's termination rule
and action bounds, as the integrations pass them.

Each row: the variant (config overrides, tag), fit wall and CPU seconds (``time.process_time``,
all threads), final loss, and per label (online, offline) at guidance ``--w``: classifier AUC
against the held-out rows, MMD², physics next-state / reward error medians (MuJoCo re-simulation
of ``--physics-n`` rows), generated terminal rate on ``--terminal-n`` rows against the real rate,
and the fraction of rows with an action outside the action space.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cfdg_aug import CFDGConfig, CFDGGenerator
from cfdg_aug.datasets import load_dataset
from cfdg_aug.datasets.envs import action_encoding
from cfdg_aug.diagnostics.fidelity import fidelity_report, split_heldout
from cfdg_aug.experiments.runner import parse_set
from cfdg_aug.transitions import TransitionBatch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def task(env: str, seed: int, n: int, online_n: int | None = None) -> tuple[
        str, tuple[TransitionBatch, TransitionBatch], tuple[TransitionBatch, TransitionBatch]]:
    """(env id, (offline fit, offline held-out), (online fit, online held-out)), split as
    ``cfdg-aug fidelity`` splits them; ``online_n``: keep only the first that many online fit rows
    (an early fine-tuning phase, when the online label has little data)."""
    off_ds = load_dataset(str(SHARED / f"{env}-medium-50k.hdf5"))
    on_ds = load_dataset(str(SHARED / f"{env}-expert-50k.hdf5"))
    rng = np.random.default_rng(seed)
    off = split_heldout(off_ds.to_transition_batch(), 0.1, rng, max_heldout=n)
    on = split_heldout(on_ds.to_transition_batch(), 0.1, rng, max_heldout=n)
    assert off_ds.env_id is not None
    if online_n is not None:
        on = (on[0][:online_n], on[1])
    return off_ds.env_id, off, on


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="hopper", choices=("hopper", "walker2d", "halfcheetah"))
    ap.add_argument("--set", dest="set_", action="append", default=[], help="CFDGConfig FIELD=VALUE")
    ap.add_argument("--w", type=float, default=None, help="guidance weight (default: the config's)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--terminal-n", type=int, default=20_000)
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--online-n", type=int, default=None, help="online rows the generator fits on (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prefit", action="store_true",
                    help="first fit on the offline rows alone (untimed, recorded as 'prefit'); the timed fit is then "
                         "the warm refit a refresh does")
    ap.add_argument("--tag", default="")
    ap.add_argument("--save", default=None, help="also save the fitted generator here")
    ap.add_argument("--out", default="benchmarks/results/fidelity_budget.jsonl")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = parse_set(a.set_)
    overrides = {**overrides.pop("cfdg", {}), **overrides}
    cfg = CFDGConfig.small(**overrides)
    env_id, (off_fit, off_h), (on_fit, on_h) = task(a.env, a.seed, a.n, a.online_n)
    gen = CFDGGenerator(off_fit.obs_dim, off_fit.act_dim, cfg, seed=a.seed, termination=env_id,
                        act_encoding=action_encoding(env_id))
    prefit = None
    if a.prefit:
        wall, cpu = time.perf_counter(), time.process_time()
        pst = gen.fit(off_fit, None)
        prefit = {"steps": pst.steps, "final_loss": pst.final_loss, "wall_seconds": time.perf_counter() - wall,
                  "cpu_seconds": time.process_time() - cpu}
    wall, cpu = time.perf_counter(), time.process_time()
    stats = gen.fit(off_fit, on_fit)
    fit = {"steps": stats.steps, "final_loss": stats.final_loss, "wall_seconds": time.perf_counter() - wall,
           "cpu_seconds": time.process_time() - cpu, "threads": a.threads}
    if a.save:
        gen.save(a.save)
    w = a.w if a.w is not None else (None if cfg.guidance == "auto" else float(cfg.guidance))
    t_eval = time.perf_counter()
    rep = fidelity_report(gen, off_h, on_h, env_id=env_id, n=a.n, guidance=w, seed=a.seed,
                          physics_n=a.physics_n, per_dimension=False, terminal_n=a.terminal_n)
    row = {
        "commit": _commit(), "env": a.env, "tag": a.tag, "overrides": overrides, "online_n": a.online_n, "prefit": prefit, "guidance": rep["guidance"], "seed": a.seed, "fit": fit,
        "eval_seconds": time.perf_counter() - t_eval, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    for lab in ("online", "offline"):
        sec = rep[lab]
        ph = sec.get("physics") or {}
        row[lab] = {"auc": sec["auc"], "mmd2": sec["mmd2"], "physics_next_state_median": ph.get("next_state_median"),
                    "physics_reward_median": ph.get("reward_median"), "terminal_rate": sec.get("terminal_rate"),
                    "terminal_rate_real": sec.get("terminal_rate_real"),
                    "terminal_rate_model": sec.get("terminal_rate_model"), "act_out_of_bounds": sec["act_out_of_bounds"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    on, off = row["online"], row["offline"]
    print(f"{a.env} {a.tag} {overrides} w={row['guidance']}: fit {fit['steps']} steps {fit['cpu_seconds']:.0f} CPU-s | "
          f"online AUC {on['auc']:.3f} phys {on['physics_next_state_median']:.3g} term {on['terminal_rate']:.5f} "
          f"({on['terminal_rate_real']:.5f}) | offline AUC {off['auc']:.3f} phys {off['physics_next_state_median']:.3g} "
          f"term {off['terminal_rate']:.5f} ({off['terminal_rate_real']:.5f}) | oob {on['act_out_of_bounds']:.4f}")
    return row


def _commit() -> str:
    """The git commit the row was measured at (``+dirty`` with uncommitted changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cfdg_aug", "integrations", "benchmarks/*.py"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def render(jsonl: str | Path, png: str | Path) -> str:
    """A markdown table of the rows (sorted by env, then CPU-seconds) and the fidelity-vs-CPU-seconds
    plot: online AUC and online next-state physics error against fit CPU-seconds, one series per
    representation (``next_obs_target``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cfdg_aug._io import atomic_save_figure

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["env"], r["fit"]["cpu_seconds"]))
    lines = ["| env | tag | settings | fit CPU-s | online AUC | online physics | offline AUC | offline physics | "
             "terminal rate online / offline (real) | actions out of bounds |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        on, off = r["online"], r["offline"]
        settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        if r.get("online_n"):
            settings += f", online rows={r['online_n']}"
        lines.append(
            f"| {r['env']} | {r['tag']} | {settings} | {r['fit']['cpu_seconds']:.0f} | {on['auc']:.3f} | "
            f"{on['physics_next_state_median']:.3g} | {off['auc']:.3f} | {off['physics_next_state_median']:.3g} | "
            f"{on['terminal_rate']:.3%} ({on['terminal_rate_real']:.3%}) / {off['terminal_rate']:.3%} "
            f"({off['terminal_rate_real']:.3%}) | {max(on['act_out_of_bounds'], off['act_out_of_bounds']):.2%} |")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for env, marker in (("hopper", "o"), ("walker2d", "s"), ("halfcheetah", "^")):
        for target in ("model", "delta", "absolute"):
            pts = sorted((r["fit"]["cpu_seconds"], r["online"]["auc"], r["online"]["physics_next_state_median"])
                         for r in rows if r["env"] == env and not r.get("online_n")
                         and r["overrides"].get("next_obs_target", "delta") == target
                         and set(r["overrides"]) <= {"train_steps", "next_obs_target"})
            if pts:
                x, auc, phys = zip(*pts, strict=True)
                axes[0].plot(x, auc, marker=marker, label=f"{env} {target}")
                axes[1].plot(x, phys, marker=marker, label=f"{env} {target}")
    axes[0].axhline(0.6, color="grey", ls=":", lw=1)
    axes[1].axhline(0.06, color="grey", ls=":", lw=1)
    axes[1].set_yscale("log")
    for ax, title in zip(axes, ("online-labelled AUC vs held-out online (0.5 = indistinguishable)",
                                "online next-state physics error (median)"), strict=True):
        ax.set_xlabel("first-fit CPU-seconds (1 thread)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, png, dpi=110)
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--render"]:
        print(render(sys.argv[2], sys.argv[3]))
    else:
        main()
