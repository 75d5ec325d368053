"""Refreshes in a background process (``refresh_lag > 0``): what is installed, when, and across save/load."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cfdg_aug._background import BackgroundRefreshError
from cfdg_aug.buffer import AugmentedReplayBuffer, RefreshStats
from cfdg_aug.config import CFDGConfig, ConfigError
from tests.test_buffer_generator import ACT, OBS, data, tiny

LAG = 20


def buffer(lag: int, seed: int = 0, **kw: object) -> AugmentedReplayBuffer:
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=200, config=tiny(refresh_lag=lag, **kw), seed=seed)
    buf.add_offline(data(120, 0.0, 1))
    return buf


def add_online(buf: AugmentedReplayBuffer, n: int, seed: int) -> list[RefreshStats]:
    """Add ``n`` online rows one by one, polling the schedule after each as the integrations do."""
    out = []
    rows = data(n, 3.0, seed)
    for i in range(n):
        buf.add(**{k: v[i] for k, v in rows.items()})
        stats = buf.maybe_refresh()
        if stats is not None:
            out.append(stats)
    return out


def synthetic(buf: AugmentedReplayBuffer) -> list[np.ndarray]:
    return [buf.pool_data(p).flatten() for p in ("synthetic_offline", "synthetic_online")]


def test_background_refresh_installs_after_the_lag_what_a_synchronous_refresh_makes() -> None:
    sync, bg = buffer(0), buffer(LAG)
    seen: list[RefreshStats] = []
    bg.add_hook(seen.append)
    (s_sync,) = add_online(sync, 50, seed=2)
    assert add_online(bg, 50, seed=2) == [] and bg.refresh_pending
    assert bg.pool_sizes["synthetic_online"] == 0 and bg.num_refreshes == 0
    assert add_online(bg, LAG - 1, seed=3) == [] and bg.refresh_pending
    (s_bg,) = add_online(bg, 1, seed=4)
    assert seen == [s_bg] and not bg.refresh_pending and bg.num_refreshes == 1
    assert (s_bg.online_count, s_bg.installed_count) == (50, 50 + LAG)
    assert s_bg.wait_seconds >= 0.0 and s_sync.wait_seconds == 0.0
    assert (s_sync.online_count, s_sync.installed_count) == (50, 50)
    # Fitted on the same 50 online rows, with the same generator seed: the same model and pools.
    assert s_bg.fit is not None and s_sync.fit is not None
    assert s_bg.fit.n_online == 50 and s_bg.fit.loss_history == s_sync.fit.loss_history
    for a, b in zip(synthetic(sync), synthetic(bg), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bg.generator is not None and bg.generator.num_fits == 1 and bg.generator.is_fitted
    # The next one starts on schedule (100 online rows) and is installed at 100 + LAG.
    assert add_online(bg, 100 - (50 + LAG), seed=5) == [] and bg.refresh_pending
    (s2,) = add_online(bg, LAG, seed=6)
    assert (s2.refresh_index, s2.online_count, s2.installed_count) == (2, 100, 100 + LAG)
    assert s2.fit is not None and s2.fit.warm_started and s2.fit.n_online == 100


def test_a_buffer_saved_with_a_refresh_pending_installs_it_at_the_same_count(tmp_path: Path) -> None:
    bg = buffer(LAG)
    add_online(bg, 50, seed=2)
    assert bg.refresh_pending
    bg.save(tmp_path / "b.safetensors")
    restored = AugmentedReplayBuffer.load(tmp_path / "b.safetensors")
    assert restored.refresh_pending and restored.pool_sizes["synthetic_online"] == 0
    for buf in (bg, restored):
        assert add_online(buf, LAG - 1, seed=3) == []
    (a,), (b,) = add_online(bg, 1, seed=4), add_online(restored, 1, seed=4)
    assert (a.online_count, a.installed_count) == (b.online_count, b.installed_count) == (50, 50 + LAG)
    for x, y in zip(synthetic(bg), synthetic(restored), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(bg.sample(64).flatten(), restored.sample(64).flatten())


def test_an_explicit_refresh_first_installs_the_pending_one() -> None:
    bg = buffer(LAG)
    add_online(bg, 50, seed=2)
    stats = bg.refresh()
    assert bg.num_refreshes == 2 and stats.refresh_index == 2 and not bg.refresh_pending
    assert stats.installed_count == stats.online_count == 50


def test_a_failed_background_process_raises_naming_the_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    bg = buffer(LAG)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child exits 1 without output
    add_online(bg, 50, seed=2)
    monkeypatch.undo()
    with pytest.raises(BackgroundRefreshError, match=r"background refresh 1 failed \(exit status 1\)"):
        add_online(bg, LAG, seed=3)
    assert bg.pool_sizes["synthetic_online"] == 0 and bg.num_refreshes == 0 and not bg.refresh_pending
    assert add_online(bg, 30, seed=4) == [] and bg.refresh_pending  # the next one starts on schedule (100)


def test_settings_a_background_refresh_cannot_honour_are_refused() -> None:
    with pytest.raises(ConfigError, match="refresh_lag must be smaller than refresh_every"):
        tiny(refresh_lag=50)
    with pytest.raises(ConfigError, match="refresh_lag must be >= 0"):
        CFDGConfig(refresh_lag=-1)
    cfg = tiny(refresh_lag=LAG)
    with pytest.raises(ValueError, match="cannot receive a termination callable"):
        AugmentedReplayBuffer(OBS, ACT, config=cfg, termination=lambda o, a, n: np.zeros(len(o), bool))
    buf = AugmentedReplayBuffer(OBS, ACT, config=cfg)
    with pytest.raises(ValueError, match="cannot receive a termination callable"):
        buf.set_termination(lambda o, a, n: np.zeros(len(o), bool))

    class Duck:
        conditional = True

    with pytest.raises(ValueError, match="generator must be a CFDGGenerator, got Duck"):
        AugmentedReplayBuffer(OBS, ACT, config=cfg, generator=Duck())  # type: ignore[arg-type]


def test_cancel_refresh_stops_the_process_and_keeps_the_pools() -> None:
    bg = buffer(LAG)
    add_online(bg, 50, seed=2)
    assert bg.refresh_pending and bg.cancel_refresh() and not bg.refresh_pending
    assert add_online(bg, LAG, seed=3) == [] and bg.num_refreshes == 0
    assert bg.pool_sizes["synthetic_online"] == 0 and not bg.cancel_refresh()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a container's init may not reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_background_fit_stops_and_removes_its_folder_when_its_parent_is_killed() -> None:
    import subprocess
    import time

    # A pre-fit far too long to finish: only the parent's death can end it.
    script = ("import time\n"
              "from tests.test_background_refresh import LAG, buffer\n"
              "b = buffer(LAG, train_steps=10_000_000)\n"
              "b.prefit(background=True)\n"
              "print(b._pending._proc.pid, b._pending._folder, flush=True)\n"
              "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    assert parent.stdout is not None
    pid, folder = parent.stdout.readline().split()
    assert _running(int(pid)) and Path(folder).is_dir()
    parent.kill()  # SIGKILL: no finalizer runs, nothing cancels the child
    parent.wait()
    deadline = time.time() + 60
    while (_running(int(pid)) or Path(folder).exists()) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(int(pid)) and not Path(folder).exists()
