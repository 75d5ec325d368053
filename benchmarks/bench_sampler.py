"""Fidelity against the number of network evaluations (NFE): few-step guided solvers vs 32-step Heun.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sampler [--envs hopper walker2d] [--gen-seeds 0 1]
        [--noise-seeds 0 1 2] [--n 3000] [--solvers heun:32 dpmpp_2m:12 ...]

Data: the split of ``bench_fidelity`` / ``bench_precision``: the first ~25,000 transitions (whole
episodes) of ``<env>-medium-50k`` are the offline data, the first ~10,000 of ``<env>-expert-50k`` the
pseudo-online data; the scores use n held-out rows of each file's remaining episodes, never trained on.

One small-profile CFDG generator per (env, generator seed) is fitted once and saved (``gen.save``,
reused from ``--work-dir`` when its config matches). Then, for every noise seed and label, each
solver samples guided transitions (w = the profile's guidance) from the SAME initial noise, through
the generator's own denoiser (``gen._denoise_fn``), the solver over ``karras_sigmas`` and
``gen.postprocess``: what ``CFDGGenerator.sample`` does with that solver. Each set is scored as
``cfdg-aug fidelity`` scores one: two-sample classifier AUC and MMD^2 against held-out real data of
the label asked for, mean W1, the terminal (done) rate and the MuJoCo physics error.

Two questions:
- ODE accuracy: paired RMS distance (normalised units, data std = 1) between each solver's samples
  and a 256-step Heun reference from the same noise (the probability-flow ODE solved accurately);
- fidelity: for every env, label and metric, |mean(solver) - mean(heun 32)| over the seeds, divided
  by the seed-to-seed standard deviation of heun 32 (pooled over generator seeds). A solver
  "matches" 32-step Heun within seed noise when that ratio is <= 1 for every metric, label and env:
  switching to it moves no figure by more than redrawing the noise does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_result
from benchmarks.bench_fidelity import ENV_IDS, SHARED, heldout_pair, score, split_by_episodes
from cfdg_aug.config import CFDGConfig
from cfdg_aug.diagnostics import mmd2, noise_floor, physics_error
from cfdg_aug.diffusion.edm import SAMPLERS, karras_sigmas, num_evaluations
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.transitions import TransitionBatch

LABELS = ("online", "offline")
# Metrics compared with 32-step Heun; all "lower is closer to the real data" except done_rate.
METRICS = ("auc", "mmd2", "w1_mean", "done_rate", "physics_next_state_median", "physics_reward_median",
           "physics_terminal_mismatch_rate")
# The fidelity measures (online AUC, MMD², physics error, terminal rate), for both labels: a
# solver matches 32-step Heun when none of these moves by more than the seed noise. The other metrics
# are reported too.
CRITERION = ("auc", "mmd2", "physics_next_state_median", "done_rate")
RATES = {"done_rate": "n_generated", "physics_terminal_mismatch_rate": "physics_n_checked"}
BASELINE = "heun:32"
REFERENCE = "heun:256"
# What the default run compares (the confirmation run of docs/fidelity.md): today's default, Heun
# with half the steps, DPM-Solver++(2M) on the default schedule, and DPM-Solver++(2M) and Heun on the
# schedule the --grid screen chose (sigma_max 20: the data are standardised, so the noise at 20
# already swamps them; sigma_min 0.06: the last evaluation returns D(x; 0.06), a noise level the
# network was trained on, instead of stepping down to 0.002 through levels it rarely saw).
DEFAULT_SOLVERS = ("heun:32", "heun:32:sigma_max=20:sigma_min=0.06", "heun:16", "dpmpp_2m:20",
                   "dpmpp_2m:12:sigma_max=20:sigma_min=0.06", "dpmpp_2m:10:sigma_max=20:sigma_min=0.06",
                   "dpmpp_2m:8:sigma_max=20:sigma_min=0.06", "dpmpp_2m:6:sigma_max=20:sigma_min=0.06",
                   "dpmpp_2m:12:sigma_max=20:sigma_min=0.03", "dpmpp_2m:8:sigma_max=20:sigma_min=0.03",
                   "heun:8:sigma_max=20:sigma_min=0.06", "heun:6:sigma_max=20:sigma_min=0.06")
# The --grid screen: one generator, one noise seed (99, used nowhere else), many schedules.
GRID_NOISE_SEED = 99


def grid_solvers() -> list[str]:
    specs = ["heun:32", "heun:16", "dpmpp_2m:20", "heun:32:sigma_max=20:sigma_min=0.06",
             "dpmpp_2m:20:sigma_max=20:sigma_min=0.06", "dpmpp_2m:32:sigma_max=20:sigma_min=0.06"]
    for st in (6, 8, 10, 12, 16):
        for smax in (10, 20, 40, 80):
            for smin in (0.002, 0.01, 0.03, 0.06, 0.1):
                specs.append(f"dpmpp_2m:{st}:sigma_max={smax}:sigma_min={smin}")
    for st in (4, 6, 8):
        for smax in (10, 20, 80):
            for smin in (0.002, 0.03, 0.06):
                specs.append(f"heun:{st}:sigma_max={smax}:sigma_min={smin}")
    for st in (8, 12):
        for rho in (3, 5, 10):
            specs.append(f"dpmpp_2m:{st}:sigma_max=20:sigma_min=0.03:rho={rho}")
    return specs


@dataclass(frozen=True)
class Solver:
    """A sampler over a Karras schedule: ``"name:steps[:sigma_max=..][:sigma_min=..][:rho=..]"``."""

    sampler: str
    steps: int
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    rho: float = 7.0

    @classmethod
    def parse(cls, spec: str) -> Solver:
        name, steps, *opts = spec.split(":")
        if name not in SAMPLERS:
            raise SystemExit(f"error: --solvers: unknown sampler {name!r} in {spec!r}; known: {', '.join(SAMPLERS)}")
        kw = {k: float(v) for k, v in (o.split("=") for o in opts)}
        return cls(name, int(steps), **kw)

    @property
    def key(self) -> str:
        extra = [f"{k}={getattr(self, k):g}" for k, d in (("sigma_max", 80.0), ("sigma_min", 0.002), ("rho", 7.0))
                 if getattr(self, k) != d]
        return ":".join([self.sampler, str(self.steps), *extra])

    @property
    def nfe(self) -> int:
        return num_evaluations(self.sampler, self.steps)

    def sample(self, gen: CFDGGenerator, label: str, w: float, noise: torch.Tensor) -> np.ndarray:
        """(n, D) normalised samples from ``noise`` (n, D), as ``gen.sample_normalized`` with this
        solver (float32, eager, in the generator's chunks)."""
        sigmas = karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)
        denoise = gen._denoise_fn(label, w)  # type: ignore[arg-type]
        chunk = gen.config.sample_batch_size
        with torch.inference_mode():
            return torch.cat([SAMPLERS[self.sampler](denoise, noise[i:i + chunk], sigmas)
                              for i in range(0, noise.shape[0], chunk)]).numpy()


