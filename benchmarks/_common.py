"""Helpers shared by the benchmarks: timing with interleaved repeats, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def synchronize() -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a timer read without this
    measures the launches, not the work. A no-op where CUDA was never used."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):  # every GPU: the timed work may not be on the current one
            torch.cuda.synchronize(index)


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs (GPU
    work included: the device is synchronised before and after each run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize()
        t = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def device_suffix(tag: str, device: str) -> str:
    """A results file's name suffix: ``_TAG``, else ``_cuda`` (``_cuda_1``, ...) for a GPU run, so
    a GPU run never overwrites the CPU reference files the docs cite; empty on the CPU."""
    if tag:
        return f"_{tag}"
    return "" if torch.device(device).type == "cpu" else "_" + str(device).replace(":", "_")


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"machine": machine(), **result}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path
