"""Issue 19 edges of the core buffer and the integrations: feedback during a refresh, file
integrity (checksums, save errors that name the path), a compact ``repr(RefreshStats)`` and the
memory pre-check of capacities and synthetic pool sizes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cfdg_aug.buffer as buffer_mod
from cfdg_aug.buffer import AugmentedReplayBuffer, BufferFileError, RefreshStats
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.generator import CFDGGenerator, CheckpointError, FitStats

OBS, ACT = 3, 2
TINY: dict[str, Any] = dict(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                            synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50, min_online=50)


def tiny_config(**kw: Any) -> CFDGConfig:
    return CFDGConfig.small(**{**TINY, **kw})


def batch(n: int, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {"obs": scale * r.normal(size=(n, OBS)), "act": r.uniform(-1, 1, size=(n, ACT)), "rew": r.normal(size=n),
            "next_obs": scale * r.normal(size=(n, OBS)), "done": np.zeros(n)}


def filled_buffer(**kw: Any) -> AugmentedReplayBuffer:
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=500, config=tiny_config(), seed=0, **kw)
    buf.add_offline(batch(200, 1))
    buf.add(batch(60, 2))
    return buf


class Recorder:
    """A progress callable that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))

    def stages(self) -> list[str]:
        out: list[str] = []
        for stage, done, _ in self.calls:
            if done == 0:
                out.append(stage)
        return out


def assert_well_formed(calls: list[tuple[str, int, int]]) -> None:
    """Each run of a stage starts at done=0, never goes back, and ends at done == total."""
    current: tuple[str, int] | None = None
    for stage, done, total in calls:
        if current is None:
            assert done == 0, (stage, done, total)
            current = (stage, total)
        assert (stage, total) == current and 0 <= done <= total
        if done == total:
            current = None
    assert current is None, "a stage never ended"


# --- 1. feedback during a refresh ---------------------------------------------------------------
def test_refresh_reports_its_stages_to_a_callable() -> None:
    buf = filled_buffer()
    rec = Recorder()
    stats = buf.refresh(progress=rec)
    assert_well_formed(rec.calls)
    stages = rec.stages()
    expected = ["refresh 1: fitting generator", "refresh 1: sampling offline-like", "refresh 1: sampling online-like"]
    if buf.generator.uses_behaviour_filter:
        expected.insert(0, "refresh 1: fitting behaviour model")
    if buf.config.next_obs_target == "model":
        expected.insert(0, "refresh 1: fitting dynamics")
    # a stage runs again for each extra draw (the behaviour filter's redraws and rejection sampling)
    order = [st for i, st in enumerate(stages) if i == 0 or st != stages[i - 1]]
    assert order[: len(expected)] == expected
    totals: dict[str, int] = {}
    for stage, done, total in rec.calls:  # the first run of each stage
        if done == 0:
            totals.setdefault(stage, total)
    assert totals["refresh 1: fitting generator"] == stats.fit.steps == buf.config.train_steps  # type: ignore[union-attr]
    # Sampling counts generated rows: the behaviour filter draws more than it keeps.
    assert totals["refresh 1: sampling offline-like"] >= buf.config.synthetic_offline_size
    assert totals["refresh 1: sampling online-like"] >= buf.config.synthetic_online_size
    # the second refresh is numbered 2 and warm-starts (its own step count)
    rec2 = Recorder()
    buf.refresh(progress=rec2)
    assert all(s.startswith("refresh 2: ") for s in rec2.stages())
    assert ("refresh 2: fitting generator", buf.config.warm_start_steps, buf.config.warm_start_steps) in rec2.calls


