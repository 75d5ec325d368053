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
    pretrained_dir: results/pre    # optional: the shared pre-trained agents' folder (default OUT/pretrained),
                                   # as `run --pretrained-dir`; lets a grid reuse another grid's agents

Each run is :func:`cfdg_aug.experiments.runner.run_experiment`, so a sweep that is killed and
started again resumes every unfinished run from its checkpoint. Before any run starts (and before
the ``out`` folder is created), every unfinished run's settings pass
:func:`~cfdg_aug.experiments.runner.check_run_config` and its dataset the runner's data pre-flight:
loaded and checked against its environment (observation / action sizes), the replay pools' memory
and the algorithm's config, as ``cfdg-aug run`` checks them. On Ray, the device's availability is
left to the workers, which may have a GPU the driver lacks; on a Ray cluster (``--ray-address``
other than ``local``) so are the datasets, which may be on the workers' disks only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfdg_aug._optional import require
from cfdg_aug.config import ConfigError, check_device, check_folder

if TYPE_CHECKING:
    from cfdg_aug.experiments.runner import ExperimentConfig


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
    #: folder of the shared pre-trained agents (``None``: ``out``/pretrained), as ``run --pretrained-dir``
    pretrained_dir: str | None = None
    #: the grid file's ``out`` (``out`` may be overridden since, e.g. by ``--out``): errors then name
    #: the right one
    grid_out: str | None = field(default=None, repr=False, compare=False)
    #: likewise the grid file's ``pretrained_dir``
    grid_pretrained_dir: str | None = field(default=None, repr=False, compare=False)

    def configs(self) -> list[Any]:
        """Every ExperimentConfig of the grid (validated), in a stable order."""
        from cfdg_aug.experiments.runner import parse_set, resolve_config

        ov = parse_set([f"{k}={_yaml_scalar(v)}" for k, v in self.overrides.items()])
        return [resolve_config(a, g, d, self.profile, s, ov)
                for a in self.algos for d in self.datasets for g in self.augmentations for s in self.seeds]


