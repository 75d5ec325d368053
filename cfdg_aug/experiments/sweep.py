"""``cfdg-aug sweep``: a grid of runs (algos x augmentations x datasets x seeds), run by N local worker
processes or as Ray tasks, skipping runs that are already finished.

Grid file (YAML)::

    out: results/study1            # parent folder of the run directories
    profile: small                 # small | paper
    algos: [iql]
    augmentations: [none, unconditional, cfdg]
    datasets: [/work/shared/datasets/hopper-medium-50k.hdf5]
    seeds: 5                       # an int n means seeds 0..n-1, or an explicit list [0, 1, 2]
    set:                           # optional overrides, same keys as `run --set`
      online_steps: 30000
      cfdg.refresh_every: 5000
    device: cpu                    # optional
    threads: 1                     # torch threads per run (default 1)

Each run is :func:`cfdg_aug.experiments.runner.run_experiment`, so a sweep that is killed and
started again resumes every unfinished run from its checkpoint. Before any run starts, every
unfinished run's settings pass :func:`~cfdg_aug.experiments.runner.check_run_config` (on Ray, the
device's availability is left to the workers, which may have a GPU the driver lacks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfdg_aug.config import ConfigError, check_device


@dataclass
class GridSpec:
    """A parsed grid file (see the module docstring)."""

    out: str
    algos: list[str]
    augmentations: list[str]
    datasets: list[str]
    seeds: list[int]
    profile: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1

    def configs(self) -> list[Any]:
        """Every ExperimentConfig of the grid (validated), in a stable order."""
        from cfdg_aug.experiments.runner import parse_set, resolve_config

        ov = parse_set([f"{k}={_yaml_scalar(v)}" for k, v in self.overrides.items()])
        return [resolve_config(a, g, d, self.profile, s, ov)
                for a in self.algos for d in self.datasets for g in self.augmentations for s in self.seeds]


def _yaml_scalar(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


_GRID_KEYS = {"out", "profile", "algos", "augmentations", "datasets", "seeds", "set", "device", "threads"}


def _str_list(d: Mapping[str, Any], key: str) -> list[str]:
    v = d.get(key)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"grid field {key!r} must be a non-empty list of strings, got {v!r}")
    return v


def parse_grid(d: Mapping[str, Any], *, base_dir: Path | None = None) -> GridSpec:
    """Validate a grid mapping; relative dataset paths that exist relative to ``base_dir`` (the grid
    file's folder) are resolved against it."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"grid must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid field(s): {', '.join(unknown)}; known: {', '.join(sorted(_GRID_KEYS))}")
    if "out" not in d or not isinstance(d["out"], str):
        raise ConfigError(f"grid field 'out' must be a folder path string, got {d.get('out')!r}")
    seeds = d.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"grid field 'seeds' must be >= 1 or a list of ints, got {seeds}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"grid field 'seeds' must be an int n >= 1 or a list of ints >= 0, got {seeds!r}")
    overrides = d.get("set") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"grid field 'set' must be a mapping of KEY: VALUE, got {overrides!r}")
    datasets = _str_list(d, "datasets")
    if base_dir is not None:
        datasets = [str(base_dir / p) if not Path(p).is_absolute() and (base_dir / p).exists() else p for p in datasets]
    threads = d.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"grid field 'threads' must be an int >= 1, got {threads!r}")
    # The spelling only: whether this machine has the device is checked where the runs execute.
    check_device(str(d.get("device", "cpu")), "grid field 'device'", available=False)
    spec = GridSpec(out=d["out"], algos=_str_list(d, "algos"), augmentations=_str_list(d, "augmentations"),
                    datasets=datasets, seeds=list(seeds), profile=str(d.get("profile", "small")),
                    overrides=dict(overrides), device=str(d.get("device", "cpu")), threads=threads)
    spec.configs()  # validate every combination before anything starts
    return spec


def load_grid(path: str | os.PathLike[str]) -> GridSpec:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    return parse_grid(data, base_dir=p.parent)


