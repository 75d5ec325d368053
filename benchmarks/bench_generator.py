"""Generator throughput: our guided sampler vs the SynthER stack, and training steps/s.

    python -m benchmarks.bench_generator [--quick] [--only few_step] [--solver dpmpp_2m:12]
                                         [--device cuda] [--tag TAG]

The SynthER peer is `denoising-diffusion-pytorch`'s ElucidatedDiffusion (what SynthER uses) driving
the SAME residual MLP, unconditional, on 1x1 "images" (it expects (B, C, H, W) tensors), with the same
width, depth, number of Heun steps, sigma schedule and churn. Everything is timed in the same run,
interleaved, median of repeats; the ratios are what count (this machine is noisy).

Reported:
- sampling throughput (transitions/s) of ours with CFG (two branches in one batched pass), ours
  without guidance (one branch), and theirs (one branch); target: ours-guided / theirs >= 1.0;
  ours in float32 and bfloat16 (``sampling_precision``), each eager and compiled
  (``sampling_compile``); theirs as SynthER ships it (float32, eager) and, for reference, their
  sampler driving our bf16 network copy, eager and compiled;
- achieved matmul FLOP/s of each sampler as a fraction of plain ``torch.mm`` FLOP/s at the same shapes;
- training steps/s at batch 256 for the small and paper profiles;
- few-step guided sampling (``bench_few_step``): ours guided with a few-step solver (``--solver``,
  e.g. DPM-Solver++(2M), benchmarks/bench_sampler.py for its fidelity) in each precision/compile
  variant, against the SynthER stack (a) at its own settings, as SynthER ships it
  (config/resmlp_denoiser.gin: 128 Heun steps with S_churn 80, i.e. 255 network evaluations per
  sample, one branch, float32, eager) and (b) at our step count, i.e. the same number of network
  evaluations (NFE) per sample as ours: its own DPM-Solver++(2M) (``sample_using_dpmpp``) with our
  steps, and its Heun with the churn it ships at the nearest NFE (2N - 1). Our 32-step Heun (63 NFE,
  today's small-profile default) is timed alongside. Targets (issue 18): ours-guided / theirs-shipped
  >= 4.0 and ours-guided / theirs-same-NFE >= 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import device_suffix, median_time, synchronize, write_result
from benchmarks.bench_sampler import Solver
from cfdg_aug.config import CFDGConfig
from cfdg_aug.diffusion.denoiser import ResidualMLPDenoiser, SamplingNetwork
from cfdg_aug.diffusion.edm import SAMPLERS, karras_sigmas
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.transitions import TransitionBatch

OBS, ACT = 11, 3  # hopper
DIM = 2 * OBS + ACT + 2
# Suffix of a result key -> (sampling_precision, sampling_compile) of our sampler.
OUR_VARIANTS = {"": ("float32", False), "_compiled": ("float32", True), "_bf16": ("bfloat16", False),
                "_bf16_compiled": ("bfloat16", True)}


def load_elucidated():  # type: ignore[no-untyped-def]
    """Import ElucidatedDiffusion from its file: the package __init__ imports torchvision, which fails here."""
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("denoising-diffusion-pytorch is not installed: pip install --no-deps denoising-diffusion-pytorch")
    path = Path(spec.submodule_search_locations[0]) / "elucidated_diffusion.py"
    mod_spec = importlib.util.spec_from_file_location("_ddp_elucidated", path)
    assert mod_spec and mod_spec.loader
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.ElucidatedDiffusion


class ImageShapedMLP(nn.Module):
    """Our residual MLP behind the (B, C, 1, 1) interface ElucidatedDiffusion expects."""

    random_or_learned_sinusoidal_cond = True
    self_condition = False

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, self_cond: object = None) -> torch.Tensor:
        return self.net(x[:, :, 0, 0], c_noise)[:, :, None, None]


def matmul_flops_per_eval(width: int, depth: int, batch: int, dim: int = DIM, fourier: int = 16) -> float:
    """Multiply-add FLOPs (2 per MAC) of one network evaluation on ``batch`` rows."""
    macs = dim * width + (fourier + 1) * 128 + 128 * width + depth * width * width + width * dim
    return 2.0 * batch * macs


def plain_matmul_flops(width: int, batch: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """FLOP/s of torch.mm at the dominant shape (batch x width) @ (width x width)."""
    a = torch.randn(batch, width, dtype=dtype, device=device)
    b = torch.randn(width, width, dtype=dtype, device=device)
    t = median_time(lambda: torch.mm(a, b), repeats=20, warmup=3)
    return 2.0 * batch * width * width / t


def bench_sampling(width: int, depth: int, steps: int, n: int, repeats: int, chunk: int,
                   device: str = "cpu") -> dict[str, float]:
    # torch.compile caches per function across the process, up to a recompile limit: each
    # configuration starts from an empty cache, as a fresh process would.
    torch._dynamo.reset()
    cfg = CFDGConfig.small(width=width, depth=depth, num_sample_steps=steps, train_steps=1, sample_batch_size=n)
    rng = np.random.default_rng(0)
    data = TransitionBatch.from_arrays(rng.normal(size=(512, OBS)), rng.normal(size=(512, ACT)), rng.normal(size=512),
                                       rng.normal(size=(512, OBS)), rng.random(512) < 0.1)
    ours = CFDGGenerator(OBS, ACT, cfg, seed=0, device=device)
    ours.fit(data, data)  # 1 step: weights do not matter for timing, a fitted normaliser does
    theirs_net = ResidualMLPDenoiser(DIM, width, depth, num_labels=0).to(device)
    ElucidatedDiffusion = load_elucidated()

    def their_stack(net: nn.Module):  # type: ignore[no-untyped-def]
        return ElucidatedDiffusion(
            ImageShapedMLP(net), image_size=1, channels=DIM, num_sample_steps=steps, sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, rho=cfg.rho, S_churn=cfg.s_churn, S_tmin=cfg.s_tmin,
            S_tmax=cfg.s_tmax, S_noise=cfg.s_noise,
        ).eval()

    theirs = their_stack(theirs_net)
    # Their sampler driving our fast network copies: what their stack would get from the same tricks.
    theirs_bf16 = their_stack(SamplingNetwork(theirs_net))
    theirs_bf16_compiled = their_stack(SamplingNetwork(theirs_net, compile=True))

    def their_sampler(model):  # type: ignore[no-untyped-def]
        def run() -> None:  # same chunking as ours: chunk size is a cache effect, not a method
            with torch.inference_mode():  # as ours: compiled code is specialised to the grad mode
                for start in range(0, n, chunk):
                    model.sample(batch_size=min(chunk, n - start), clamp=False)
        return run

    def our_sampler(w: float, precision: str, compile: bool):  # type: ignore[no-untyped-def]
        return lambda: ours.sample_normalized(n, "online", guidance=w, batch_size=chunk, precision=precision,
                                              compile=compile)

    runs = {"theirs_unguided": their_sampler(theirs), "theirs_unguided_bf16": their_sampler(theirs_bf16),
            "theirs_unguided_bf16_compiled": their_sampler(theirs_bf16_compiled)}
    for variant, (precision, compile) in OUR_VARIANTS.items():
        runs[f"ours_guided{variant}"] = our_sampler(1.0, precision, compile)
        runs[f"ours_unguided{variant}"] = our_sampler(0.0, precision, compile)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with quiet_tqdm():
        compile_seconds = {k: median_time(fn, repeats=1, warmup=0) for k, fn in runs.items() if k.endswith("compiled")}
        for _ in range(repeats):  # interleaved so drifts in machine load hit all variants alike
            for k, fn in runs.items():
                times[k].append(median_time(fn, repeats=1, warmup=0))
    evals = 2 * steps - 1  # Heun: two evaluations per step except the last
    mm = {"fp32": plain_matmul_flops(width, chunk, device=device),
          "bf16": plain_matmul_flops(width, chunk, torch.bfloat16, device)}
    out: dict[str, float] = {"width": width, "depth": depth, "steps": steps, "n": n, "chunk": chunk,
                             "plain_mm_gflops": mm["fp32"] / 1e9, "plain_mm_bf16_gflops": mm["bf16"] / 1e9}
    for k, ts in times.items():
        t = float(np.median(ts))
        branches = 2 if k.startswith("ours_guided") else 1
        flops = matmul_flops_per_eval(width, depth, n * branches) * evals
        out[f"{k}_transitions_per_s"] = n / t
        out[f"{k}_flops_fraction_of_mm"] = flops / t / mm["bf16" if "bf16" in k else "fp32"]
    for k, sec in compile_seconds.items():
        out[f"{k}_first_run_seconds"] = sec  # includes compiling
    theirs_tps = out["theirs_unguided_transitions_per_s"]
    for k in runs:
        if k.startswith("ours"):
            out[f"ratio_{k}_vs_theirs"] = out[f"{k}_transitions_per_s"] / theirs_tps
    for sfx in ("_bf16", "_bf16_compiled"):
        out[f"ratio_ours_guided{sfx}_vs_theirs{sfx}"] = (out[f"ours_guided{sfx}_transitions_per_s"]
                                                        / out[f"theirs_unguided{sfx}_transitions_per_s"])
    return out


# SynthER's sampler settings as it ships them (conglu1997/SynthER, config/resmlp_denoiser.gin).
SYNTHER_SHIPPED = {"num_sample_steps": 128, "S_churn": 80.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}
# The recommended defaults (docs/fidelity.md, benchmarks/bench_sampler.py): small profile measured,
# paper profile (width 1024) reasoned from it.
DEFAULT_FEW_STEP = "dpmpp_2m:10:sigma_max=20:sigma_min=0.06"
DEFAULT_FEW_STEP_PAPER = "dpmpp_2m:16:sigma_max=20:sigma_min=0.06"


@contextlib.contextmanager
def quiet_tqdm() -> Iterator[None]:
    """Their sampler wraps its loop in tqdm; silence it while timing, so we time the math."""
    import tqdm as tqdm_mod

    orig_init = tqdm_mod.tqdm.__init__

    def quiet_init(self, *a, **kw):  # type: ignore[no-untyped-def]
        kw["disable"] = True
        orig_init(self, *a, **kw)

    tqdm_mod.tqdm.__init__ = quiet_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        tqdm_mod.tqdm.__init__ = orig_init  # type: ignore[method-assign]


def bench_few_step(width: int, depth: int, spec: str, n: int, repeats: int, chunk: int,
                   device: str = "cpu") -> dict[str, Any]:
    """Transitions/s of our guided few-step sampler vs the SynthER stack at its own settings and at
    the same NFE, all timed in this run, interleaved, median of ``repeats``."""
    torch._dynamo.reset()
    solver = Solver.parse(spec)
    cfg = CFDGConfig.small(width=width, depth=depth, train_steps=1, sample_batch_size=chunk)
    rng = np.random.default_rng(0)
    data = TransitionBatch.from_arrays(rng.normal(size=(512, OBS)), rng.normal(size=(512, ACT)), rng.normal(size=512),
                                       rng.normal(size=(512, OBS)), rng.random(512) < 0.1)
    ours = CFDGGenerator(OBS, ACT, cfg, seed=0, device=device)
    ours.fit(data, data)  # 1 step: weights do not matter for timing, a fitted normaliser does
    dim = getattr(ours, "model_dim", ours.layout.dim)
    theirs_net = ResidualMLPDenoiser(DIM, width, depth, num_labels=0).to(device)
    ElucidatedDiffusion = load_elucidated()

    edm = CFDGConfig.paper()  # EDM's schedule (sigma 0.002 .. 80), as SynthER ships it

    def their_stack(num_steps: int, churn: bool, sigma_min: float = edm.sigma_min,
                    sigma_max: float = edm.sigma_max):  # type: ignore[no-untyped-def]
        kw = SYNTHER_SHIPPED | {"num_sample_steps": num_steps}
        if not churn:
            kw["S_churn"] = 0.0
        return ElucidatedDiffusion(ImageShapedMLP(theirs_net), image_size=1, channels=DIM, sigma_min=sigma_min,
                                   sigma_max=sigma_max, sigma_data=cfg.sigma_data, rho=cfg.rho, **kw).eval()

    def theirs(model, method: str = "sample"):  # type: ignore[no-untyped-def]
        def run() -> None:  # same chunking as ours: chunk size is a cache effect, not a method
            with torch.inference_mode():
                for start in range(0, n, chunk):
                    if method == "sample":
                        model.sample(batch_size=min(chunk, n - start), clamp=False)
                    else:
                        model.sample_using_dpmpp(batch_size=min(chunk, n - start))
        return run

    def ours_run(sol: Solver, precision: str, compile: bool, w: float = 1.0):  # type: ignore[no-untyped-def]
        def run() -> None:  # what CFDGGenerator.sample_normalized does, with this solver
            with torch.inference_mode():
                denoise = ours._denoise_fn("online", w, precision, compile)
                sigmas = karras_sigmas(sol.steps, sol.sigma_min, sol.sigma_max, sol.rho, device=ours.device)
                for start in range(0, n, chunk):
                    noise = torch.randn((min(chunk, n - start), dim), generator=ours._rng, device=ours.device)
                    SAMPLERS[sol.sampler](denoise, noise, sigmas, generator=ours._rng)
        return run

    heun_steps = (solver.nfe + 2) // 2  # their Heun: 2N - 1 evaluations, the nearest to ours
    runs = {"theirs_shipped": theirs(their_stack(SYNTHER_SHIPPED["num_sample_steps"], True)),
            "theirs_same_nfe_dpmpp_2m": theirs(their_stack(solver.steps, False, solver.sigma_min, solver.sigma_max),
                                               "dpmpp"),
            "theirs_heun_nearest_nfe": theirs(their_stack(heun_steps, True))}
    for variant, (precision, compile) in OUR_VARIANTS.items():
        runs[f"ours_guided{variant}"] = ours_run(solver, precision, compile)
    runs["ours_guided_heun32"] = ours_run(Solver("heun", 32), "float32", False)
    # The profile as shipped: its guidance (w = 0: the conditional branch only, no second pass),
    # its "auto" precision as decided on this machine, its compile setting.
    runs["ours_profile_default"] = ours_run(solver, ours.sampling_dtype, cfg.sampling_compile, float(cfg.guidance))
    nfe = {"theirs_shipped": 2 * SYNTHER_SHIPPED["num_sample_steps"] - 1, "theirs_same_nfe_dpmpp_2m": solver.steps,
           "theirs_heun_nearest_nfe": 2 * heun_steps - 1, "ours_guided_heun32": 63}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with quiet_tqdm():
        compile_seconds = {k: median_time(fn, repeats=1, warmup=0) for k, fn in runs.items() if k.endswith("compiled")}
        for _ in range(repeats):  # interleaved so drifts in machine load hit all variants alike
            for k, fn in runs.items():
                times[k].append(median_time(fn, repeats=1, warmup=0))
    out: dict[str, Any] = {"width": width, "depth": depth, "n": n, "chunk": chunk, "solver": solver.key,
                           "profile_default": {"guidance": float(cfg.guidance), "precision": ours.sampling_dtype,
                                               "compile": cfg.sampling_compile},
                           "nfe": {k: nfe.get(k, solver.nfe) for k in runs}, "repeats": repeats}
    for k, ts in times.items():
        out[f"{k}_transitions_per_s"] = n / float(np.median(ts))
    for k, sec in compile_seconds.items():
        out[f"{k}_first_run_seconds"] = sec
    for k in runs:
        if k.startswith("ours"):
            for ref in ("theirs_shipped", "theirs_same_nfe_dpmpp_2m", "theirs_heun_nearest_nfe"):
                out[f"ratio_{k}_vs_{ref}"] = out[f"{k}_transitions_per_s"] / out[f"{ref}_transitions_per_s"]
    return out


def few_step_table(rows: list[dict[str, Any]]) -> str:
    names = {"": "float32", "_compiled": "float32, compiled", "_bf16": "bfloat16",
             "_bf16_compiled": "bfloat16, compiled"}
    lines = ["| width/depth | ours: solver (NFE), network | ours, guided w = 1 unless the row says (tr/s) | SynthER shipped, 255 NFE (tr/s) "
             "| SynthER DPM++(2M), same NFE (tr/s) | SynthER Heun, nearest NFE (tr/s) | **ours / shipped** "
             "(target 4.0) | **ours / same NFE** (target 1.0) | ours / their Heun nearest NFE |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        variants = [(f"ours_guided{sfx}", f"{r['solver']} ({r['nfe']['ours_guided']}), {name}")
                    for sfx, name in names.items()]
        variants.append(("ours_guided_heun32", "heun:32 (63), float32 (the previous default)"))
        if "ours_profile_default_transitions_per_s" in r:
            d = r["profile_default"]
            variants.append(("ours_profile_default", f"{r['solver']} ({r['nfe']['ours_guided']}), the profile's "
                             f"defaults: w = {d['guidance']:g}, {d['precision']}"
                             + (", compiled" if d["compile"] else "")))
        for k, label in variants:
            lines.append(
                f"| {r['width']}/{r['depth']} | {label} | {r[f'{k}_transitions_per_s']:.0f} | "
                f"{r['theirs_shipped_transitions_per_s']:.0f} | {r['theirs_same_nfe_dpmpp_2m_transitions_per_s']:.0f} | "
                f"{r['theirs_heun_nearest_nfe_transitions_per_s']:.0f} ({r['nfe']['theirs_heun_nearest_nfe']}) | "
                f"**{r[f'ratio_{k}_vs_theirs_shipped']:.2f}** | **{r[f'ratio_{k}_vs_theirs_same_nfe_dpmpp_2m']:.2f}** | "
                f"{r[f'ratio_{k}_vs_theirs_heun_nearest_nfe']:.2f} |")
    return "\n".join(lines)


def bench_training(profile: str, steps: int, device: str = "cpu") -> dict[str, float]:
    cfg = (CFDGConfig.small if profile == "small" else CFDGConfig.paper)(train_steps=steps)
    rng = np.random.default_rng(0)
    n = 20_000
    data = TransitionBatch.from_arrays(rng.normal(size=(n, OBS)), rng.normal(size=(n, ACT)), rng.normal(size=n),
                                       rng.normal(size=(n, OBS)), rng.random(n) < 0.1)
    gen = CFDGGenerator(OBS, ACT, cfg, seed=0, device=device)
    gen.fit(data, data, steps=5)  # warm-up (allocations, first-call overheads)
    synchronize()
    t = time.perf_counter()
    gen.fit(data, data, steps=steps)
    synchronize()
    return {"profile": profile, "width": cfg.width, "depth": cfg.depth, "batch_size": cfg.batch_size,
            "precision": gen.training_precision, "steps": steps, "steps_per_s": steps / (time.perf_counter() - t)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer samples and repeats (smoke run)")
    p.add_argument("--only", choices=["few_step"], help="run only the few-step comparison "
                   "(writes bench_generator_few_step.json)")
    p.add_argument("--solver", default=DEFAULT_FEW_STEP,
                   help="few-step solver at width 256, sampler:steps[:sigma_max=..][:sigma_min=..] (default %(default)s)")
    p.add_argument("--paper-solver", default=DEFAULT_FEW_STEP_PAPER,
                   help="few-step solver at width 1024 (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device of both stacks (cpu, cuda); timings synchronise it")
    p.add_argument("--tag", default="", help="suffix of the results file: bench_generator[_few_step]_TAG.json")
    p.add_argument("--paper-rows", type=int, default=1000,
                   help="rows (and chunk) of the width-1024 comparison; the paper profile samples in chunks of "
                        "100,000 (a GPU setting: arithmetic, not kernel launches, then sets the pace); "
                        "--only few_step")
    p.add_argument("--widths", default="256,1024", help="few-step comparison at these network widths (256: the "
                   "small profile's 256/3, 1024: the paper's 1024/6); one at a time bounds a timed-out run's loss; "
                   "--only few_step")
    args = p.parse_args(argv)
    dev, suffix = args.device, device_suffix(args.tag, args.device)
    widths = {int(w) for w in args.widths.split(",")}
    if not widths or not widths <= {256, 1024}:
        p.error(f"--widths must be 256, 1024 or both (the small and paper networks), got {args.widths!r}")
    n, repeats = (1000, 2) if args.quick else (5000, 3)
    widths -= {1024} if args.quick else set()
    few_step = []
    if 256 in widths:
        few_step.append(bench_few_step(256, 3, args.solver, n, repeats, 1024, dev))
    if 1024 in widths:
        few_step.append(bench_few_step(1024, 6, args.paper_solver, args.paper_rows, repeats, args.paper_rows, dev))
    print(f"torch threads: {torch.get_num_threads()}")
    print(few_step_table(few_step))
    for r in few_step:
        print(f"{r['width']}/{r['depth']}: first compiled run (compile included) "
              + ", ".join(f"{k} {v:.1f} s" for k, v in r.items() if k.endswith("first_run_seconds")))
    if args.only == "few_step":
        path = write_result(f"bench_generator_few_step{suffix}", {"few_step": few_step, "quick": args.quick,
                                                                  "device": dev,
                                                                  "table_markdown": few_step_table(few_step)})
        print(f"wrote {path}")
        return 0
    sampling = [bench_sampling(256, 3, 32, n, repeats, chunk, dev) for chunk in ((1024,) if args.quick else (1024, n))]
    if not args.quick:
        sampling.append(bench_sampling(1024, 6, 32, 1000, repeats, 1000, dev))
    training = [bench_training("small", 100 if args.quick else 400, dev),
                bench_training("paper", 10 if args.quick else 40, dev)]
    print(f"torch threads: {torch.get_num_threads()}")
    print("| width/depth | n | chunk | our network | ours CFG (tr/s) | ours no-CFG (tr/s) | SynthER stack fp32 (tr/s) | "
          "ours CFG / theirs | ours no-CFG / theirs | FLOP frac ours CFG / theirs |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    names = {"": "float32", "_compiled": "float32, compiled", "_bf16": "bfloat16", "_bf16_compiled": "bfloat16, compiled"}
    for s in sampling:
        for sfx in OUR_VARIANTS:
            print(f"| {s['width']}/{s['depth']} | {s['n']} | {s['chunk']} | {names[sfx]} | "
                  f"{s[f'ours_guided{sfx}_transitions_per_s']:.0f} | {s[f'ours_unguided{sfx}_transitions_per_s']:.0f} | "
                  f"{s['theirs_unguided_transitions_per_s']:.0f} | **{s[f'ratio_ours_guided{sfx}_vs_theirs']:.2f}** | "
                  f"{s[f'ratio_ours_unguided{sfx}_vs_theirs']:.2f} | {s[f'ours_guided{sfx}_flops_fraction_of_mm']:.2f} / "
                  f"{s['theirs_unguided_flops_fraction_of_mm']:.2f} |")
    for s in sampling:
        for sfx in ("_bf16", "_bf16_compiled"):
            print(f"{s['width']}/{s['depth']} chunk {s['chunk']}: their sampler on our {names[sfx]} network "
                  f"{s[f'theirs_unguided{sfx}_transitions_per_s']:.0f} tr/s; ours CFG {names[sfx]} / that = "
                  f"{s[f'ratio_ours_guided{sfx}_vs_theirs{sfx}']:.2f}")
        print(f"{s['width']}/{s['depth']} chunk {s['chunk']}: first compiled run (compile included) "
              + ", ".join(f"{k} {v:.1f} s" for k, v in s.items() if k.endswith("first_run_seconds")))
    for t in training:
        print(f"training {t['profile']} ({t['width']}/{t['depth']}, batch {t['batch_size']}): {t['steps_per_s']:.1f} steps/s")
    path = write_result(f"bench_generator{suffix}", {"sampling": sampling, "training": training, "few_step": few_step,
                                                     "quick": args.quick, "device": dev})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