def fitted_generator(env: str, seed: int, off: TransitionBatch, on: TransitionBatch, cfg: CFDGConfig,
                     work_dir: Path, refit: bool) -> tuple[CFDGGenerator, float | None]:
    """The saved generator for (env, seed) when its config matches, else a fresh fit (saved)."""
    path = work_dir / f"{env}_seed{seed}.safetensors"
    # The env's own termination rule decides done from (s, a, s'), as the integrations set it up
    # (generators without the option model done as a column).
    rule = {"termination": ENV_IDS[env]} if "termination" in inspect.signature(CFDGGenerator).parameters else {}
    if path.is_file() and not refit:
        gen = CFDGGenerator.load(path)
        if gen.config == cfg and gen.seed == seed:
            if rule:
                gen.set_termination(rule["termination"])
            return gen, None
    gen = CFDGGenerator(off.obs_dim, off.act_dim, cfg, seed=seed, **rule)
    t = time.perf_counter()
    gen.fit(off, on, progress=True)
    seconds = time.perf_counter() - t
    work_dir.mkdir(parents=True, exist_ok=True)
    gen.save(path)
    return gen, seconds


def initial_noise(n: int, dim: int, gen_seed: int, noise_seed: int, label: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 * gen_seed + 100 * noise_seed + LABELS.index(label))
    return torch.randn((n, dim), generator=g)