def test_a_run_logs_a_count_only_for_stages_that_have_one() -> None:
    """The runner announces each refresh stage in its log; a stage without a count of its own (the
    wait for a background fit, total 1) is announced without one instead of as "(1 steps)"."""
    from cfdg_aug.experiments.runner import _Run

    run = object.__new__(_Run)  # only what refresh_progress reads
    lines: list[str] = []
    run.run_dir, run.progress, run._announced, run.log = Path("r"), False, None, lines.append  # type: ignore[method-assign]
    run.refresh_progress("refresh 1: waiting for the background fit", 0, 1)
    run.refresh_progress("refresh 2: fitting generator", 0, 2500)
    run.refresh_progress("refresh 2: sampling online-like", 0, 4000)
    run.refresh_progress("refresh 2: sampling online-like", 0, 4000)  # an extra draw: announced once
    assert lines == ["[cfdg-aug] r: refresh 1: waiting for the background fit",
                     "[cfdg-aug] r: refresh 2: fitting generator (2500 steps)",
                     "[cfdg-aug] r: refresh 2: sampling online-like (4000 rows)"]


def test_refresh_progress_true_draws_bars_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    buf = filled_buffer()
    buf.refresh(progress=True)
    err = capsys.readouterr().err
    assert "refresh 1: fitting generator" in err and "refresh 1: sampling online-like" in err


def test_scheduled_refreshes_use_the_buffer_setting_and_false_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder()
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=500, config=tiny_config(), refresh_progress=rec)
    buf.add_offline(batch(200, 1))
    buf.add(batch(49, 2))
    assert buf.maybe_refresh() is None and rec.calls == []
    buf.add(batch(1, 3))
    assert buf.maybe_refresh() is not None
    assert "refresh 1: fitting generator" in rec.stages()
    n = len(rec.calls)
    buf.refresh(progress=False)  # explicit False wins over the buffer's setting
    assert len(rec.calls) == n
    buf.refresh_progress = False
    buf.refresh()
    assert len(rec.calls) == n and capsys.readouterr().err == ""


def test_progress_settings_other_than_bool_none_or_callable_are_refused() -> None:
    with pytest.raises(TypeError, match="refresh_progress must be True, False, None or a callable"):
        AugmentedReplayBuffer(OBS, ACT, online_capacity=10, config=tiny_config(), refresh_progress=1)
    buf = filled_buffer()
    with pytest.raises(TypeError, match="progress must be"):
        buf.refresh(progress="yes")  # type: ignore[arg-type]
    assert buf.num_refreshes == 0
    gen = CFDGGenerator(OBS, ACT, tiny_config(), seed=0)
    with pytest.raises(TypeError, match="progress must be"):
        gen.fit(buf.offline_data(), progress=2)  # type: ignore[arg-type]


def test_generator_fit_and_sample_report_to_a_callable_and_throttle_long_stages() -> None:
    gen = CFDGGenerator(OBS, ACT, tiny_config(train_steps=500, next_obs_target="delta", behaviour_quantile=None),
                        seed=0)
    data = AugmentedReplayBuffer(OBS, ACT, online_capacity=10, config=tiny_config())
    data.add_offline(batch(100, 1))
    rec = Recorder()
    gen.fit(data.offline_data(), progress=rec)
    assert_well_formed(rec.calls)
    assert rec.stages() == ["fitting generator"]
    assert len(rec.calls) <= 102  # start, at most ~1% steps, end: not one call per step
    rec = Recorder()
    gen.sample(50, "offline", progress=rec)
    assert_well_formed(rec.calls)
    assert rec.calls[0] == ("sampling offline-like", 0, 50) and ("sampling offline-like", 50, 50) in rec.calls


def test_d3rlpy_buffer_scheduled_refresh_reports_progress() -> None:
    pytest.importorskip("d3rlpy")
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import InfiniteBuffer, Signature

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    rec = Recorder()
    buf = CFDGReplayBuffer(
        InfiniteBuffer(), observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(OBS,)]),
        action_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(ACT,)]),
        reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
        action_space=ActionSpace.CONTINUOUS, action_size=ACT, config=tiny_config(), refresh_progress=rec,
    )
    r = np.random.default_rng(0)
    for _ in range(52):  # 51 complete transitions: the refresh at 50 happens inside append
        buf.append(r.random(OBS, dtype=np.float32), r.random(ACT, dtype=np.float32), float(r.random()))
    assert buf.augmented is not None and buf.augmented.num_refreshes == 1
    assert "refresh 1: fitting generator" in rec.stages() and "refresh 1: sampling online-like" in rec.stages()
    with pytest.raises(TypeError, match="refresh_progress"):
        CFDGReplayBuffer(InfiniteBuffer(), observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(OBS,)]),
                         action_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(ACT,)]),
                         reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
                         action_space=ActionSpace.CONTINUOUS, action_size=ACT, refresh_progress="loud")