def run_one(cfg_dict: dict[str, Any], out: str, device: str, threads: int) -> dict[str, Any]:
    """Worker entry point (local process or Ray task): run or resume one configuration.

    Never raises: a failure is reported as ``status="failed"`` so one bad run does not stop the grid.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from cfdg_aug.experiments.runner import ExperimentConfig, run_experiment

    cfg = ExperimentConfig.from_dict(cfg_dict)
    try:
        outcome = run_experiment(cfg, out, device=device, progress=False, threads=threads,
                                 log=lambda *_: None)
    except Exception as e:  # reported per run; the sweep carries on
        return {"run_id": cfg.run_id(), "status": "failed", "error": f"{type(e).__name__}: {e}"}
    return {"run_id": cfg.run_id(), "status": outcome.status, "final_score": outcome.final_score,
            "resumed_from": outcome.resumed_from}


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def run_sweep(spec: GridSpec, *, workers: int = 2, ray_address: str | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Run the grid; returns one dict per configuration (``run_id``, ``status``: "skipped" /
    "finished" / "already-finished" / "failed", ``final_score``, ``error``)."""
    import io

    from tqdm.auto import tqdm

    from cfdg_aug.experiments.runner import check_run_config, quiet_output, run_finished

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if not ray_address:
        check_device(spec.device)
    out = Path(spec.out)
    results: dict[str, dict[str, Any]] = {}
    todo: list[dict[str, Any]] = []
    order = []
    # The driver runs nothing: the libraries' import chatter of the checks is dropped (each run keeps
    # its own in its run.log).
    with quiet_output(io.StringIO()):
        for cfg in spec.configs():
            rid = cfg.run_id()
            order.append(rid)
            if run_finished(out / rid):
                results[rid] = {"run_id": rid, "status": "skipped"}
                continue
            try:  # every unfinished run checked before the first one starts
                check_run_config(cfg, "cpu" if ray_address else spec.device)
            except ConfigError as e:
                raise ConfigError(f"run {rid}: {e}") from None
            todo.append(cfg.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress)
    if todo and ray_address:
        for r in _run_ray(todo, str(out), spec, workers, ray_address):
            results[r["run_id"]] = r
            bar.update(1)
    elif todo:
        import multiprocessing as mp

        # spawn: a fresh interpreter per worker (no forked torch / OpenMP state).
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(spec.threads,)) as ex:
            futs = [ex.submit(run_one, c, str(out), spec.device, spec.threads) for c in todo]
            for f in as_completed(futs):
                r = f.result()
                results[r["run_id"]] = r
                bar.update(1)
    bar.close()
    return [results[rid] for rid in order]


def _run_ray(todo: list[dict[str, Any]], out: str, spec: GridSpec, workers: int,
             address: str) -> list[dict[str, Any]]:
    import ray

    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}}
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False)
        else:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        started = True
    try:
        gpus = 1 if spec.device.startswith("cuda") else 0
        task = ray.remote(num_cpus=spec.threads, num_gpus=gpus, max_retries=0)(run_one)
        from cfdg_aug.experiments.runner import ExperimentConfig

        pending: list[Any] = []
        ids: dict[Any, str] = {}
        results: list[dict[str, Any]] = []
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers:  # bound in-flight tasks on a shared cluster
                c = queue.pop(0)
                ref = task.remote(c, out, spec.device, spec.threads)
                ids[ref] = ExperimentConfig.from_dict(c).run_id()
                pending.append(ref)
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results.append(ray.get(ref))
                except Exception as e:  # a worker crash (e.g. OOM-killed): the run resumes next sweep
                    results.append({"run_id": ids[ref], "status": "failed", "error": f"{type(e).__name__}: {e}"})
        return results
    finally:
        if started:
            ray.shutdown()


__all__ = ["GridSpec", "load_grid", "parse_grid", "run_one", "run_sweep"]
