"""What one refresh's sampling costs, per sampling setting, on one saved generator.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_refresh_sampling --env walker2d \
        --load /tmp/gen-walker2d.safetensors      # a generator saved by bench_fidelity_budget --save

A refresh samples the profile's two pools (``synthetic_online_size`` online-labelled rows, then
``synthetic_offline_size`` offline-labelled ones; 16,000 and 4,000 in the small profile) with the
behaviour filter, its redraws and the terminal-rate matching. Each variant (``--variants``, a
comma-separated list of ``SIGMA_MAX/SEARCH``: ``redraw_resample_sigma_max`` (``none`` = every
noise level) and ``redraw_in_terminal_search`` (``redraw`` / ``filter``)) samples both pools once
per round; the variants alternate within each round, so they share the machine's load. Rows (one
per variant and round: CPU and wall seconds, the wall seconds spent in redraws (draws given states)
and in fresh draws, and per label the behaviour filter's counts and the terminal search's extra
rows) append to ``--out``.

The terminal search runs only when a pool holds fewer terminal rows than the real rate asks for,
which on walker2d's online label (0.004%: one row in 16,000, kept with probability 0.67) is a
matter of chance: compare rounds with and without it (``extra_rows``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.bench_fidelity_budget import _commit
from cfdg_aug import CFDGGenerator

ENV_IDS = {"hopper": "Hopper-v4", "walker2d": "Walker2d-v4", "halfcheetah": "HalfCheetah-v4"}


def parse_variant(text: str) -> dict[str, object]:
    sigma, search = text.split("/")
    if search not in ("redraw", "filter"):
        raise SystemExit(f"error: variant {text!r}: the search must be 'redraw' or 'filter'")
    return {"redraw_resample_sigma_max": None if sigma == "none" else float(sigma),
            "redraw_in_terminal_search": search == "redraw"}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True, choices=tuple(ENV_IDS))
    ap.add_argument("--load", required=True, help="a generator saved by bench_fidelity_budget --save")
    ap.add_argument("--variants", default="none/redraw,3.0/redraw,3.0/filter")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/refresh_sampling.jsonl")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    gen = CFDGGenerator.load(a.load)
    gen.set_termination(ENV_IDS[a.env])  # as the integrations give it; a saved generator keeps no callable
    gen.sample(300, "online")  # warm-up: the sampling network's copy is built once
    base = gen.config
    spent = {"redraw": 0.0, "fresh": 0.0}  # wall seconds in the network's draws, by kind
    sample_normalized = gen.sample_normalized

    def timed(n: int, label: object = "online", **kw: object) -> object:
        start = time.perf_counter()
        out = sample_normalized(n, label, **kw)  # type: ignore[arg-type]
        spent["redraw" if kw.get("given_obs") is not None else "fresh"] += time.perf_counter() - start
        return out

    gen.sample_normalized = timed  # type: ignore[method-assign]
    pools = (("online", base.synthetic_online_size), ("offline", base.synthetic_offline_size))
    rows = []
    for rnd in range(a.rounds):
        for variant in a.variants.split(","):
            gen.config = base.replace(**parse_variant(variant))
            cpu, wall = time.process_time(), time.perf_counter()
            spent.update(redraw=0.0, fresh=0.0)
            labels = {}
            for label, n in pools:
                gen.sample(n, label)  # type: ignore[arg-type]
                labels[label] = {"behaviour": gen.last_behaviour_stats, "terminal": gen.last_terminal_stats}
            row = {"commit": _commit(), "env": a.env, "load": a.load, "variant": variant, "round": rnd,
                   "cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall,
                   "redraw_seconds": spent["redraw"], "fresh_draw_seconds": spent["fresh"],
                   "threads": a.threads, "labels": labels, "torch": torch.__version__,
                   "machine": platform.processor() or platform.machine()}
            rows.append(row)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            on = labels["online"]
            behaviour, extra = on["behaviour"], (on["terminal"] or {}).get("extra_rows", 0)
            print(f"{a.env} round {rnd} {variant:14s} {row['cpu_seconds']:6.1f} CPU-s ({spent['redraw']:.1f} s "
                  f"redrawing) | online redrawn "
                  f"{behaviour['redrawn_rows']} of {behaviour['drawn_rows']} drawn, terminal search {extra} extra rows",
                  flush=True)
    return rows


if __name__ == "__main__":
    main()