def _sb3_spaces() -> tuple[Any, Any]:
    from gymnasium import spaces

    return (spaces.Box(-10.0, 10.0, (OBS,), dtype=np.float32), spaces.Box(-1.0, 1.0, (ACT,), dtype=np.float32))


def test_sb3_buffer_scheduled_refresh_reports_progress_and_pickles_without_the_callable() -> None:
    pytest.importorskip("stable_baselines3")
    import pickle

    from cfdg_aug.integrations.sb3 import CFDGReplayBuffer

    obs_space, act_space = _sb3_spaces()
    rec = Recorder()
    buf = CFDGReplayBuffer(200, obs_space, act_space, device="cpu", config=tiny_config(), seed=0,
                           refresh_progress=rec)
    r = np.random.default_rng(0)
    for _ in range(50):
        buf.add(r.normal(size=(1, OBS)).astype(np.float32), r.normal(size=(1, OBS)).astype(np.float32),
                r.uniform(-1, 1, size=(1, ACT)).astype(np.float32), np.zeros(1, np.float32), np.zeros(1), [{}])
    assert buf.num_refreshes == 1 and "refresh 1: fitting generator" in rec.stages()
    back = pickle.loads(pickle.dumps(buf))  # a callable is code, like the hooks: not pickled
    assert back.refresh_progress is False


def test_sb3_callback_prints_refresh_stages_with_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("stable_baselines3")
    import gymnasium as gym
    from stable_baselines3 import SAC

    from cfdg_aug.integrations.sb3 import CFDGCallback, CFDGReplayBuffer

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), buffer_size=200, learning_starts=40, batch_size=16, seed=0,
                policy_kwargs=dict(net_arch=[16]), replay_buffer_class=CFDGReplayBuffer,
                replay_buffer_kwargs={"config": tiny_config()})
    cb = CFDGCallback(verbose=1)
    model.learn(55, callback=cb)
    out = capsys.readouterr().out
    assert re.search(r"\[CFDG\] refresh 1: fitting generator \(0/30 steps\)", out), out
    assert re.search(r"\[CFDG\] refresh 1: fitting generator done in [0-9.]+s \(30/30 steps\)", out), out
    assert "[CFDG] refresh 1: sampling online-like" in out
    assert model.replay_buffer.refresh_progress is False  # type: ignore[union-attr]  # restored at the end


# --- 2. file integrity --------------------------------------------------------------------------
def _payload_start(path: Path) -> int:
    data = path.read_bytes()
    return 8 + int.from_bytes(data[:8], "little")


def _flip(path: Path, positions: np.ndarray) -> None:
    data = bytearray(path.read_bytes())
    for p in positions:
        data[int(p)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_buffer_file_with_flipped_payload_bytes_is_refused_naming_it(tmp_path: Path) -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=500, config=tiny_config(augmentation="none"))
    buf.add_offline(batch(400, 1))
    buf.add(batch(100, 2))
    path = tmp_path / "buf.safetensors"
    buf.save(path)
    start, size = _payload_start(path), path.stat().st_size
    assert size - start > 4000
    _flip(path, np.random.default_rng(0).choice(np.arange(start, size), 4000, replace=False))
    with pytest.raises(BufferFileError, match=re.escape(str(path)) + " is corrupt: the checksum"):
        AugmentedReplayBuffer.load(path)


