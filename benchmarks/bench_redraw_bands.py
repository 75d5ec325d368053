"""Which noise levels of a redraw need RePaint's resampling? One saved fit, one band per row.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_redraw_bands --env walker2d \
        --load /tmp/gen-walker2d.safetensors --bands 0:3,5:20,0.3:5.1

The behaviour filter's redraws draw a rejected row's action for its own state by RePaint
(:func:`cfdg_aug.diffusion.edm.sample_repaint`), ``redraw_resample`` evaluations at each of
``redraw_steps`` noise levels. Here only the levels with ``LO <= sigma <= HI`` are resampled and the
others take one evaluation: the library's ``redraw_resample_sigma_max`` is the band ``0:HI``; the
other bands (only the high levels, only the middle ones) are asked here alone. Each band is scored
by ``bench_behaviour_filter``'s ``mahalanobis-redraw:0.2:3:<steps>:<resample>`` variant on the same
fit (``--seed`` must be the fit's, which draws the held-out split), rows appended to ``--out``
with the band in ``band`` (written by this script after the filter benchmark's own row).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import benchmarks.bench_behaviour_filter as filter_bench
import cfdg_aug.generator as generator_module
from cfdg_aug.diffusion.edm import karras_sigmas

_BAND = [0.0, math.inf]


def sample_repaint_in_band(denoise, known, mask, sigmas, *, resample,  # type: ignore[no-untyped-def]
                           resample_sigma_max=math.inf, generator=None):
    """``sample_repaint`` resampling the levels inside ``_BAND`` only (``resample_sigma_max`` is
    replaced by the band)."""
    def randn() -> torch.Tensor:
        return torch.randn(known.shape, generator=generator, device=known.device, dtype=known.dtype)

    ones = known.new_ones(1)
    levels = sigmas.tolist()
    x = randn() * levels[0]
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        u_max = resample if _BAND[0] <= sigma <= _BAND[1] else 1
        for u in range(u_max):
            x = torch.where(mask, known + sigma * randn(), x)
            denoised = denoise(x, sigma * ones)
            x_next = denoised if sigma_next == 0 else x + (sigma_next - sigma) * (x - denoised) / sigma
            if u < u_max - 1:
                x = x_next + math.sqrt(sigma**2 - sigma_next**2) * randn()
        x = x_next
    return torch.where(mask, known, x)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True, choices=("hopper", "walker2d", "halfcheetah"))
    ap.add_argument("--load", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", required=True, help="comma-separated LO:HI sigma bands")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resample", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/redraw_bands.jsonl")
    a = ap.parse_args(argv)
    generator_module.sample_repaint = sample_repaint_in_band  # type: ignore[assignment]
    for band in a.bands.split(","):
        lo, hi = (float(v) for v in band.split(":"))
        _BAND[:] = [lo, hi]
        levels = karras_sigmas(a.steps, 0.06, 20.0, 7.0).tolist()[:-1]  # the small profile's schedule
        nfe = sum(a.resample if lo <= s <= hi else 1 for s in levels)
        print(f"band {band}: {nfe} evaluations per redraw", flush=True)
        rows = filter_bench.main(["--env", a.env, "--load", a.load, "--seed", str(a.seed), "--variants",
                                  f"mahalanobis-redraw:0.2:3:{a.steps}:{a.resample}", "--out", a.out,
                                  "--set", "redraw_resample_sigma_max=null", "--set", "redraw_in_terminal_search=true"])
        with open(a.out) as fh:
            lines = fh.readlines()
        last = json.loads(lines[-1])
        assert last["variant"] == rows[-1]["variant"]
        last["band"] = {"lo": lo, "hi": hi, "evaluations_per_redraw": nfe}
        Path(a.out).write_text("".join(lines[:-1]) + json.dumps(last) + "\n")


if __name__ == "__main__":
    main()