def run_env(env: str, solvers: list[Solver], gen_seeds: list[int], noise_seeds: list[int], n: int, n_ode: int,
            physics_n: int, train_steps: int, work_dir: Path, refit: bool) -> dict[str, Any]:
    env_id = ENV_IDS[env]
    rng = np.random.default_rng(0)
    off, off_rest = split_by_episodes(SHARED / f"{env}-medium-50k.hdf5", 25_000)
    on, on_rest = split_by_episodes(SHARED / f"{env}-expert-50k.hdf5", 10_000)
    real = {"offline": heldout_pair(off_rest, n, rng)[0], "online": heldout_pair(on_rest, n, rng)[0]}
    floor = noise_floor(real["online"], env_id, max_transitions=physics_n)
    cfg = CFDGConfig.small(train_steps=train_steps)
    w = float(cfg.guidance)
    reference = Solver.parse(REFERENCE)
    rows: list[dict[str, Any]] = []
    ode: list[dict[str, Any]] = []
    seconds = {s.key: 0.0 for s in solvers}
    fit_seconds: dict[int, float | None] = {}
    for gs in gen_seeds:
        gen, fit_seconds[gs] = fitted_generator(env, gs, off, on, cfg, work_dir, refit)
        dim = getattr(gen, "model_dim", gen.layout.dim)  # columns the network models
        for label in LABELS:  # ODE accuracy: paired distance to an accurate solution from the same noise
            noise = initial_noise(n_ode, dim, gs, 0, label)
            ref = reference.sample(gen, label, w, noise)
            for s in solvers:
                z = s.sample(gen, label, w, noise)
                ode.append({"solver": s.key, "gen_seed": gs, "label": label,
                            "rms_vs_reference": float(np.sqrt(((z - ref) ** 2).mean()))})
        for ns in noise_seeds:
            for label in LABELS:
                noise = initial_noise(n, dim, gs, ns, label)
                for s in solvers:
                    t = time.perf_counter()
                    z = s.sample(gen, label, w, noise)
                    seconds[s.key] += time.perf_counter() - t
                    sc = score(gen.postprocess(z), real[label], env_id, floor, physics_n, seed=ns)
                    rows.append({"solver": s.key, "nfe": s.nfe, "gen_seed": gs, "noise_seed": ns, "label": label,
                                 "n_generated": len(z), **sc})
                    print(f"{env} gen {gs} noise {ns} {label:7s} {s.key:22s} NFE {s.nfe:3d}: AUC {sc['auc']:.3f} "
                          f"MMD2 {sc['mmd2']:.4f} phys {sc['physics_next_state_median']:.3g} "
                          f"done {sc['done_rate']:.4f}", flush=True)
    done_rate_real = {lab: float(np.mean(real[lab].done)) for lab in LABELS}
    return {"env_id": env_id, "guidance": w, "n": n, "n_ode": n_ode, "physics_n": physics_n,
            "done_rate_real": done_rate_real, "noise_floor": floor,
            "fit_seconds": fit_seconds, "rows": rows, "ode": ode, "sampling_seconds_1_thread": seconds,
            "summary": summarise(rows, ode, solvers, gen_seeds, done_rate_real)}


def run_grid(env: str, specs: list[str], n: int, physics_n: int, train_steps: int, work_dir: Path) -> list[dict[str, Any]]:
    """The schedule screen: generator seed 0, noise seed 99, per solver the physics next-state median,
    MMD^2 against held-out real data and the RMS distance to 256-step Heun, for both labels."""
    env_id = ENV_IDS[env]
    rng = np.random.default_rng(0)
    off, off_rest = split_by_episodes(SHARED / f"{env}-medium-50k.hdf5", 25_000)
    on, on_rest = split_by_episodes(SHARED / f"{env}-expert-50k.hdf5", 10_000)
    real = {"offline": heldout_pair(off_rest, n, rng)[0], "online": heldout_pair(on_rest, n, rng)[0]}
    gen, _ = fitted_generator(env, 0, off, on, CFDGConfig.small(train_steps=train_steps), work_dir, False)
    w = float(gen.config.guidance)
    out = []
    for label in LABELS:
        noise = initial_noise(n, getattr(gen, "model_dim", gen.layout.dim), 0, GRID_NOISE_SEED, label)
        ref = Solver.parse(REFERENCE).sample(gen, label, w, noise)
        for spec in specs:
            s = Solver.parse(spec)
            z = s.sample(gen, label, w, noise)
            b = gen.postprocess(z)
            ph = physics_error(b, env_id, max_transitions=physics_n)
            row = {"env": env, "label": label, "solver": s.key, "nfe": s.nfe, "phys": ph["next_state_median"],
                   "mmd2": mmd2(real[label].flatten(), b.flatten(), seed=0)["mmd2"],
                   "rms": float(np.sqrt(((z - ref) ** 2).mean()))}
            out.append(row)
            print(row, flush=True)
    return out


