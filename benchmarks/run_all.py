"""Run every benchmark in sequence (what `make bench` does); each writes benchmarks/results/NAME.json.

    python -m benchmarks.run_all [--only generator buffer ...]

Each benchmark reports ratios against a baseline measured in the same run, so they can be compared
across machines; run them on an otherwise idle machine, one at a time (this script does).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

BENCHMARKS: dict[str, list[str]] = {
    "generator": [],
    "buffer": [],
    "sb3": [],
    "algos": [],
    "d3rlpy_o2o": [],
    "fidelity": [],
    "precision": [],
    "train_step": ["--threads", "1"],
    "sampler": [],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    args = p.parse_args(argv)
    failed = []
    for name in args.only or list(BENCHMARKS):
        print(f"\n=== benchmarks.bench_{name} ===", flush=True)
        t = time.perf_counter()
        try:
            main_fn = importlib.import_module(f"benchmarks.bench_{name}").main
            if inspect.signature(main_fn).parameters:
                out = main_fn(BENCHMARKS[name])
            else:  # parses sys.argv itself
                sys.argv = [f"benchmarks.bench_{name}", *BENCHMARKS[name]]
                out = main_fn()
            rc = out if isinstance(out, int) else 0
        except SystemExit as e:  # argparse / explicit exits
            rc = int(e.code or 0) if not isinstance(e.code, str) else 1
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t:.0f} s ===", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