def test_buffer_file_with_damaged_header_is_refused_naming_it(tmp_path: Path) -> None:
    buf = filled_buffer()
    buf.refresh()
    path = tmp_path / "buf.safetensors"
    buf.save(path)
    original = path.read_bytes()
    start = _payload_start(path)
    # random flips in the JSON header
    _flip(path, np.random.default_rng(1).choice(np.arange(8, start), 20, replace=False))
    with pytest.raises(BufferFileError, match=re.escape(str(path))):
        AugmentedReplayBuffer.load(path)
    # one digit of a counter changed: the header is still valid JSON, only the checksum can tell
    header = original[8:start]
    m = re.search(rb'online_added_total\\": (\d)', header)
    assert m is not None
    digit = m.group(1)
    changed = header[: m.start(1)] + (b"7" if digit != b"7" else b"8") + header[m.end(1):]
    path.write_bytes(original[:8] + changed + original[start:])
    with pytest.raises(BufferFileError, match=re.escape(str(path)) + " is corrupt"):
        AugmentedReplayBuffer.load(path)
    path.write_bytes(original)
    back = AugmentedReplayBuffer.load(path)  # the intact file still loads
    assert back.pool_sizes == buf.pool_sizes


def test_generator_checkpoint_with_flipped_bytes_is_refused_naming_it(tmp_path: Path) -> None:
    gen = CFDGGenerator(OBS, ACT, tiny_config(train_steps=5), seed=0)
    data = AugmentedReplayBuffer(OBS, ACT, online_capacity=10, config=tiny_config())
    data.add_offline(batch(100, 1))
    gen.fit(data.offline_data())
    path = tmp_path / "gen.safetensors"
    gen.save(path)
    start, size = _payload_start(path), path.stat().st_size
    _flip(path, np.random.default_rng(0).choice(np.arange(start, size), 4000, replace=False))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + " is corrupt"):
        CFDGGenerator.load(path)


def test_files_saved_without_a_checksum_still_load(tmp_path: Path) -> None:
    """Files written before checksums were stored have none: they load as before."""
    from safetensors.torch import save_file

    buf = filled_buffer()
    buf.refresh()
    tensors, meta = buf.state_tensors()
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    back = AugmentedReplayBuffer.load(path)
    assert back.pool_sizes == buf.pool_sizes and back.generator is not None and back.generator.is_fitted


def test_d3rlpy_state_with_a_damaged_core_file_is_refused_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy")
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    offline = AugmentedReplayBuffer(OBS, ACT, online_capacity=10, config=tiny_config())
    offline.add_offline(batch(300, 1))
    buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=offline.offline_data(), config=tiny_config())
    d = buf.save_state(tmp_path / "state")
    core = d / "augmented.safetensors"
    start, size = _payload_start(core), core.stat().st_size
    _flip(core, np.random.default_rng(0).choice(np.arange(start, size), 4000, replace=False))
    with pytest.raises(ValueError, match=re.escape(str(core))):
        CFDGReplayBuffer.load_state(d)


def test_sb3_pickled_buffer_with_flipped_bytes_is_refused() -> None:
    pytest.importorskip("stable_baselines3")
    import pickle

    from cfdg_aug.integrations.sb3 import CFDGBufferError, CFDGReplayBuffer

    obs_space, act_space = _sb3_spaces()
    buf = CFDGReplayBuffer(100, obs_space, act_space, device="cpu", config=tiny_config(), seed=0)
    r = np.random.default_rng(0)
    for _ in range(20):
        buf.add(r.normal(size=(1, OBS)).astype(np.float32), r.normal(size=(1, OBS)).astype(np.float32),
                r.uniform(-1, 1, size=(1, ACT)).astype(np.float32), np.full(1, 777.25, np.float32), np.zeros(1), [{}])
    blob = pickle.dumps(buf)
    back = pickle.loads(blob)  # an intact pickle loads
    assert back.pool_sizes == buf.pool_sizes
    for i in (0, 1):  # a reward in the SB3 arrays, then one in the core's online pool
        marker = np.float32(777.25).tobytes()
        pos = [m.start() for m in re.finditer(re.escape(marker), blob)]
        assert len(pos) >= 40
        damaged = bytearray(blob)
        damaged[pos[0 if i == 0 else -1]] ^= 0x10
        with pytest.raises(CFDGBufferError, match="is corrupt: the checksum"):
            pickle.loads(bytes(damaged))


