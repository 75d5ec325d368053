"""How long a warm refit must be: fidelity at each refresh of a run against the refit's steps.

A run with the small profile fits the generator from scratch at its first refresh (10,000 steps)
and warm-starts it at every later one (``warm_start_steps``, 2,500 in the profile). Those
refits are paid in the learner's wall time at every refresh (docs/benchmarks.md, "Whole runs"), so
their length is the lever on a synchronous run's overhead once the first fit is gone (the pre-fit).

One invocation replays a run's refreshes on one task and appends one row per (refit steps, refresh)
to a JSON-lines file::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_refit_steps --env hopper \\
        --refit-steps 2500 1000 500 --out benchmarks/results/refit_steps.jsonl
    .venv/bin/python -m benchmarks.bench_refit_steps --render benchmarks/results/refit_steps.jsonl

Task: the fidelity yardstick (offline = ``<env>-medium-50k``, online = ``<env>-expert-50k``, held-out
rows split as ``cfdg-aug fidelity`` splits them; ``bench_fidelity_budget.task``). The online label
grows as a run's buffer does: ``--online-rows`` (default 5,000 / 10,000 / 15,000 / 20,000, a run's
refreshes every 5,000 online steps) are the first that many online fit rows.

``--start first-fit`` (the small profile): the first refresh is a cold fit on the first online
rows, shared by every arm (the same weights, optimiser state and RNG, restored from a copy of its
state tensors); each arm then refits warm at the later refreshes with its ``warm_start_steps``
(the dynamics and behaviour models take the same share of their own steps, as in a run). ``--start prefit`` (``prefit_generator``): a cold
fit on the offline rows alone, then every refresh, the first included, is a warm refit: the first
one meets the whole offline-to-online shift.

An arm is ``STEPS`` or ``STEPS@LR``: a refit of that many steps, at that peak learning rate
(``warm_start_lr``; the profile's ``lr`` when not given). ``dSTEPS[@LR]`` shortens the denoiser's
refit alone: the dynamics and behaviour models refit for the profile's ``warm_start_steps`` share,
as in a full-length refit (``fit(steps=...)``)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_refit_steps --env hopper --start prefit \
        --refit-steps 2500 1000 1000@0.0012 500@0.0012

Each row: the arm's ``warm_start_steps`` and ``warm_start_lr``, the refresh's online rows, the fit's CPU-seconds
(``time.process_time``) and per-stage seconds, and the fidelity of the online and offline labels
against their held-out rows (classifier AUC, MMD², physics next-state median of ``--physics-n``
re-simulated rows; one evaluation, ``--evals`` for more).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.bench_fidelity_budget import _commit, task
from cfdg_aug import CFDGConfig, CFDGGenerator
from cfdg_aug.datasets.envs import action_encoding
from cfdg_aug.diagnostics.fidelity import fidelity_report
from cfdg_aug.experiments.runner import parse_set


def timed_fit(gen: CFDGGenerator, offline, online, steps: int | None = None) -> dict:
    """``gen.fit`` with its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    st = gen.fit(offline, online, steps=steps)
    return {"steps": st.steps, "warm": st.warm_started, "diverged": st.diverged, "final_loss": st.final_loss,
            "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "stage_seconds": st.stage_seconds}


def refit_arm(text: str) -> tuple[int, float | None, bool]:
    """``"[d]STEPS[@LR]"`` -> (steps, warm_start_lr or None, whether only the denoiser is shortened)."""
    steps, _, lr = text.removeprefix("d").partition("@")
    try:
        return int(steps), (float(lr) if lr else None), text.startswith("d")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a refit arm is [d]STEPS[@LR] (e.g. 1000@0.0012, d1000@0.0012), got {text!r}") from None


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="hopper", choices=("hopper", "walker2d", "halfcheetah"))
    ap.add_argument("--refit-steps", type=refit_arm, nargs="+", default=[(2500, None, False), (1000, None, False), (500, None, False)],
                    metavar="[d]STEPS[@LR]")
    ap.add_argument("--online-rows", type=int, nargs="+", default=[5000, 10000, 15000, 20000])
    ap.add_argument("--start", choices=("first-fit", "prefit"), default="first-fit")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="CFDGConfig FIELD=VALUE")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--evals", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default="benchmarks/results/refit_steps.jsonl")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = parse_set(a.set_)
    overrides = {**overrides.pop("cfdg", {}), **overrides}
    cfg = CFDGConfig.small(**overrides)
    env_id, (off_fit, off_h), (on_fit, on_h) = task(a.env, a.seed, a.n)
    rows_per_refresh = sorted(a.online_rows)
    if rows_per_refresh[-1] > len(on_fit):
        raise SystemExit(f"error: --online-rows asks for {rows_per_refresh[-1]} online rows; the task has {len(on_fit)}")
    gen = CFDGGenerator(off_fit.obs_dim, off_fit.act_dim, cfg, seed=a.seed, termination=env_id,
                        act_encoding=action_encoding(env_id))
    # The part every arm shares: the prefit, or the first refresh's cold fit.
    if a.start == "prefit":
        base_fit = timed_fit(gen, off_fit, None)
        warm_refreshes = rows_per_refresh
    else:
        base_fit = timed_fit(gen, off_fit, on_fit[:rows_per_refresh[0]])
        warm_refreshes = rows_per_refresh[1:]
    print(f"{a.env} seed {a.seed} {a.start}: shared fit {base_fit['steps']} steps, {base_fit['cpu_seconds']:.0f} CPU-s",
          flush=True)
    tensors, meta = gen.state_tensors()  # each arm restores a copy of these (from_state_tensors copies)
    common = {"commit": _commit(), "env": a.env, "seed": a.seed, "tag": a.tag, "start": a.start,
              "overrides": overrides, "base_fit": base_fit, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": a.threads, "evals": a.evals, "n": a.n, "physics_n": a.physics_n}
    out: list[dict] = []
    for steps, lr, denoiser_only in a.refit_steps:
        arm_cfg = cfg.replace(warm_start_steps=cfg.warm_start_steps if denoiser_only else steps,
                              warm_start_lr=lr if lr is not None else cfg.warm_start_lr)
        arm = CFDGGenerator.from_state_tensors(tensors, meta, config=arm_cfg)
        for k, n_online in enumerate(warm_refreshes):
            fit = timed_fit(arm, off_fit, on_fit[:n_online], steps=steps if denoiser_only else None)
            t = time.perf_counter()
            rep = fidelity_report(arm, off_h, on_h, env_id=env_id, n=a.n, seed=a.seed + 100 * k, physics_n=a.physics_n,
                                  per_dimension=False, evals=a.evals)
            row = {**common, "warm_start_steps": steps, "warm_start_lr": arm_cfg.refit_lr,
                   "denoiser_only": denoiser_only, "refresh": k + 1, "online_rows": n_online, "fit": fit,
                   "eval_seconds": time.perf_counter() - t, "guidance": rep["guidance"]}
            for lab in ("online", "offline"):
                sec = rep[lab]
                row[lab] = {"auc": sec["auc"], "mmd2": sec["mmd2"],
                            "physics_next_state_median": (sec.get("physics") or {}).get("next_state_median"),
                            "act_out_of_bounds": sec["act_out_of_bounds"]}
            out.append(row)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as fh:  # one line per refresh: an interrupted replay keeps what it measured
                fh.write(json.dumps(row) + "\n")
            print(f"{a.env} s{a.seed} refit {'d' * denoiser_only}{steps}@{arm_cfg.refit_lr:g} with {n_online} online rows: {fit['cpu_seconds']:.0f} CPU-s | online AUC "
                  f"{row['online']['auc']:.3f} phys {row['online']['physics_next_state_median']} | offline AUC "
                  f"{row['offline']['auc']:.3f} phys {row['offline']['physics_next_state_median']}", flush=True)
    return out


def render(jsonl: str | Path) -> str:
    """A markdown table, one row per (task, start, tag, seed, refit steps, refit peak lr): the means over the
    refreshes of the refit's CPU-seconds and of each label's AUC and next-state error, and the
    online AUC at each refresh. Arms are paired within a seed (same first fit, same evaluation
    seeds), so compare rows of one seed."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        # Rows written before warm_start_lr existed refitted at the profile's lr.
        lr = r.get("warm_start_lr", r["overrides"].get("lr", CFDGConfig.small().lr))
        steps = ("d" if r.get("denoiser_only") else "") + f"{r['warm_start_steps']:,}"
        groups.setdefault((r["env"], r["start"], r["tag"], r["seed"], steps, lr), []).append(r)
    lines = ["| env | start | tag | seed | refit steps | refit lr | refit CPU-s | online AUC | online next-state | offline AUC | "
             "offline next-state | online AUC at each refresh |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def mean(xs: list[float | None]) -> str:
        known = [x for x in xs if x is not None]  # physics is None with --physics-n 0
        return f"{sum(known) / len(known):.3g}" if known else "—"

    for (env, start, tag, seed, steps, lr), rs in sorted(groups.items(), key=lambda kv: (*kv[0][:4], kv[0][4].startswith("d"),
                                                                             -int(kv[0][4].strip("d").replace(",", "")), kv[0][5])):
        rs.sort(key=lambda r: r["refresh"])
        lines.append(
            f"| {env} | {start} | {tag} | {seed} | {steps} | {lr:g} | {mean([r['fit']['cpu_seconds'] for r in rs])} | "
            f"{mean([r['online']['auc'] for r in rs])} | {mean([r['online']['physics_next_state_median'] for r in rs])} | "
            f"{mean([r['offline']['auc'] for r in rs])} | {mean([r['offline']['physics_next_state_median'] for r in rs])} | "
            + " / ".join(f"{r['online']['auc']:.3f}" for r in rs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--render"]:
        print(render(sys.argv[2]))
    else:
        main()
