"""The generator's pre-fit (``AugmentedReplayBuffer.prefit``): the first fit moved before the online
phase, synchronously or in a background process, with the pools and the schedule unchanged."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cfdg_aug._background import BackgroundRefreshError
from cfdg_aug.buffer import AugmentedReplayBuffer, EmptyBufferError
from tests.test_background_refresh import LAG, add_online, buffer, synthetic
from tests.test_buffer_generator import ACT, OBS, tiny


def generator_state(buf: AugmentedReplayBuffer) -> dict[str, np.ndarray]:
    assert buf.generator is not None
    tensors, _ = buf.generator.state_tensors()
    return {k: v.numpy() for k, v in tensors.items()}


def test_prefit_fits_on_the_offline_rows_and_leaves_pools_and_schedule_alone() -> None:
    buf, plain = buffer(0), buffer(0)
    stats = buf.prefit()
    assert stats is not None and buf.prefit_stats is stats
    assert (stats.steps, stats.n_offline, stats.n_online, stats.warm_started) == (30, 120, 0, False)
    assert buf.generator is not None and buf.generator.is_fitted and buf.num_refreshes == 0
    assert buf.pool_sizes == plain.pool_sizes  # nothing sampled
    # Same batches as without a pre-fit until the first scheduled refresh (50 online rows)...
    assert add_online(buf, 49, seed=2) == [] and add_online(plain, 49, seed=2) == []
    np.testing.assert_array_equal(buf.sample(64).flatten(), plain.sample(64).flatten())
    # ... which then warm-starts from the pre-fit: refit steps, not a first fit's.
    (s,), (p,) = add_online(buf, 1, seed=3), add_online(plain, 1, seed=3)
    assert s.refresh_index == p.refresh_index == 1 and s.online_count == p.online_count == 50
    assert s.fit is not None and s.fit.warm_started and s.fit.steps == 10
    assert p.fit is not None and not p.fit.warm_started and p.fit.steps == 30


def test_background_prefit_is_waited_for_only_at_the_first_refresh_and_makes_what_a_synchronous_one_does() -> None:
    sync, bg = buffer(LAG), buffer(LAG)
    sync.prefit()
    prefitted = generator_state(sync)
    assert bg.prefit(background=True) is None and bg.refresh_pending and bg.prefit_stats is None
    assert bg.num_refreshes == 0
    seen: list[dict[str, np.ndarray]] = []
    bg.add_prefit_hook(lambda stats: seen.append(generator_state(bg)))
    # Still fitting (the child has torch to import and a generator to fit): online rows go in, nobody waits.
    assert add_online(bg, 1, seed=2) == [] and bg.refresh_pending and bg.prefit_stats is None
    add_online(sync, 1, seed=2)
    # The first refresh (at 50 online rows) installs it first, waiting for it, then warm-starts from it;
    # a pre-fit is not a refresh (no stats, no hook): the one stats entry is the refresh's.
    (a,), (b,) = add_online(sync, 49 + LAG, seed=3), add_online(bg, 49 + LAG, seed=3)
    assert bg.prefit_stats is not None and sync.prefit_stats is not None and bg.prefit_wait_seconds >= 0.0
    assert bg.prefit_stats.loss_history == sync.prefit_stats.loss_history
    # The hook saw the pre-fit itself, before the refresh warm-started from it.
    assert len(seen) == 1
    for k, v in prefitted.items():
        np.testing.assert_array_equal(v, seen[0][k], err_msg=k)
    assert a.fit is not None and b.fit is not None and b.fit.warm_started and a.fit.loss_history == b.fit.loss_history
    for k, v in generator_state(sync).items():
        np.testing.assert_array_equal(v, generator_state(bg)[k], err_msg=k)
    # The buffer's sampling stream was not touched by either: the same pools and batches follow.
    for x, y in zip(synthetic(sync), synthetic(bg), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(sync.sample(64).flatten(), bg.sample(64).flatten())


def test_a_background_prefit_that_has_finished_is_installed_at_the_next_poll_changing_nothing_computed() -> None:
    sync, bg = buffer(LAG), buffer(LAG)
    sync.prefit()
    bg.prefit(background=True)
    seen: list[dict[str, np.ndarray]] = []
    bg.add_prefit_hook(lambda stats: seen.append(generator_state(bg)))
    deadline = time.time() + 120
    while bg.refresh_running and time.time() < deadline:
        time.sleep(0.05)
    assert add_online(bg, 1, seed=2) == [] and not bg.refresh_pending and len(seen) == 1
    add_online(sync, 1, seed=2)
    for k, v in generator_state(sync).items():
        np.testing.assert_array_equal(v, seen[0][k], err_msg=k)
    # Installed 49 rows before the first refresh instead of at it: the same refresh, pools and batches.
    (a,), (b,) = add_online(sync, 49 + LAG, seed=3), add_online(bg, 49 + LAG, seed=3)
    assert a.fit is not None and b.fit is not None and a.fit.loss_history == b.fit.loss_history
    for x, y in zip(synthetic(sync), synthetic(bg), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(sync.sample(64).flatten(), bg.sample(64).flatten())


def test_refresh_running_is_true_only_while_the_background_process_fits() -> None:
    bg = buffer(LAG)
    assert not bg.refresh_running
    bg.prefit(background=True)
    assert bg.refresh_running  # the child has torch to import and a generator to fit: seconds, not microseconds
    deadline = time.time() + 120
    while bg.refresh_running and time.time() < deadline:
        time.sleep(0.05)
    assert not bg.refresh_running and bg.refresh_pending  # fitted, not installed yet: saving would not wait
    add_online(bg, 1, seed=2)
    assert not bg.refresh_pending and not bg.refresh_running


def test_a_buffer_saved_with_a_prefit_pending_installs_it_after_loading(tmp_path: Path) -> None:
    bg = buffer(LAG)
    bg.prefit(background=True)
    bg.save(tmp_path / "b.safetensors")
    restored = AugmentedReplayBuffer.load(tmp_path / "b.safetensors")
    assert restored.refresh_pending
    for buf in (bg, restored):
        add_online(buf, 1, seed=2)
        assert not buf.refresh_pending and buf.generator is not None and buf.generator.is_fitted
    for k, v in generator_state(bg).items():
        np.testing.assert_array_equal(v, generator_state(restored)[k], err_msg=k)


def test_a_failed_background_prefit_raises_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    bg = buffer(LAG)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    bg.prefit(background=True)
    monkeypatch.undo()
    # Raised once the process has exited, at the latest when the first refresh (50 online rows) needs it.
    with pytest.raises(BackgroundRefreshError, match=r"background pre-fit failed \(exit status 1\)"):
        add_online(bg, 50, seed=2)
    assert not bg.refresh_pending and bg.generator is not None and not bg.generator.is_fitted


def test_prefit_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match=r"prefit\(\) needs a generator, but config.augmentation == 'none'"):
        buffer(0, augmentation="none").prefit()
    with pytest.raises(EmptyBufferError, match=r"prefit\(\) needs real data"):
        AugmentedReplayBuffer(OBS, ACT, config=tiny()).prefit()
    with pytest.raises(ValueError, match="needs config.warm_start=True"):
        buffer(0, warm_start=False, warm_start_steps=None).prefit()
    buf = buffer(0)
    buf.prefit()
    with pytest.raises(ValueError, match="already fitted"):
        buf.prefit()
    bg = buffer(LAG)
    bg.prefit(background=True)
    with pytest.raises(ValueError, match="under way"):
        bg.prefit()
    bg.cancel_refresh()
    cb = buffer(0)
    cb.set_termination(lambda o, a, n: np.zeros(len(o), bool))
    with pytest.raises(ValueError, match="cannot receive a termination callable"):
        cb.prefit(background=True)
    assert not cb.refresh_pending


def test_prefit_reports_its_stages() -> None:
    seen: list[tuple[str, int, int]] = []
    buffer(0).prefit(progress=lambda stage, done, total: seen.append((stage, done, total)))
    stages = list(dict.fromkeys(s for s, _, _ in seen))
    assert stages and all(s.startswith("pre-fit: ") for s in stages)
    assert "pre-fit: fitting generator" in stages and ("pre-fit: fitting generator", 30, 30) in seen


# --- the runner's ``prefit_generator`` -----------------------------------------------------------

def test_a_run_prefits_in_the_background_during_pretraining_without_changing_pretraining(tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy")
    pytest.importorskip("mujoco")
    import csv
    import json

    from cfdg_aug.experiments.runner import SMOKE_SET, parse_set, resolve_config, run_experiment

    def cfg(aug: str, *extra: str):  # type: ignore[no-untyped-def]
        return resolve_config("iql", aug, "embedded", "small", 0, parse_set([*SMOKE_SET, "cfdg.refresh_lag=50", *extra]))

    logs: list[str] = []
    quiet = dict(progress=False, threads=1, share_pretrained=False)
    # One refresh installed (fitted from ~100, installed 50 steps later); the none run is there for
    # its pre-training only.
    pre = run_experiment(cfg("cfdg", "prefit_generator=true", "online_steps=200"), tmp_path, log=logs.append, **quiet)
    plain = run_experiment(cfg("none", "online_steps=40", "warmup_steps=10"), tmp_path, log=lambda *a: None, **quiet)
    r = json.loads((pre.run_dir / "result.json").read_text())
    assert r["prefit"]["background"] is True and r["prefit"]["steps"] == 30 and r["prefit"]["wait_seconds"] >= 0
    assert json.loads((pre.run_dir / "prefit.json").read_text()) == r["prefit"]
    assert any("pre-fitting the generator on the offline data in a background process" in m for m in logs)
    # The background fit draws on no RNG of the learner's: pre-training is the none arm's.
    assert r["offline_score"] == json.loads((plain.run_dir / "result.json").read_text())["offline_score"]
    refreshes = [row for row in csv.DictReader(open(pre.run_dir / "metrics.csv")) if row["phase"] == "refresh"]
    assert refreshes and all(int(row["refresh_fit_steps"]) == 10 for row in refreshes)  # every one a warm refit
    # The fit's split by model comes back from the background process into the refresh rows.
    for row in refreshes:
        stages = [float(row[f"refresh_fit_seconds_{k}"]) for k in ("dynamics", "behaviour", "generator")]
        assert all(v > 0 for v in stages) and sum(stages) <= float(row["refresh_fit_seconds"])
        assert row["refresh_fit_seconds_termination"] == ""  # the env's rule decides terminals: no classifier


def test_prefit_generator_is_validated_and_left_out_of_the_run_id_when_it_changes_nothing() -> None:
    from cfdg_aug.config import ConfigError
    from cfdg_aug.experiments.runner import ExperimentConfig

    base = ExperimentConfig(augmentation="cfdg")
    on = ExperimentConfig(augmentation="cfdg", prefit_generator=True)
    assert "prefit_generator" not in base.to_dict() and on.to_dict()["prefit_generator"] is True
    assert on.run_id() != base.run_id()
    assert ExperimentConfig(augmentation="none", prefit_generator=True).run_id() == \
        ExperimentConfig(augmentation="none").run_id()
    with pytest.raises(ConfigError, match="prefit_generator must be true or false, got 'yes'"):
        ExperimentConfig(prefit_generator="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prefit_generator=true needs cfdg.warm_start=true"):
        ExperimentConfig(prefit_generator=True, cfdg={"warm_start": False})


# --- sharing a pre-fit between runs ------------------------------------------------------------

#: A value other than the small profile's for every field a pre-fit does not read.
OTHER_AFTER_FIT: dict[str, object] = dict(
    behaviour_redraws=1, redraw_steps=3, redraw_resample=3, redraw_resample_sigma_max=None,
    redraw_in_terminal_search=True, online_batch_fraction=0.5, guidance=1.0,
    guidance_candidates=(0.0, 1.0), guidance_interval=(0.2, 5.0), sigma_min=0.01, sigma_max=40.0, rho=5.0,
    sampler="heun", num_sample_steps=6, s_churn=1.0, s_tmin=0.1, s_tmax=10.0, s_noise=1.01, warm_start_steps=7, warm_start_lr=1e-3,
    synthetic_online_size=32, synthetic_offline_size=8, sampling_precision="float32", sampling_compile=True,
    sample_batch_size=32, clip_rewards=False, clip_observations=False, ratio_offline=2.0, ratio_online=0.5,
    ratio_synthetic=2.0, synthetic_online_fraction=0.5, real_mix="proportional", refresh_every=60, min_online=40,
    refresh_lag=5)


@pytest.mark.parametrize("termination", ["model", "column"])
def test_fields_said_not_to_touch_a_prefit_leave_it_bit_identical(termination: str) -> None:
    from cfdg_aug.config import PREFIT_INDEPENDENT_FIELDS

    # done_threshold applies only to a generated done column; every other field is changed at once.
    other = {"done_threshold": 0.4} if termination == "column" else OTHER_AFTER_FIT
    assert set(OTHER_AFTER_FIT) | {"done_threshold"} == set(PREFIT_INDEPENDENT_FIELDS)
    lag = other.get("refresh_lag", 0)
    a = buffer(0, termination=termination)
    b = buffer(lag, termination=termination, **{k: v for k, v in other.items() if k != "refresh_lag"})  # type: ignore[arg-type]
    assert all(getattr(a.config, k) != getattr(b.config, k) for k in other)
    assert a.config.prefit_fields() == b.config.prefit_fields()
    a.prefit()
    b.prefit()
    assert a.generator is not None and b.generator is not None
    (_, meta_a), (_, meta_b) = a.generator.state_tensors(), b.generator.state_tensors()
    assert meta_a.pop("config") != meta_b.pop("config") and meta_a == meta_b
    state_b = generator_state(b)
    for k, v in generator_state(a).items():
        np.testing.assert_array_equal(v, state_b[k], err_msg=k)
    # ... while a field it does read changes it.
    assert buffer(0, width=16).config.prefit_fields() != a.config.prefit_fields()


def test_an_installed_prefit_continues_as_the_buffers_own_would(tmp_path: Path) -> None:
    from cfdg_aug.generator import CFDGGenerator, CheckpointError

    donor = buffer(0)
    donor.prefit()
    assert donor.generator is not None and donor.prefit_stats is not None
    donor.generator.save(tmp_path / "g.safetensors")
    own, installed = buffer(0, online_batch_fraction=0.5), buffer(0, online_batch_fraction=0.5)
    own.prefit()
    gen = CFDGGenerator.load(tmp_path / "g.safetensors", config=installed.config)
    assert installed.install_prefit(gen, donor.prefit_stats) is installed.prefit_stats
    assert installed.generator is gen and gen.config == installed.config
    (a,), (b,) = add_online(own, 50, seed=3), add_online(installed, 50, seed=3)
    assert a.fit is not None and b.fit is not None and a.fit.warm_started and a.fit.loss_history == b.fit.loss_history
    for x, y in zip(synthetic(own), synthetic(installed), strict=True):
        np.testing.assert_array_equal(x, y)
    # What does not match is refused, saying what differs.
    with pytest.raises(CheckpointError, match="fields its fit depends on .*width=32 vs 16"):
        CFDGGenerator.load(tmp_path / "g.safetensors", config=buffer(0, width=16).config)
    other_seed = buffer(0, seed=1)
    with pytest.raises(ValueError, match=r"not pre-fitted for this buffer: seed 0 \(this buffer: 1\)"):
        other_seed.install_prefit(CFDGGenerator.load(tmp_path / "g.safetensors", config=other_seed.config),
                                  donor.prefit_stats)
    assert other_seed.generator is not None and not other_seed.generator.is_fitted  # nothing changed
    with pytest.raises(ValueError, match="already fitted"):
        own.install_prefit(gen, donor.prefit_stats)


def test_loading_a_generator_leaves_the_hosts_torch_rng_alone(tmp_path: Path) -> None:
    """A background refresh or a shared pre-fit is installed mid-run by loading a generator; had the
    load drawn on torch's global RNG, the learner's stream would shift with it."""
    import torch

    from cfdg_aug.generator import CFDGGenerator

    buf = buffer(0)
    buf.prefit()
    assert buf.generator is not None
    assert buf.generator.dynamics_model is not None and buf.generator.behaviour_model is not None
    buf.generator.save(tmp_path / "g.safetensors")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    CFDGGenerator.load(tmp_path / "g.safetensors")
    assert torch.equal(torch.get_rng_state(), before)


def _shared_runs_setup():  # type: ignore[no-untyped-def]
    from cfdg_aug.experiments.runner import SMOKE_SET, parse_set, resolve_config

    def cfg(*extra: str):  # type: ignore[no-untyped-def]
        return resolve_config("iql", "cfdg", "embedded", "small", 0,
                              parse_set([*SMOKE_SET, "online_steps=150", "prefit_generator=true", *extra]))
    return cfg


def _prefit_entries(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("prefit-cfdg-s0-*") if p.is_dir())


def _rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    # Timings differ between any two runs; everything computed must not.
    return [{k: v for k, v in row.items() if "seconds" not in k}
            for row in csv.DictReader(open(run_dir / "metrics.csv"))]


def test_runs_sharing_a_pretrained_folder_share_a_prefit_and_compute_what_they_would_alone(tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy")
    pytest.importorskip("mujoco")
    import json

    from cfdg_aug.experiments.runner import run_experiment

    cfg = _shared_runs_setup()
    logs: list[str] = []
    quiet = dict(progress=False, threads=1)
    first = run_experiment(cfg(), tmp_path / "shared", log=logs.append, **quiet)
    entries = _prefit_entries(tmp_path / "shared" / "pretrained")
    assert len(entries) == 1 and (entries[0] / "generator.safetensors").is_file()
    key = json.loads((entries[0] / "key.json").read_text())
    assert key["key"] == entries[0].name and key["made_by"] == first.run_dir.name and key["seed"] == 0
    assert json.loads((first.run_dir / "prefit.json").read_text())["reused_from"] is None
    # A run whose settings differ only after the fit takes that pre-fit...
    second = run_experiment(cfg("cfdg.online_batch_fraction=0.5", "cfdg.synthetic_online_size=48"),
                            tmp_path / "shared", log=logs.append, **quiet)
    p = json.loads((second.run_dir / "prefit.json").read_text())
    assert (p["reused_from"], p["fit_seconds"], p["steps"]) == (entries[0].name, 0.0, 30)
    assert any(f"generator pre-fit reused from {entries[0]}" in m for m in logs)
    # ... and computes what it computes pre-fitting alone.
    alone = run_experiment(cfg("cfdg.online_batch_fraction=0.5", "cfdg.synthetic_online_size=48"),
                           tmp_path / "alone", share_pretrained=False, log=lambda *a: None, **quiet)
    assert json.loads((alone.run_dir / "prefit.json").read_text())["reused_from"] is None
    assert _rows(second.run_dir) == _rows(alone.run_dir)
    # A field the fit reads makes another key.
    run_experiment(cfg("cfdg.width=16"), tmp_path / "shared", log=lambda *a: None, **quiet)
    assert len(_prefit_entries(tmp_path / "shared" / "pretrained")) == 2
    # A damaged shared pre-fit is refused, naming it and the fix; the new run leaves no folder.
    from cfdg_aug.experiments.runner import RunError

    damaged = entries[0] / "generator.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    before = sorted((tmp_path / "shared").iterdir())
    entry = re.escape(str(entries[0]))
    with pytest.raises(RunError, match=f"the shared pre-fit {entry} cannot be used .*; delete {entry}"):
        run_experiment(cfg("cfdg.synthetic_online_size=40"), tmp_path / "shared", log=lambda *a: None, **quiet)
    assert sorted((tmp_path / "shared").iterdir()) == before


def test_a_run_takes_the_prefit_another_run_is_fitting_once_that_run_lets_go(tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy")
    pytest.importorskip("mujoco")
    import fcntl
    import json

    from cfdg_aug.experiments.runner import prefit_key, prefit_key_info, run_experiment

    cfg = _shared_runs_setup()
    root = tmp_path / "pretrained"
    root.mkdir()
    c = cfg()
    from cfdg_aug.datasets import load_dataset
    from cfdg_aug.experiments.runner import dataset_sha256

    info = prefit_key_info(c, dataset_sha256(load_dataset("embedded").to_transition_batch()), "Hopper-v4", "cpu")
    lock = open(root / f"{prefit_key(info)}.lock", "a+")  # "another run" holds the key ...
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    logs: list[str] = []

    def log(m: str) -> None:
        logs.append(m)
        if "waiting for another run pre-fitting" in m:
            lock.close()  # ... and stops without publishing: this run fits it after pre-training

    out = run_experiment(c, tmp_path, log=log, progress=False, threads=1, pretrained_dir=root)
    assert any("another run is pre-fitting this generator" in m for m in logs)
    p = json.loads((out.run_dir / "prefit.json").read_text())
    assert p["reused_from"] is None and p["steps"] == 30
    assert (root / prefit_key(info) / "generator.safetensors").is_file()  # published for the next run