def test_save_errors_name_the_path_and_keep_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = filled_buffer()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "buf.safetensors"
    with pytest.raises(OSError, match="cannot write buffer to " + re.escape(str(target))):
        buf.save(target)
    gen = CFDGGenerator(OBS, ACT, tiny_config(), seed=0)
    with pytest.raises(OSError, match="cannot write generator checkpoint to " + re.escape(str(target))):
        gen.save(target)
    # missing folders are created
    nested = tmp_path / "new" / "folder" / "buf.safetensors"
    buf.save(nested)
    assert AugmentedReplayBuffer.load(nested).pool_sizes == buf.pool_sizes
    # a failure at the rename: the previous file is intact and no temp file is left behind
    good = tmp_path / "good.safetensors"
    buf.save(good)
    before = good.read_bytes()
    buf.add(batch(5, 9))

    def failing_replace(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError, match="cannot write buffer to " + re.escape(str(good))) as info:
        buf.save(good)
    assert info.value.errno == 13
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "good.safetensors", "new"]


def test_io_atomic_write_names_the_path(tmp_path: Path) -> None:
    from cfdg_aug._io import atomic_write_text

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write " + re.escape(str(blocker / "out.json"))):
        atomic_write_text(blocker / "out.json", "{}")
    atomic_write_text(tmp_path / "ok.json", "{}")
    assert (tmp_path / "ok.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ok.json"]


# --- 3. repr(RefreshStats) ----------------------------------------------------------------------
def test_refresh_stats_repr_summarises_the_loss_history() -> None:
    losses = [1.0 / (i + 1) for i in range(500)]
    fit = FitStats(steps=500, final_loss=losses[-1], mean_loss=float(np.mean(losses)), seconds=1.0, n_offline=10,
                   n_online=5, loss_history=losses)
    stats = RefreshStats(refresh_index=1, online_count=5, fit=fit, n_synthetic_offline=1, n_synthetic_online=2,
                         fit_seconds=1.0, sample_seconds=0.5, guidance=1.0)
    text = repr(stats)
    assert len(text) < 600, text
    assert "loss_history=<500 values, first 1, last 0.002>" in text and "refresh_index=1" in text
    assert "<500 values" in repr(fit) and len(repr(fit)) < 400
    assert stats.fit is not None and stats.fit.loss_history == losses and stats.loss_history == losses
    assert "fit_final_loss" in stats.as_dict()
    empty = RefreshStats(refresh_index=2, online_count=5, fit=None, n_synthetic_offline=0, n_synthetic_online=0,
                         fit_seconds=0.0, sample_seconds=0.0, guidance=None)
    assert "fit=None" in repr(empty) and empty.loss_history == []


