"""fit_online with CFDGReplayBuffer on real MuJoCo (Hopper-v4), tiny budgets.

Offline data is collected in the test with random actions in the real simulator, so the test
depends on nothing outside the repository.
"""

from __future__ import annotations

import numpy as np
import pytest

d3rlpy = pytest.importorskip("d3rlpy")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from d3rlpy.dataset import InfiniteBuffer  # noqa: E402

from cfdg_aug.config import CFDGConfig  # noqa: E402
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer  # noqa: E402
from cfdg_aug.transitions import TransitionBatch  # noqa: E402

BATCH = 64
CFG = CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                       synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50, min_online=50)


def collect_random(env, n: int, seed: int) -> TransitionBatch:
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next_obs", "done", "timeout")}
    for _ in range(n):
        act = env.action_space.sample()
        nxt, rew, term, trunc, _ = env.step(act)
        for k, v in zip(rows, (obs, act, rew, nxt, term, trunc), strict=True):
            rows[k].append(v)
        obs = env.reset()[0] if (term or trunc) else nxt
    return TransitionBatch.from_arrays(*(np.asarray(rows[k]) for k in rows))


def params(algo) -> dict[str, np.ndarray]:
    out = {}
    for name, module in algo.impl.modules.__dict__.items():
        if hasattr(module, "state_dict") and hasattr(module, "parameters"):
            for k, v in module.state_dict().items():
                out[f"{name}.{k}"] = v.detach().cpu().numpy().copy()
    return out


def make_algo(env):
    algo = d3rlpy.algos.IQLConfig(batch_size=BATCH).create(device="cpu")
    algo.build_with_env(env)
    return algo


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # The agent's initialisation and exploration come from the global RNGs: without a seed, the
    # tests run before this module decide whether Hopper falls within the first 100 steps (which
    # adds the terminal transition the counts below do not expect).
    d3rlpy.seed(0)


@pytest.fixture(scope="module")
def env():
    e = gym.make("Hopper-v4")
    yield e
    e.close()


@pytest.fixture(scope="module")
def offline(env) -> TransitionBatch:
    return collect_random(env, 300, seed=0)


def run(algo, env, buf, n_steps: int, records: list) -> None:
    def callback(a, epoch: int, step: int) -> None:
        # fit_online calls this after the step's update, so the state seen here is the state the
        # step's batch was drawn in.
        records.append((buf.augmented.num_online > 0, buf.augmented.num_refreshes > 0, buf.last_source_counts))

    algo.fit_online(env, buffer=buf, n_steps=n_steps, n_steps_per_epoch=n_steps, show_progress=False,
                    logger_adapter=d3rlpy.logging.NoopAdapterFactory(), callback=callback)


def test_fit_online_refreshes_on_schedule_mixes_sources_and_trains(env, offline) -> None:
    algo = make_algo(env)
    before = params(algo)
    buf = CFDGReplayBuffer(InfiniteBuffer(), env=env, offline_dataset=offline, config=CFG, seed=0)
    records: list = []
    run(algo, env, buf, 160, records)

    # 160 env steps -> 159 complete online transitions (the last step's next obs never arrives).
    assert buf.augmented.online_added_total == 159
    assert [e["online_step"] for e in buf.refresh_log] == [50, 100, 150]
    assert all(e["n_synthetic_online"] == 64 and e["n_synthetic_offline"] == 16 for e in buf.refresh_log)

    # The mix actually used, counted from the batches: 1:1:1 with 8:2 reweighting (B=64 ->
    # 22, 21, 4, 17 by largest remainder), only real data before the first refresh, offline only
    # at step 1 (the first online transition completes at step 2).
    expected_by_state = {
        (False, False): (64, 0, 0, 0),
        (True, False): (32, 32, 0, 0),
        (True, True): (22, 21, 4, 17),
    }
    assert len(records) == 160
    for online, refreshed, counts in records:
        assert counts == expected_by_state[(online, refreshed)]
    n_post = sum(1 for r in records if r[1])
    assert 100 <= n_post <= 111  # the first refresh happens at env step 50 or 51
    expected_total = sum(np.asarray(expected_by_state[r[:2]]) for r in records)
    np.testing.assert_array_equal(buf.source_histogram, expected_total)

    after = params(algo)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert any("policy" in k for k in changed) and any("q_func" in k for k in changed)


def test_save_and_load_algo_and_buffer_mid_run_then_resume(env, offline, tmp_path) -> None:
    algo = make_algo(env)
    buf = CFDGReplayBuffer(InfiniteBuffer(), env=env, offline_dataset=offline, config=CFG, seed=1)
    run(algo, env, buf, 100, [])
    assert buf.augmented.online_added_total == 99
    algo.save_model(str(tmp_path / "model.pt"))
    buf.save_state(tmp_path / "buffer")
    saved = params(algo)

    algo2 = make_algo(env)
    algo2.load_model(str(tmp_path / "model.pt"))
    restored = params(algo2)
    assert all(np.array_equal(saved[k], restored[k]) for k in saved)
    buf2 = CFDGReplayBuffer.load_state(tmp_path / "buffer")
    assert buf2.augmented.pool_sizes == buf.augmented.pool_sizes
    assert buf2.transition_count == buf.transition_count

    records: list = []
    run(algo2, env, buf2, 60, records)
    # 99 + 59 online transitions: the schedule continues (refreshes at 50, 100 and now 150).
    assert buf2.augmented.online_added_total == 158
    assert [e["online_step"] for e in buf2.refresh_log] == [50, 100, 150]
    assert all(r[2] == (22, 21, 4, 17) for r in records)
    resumed = params(algo2)
    assert any(not np.array_equal(saved[k], resumed[k]) for k in saved)