def _yaml_scalar(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


_GRID_KEYS = {"out", "profile", "algos", "augmentations", "datasets", "seeds", "set", "device", "threads",
              "pretrained_dir"}


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
    pretrained_dir = d.get("pretrained_dir")
    if pretrained_dir is not None and (not isinstance(pretrained_dir, str) or not pretrained_dir):
        raise ConfigError(f"grid field 'pretrained_dir' must be a folder path string, got {pretrained_dir!r}")
    # The spelling only: whether this machine has the device is checked where the runs execute.
    check_device(str(d.get("device", "cpu")), "grid field 'device'", available=False)
    spec = GridSpec(out=d["out"], algos=_str_list(d, "algos"), augmentations=_str_list(d, "augmentations"),
                    datasets=datasets, seeds=list(seeds), profile=str(d.get("profile", "small")),
                    overrides=dict(overrides), device=str(d.get("device", "cpu")), threads=threads,
                    pretrained_dir=pretrained_dir, grid_out=d["out"],
                    grid_pretrained_dir=pretrained_dir)
    spec.configs()  # validate every combination before anything starts
    return spec


def load_grid(path: str | os.PathLike[str]) -> GridSpec:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the grid file ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML{_yaml_error_where(e)}") from None
    return parse_grid(data, base_dir=p.parent)


def _yaml_error_where(e: Exception) -> str:
    """`` at line L, column C: PROBLEM`` of a PyYAML error, on one line (its ``str`` spans several,
    with marks and snippets of the file)."""
    import yaml

    if isinstance(e, yaml.MarkedYAMLError):
        what = " ".join(str(e.problem or e.context or "syntax error").split())
        mark = e.problem_mark or e.context_mark
        return f" at line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else f": {what}"
    if isinstance(e, yaml.reader.ReaderError):
        return f" at character {e.position}: {' '.join(str(e.reason).split())}"
    return f": {' '.join(str(e).split())}"


def run_one(cfg_dict: dict[str, Any], out: str, device: str, threads: int,
            pretrained_dir: str | None = None) -> dict[str, Any]:
    """Worker entry point (local process or Ray task): run or resume one configuration, its
    pre-trained agent shared through ``pretrained_dir`` (``None``: ``out``/pretrained).

    Never raises: a failure is reported as ``status="failed"`` so one bad run does not stop the grid.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from cfdg_aug.experiments.runner import ExperimentConfig, run_experiment

    cfg = ExperimentConfig.from_dict(cfg_dict)
    try:
        outcome = run_experiment(cfg, out, device=device, progress=False, threads=threads,
                                 log=lambda *_: None, pretrained_dir=pretrained_dir)
    except Exception as e:  # reported per run; the sweep carries on
        return {"run_id": cfg.run_id(), "status": "failed", "error": f"{type(e).__name__}: {e}"}
    return {"run_id": cfg.run_id(), "status": outcome.status, "final_score": outcome.final_score,
            "resumed_from": outcome.resumed_from}


def _preflight_datasets(cfgs: list[ExperimentConfig], device: str) -> None:
    """The data pre-flight of :func:`~cfdg_aug.experiments.runner.run_experiment` for every run of
    ``cfgs``, before the first one starts: each dataset loaded and checked against its env (the
    observation / action sizes), the replay pools' memory and the algorithm's config. Runs that
    differ only in their seed share one check. Raises what ``cfdg-aug run`` raises for that run
    (:class:`DatasetError`, ``FileNotFoundError``, :class:`ConfigError`, the latter prefixed with the
    run id)."""
    import json

    from cfdg_aug.experiments.runner import _preflight_data

    done: set[str] = set()
    for cfg in cfgs:
        key = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "seed"}, sort_keys=True, default=str)
        if key in done:
            continue
        try:
            _preflight_data(cfg, device)
        except ConfigError as e:
            raise ConfigError(f"run {cfg.run_id()}: {e}") from None
        done.add(key)


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def start_order(todo: list[ExperimentConfig]) -> list[ExperimentConfig]:
    """The order runs start in: those that pre-fit a generator (``prefit_generator``) first, the
    grid's order otherwise. Only the run that pre-trains a shared agent can hide its pre-fit behind
    the pre-training (an arm that reuses the agent waits for its pre-fit instead, at its first refresh
    or, while another run fits it, at the start of its online phase), so the arms
    that pre-fit should be the ones that pre-train; the other arms of a seed reuse the agent and
    the pre-fit at no cost. The results come back in the grid's order whatever this order."""
    return sorted(todo, key=lambda c: not (c.prefit_generator and c.augmentation != "none"))


def run_sweep(spec: GridSpec, *, workers: int = 2, ray_address: str | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Run the grid; returns one dict per configuration (``run_id``, ``status``: "skipped" /
    "finished" / "already-finished" / "failed", ``final_score``, ``error``)."""
    import io

    from tqdm.auto import tqdm

    from cfdg_aug.experiments.runner import check_run_config, quiet_output, run_finished

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if ray_address:  # before anything is checked or created: an ImportError naming the extra
        check_ray_address(ray_address)
        require("ray", "ray", what=f"a sweep on Ray (--ray-address {ray_address})")
    else:
        check_device(spec.device)
    out = Path(spec.out)
    out_name = "grid field 'out'" if spec.out == spec.grid_out else "--out"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out_name} {out} is a file, expected a folder")
    if spec.pretrained_dir is not None:
        check_folder(spec.pretrained_dir, "grid field 'pretrained_dir'" if spec.pretrained_dir == spec.grid_pretrained_dir
                     else "--pretrained-dir")
    driver_device = "cpu" if ray_address else spec.device
    results: dict[str, dict[str, Any]] = {}
    todo: list[ExperimentConfig] = []
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
                check_run_config(cfg, driver_device)
            except ConfigError as e:
                raise ConfigError(f"run {rid}: {e}") from None
            todo.append(cfg)
        if not ray_address or ray_address == "local":
            _preflight_datasets(todo, driver_device)
    todo = start_order(todo)
    # Connected before the output folder exists: an address with no cluster behind it changes nothing.
    started_ray = _connect_ray(ray_address, workers, spec.threads) if todo and ray_address else False
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if started_ray:
            import ray

            ray.shutdown()
        raise ConfigError(f"cannot create {out_name} {out}: {e.strerror or e}") from None
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress)
    if todo and ray_address:
        for r in _run_ray([c.to_dict() for c in todo], str(out), spec, workers, started_ray):
            results[r["run_id"]] = r
            bar.update(1)
    elif todo:
        import multiprocessing as mp

        # spawn: a fresh interpreter per worker (no forked torch / OpenMP state).
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(spec.threads,)) as ex:
            futs = [ex.submit(run_one, c.to_dict(), str(out), spec.device, spec.threads, spec.pretrained_dir)
                    for c in todo]
            for f in as_completed(futs):
                r = f.result()
                results[r["run_id"]] = r
                bar.update(1)
    bar.close()
    return [results[rid] for rid in order]


def check_ray_address(address: str) -> None:
    """Refuse a ``--ray-address`` that names no Ray cluster: ``local`` (start one here), ``auto``
    (the cluster this machine belongs to), ``HOST:PORT`` or ``ray://HOST:PORT`` (a Ray client)."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if address in ("local", "auto") or (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return
    raise ConfigError(f"--ray-address {address!r}: expected 'local', 'auto', HOST:PORT or ray://HOST:PORT")


def _connect_ray(address: str, workers: int, threads: int) -> bool:
    """Start (``local``) or join the Ray cluster at ``address``; True when this call initialised Ray
    (and must shut it down). A cluster that cannot be reached is one ConfigError naming the address."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}
    try:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False)
        else:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        raise ConfigError(f"--ray-address {address}: could not start or join Ray ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'}); nothing was run") from None
    return True


def _run_ray(todo: list[dict[str, Any]], out: str, spec: GridSpec, workers: int,
             started: bool) -> list[dict[str, Any]]:
    """Run ``todo`` as Ray tasks on the cluster :func:`_connect_ray` joined (shut down at the end
    when ``started``)."""
    import ray

    try:
        gpus = 1 if spec.device.startswith("cuda") else 0
        # Ray gives each task one GPU through CUDA_VISIBLE_DEVICES, where it is always "cuda:0": an
        # index from the driver's numbering would name a device the task cannot see.
        task_device = "cuda" if gpus else spec.device
        task = ray.remote(num_cpus=spec.threads, num_gpus=gpus, max_retries=0)(run_one)
        from cfdg_aug.experiments.runner import ExperimentConfig

        pending: list[Any] = []
        ids: dict[Any, str] = {}
        results: list[dict[str, Any]] = []
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers:  # bound in-flight tasks on a shared cluster
                c = queue.pop(0)
                ref = task.remote(c, out, task_device, spec.threads, spec.pretrained_dir)
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