def grid_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| env | solver | NFE | next-state err median online / offline | MMD² online / offline | "
             "RMS vs 256-step Heun online / offline |", "|---|---|---:|---|---|---|"]
    keys = list(dict.fromkeys((r["env"], r["solver"]) for r in rows))
    for env, key in keys:
        on, off = ({r["label"]: r for r in rows if r["env"] == env and r["solver"] == key}[lab] for lab in LABELS)
        lines.append(f"| {env} | {key} | {on['nfe']} | {on['phys']:.3f} / {off['phys']:.3f} | "
                     f"{on['mmd2']:.4f} / {off['mmd2']:.4f} | {on['rms']:.3f} / {off['rms']:.3f} |")
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]], ode: list[dict[str, Any]], solvers: list[Solver],
              gen_seeds: list[int], done_rate_real: dict[str, float]) -> dict[str, Any]:
    """Per solver: mean of each metric, paired difference to 32-step Heun over seed noise, ODE error.

    Two verdicts over the CRITERION metrics of both labels: ``matches_heun32`` (every
    abs(diff) / seed sd <= 1: indistinguishable) and ``no_worse_than_heun32`` (every diff in the
    worse direction <= 1 seed sd: AUC further from 0.5, MMD² or physics error higher, terminal rate
    further from the real one). The second is the issue's "fidelity no worse than today's default".
    """

    def vals(solver: str, label: str, m: str, gs: int) -> np.ndarray:
        return np.array([r[m] for r in rows if r["solver"] == solver and r["label"] == label and r["gen_seed"] == gs])

    n_rows = {k: float(np.mean([r.get(k, np.nan) for r in rows])) for k in ("n_generated", "physics_n_checked")}
    out: dict[str, Any] = {}
    for s in solvers:
        entry: dict[str, Any] = {"nfe": s.nfe, "metrics": {}}
        worst, worst_side = (0.0, ""), (0.0, "")
        for label in LABELS:
            for m in METRICS:
                base = [vals(BASELINE, label, m, gs) for gs in gen_seeds]
                mine = [vals(s.key, label, m, gs) for gs in gen_seeds]
                # Seed noise: the within-generator standard deviation of 32-step Heun over noise seeds,
                # pooled over generator seeds (the generators differ by more than the noise does).
                sd = float(np.sqrt(np.mean([b.var(ddof=1) for b in base]))) if len(base[0]) > 1 else float("nan")
                if m in RATES:  # a rare event (~0.1% terminals) can be 0 in every seed: binomial sd as a floor
                    p = max(float(np.mean(np.concatenate(base + mine))), 1.0 / n_rows[RATES[m]])
                    sd = max(sd, float(np.sqrt(p * (1 - p) / n_rows[RATES[m]])))
                diff = float(np.mean([(a - b).mean() for a, b in zip(mine, base, strict=True)]))
                ratio = abs(diff) / sd if sd > 0 else (0.0 if diff == 0 else float("inf"))
                mean, base_mean = float(np.mean(np.concatenate(mine))), float(np.mean(np.concatenate(base)))
                if m == "done_rate":  # worse = further from the real rate
                    worse = abs(mean - done_rate_real[label]) - abs(base_mean - done_rate_real[label])
                elif m == "auc":  # worse = further from 0.5 (chance)
                    worse = abs(mean - 0.5) - abs(base_mean - 0.5)
                else:  # lower is better
                    worse = diff
                worse_ratio = worse / sd if sd > 0 else (0.0 if worse <= 0 else float("inf"))
                entry["metrics"][f"{label}/{m}"] = {"mean": mean, "diff_vs_heun32": diff, "heun32_seed_sd": sd,
                                                    "abs_diff_over_sd": ratio, "worse_over_sd": worse_ratio}
                if m in CRITERION and ratio > worst[0]:
                    worst = (ratio, f"{label}/{m}")
                if m in CRITERION and worse_ratio > worst_side[0]:
                    worst_side = (worse_ratio, f"{label}/{m}")
        entry["max_abs_diff_over_sd"], entry["worst_metric"] = worst  # over CRITERION only
        entry["matches_heun32"] = bool(worst[0] <= 1.0)
        entry["max_worse_over_sd"], entry["worst_worse_metric"] = worst_side
        entry["no_worse_than_heun32"] = bool(worst_side[0] <= 1.0)
        entry["rms_vs_reference"] = float(np.mean([o["rms_vs_reference"] for o in ode if o["solver"] == s.key]))
        out[s.key] = entry
    return out


