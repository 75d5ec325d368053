"""CUDA: what a GPU run must not get wrong. The guards run on any machine (CUDA is simulated where
it has to be); the tests marked ``needs_cuda`` run on a real GPU and are skipped without one: they
fit, sample, save and load a generator, train and sample through the compiled bf16 paths, fill and
sample the SB3 buffer, and make a tiny CFDG IQL run through the CLI (``benchmarks/gpu_session.sh``
runs them on a lent GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import cfdg_aug.generator as generator_module
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.transitions import TransitionBatch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OBS, ACT = 3, 2


def _batch(n: int, mean: float, seed: int) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(mean, 1.0, (n, OBS))
    return TransitionBatch.from_arrays(obs, rng.uniform(-0.9, 0.9, (n, ACT)), rng.normal(mean, 1.0, n),
                                       obs + rng.normal(0, 0.1, (n, OBS)), rng.random(n) < 0.1)


def _tiny(**kw: object) -> CFDGConfig:
    base: dict[str, object] = dict(width=32, depth=1, train_steps=20, num_sample_steps=4, redraw_steps=4, redraw_resample=2, sample_batch_size=64,
                                   batch_size=32, dynamics_steps=10, behaviour_steps=10)
    base.update(kw)
    return CFDGConfig.small(**base)


def test_building_and_fitting_a_generator_never_reseeds_the_cuda_generators(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``torch.manual_seed`` also reseeds every GPU, which ``fork_rng(devices=[])`` does not restore:
    a refresh would reset a GPU agent's random stream."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    cpu_before = torch.get_rng_state()
    gen = CFDGGenerator(OBS, ACT, _tiny(), seed=1)
    gen.fit(_batch(200, -1.0, 0), _batch(200, 1.0, 1))
    gen.sample(10, "online")
    assert calls == []
    assert torch.equal(torch.get_rng_state(), cpu_before)  # the host's CPU stream is untouched too


def test_auto_precision_counts_only_gpus_with_bf16_tensor_cores(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts there
    asked: list[object] = []
    for capability, expected in (((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: asked.append(d) or c)
        assert generator_module.bf16_supported("cuda:1") is expected, capability
        precisions = generator_module.resolved_precisions(CFDGConfig.small(), "cuda:1")
        assert precisions == {"training": "bfloat16" if expected else "float32",
                              "sampling": "bfloat16" if expected else "float32"}
    assert all(torch.device(d) == torch.device("cuda:1") for d in asked)  # the device asked about, not the current one


def test_restricting_the_actor_refuses_a_captured_cuda_graph() -> None:
    pytest.importorskip("d3rlpy")
    from d3rlpy.torch_utility import CudaGraphWrapper

    from cfdg_aug.integrations.d3rlpy.actor_rows import restrict_actor_to_leading_rows

    class Impl:  # what d3rlpy builds with compile_graph=True on CUDA (no GPU needed to hold the wrapper)
        _compute_actor_grad = CudaGraphWrapper.__new__(CudaGraphWrapper)

        def compute_actor_loss(self, batch: object, action: object) -> None:
            raise AssertionError("not reached")

    impl = Impl()
    with pytest.raises(ValueError, match="compile_graph=False"):
        restrict_actor_to_leading_rows(impl, lambda: 1)
    assert "compute_actor_loss" not in vars(impl)  # left as it was


def test_run_config_refuses_actor_on_real_rows_with_cuda_graphs_before_training(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("d3rlpy")
    from cfdg_aug.experiments import runner
    from cfdg_aug.experiments.runner import check_run_config, parse_set, resolve_config

    monkeypatch.setattr(runner, "check_device", lambda device, *a: device)  # as on a GPU machine
    cfg = resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["algo.compile_graph=true"]))
    assert cfg.actor_data == "real"
    with pytest.raises(ConfigError, match="actor_data='real' cannot be combined with algo.compile_graph"):
        check_run_config(cfg, "cuda")
    none = resolve_config("iql", "none", "embedded", "small", 0, parse_set(["algo.compile_graph=true"]))
    with pytest.raises(ConfigError, match="actor_data='real' cannot be combined"):  # the actor is restricted in
        check_run_config(none, "cuda")                                             # every arm, none included
    check_run_config(cfg, "cpu")  # d3rlpy compiles graphs on CUDA only
    check_run_config(resolve_config("iql", "cfdg", "embedded", "small", 0,
                                    parse_set(["algo.compile_graph=true", "actor_data=all"])), "cuda")


def test_runs_give_d3rlpy_the_gpu_with_its_index_so_their_checkpoints_load(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """d3rlpy creates an algorithm on a bare "cuda" but cannot load the model it saves there
    (map_location splits the device on ":"): a --device cuda run failed at its first resume."""
    pytest.importorskip("d3rlpy")
    from d3rlpy.torch_utility import map_location

    from cfdg_aug.experiments.runner import build_algo, d3rlpy_device, resolve_config

    with pytest.raises(ValueError, match="not enough values to unpack"):
        map_location("cuda")  # d3rlpy's own behaviour, the reason for d3rlpy_device
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert d3rlpy_device("cuda") == "cuda:1" and d3rlpy_device("cuda:0") == "cuda:0" and d3rlpy_device("cpu") == "cpu"
    algo = build_algo(resolve_config("iql", "cfdg", "embedded", "small", 0), "Hopper-v4", "cuda")  # built lazily
    assert algo._device == "cuda:1"
    map_location(algo._device)
    # PEX's online algorithm, made from the pre-trained IQL, gets the same device.
    from cfdg_aug.experiments import runner
    from cfdg_aug.integrations.d3rlpy.pex import PEX

    seen: list[object] = []
    monkeypatch.setattr(PEX, "from_iql", classmethod(lambda cls, iql, config, device: seen.append(device)))
    pex = resolve_config("pex", "cfdg", "embedded", "small", 0)
    runner._online_algo(pex, build_algo(pex, "Hopper-v4", "cpu"), "cuda")
    assert seen == ["cuda:1"]


def test_resuming_a_gpu_checkpoint_elsewhere_warns_that_it_will_not_replay(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from cfdg_aug.experiments.runner import _restore_rng, _rng_state

    state = _rng_state(None)
    assert ("torch_cuda" in state) == (torch.cuda.is_available() and torch.cuda.is_initialized())
    state["torch_cuda"] = [[0] * 16]  # one GPU's state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="does not replay the same transitions"):
        _restore_rng(state, None)


def test_ray_tasks_get_the_gpu_they_can_see(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Ray sets CUDA_VISIBLE_DEVICES per task: inside it the GPU is always cuda:0. The grid's
    pre-trained agents' folder travels with the task."""
    import sys
    import types

    from cfdg_aug.experiments import sweep

    seen: list[str] = []

    class Ref:
        pass

    class Remote:
        def __init__(self, fn: object, **resources: object) -> None:
            assert resources["num_gpus"] == 1

        def remote(self, c: object, out: object, device: str, threads: int, pretrained_dir: str | None) -> Ref:
            seen.extend([device, pretrained_dir])
            return Ref()

    fake = types.SimpleNamespace(
        is_initialized=lambda: True, remote=lambda **kw: (lambda fn: Remote(fn, **kw)),
        wait=lambda pending, num_returns: (pending[:1], pending[1:]),
        get=lambda ref: {"status": "finished"}, shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    spec = types.SimpleNamespace(device="cuda:1", threads=1, pretrained_dir="shared/pre")
    from cfdg_aug.experiments import runner

    monkeypatch.setattr(runner.ExperimentConfig, "from_dict",
                        classmethod(lambda cls, c: types.SimpleNamespace(run_id=lambda: "x")))
    sweep._run_ray([{"seed": 0}], str(tmp_path), spec, 1, "local")  # type: ignore[arg-type]
    assert seen == ["cuda", "shared/pre"]


@needs_cuda
def test_generator_fits_samples_and_saves_on_cuda_and_loads_on_the_cpu(tmp_path: Path) -> None:
    torch.cuda.manual_seed_all(123)
    cuda_before = torch.cuda.get_rng_state_all()
    offline, online = _batch(500, -1.0, 0), _batch(500, 1.0, 1)
    runs = []
    for _ in range(2):
        gen = CFDGGenerator(OBS, ACT, _tiny(), seed=4, device="cuda")
        assert gen.device.index is not None  # bound to a GPU at construction
        gen.fit(offline, online)
        runs.append(gen.sample(50, "online").flatten())
    np.testing.assert_array_equal(runs[0], runs[1])  # same seed, same GPU: same samples
    assert all(torch.equal(a, b) for a, b in zip(cuda_before, torch.cuda.get_rng_state_all(), strict=True))
    assert np.isfinite(runs[0]).all() and np.abs(runs[0][:, OBS:OBS + ACT]).max() <= 1.0
    path = tmp_path / "gen.safetensors"
    gen.save(path)
    with pytest.warns(UserWarning, match="reseeded"):
        cpu = CFDGGenerator.load(path, device="cpu")
    assert cpu.sample(20, "online").flatten().shape == (20, 2 * OBS + ACT + 2)


@needs_cuda
def test_compiled_bf16_sampling_and_compiled_training_run_on_cuda_without_falling_back(recwarn) -> None:  # type: ignore[no-untyped-def]
    """The compiled paths are the ones a GPU is for; a backend failure there would only warn and
    run eagerly, so the warning is what this looks for."""
    gen = CFDGGenerator(OBS, ACT, _tiny(training_compile=True, sampling_compile=True, sampling_precision="bfloat16",
                                        train_steps=30), seed=2, device="cuda")
    gen.fit(_batch(500, -1.0, 0), _batch(500, 1.0, 1))
    rows = gen.sample(200, "online").flatten()
    fallbacks = [str(w.message) for w in recwarn if "torch.compile of the" in str(w.message)]
    assert not fallbacks and not gen._training_compile_failed, fallbacks
    assert gen._compiled_loss is not None and gen._sampling_nets[("bfloat16", True)].compiled  # engaged, not bypassed
    assert np.isfinite(rows).all() and np.abs(rows[:, OBS:OBS + ACT]).max() <= 1.0
    eager = gen.sample_normalized(200, "online", precision="bfloat16", compile=False)
    compiled = gen.sample_normalized(200, "online", precision="bfloat16", compile=True)
    assert np.isfinite(compiled).all() and compiled.shape == eager.shape
    # Different noise (the stream moved on), same model: the two samples' means agree.
    np.testing.assert_allclose(compiled.mean(0), eager.mean(0), atol=0.35)


@needs_cuda
def test_sb3_buffer_mixes_real_and_synthetic_rows_on_the_gpu() -> None:
    pytest.importorskip("stable_baselines3")
    from cfdg_aug.integrations.sb3 import CFDGReplayBuffer
    from tests.test_sb3_buffer import ACT_SPACE, OBS_SPACE, TINY, _fill, _offline

    buf = CFDGReplayBuffer(200, OBS_SPACE, ACT_SPACE, device="cuda", config=TINY, offline_data=_offline(40), seed=3)
    assert buf.generator_device == "cuda"  # a new generator goes with the buffer
    _fill([buf], steps=50)  # the 50th online transition makes the first refresh due
    assert buf.generator is not None and buf.generator.device.type == "cuda"
    s = buf.sample(64)
    assert all(t.device.type == "cuda" for t in (s.observations, s.actions, s.next_observations, s.dones, s.rewards))
    assert np.bincount(buf.last_sources, minlength=4)[2:].sum() > 0  # synthetic rows in the batch


@needs_cuda
@pytest.mark.parametrize("graph_sets", [(), ("algo.compile_graph=true", "actor_data=all")], ids=["eager", "cuda_graphs"])
def test_a_tiny_cfdg_iql_run_pretrains_fine_tunes_and_refreshes_on_cuda(tmp_path: Path, graph_sets) -> None:  # type: ignore[no-untyped-def]
    """Eagerly, and with d3rlpy's CUDA graphs (4.6x the IQL updates on an H200, docs/benchmarks.md;
    allowed with the actor on all rows, the paper profile's choice): pre-train, checkpoint, resume,
    refresh and score."""
    pytest.importorskip("d3rlpy")
    import csv
    import json

    from typer.testing import CliRunner

    from cfdg_aug.experiments.cli import app
    from cfdg_aug.experiments.runner import SMOKE_SET

    args = ["run", "--algo", "iql", "--augmentation", "cfdg", "--dataset", "embedded", "--profile", "small",
            "--seed", "0", "--out", str(tmp_path), "--no-progress", "--device", "cuda",
            *[a for it in (*SMOKE_SET, *graph_sets) for a in ("--set", it)]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (rd,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "pretrained"]
    stored = json.loads((rd / "config.json").read_text())
    auto = "bfloat16" if generator_module.bf16_supported("cuda") else "float32"
    assert stored["generator_precision"] == {"training": auto, "sampling": auto}
    assert stored["algo_config"]["compile_graph"] == bool(graph_sets)
    with open(rd / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r for r in rows if r["phase"] == "refresh"]
    assert np.isfinite(float(json.loads((rd / "result.json").read_text())["final_score"]))