# --- 4. memory pre-check ------------------------------------------------------------------------
def test_capacities_beyond_available_memory_are_refused_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without monkeypatching: 10**12 rows are beyond any machine (numpy's MemoryError named nothing).
    with pytest.raises(ConfigError, match=r"online_capacity=1,000,000,000,000 rows .* is available"):
        AugmentedReplayBuffer(OBS, ACT, online_capacity=10**12, config=tiny_config())
    monkeypatch.setattr(buffer_mod, "available_memory_bytes", lambda: 2**20)  # 1 MiB
    row = 4 * (2 * OBS + ACT + 2) + 1
    with pytest.raises(ConfigError, match="offline_capacity=100,000 rows") as info:
        AugmentedReplayBuffer(OBS, ACT, online_capacity=10, offline_capacity=100_000, config=tiny_config())
    assert "1.0 MiB is available" in str(info.value)
    # what fits is accepted
    AugmentedReplayBuffer(OBS, ACT, online_capacity=(2**20 // row) - 200, config=tiny_config())


def test_synthetic_sizes_beyond_available_memory_are_refused_before_any_fit() -> None:
    cfg = tiny_config(synthetic_online_size=10**12)
    with pytest.raises(ConfigError, match=r"synthetic_online_size=1,000,000,000,000 rows"):
        AugmentedReplayBuffer(OBS, ACT, online_capacity=100, config=cfg)
    # augmentation="none" never builds synthetic pools: their sizes do not count
    AugmentedReplayBuffer(OBS, ACT, online_capacity=100, config=cfg.replace(augmentation="none"))


def test_refresh_checks_memory_for_sampling_before_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = filled_buffer()
    gen = buf.generator
    assert gen is not None
    before = (buf.pool_sizes, gen.total_steps)
    monkeypatch.setattr(buffer_mod, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ConfigError, match="synthetic_online_size=64 rows .* to sample the synthetic pools of refresh 1"):
        buf.refresh()
    assert (buf.pool_sizes, gen.total_steps) == before and buf.num_refreshes == 0  # nothing changed
    monkeypatch.setattr(buffer_mod, "available_memory_bytes", lambda: None)  # unknown: not checked
    buf.refresh()
    assert buf.num_refreshes == 1


def test_available_memory_probe_reads_memavailable_in_bytes() -> None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo (not Linux): the sysconf fallback is used")
    kb = next(int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    n = buffer_mod.available_memory_bytes()
    assert n is not None and abs(n - kb * 1024) < 2**30  # bytes, not kB (it moves a little between reads)


def test_integrations_refuse_capacities_beyond_memory_naming_their_setting() -> None:
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("d3rlpy")
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import FIFOBuffer, Signature

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer as D3Buffer
    from cfdg_aug.integrations.sb3 import CFDGReplayBuffer as SB3Buffer

    obs_space, act_space = _sb3_spaces()
    with pytest.raises(ConfigError, match=r"buffer_size=1,000,000,000,000 rows"):
        SB3Buffer(10**12, obs_space, act_space, device="cpu", config=tiny_config())
    with pytest.raises(ConfigError, match=r"synthetic_online_size=1,000,000,000,000 rows"):
        SB3Buffer(100, obs_space, act_space, device="cpu", config=tiny_config(synthetic_online_size=10**12))
    with pytest.raises(ConfigError, match=r"online_capacity=1,000,000,000,000 rows.*FIFOBuffer limit"):
        D3Buffer(FIFOBuffer(10**12), observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(OBS,)]),
                 action_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(ACT,)]),
                 reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
                 action_space=ActionSpace.CONTINUOUS, action_size=ACT, config=tiny_config())


def test_sb3_memory_check_counts_the_rows_sb3_keeps_with_several_envs(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("stable_baselines3")
    import cfdg_aug.integrations.sb3.buffer as sb3_buffer
    from cfdg_aug.integrations.sb3 import CFDGReplayBuffer

    seen: list[tuple[str, int, int]] = []
    monkeypatch.setattr(sb3_buffer, "check_memory", lambda parts, what: seen.extend(parts))
    obs_space, act_space = _sb3_spaces()
    buf = CFDGReplayBuffer(1000, obs_space, act_space, device="cpu", n_envs=4, config=tiny_config())
    assert buf.buffer_size == 250  # SB3: buffer_size // n_envs rows per env
    assert seen[0][:2] == ("buffer_size", 1000)  # 250 x 4 rows, not 1000 x 4


# --- 5. the SB3 buffer's documented default config ----------------------------------------------
def test_sb3_buffer_config_none_is_the_small_profile_as_documented() -> None:
    pytest.importorskip("stable_baselines3")
    from cfdg_aug.integrations.sb3 import CFDGReplayBuffer
    from cfdg_aug.integrations.sb3.buffer import CFDGBufferMixin

    obs_space, act_space = _sb3_spaces()
    buf = CFDGReplayBuffer(100, obs_space, act_space, device="cpu")
    assert buf.config == CFDGConfig.small()
    assert "None means ``CFDGConfig.small()``" in (CFDGBufferMixin.__doc__ or "")


def test_a_device_torch_cannot_use_is_refused_at_construction_not_at_the_first_refresh() -> None:
    # The generator (the device's first use) is built only at the first refresh, minutes into a run.
    with pytest.raises(ConfigError, match="device"):
        AugmentedReplayBuffer(OBS, ACT, online_capacity=10, config=tiny_config(), device="banana")
    with pytest.raises(ConfigError, match="device"):
        CFDGGenerator(OBS, ACT, tiny_config(), device="banana")
