"""Generator training throughput: float32 vs bf16 autocast, batch 256 vs 1,024, eager vs compiled.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_train_step --threads 1
    python -m benchmarks.bench_train_step --device cuda --width 1024 --depth 6   # a GPU, paper network

Same process, variants interleaved over ``--repeats`` rounds (so load from other processes hits
them alike); each measures ``--steps`` training steps of a small-profile network (width 256, depth
3) on the embedded hopper data, after a warm-up of 20 steps (which also absorbs compilation).
Reported per variant: median steps and samples (rows) per CPU-second (``time.process_time``,
all threads) and per wall-second. What this does not show, fidelity per step, is in
docs/fidelity.md ("Fidelity per CPU-second"): there batch 1,024 at lr 6e-4 for 10,000 steps matched
batch 256 for 20,000.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import RESULTS, device_suffix, synchronize
from cfdg_aug import CFDGConfig, CFDGGenerator
from cfdg_aug.datasets import load_embedded
from cfdg_aug.generator import bf16_supported
from cfdg_aug.transitions import LABEL_NULL

VARIANTS = {
    "fp32 b256": dict(batch_size=256, bf16_autocast=False),
    "bf16 b256": dict(batch_size=256, bf16_autocast=True),
    "fp32 b1024": dict(batch_size=1024, bf16_autocast=False),
    "bf16 b1024": dict(batch_size=1024, bf16_autocast=True),
    "bf16 b1024 compiled": dict(batch_size=1024, bf16_autocast=True, compiled=True),
}
# On a GPU only: the loss compiled with mode="reduce-overhead", which replays its forward and backward
# as CUDA graphs (the optimiser step stays eager). d3rlpy's captured updates ran 4.6-5.7x eager on
# an H200 (docs/benchmarks.md, "The second lease"); this asks how much of that the generator's
# launch-bound step can get. On a CPU the mode changes nothing, so the variant is left out there.
GPU_VARIANTS = {
    "bf16 b1024 cuda graphs": dict(batch_size=1024, bf16_autocast=True, compiled="reduce-overhead"),
    "fp32 b256 cuda graphs": dict(batch_size=256, bf16_autocast=False, compiled="reduce-overhead"),
}


def _fitted(kw: dict, data: np.ndarray, device: str = "cpu") -> tuple[CFDGGenerator, torch.Tensor, object]:
    kw = dict(kw)
    compiled = kw.pop("compiled", False)
    gen = CFDGGenerator(11, 3, CFDGConfig.small(**kw), seed=0, termination="Hopper-v4", device=device)
    x = torch.from_numpy(data).to(gen.device)
    mode = compiled if isinstance(compiled, str) else None
    loss_fn = torch.compile(gen.model.loss, mode=mode) if compiled else gen.model.loss
    return gen, x, loss_fn


def _steps(gen: CFDGGenerator, x: torch.Tensor, loss_fn, n: int) -> None:  # type: ignore[no-untyped-def]
    """``n`` steps of what CFDGGenerator._train does per step (labels dropped to null at p_uncond)."""
    cfg = gen.config
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(n):
        idx = torch.randint(x.shape[0], (cfg.batch_size,), generator=gen._rng, device=x.device)
        lab = torch.where(torch.rand(cfg.batch_size, generator=gen._rng, device=x.device) < cfg.p_uncond,
                          torch.full_like(labels[idx], LABEL_NULL), labels[idx])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=gen.training_precision == "bfloat16"):
            loss = loss_fn(x[idx], lab, p_mean=cfg.p_mean, p_std=cfg.p_std, generator=gen._rng)
        gen.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.model.parameters(), 1.0)
        gen.optimizer.step()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="results file (default benchmarks/results/bench_train_step.json on the CPU, "
                    "bench_train_step_cuda.json on a GPU)")
    ap.add_argument("--device", default="cpu", help="torch device of the generators (cpu, cuda)")
    ap.add_argument("--width", type=int, default=CFDGConfig.small().width)
    ap.add_argument("--depth", type=int, default=CFDGConfig.small().depth)
    a = ap.parse_args(argv)
    out_path = Path(a.out) if a.out else RESULTS / f"bench_train_step{device_suffix('', a.device)}.json"
    torch.set_num_threads(a.threads)
    b = load_embedded().to_transition_batch()
    data = np.random.default_rng(0).standard_normal((len(b), 15)).astype(np.float32)  # model columns of hopper
    variants = VARIANTS | (GPU_VARIANTS if torch.device(a.device).type == "cuda" else {})
    gens = {}
    for name, kw in variants.items():
        try:
            gens[name] = _fitted(kw | dict(width=a.width, depth=a.depth), data, a.device)
            _steps(*gens[name], 20)
        except Exception as e:  # noqa: BLE001 - a backend that cannot compile is a result, not a crash
            print(f"{name}: skipped ({type(e).__name__}: {e})")
            gens.pop(name, None)
    res: dict[str, dict[str, list[float]]] = {n: {"cpu": [], "wall": []} for n in gens}
    for _ in range(a.repeats):
        for name, g in gens.items():
            synchronize()
            c, w = time.process_time(), time.perf_counter()
            _steps(*g, a.steps)
            synchronize()
            res[name]["cpu"].append(a.steps / (time.process_time() - c))
            res[name]["wall"].append(a.steps / (time.perf_counter() - w))
    out = {"threads": a.threads, "bf16_units": bf16_supported(a.device), "steps": a.steps, "repeats": a.repeats,
           "torch": torch.__version__, "device": a.device, "width": a.width, "depth": a.depth,
           "device_name": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else None,
           "variants": {}}
    for name, r in res.items():
        bs = variants[name]["batch_size"]
        med_cpu, med_wall = statistics.median(r["cpu"]), statistics.median(r["wall"])
        out["variants"][name] = {"steps_per_cpu_s": med_cpu, "rows_per_cpu_s": med_cpu * bs,
                                 "steps_per_wall_s": med_wall, "rows_per_wall_s": med_wall * bs}
        print(f"{name:>20}: {med_cpu:6.1f} steps/CPU-s ({med_cpu * bs:8.0f} rows/CPU-s), "
              f"{med_wall:6.1f} steps/wall-s")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