def table(results: dict[str, Any], solvers: list[Solver]) -> str:
    lines = ["| env | solver | NFE | RMS vs 256-step Heun | online AUC | online MMD² | online next-state err (median) "
             "| online done rate | offline AUC | offline MMD² | offline next-state err (median) | offline done rate "
             "| max abs(diff) / seed sd (metric) | max worse / seed sd (metric) | no worse than heun:32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for env, r in results.items():
        for s in sorted(solvers, key=lambda s: -s.nfe):
            e = r["summary"][s.key]
            m = e["metrics"]
            lines.append(
                f"| {env} | {s.key} | {s.nfe} | {e['rms_vs_reference']:.3f} | {m['online/auc']['mean']:.3f} | "
                f"{m['online/mmd2']['mean']:.4f} | {m['online/physics_next_state_median']['mean']:.3g} | "
                f"{m['online/done_rate']['mean']:.4f} | {m['offline/auc']['mean']:.3f} | {m['offline/mmd2']['mean']:.4f} | "
                f"{m['offline/physics_next_state_median']['mean']:.3g} | {m['offline/done_rate']['mean']:.4f} | "
                f"{e['max_abs_diff_over_sd']:.2f} ({e['worst_metric'] or '-'}) | "
                f"{e['max_worse_over_sd']:.2f} ({e['worst_worse_metric'] or '-'}) | "
                f"{'yes' if e['no_worse_than_heun32'] else 'no'} |")
    return "\n".join(lines)


def seed_noise_table(results: dict[str, Any]) -> str:
    """The yardstick: 32-step Heun's seed-to-seed standard deviation of each metric."""
    lines = ["| env | label | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    for env, r in results.items():
        base = r["summary"][BASELINE]["metrics"]
        for label in LABELS:
            lines.append(f"| {env} | {label} | " + " | ".join(f"{base[f'{label}/{m}']['heun32_seed_sd']:.3g}"
                                                             for m in METRICS) + " |")
    return "\n".join(lines)


def resummarise(path: Path) -> int:
    """Recompute ``summary`` and the tables of a bench_sampler results file from its rows."""
    data = json.loads(path.read_text())
    solvers = [Solver.parse(k) for k in data["params"]["solvers"]]
    solvers = [Solver.parse(BASELINE), *[s for s in solvers if s.key != BASELINE]]
    for r in data["results"].values():
        r["summary"] = summarise(r["rows"], r["ode"], solvers, data["params"]["gen_seeds"], r["done_rate_real"])
    data["table_markdown"], data["seed_noise_markdown"] = table(data["results"], solvers), seed_noise_table(data["results"])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    print(data["table_markdown"])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=["hopper", "walker2d"], choices=sorted(ENV_IDS))
    ap.add_argument("--gen-seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--noise-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=3000, help="generated and held-out transitions per label and seed")
    ap.add_argument("--n-ode", type=int, default=2000, help="rows for the ODE-accuracy comparison")
    ap.add_argument("--physics-n", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=CFDGConfig.small().train_steps)
    ap.add_argument("--solvers", nargs="+", default=list(DEFAULT_SOLVERS),
                    help="sampler:steps[:sigma_max=..][:sigma_min=..][:rho=..]; heun:32 is always included")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/cfdg_bench_sampler"),
                    help="where the fitted generators are saved and reused")
    ap.add_argument("--refit", action="store_true", help="fit the generators again even if saved ones match")
    ap.add_argument("--grid", action="store_true",
                    help="run the schedule screen instead (generator seed 0, noise seed 99, physics error, MMD² "
                         "and ODE error of many schedules; writes bench_sampler_grid.json)")
    ap.add_argument("--tag", default="", help="results file suffix: bench_sampler_TAG.json")
    ap.add_argument("--summarise", type=Path, metavar="JSON",
                    help="only recompute the summary and tables of a results file from its raw rows, in place")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    if a.summarise is not None:
        return resummarise(a.summarise)
    if a.grid:
        specs = a.solvers if a.solvers != list(DEFAULT_SOLVERS) else grid_solvers()
        grid = [row for env in a.envs for row in run_grid(env, specs, a.n, a.physics_n, a.train_steps, a.work_dir)]
        print(grid_table(grid))
        path = write_result("bench_sampler_grid" + (f"_{a.tag}" if a.tag else ""),
                            {"params": params, "rows": grid, "table_markdown": grid_table(grid)})
        print(f"wrote {path}")
        return 0
    solvers = [Solver.parse(s) for s in dict.fromkeys([BASELINE, *a.solvers])]
    results = {env: run_env(env, solvers, a.gen_seeds, a.noise_seeds, a.n, a.n_ode, a.physics_n, a.train_steps,
                            a.work_dir, a.refit) for env in a.envs}
    print(table(results, solvers))
    print()
    print(seed_noise_table(results))
    path = write_result("bench_sampler" + (f"_{a.tag}" if a.tag else ""), {"params": params, "results": results,
                                          "table_markdown": table(results, solvers),
                                          "seed_noise_markdown": seed_noise_table(results)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
