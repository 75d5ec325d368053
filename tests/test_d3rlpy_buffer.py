"""CFDGReplayBuffer keeps d3rlpy's ReplayBuffer behaviour and adds the CFDG mix.

The first group mirrors d3rlpy's own tests (tests/dataset/test_replay_buffer.py) on our class;
the rest checks the mirroring into the core buffer, the drop-in guarantee and the conversions.
"""

from __future__ import annotations

import numpy as np
import pytest

d3rlpy = pytest.importorskip("d3rlpy")

from d3rlpy.constants import ActionSpace  # noqa: E402
from d3rlpy.dataset import (  # noqa: E402
    BasicTrajectorySlicer,
    BasicTransitionPicker,
    Episode,
    FIFOBuffer,
    InfiniteBuffer,
    ReplayBuffer,
    Signature,
    TransitionMiniBatch,
)

from cfdg_aug.config import CFDGConfig  # noqa: E402
from cfdg_aug.integrations.d3rlpy import (  # noqa: E402
    CFDGReplayBuffer,
    create_fifo_cfdg_replay_buffer,
    create_infinite_cfdg_replay_buffer,
    episodes_to_transition_batch,
    transition_batch_to_episodes,
    transition_batch_to_minibatch,
)
from cfdg_aug.transitions import TransitionBatch  # noqa: E402

OBS, ACT = 4, 2
TINY = dict(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
            synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50, min_online=50)


def tiny_config(**kw: object) -> CFDGConfig:
    return CFDGConfig.small(**{**TINY, **kw})


def make_episode(length: int, terminated: bool, seed: int = 0) -> Episode:
    r = np.random.default_rng(seed)
    return Episode(
        observations=r.random((length, OBS), dtype=np.float32),
        actions=r.random((length, ACT), dtype=np.float32),
        rewards=r.random((length, 1), dtype=np.float32),
        terminated=terminated,
    )


def signatures() -> dict[str, object]:
    return dict(
        observation_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(OBS,)]),
        action_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(ACT,)]),
        reward_signature=Signature(dtype=[np.dtype(np.float32)], shape=[(1,)]),
        action_space=ActionSpace.CONTINUOUS,
        action_size=ACT,
    )


def write_steps(buf: ReplayBuffer, steps: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    for o, a, r in steps:
        buf.append(o, a, r)


def random_steps(n: int, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray, float]]:
    r = np.random.default_rng(seed)
    return [(r.random(OBS, dtype=np.float32), r.random(ACT, dtype=np.float32), float(r.random())) for _ in range(n)]


# --- mirrors of d3rlpy's tests/dataset/test_replay_buffer.py ------------------------------------
@pytest.mark.parametrize("terminated", [False, True])
def test_transition_count_follows_d3rlpy_rules_after_append_and_clip(terminated: bool) -> None:
    length = 100
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config(augmentation="none"))
    write_steps(buf, random_steps(length))
    buf.clip_episode(terminated)
    assert buf.transition_count == (length if terminated else length - 1)
    # The online pool holds exactly the transitions d3rlpy made visible.
    assert buf.augmented.num_online == buf.transition_count


def test_dump_then_load_keeps_transition_count(tmp_path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, False)], config=tiny_config())
    path = tmp_path / "replay_buffer.h5"
    with open(path, "w+b") as f:
        buf.dump(f)
    with open(path, "rb") as f:
        plain = ReplayBuffer.load(f, InfiniteBuffer())
    with open(path, "rb") as f:
        ours = CFDGReplayBuffer.load(f, InfiniteBuffer(), config=tiny_config())
    assert plain.transition_count == buf.transition_count == ours.transition_count == 99
    assert isinstance(ours, CFDGReplayBuffer)
    assert ours.augmented.num_offline == 99


@pytest.mark.parametrize("picker", [None, BasicTransitionPicker()])
@pytest.mark.parametrize("slicer", [None, BasicTrajectorySlicer()])
def test_sample_transition_and_trajectory_batches_have_requested_size(picker, slicer) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, False)], transition_picker=picker,
                           trajectory_slicer=slicer, config=tiny_config())
    batch = buf.sample_transition_batch(32)
    assert isinstance(batch, TransitionMiniBatch)
    assert len(batch) == 32
    traj = buf.sample_trajectory_batch(32, 10)
    assert len(traj) == 32
    t = buf.sample_transition()
    assert t.observation.shape == (OBS,)


def test_create_fifo_and_infinite_helpers_build_the_right_store() -> None:
    fifo = create_fifo_cfdg_replay_buffer(100, episodes=[make_episode(100, False)], config=tiny_config())
    inf = create_infinite_cfdg_replay_buffer(episodes=[make_episode(100, False)], config=tiny_config())
    assert isinstance(fifo, CFDGReplayBuffer) and isinstance(fifo.buffer, FIFOBuffer)
    assert isinstance(inf, CFDGReplayBuffer) and isinstance(inf.buffer, InfiniteBuffer)
    assert fifo.augmented.online_capacity == 100  # the FIFO limit bounds the online pool too


def test_episodes_and_size_are_the_parents() -> None:
    eps = [make_episode(10, True, 0), make_episode(20, False, 1)]
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=eps, config=tiny_config())
    assert buf.size() == 2 and list(buf.episodes) == eps
    assert buf.transition_count == 10 + 19
    assert buf.dataset_info.action_size == ACT


# --- mirroring and the offline pool ---------------------------------------------------------------
def test_online_pool_matches_parent_transitions_including_terminal_and_truncation() -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config(augmentation="none"))
    steps_a, steps_b = random_steps(5, 1), random_steps(4, 2)
    write_steps(buf, steps_a)
    buf.clip_episode(True)   # 5 transitions, the last terminal
    write_steps(buf, steps_b)
    buf.clip_episode(False)  # timeout: 3 transitions, none terminal, the last step dropped
    online = buf.augmented.online_data()
    assert len(online) == buf.transition_count == 8
    picker = BasicTransitionPicker()
    expected = [picker(ep, i) for ep in buf.episodes for i in range(ep.transition_count)]
    np.testing.assert_array_equal(online.obs, np.stack([t.observation for t in expected]))
    np.testing.assert_array_equal(online.act, np.stack([t.action for t in expected]))
    np.testing.assert_array_equal(online.done, [t.terminal for t in expected])
    # next_obs equals d3rlpy's for every non-terminal transition; terminal ones repeat s (masked).
    for k, t in enumerate(expected):
        if t.terminal:
            np.testing.assert_array_equal(online.next_obs[k], online.obs[k])
        else:
            np.testing.assert_array_equal(online.next_obs[k], t.next_observation)
    assert online.done.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]


def test_fifo_limit_evicts_parent_store_but_never_the_offline_pool() -> None:
    buf = create_fifo_cfdg_replay_buffer(50, episodes=[make_episode(40, True)], config=tiny_config(augmentation="none"),
                                         online_capacity=30)
    write_steps(buf, random_steps(80))
    buf.clip_episode(True)
    assert buf.transition_count == 50  # d3rlpy's FIFO pushed the offline episode out
    assert buf.augmented.num_offline == 40
    assert buf.augmented.num_online == 30


def test_offline_dataset_from_transition_batch_sets_signatures_and_both_stores() -> None:
    ep = make_episode(30, True)
    tb = episodes_to_transition_batch([ep, make_episode(21, False, 3)])
    buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=tb, config=tiny_config())
    assert buf.obs_dim == OBS and buf.act_dim == ACT
    assert buf.transition_count == 50 == buf.augmented.num_offline
    np.testing.assert_array_equal(buf.augmented.offline_data().obs, tb.obs)


def tuple_episode(length: int, terminated: bool, seed: int = 0) -> Episode:
    r = np.random.default_rng(seed)
    return Episode(
        observations=[r.random((length, 4), dtype=np.float32), 5.0 + r.random((length, 2, 3), dtype=np.float32)],
        actions=r.random((length, ACT), dtype=np.float32),
        rewards=r.random((length, 1), dtype=np.float32),
        terminated=terminated,
    )


def test_tuple_observations_are_flattened_for_the_core_and_split_back_in_batches() -> None:
    eps = [tuple_episode(30, True, 0), tuple_episode(25, False, 1)]
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=eps, config=tiny_config(), seed=1)
    assert buf.obs_layout.shapes == ((4,), (2, 3)) and buf.obs_dim == 10
    off = buf.augmented.offline_data()
    np.testing.assert_array_equal(off.obs[:30, :4], eps[0].observations[0])
    np.testing.assert_array_equal(off.obs[:30, 4:], eps[0].observations[1].reshape(30, 6))
    steps = [([r.random(4, dtype=np.float32), 5.0 + r.random((2, 3), dtype=np.float32)],
              r.random(ACT, dtype=np.float32), 0.5) for r in [np.random.default_rng(3)] for _ in range(51)]
    write_steps(buf, steps)  # 50 online transitions: refresh
    assert buf.augmented.num_refreshes == 1
    batch = buf.sample_transition_batch(128)
    assert isinstance(batch.observations, list)
    assert [o.shape for o in batch.observations] == [(128, 4), (128, 2, 3)]
    assert [o.shape for o in batch.next_observations] == [(128, 4), (128, 2, 3)]
    assert all(o.dtype == np.float32 for o in batch.observations)
    # Synthetic rows keep each part inside its real range (the second part lies in [5, 6]).
    syn = buf.augmented.pool_data("synthetic_online").obs
    assert np.all(syn[:, 4:] >= 5.0 - 1e-6) and np.all(syn[:, 4:] <= 6.0 + 1e-6)
    assert buf.last_source_counts == buf.augmented.source_counts(128)


def test_discrete_actions_are_one_hot_in_the_core_and_indices_in_batches() -> None:
    r = np.random.default_rng(0)
    ep = Episode(observations=r.random((60, OBS), dtype=np.float32), actions=r.integers(0, 3, (60, 1)),
                 rewards=r.random((60, 1), dtype=np.float32), terminated=True)
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[ep], config=tiny_config(), seed=2)
    assert buf.dataset_info.action_space == ActionSpace.DISCRETE and buf.discrete_actions
    assert buf.act_encoding.dim == 3
    np.testing.assert_array_equal(buf.augmented.offline_data().act, np.eye(3, dtype=np.float32)[ep.actions[:, 0]])
    for _ in range(51):
        buf.append(r.random(OBS, dtype=np.float32), int(r.integers(0, 3)), 1.0)
    assert buf.augmented.num_refreshes == 1
    syn = buf.augmented.pool_data("synthetic_online").act
    assert np.all(syn.sum(axis=1) == 1.0) and set(np.unique(syn)) <= {0.0, 1.0}  # valid one-hot rows only
    batch = buf.sample_transition_batch(200)
    assert batch.actions.shape == (200, 1) and batch.actions.dtype == np.float32
    assert set(np.unique(batch.actions)) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="Discrete"):
        buf.append(r.random(OBS, dtype=np.float32), 3, 1.0)  # outside [0, 3): refused before writing


def test_synthetic_actions_lie_inside_the_env_action_bounds() -> None:
    import gymnasium

    env = gymnasium.make("Pendulum-v1")  # actions in [-2, 2]
    buf = CFDGReplayBuffer(InfiniteBuffer(), env=env, config=tiny_config(), seed=4)
    assert buf.act_encoding.segments[0].low == (-2.0,) and buf.act_encoding.segments[0].high == (2.0,)
    r = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for _ in range(120):
        act = r.uniform(-2, 2, 1).astype(np.float32)
        buf.append(obs, act, -1.0)
        obs, *_ = env.step(act)
    assert buf.augmented.num_refreshes >= 1
    acts = np.concatenate([buf.augmented.pool_data(p).act for p in ("synthetic_online", "synthetic_offline")])
    assert np.all(acts >= -2.0) and np.all(acts <= 2.0)
    assert np.abs(acts).max() > 1.0  # the env's range is used, not a default [-1, 1]
    bounded = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config(), action_bounds=(-0.5, 0.5),
                               seed=4)
    assert bounded.act_encoding.segments[0].high == (0.5, 0.5)
    for _ in range(120):
        bounded.append(r.random(OBS, dtype=np.float32), r.uniform(-0.5, 0.5, ACT).astype(np.float32), 0.0)
    assert bounded.augmented.num_refreshes >= 1
    acts = np.concatenate([bounded.augmented.pool_data(p).act for p in ("synthetic_online", "synthetic_offline")])
    assert np.abs(acts).max() == pytest.approx(0.5)  # inside the bounds, and reaching them


def test_synthetic_terminals_follow_the_env_rule_when_the_env_is_known() -> None:
    import gymnasium

    from cfdg_aug.termination import termination_rule

    env = gymnasium.make("Hopper-v4")
    buf = CFDGReplayBuffer(InfiniteBuffer(), env=env, config=tiny_config(), seed=0)
    assert buf.augmented is not None and buf.augmented.generator is not None
    assert buf.augmented.generator.termination_fn is termination_rule("Hopper-v4", 11)
    custom = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config(),
                              termination=lambda o, a, n: n[:, 0] > 0.5)
    assert custom.augmented is not None and custom.augmented.generator is not None
    assert custom.augmented.generator.termination_fn(*(np.full((2, OBS), 0.9, np.float32),) * 3).all()
    unknown = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config())  # no env: a classifier
    assert unknown.augmented is not None and unknown.augmented.generator is not None
    assert unknown.augmented.generator.termination_fn is None


def test_image_observations_are_refused_under_augmentation_and_the_parent_without() -> None:
    from cfdg_aug.integrations.spaces import ImageObservationError

    r = np.random.default_rng(0)
    ep = Episode(observations=r.integers(0, 255, (20, 1, 16, 16), dtype=np.uint8),
                 actions=r.integers(0, 4, (20, 1)), rewards=r.random((20, 1), dtype=np.float32), terminated=False)
    with pytest.raises(ImageObservationError, match=r"observation_signature: image observations .*augmentation=\"none\""):
        CFDGReplayBuffer(InfiniteBuffer(), episodes=[ep])
    plain = ReplayBuffer(InfiniteBuffer(), episodes=[ep])
    ours = CFDGReplayBuffer(InfiniteBuffer(), episodes=[ep], config=tiny_config(augmentation="none"))
    assert ours.augmented is None and ours.delegating
    frames = r.integers(0, 255, (10, 1, 16, 16), dtype=np.uint8)
    for b in (plain, ours):
        for frame in frames:
            b.append(frame, 1, 0.0)
        b.clip_episode(True)
    assert ours.transition_count == plain.transition_count == 29
    np.random.seed(0)
    x = plain.sample_transition_batch(8)
    np.random.seed(0)
    y = ours.sample_transition_batch(8)
    np.testing.assert_array_equal(x.observations, y.observations)


def test_multi_step_picker_real_rows_are_the_parents_and_synthetic_rows_are_one_step() -> None:
    from d3rlpy.dataset import MultiStepTransitionPicker

    picker = MultiStepTransitionPicker(n_steps=3, gamma=0.99)
    eps = [make_episode(12, True, 0), make_episode(9, False, 1)]
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=eps, transition_picker=picker, config=tiny_config(), seed=6)
    steps = random_steps(51, seed=11)  # (seeds 0 and 1 made the episodes: no shared observation)
    write_steps(buf, steps)  # 50 online transitions -> refresh
    assert buf.augmented.num_refreshes == 1
    # What d3rlpy itself returns for every real transition, keyed by observation.
    plain = ReplayBuffer(InfiniteBuffer(), episodes=eps, transition_picker=picker)
    write_steps(plain, steps)
    expected = {}
    for ep in list(plain.episodes):
        for i in range(ep.transition_count):
            t = picker(ep, i)
            expected[np.asarray(t.observation, np.float32).tobytes()] = t
    batch = buf.sample_transition_batch(600)
    counts = buf.last_source_counts
    n_real = counts[0] + counts[1]
    intervals = batch.intervals[:, 0]
    assert len(expected) == sum(ep.transition_count for ep in plain.episodes)  # observations identify rows
    for j in range(n_real):
        t = expected[batch.observations[j].tobytes()]
        assert intervals[j] == t.interval
        np.testing.assert_allclose(batch.rewards[j], t.reward, rtol=1e-6)
        assert batch.terminals[j, 0] == t.terminal
        np.testing.assert_array_equal(batch.next_observations[j], np.asarray(t.next_observation, np.float32))
    assert set(intervals[:n_real]) == {1.0, 2.0, 3.0}
    assert counts[2] + counts[3] > 0 and np.all(intervals[n_real:] == 1.0)


def test_a_picker_the_buffer_cannot_honour_is_an_error() -> None:
    from d3rlpy.dataset import FrameStackTransitionPicker

    with pytest.raises(ValueError, match="transition_picker: FrameStackTransitionPicker"):
        CFDGReplayBuffer(InfiniteBuffer(), **signatures(), transition_picker=FrameStackTransitionPicker(4))
    # without augmentation it is the parent's picker on real data only, as in d3rlpy
    CFDGReplayBuffer(InfiniteBuffer(), **signatures(), transition_picker=FrameStackTransitionPicker(4),
                     config=tiny_config(augmentation="none"))

    class Reshaping:  # a custom picker whose observations no longer have the buffer's shape
        def __call__(self, episode, index):  # type: ignore[no-untyped-def]
            t = BasicTransitionPicker()(episode, index)
            import dataclasses

            return dataclasses.replace(t, observation=np.concatenate([t.observation, t.observation]))

    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(20, True)], transition_picker=Reshaping(),
                           config=tiny_config())
    with pytest.raises(ValueError, match="transition_picker: Reshaping returns observations of shape"):
        buf.sample_transition_batch(8)


def test_write_at_termination_mirrors_transitions_when_d3rlpy_writes_them() -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), write_at_termination=True,
                           config=tiny_config(augmentation="none"))
    write_steps(buf, random_steps(10))
    assert buf.transition_count == 0 and buf.augmented.num_online == 0
    buf.clip_episode(True)
    assert buf.transition_count == 10 == buf.augmented.num_online


# --- sampling ----------------------------------------------------------------------------------------
def test_without_offline_data_and_before_refresh_samples_equal_the_parents_under_same_seed() -> None:
    steps = random_steps(120)
    plain = ReplayBuffer(InfiniteBuffer(), **signatures())
    ours = CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config(refresh_every=1000, min_online=1000))
    for b in (plain, ours):
        write_steps(b, steps)
        b.clip_episode(True)
    np.random.seed(123)
    a = plain.sample_transition_batch(16)
    np.random.seed(123)
    b = ours.sample_transition_batch(16)
    for name in ("observations", "actions", "rewards", "next_observations", "next_actions", "terminals"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert ours.delegating
    assert ours.last_source_counts == (0, 16, 0, 0)


def test_mixed_batch_after_refresh_has_exact_source_counts_and_d3rlpy_dtypes() -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(200, True)], config=tiny_config(), seed=3)
    write_steps(buf, random_steps(51))  # 50 complete transitions -> refresh inside append
    assert buf.augmented.num_refreshes == 1
    assert [e["online_step"] for e in buf.refresh_log] == [50]
    batch = buf.sample_transition_batch(256)
    expected = buf.augmented.source_counts(256)
    assert buf.last_source_counts == expected
    assert all(c > 0 for c in expected)  # 1:1:1 with 8:2 reweighting -> every pool used
    assert batch.observations.shape == (256, OBS) and batch.observations.dtype == np.float32
    assert batch.rewards.shape == (256, 1) and batch.terminals.shape == (256, 1)
    assert batch.intervals.shape == (256, 1) and np.all(batch.intervals == 1)
    assert np.all(batch.next_actions == 0)
    buf.sample_transition_batch(256)
    np.testing.assert_array_equal(buf.source_histogram, 2 * np.asarray(expected))


def test_a_background_refresh_is_installed_inside_append_after_the_lag() -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(200, True)],
                           config=tiny_config(refresh_lag=10), seed=3)
    write_steps(buf, random_steps(51))  # 50 complete transitions: started inside append
    assert buf.augmented.refresh_pending and buf.refresh_log == []
    assert buf.augmented.pool_sizes["synthetic_online"] == 0
    write_steps(buf, random_steps(10, seed=2))
    assert not buf.augmented.refresh_pending and buf.augmented.num_refreshes == 1
    (entry,) = buf.refresh_log
    assert (entry["online_count"], entry["installed_count"], entry["online_step"]) == (50, 60, 60)
    assert all(c > 0 for c in buf.augmented.source_counts(256))


def test_sampling_is_deterministic_from_the_seed() -> None:
    def draw(seed: int) -> np.ndarray:
        buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)],
                               config=tiny_config(augmentation="none"), seed=seed)
        write_steps(buf, random_steps(30))
        return buf.sample_transition_batch(64).observations

    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))  # the seed is used, not a fixed default


def test_seed_none_follows_d3rlpy_seed_and_leaves_np_random_untouched() -> None:
    def draw(d3_seed: int) -> tuple[int, np.ndarray]:
        d3rlpy.seed(d3_seed)
        ReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)])
        expected = np.random.randint(0, 1000, size=5)  # np.random after the parent's own construction
        d3rlpy.seed(d3_seed)
        buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)],
                               config=tiny_config(augmentation="none"))
        assert np.array_equal(np.random.randint(0, 1000, size=5), expected)  # the parent's stream is untouched
        write_steps(buf, random_steps(30))
        return buf.cfdg_seed, buf.sample_transition_batch(64).observations

    (seed_a, obs_a), (seed_a2, obs_a2), (seed_b, obs_b) = draw(1), draw(1), draw(2)
    assert seed_a == seed_a2 and seed_a != seed_b
    np.testing.assert_array_equal(obs_a, obs_a2)
    assert not np.array_equal(obs_a, obs_b)  # different d3rlpy seeds draw different mixed batches


def test_a_reward_signature_with_more_than_one_component_is_refused() -> None:
    sig = {**signatures(), "reward_signature": Signature(dtype=[np.dtype(np.float32)], shape=[(2,)])}
    with pytest.raises(ValueError, match=r"reward_signature: expected one reward per step \(shape \(1,\)\), got shape \(2,\)"):
        CFDGReplayBuffer(InfiniteBuffer(), **sig, config=tiny_config())
    # Without augmentation of images the parent's behaviour is unchanged: a (1,) signature is accepted.
    assert CFDGReplayBuffer(InfiniteBuffer(), **signatures(), config=tiny_config()).act_dim == ACT


@pytest.mark.parametrize(("algo_config", "reads"), [
    (lambda: d3rlpy.algos.ReBRACConfig(batch_size=16), "batch.next_actions"),
    (lambda: d3rlpy.algos.CalQLConfig(batch_size=16), "returns-to-go"),
], ids=["ReBRAC", "CalQL"])
def test_algorithms_that_read_what_a_mixed_batch_lacks_are_refused_before_an_update(algo_config, reads) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)], config=tiny_config())
    algo = algo_config().create(device="cpu")
    with pytest.raises(ValueError, match=rf"{type(algo).__name__} is not supported by CFDGReplayBuffer: .*{reads}"):
        algo.fit(buf, n_steps=2, n_steps_per_epoch=2, show_progress=False,
                 logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    assert algo.grad_step == 0  # refused before its first update


def test_a_mixed_batch_refuses_returns_to_go_outside_fit() -> None:
    from d3rlpy.torch_utility import TorchMiniBatch

    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)], config=tiny_config())
    mb = buf.sample_transition_batch(8)  # not called by an algorithm: not refused here
    assert len(mb.transitions) == 0
    TorchMiniBatch.from_batch(mb, gamma=0.99, compute_returns_to_go=False, device="cpu")  # what IQL does
    with pytest.raises(ValueError, match="no returns-to-go"):
        TorchMiniBatch.from_batch(mb, gamma=0.99, compute_returns_to_go=True, device="cpu")


def test_offline_fit_runs_on_our_buffer() -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)], config=tiny_config())
    iql = d3rlpy.algos.IQLConfig(batch_size=16).create(device="cpu")
    iql.fit(buf, n_steps=4, n_steps_per_epoch=4, show_progress=False,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    assert buf.source_histogram[0] == 4 * 16  # offline only: no online data yet


# --- conversions ---------------------------------------------------------------------------------
def test_transition_batch_to_minibatch_shapes_and_values() -> None:
    tb = TransitionBatch.from_arrays(np.ones((3, OBS)), np.zeros((3, ACT)), [1, 2, 3], np.ones((3, OBS)) * 2,
                                     [0, 1, 0])
    mb = transition_batch_to_minibatch(tb)
    assert mb.rewards.tolist() == [[1.0], [2.0], [3.0]]
    assert mb.terminals.tolist() == [[0.0], [1.0], [0.0]]
    assert mb.next_actions.shape == (3, ACT)


def test_episode_round_trip_splits_at_terminal_timeout_and_broken_chains() -> None:
    eps = [make_episode(5, True, 0), make_episode(6, False, 1), make_episode(4, True, 2)]
    tb = episodes_to_transition_batch(eps)
    assert len(tb) == 5 + 5 + 4
    assert tb.done.tolist() == [0, 0, 0, 0, 1] + [0] * 5 + [0, 0, 0, 1]
    assert tb.timeout is not None and tb.timeout[9]
    back = transition_batch_to_episodes(tb)
    assert [e.transition_count for e in back] == [5, 5, 4]
    assert [e.terminated for e in back] == [True, False, True]
    np.testing.assert_array_equal(episodes_to_transition_batch(back).next_obs, tb.next_obs)
    # A chain break without any flag also ends an episode.
    shuffled = tb[np.array([0, 1, 7, 8])]
    shuffled.done[:] = 0
    shuffled.timeout[:] = False
    assert len(transition_batch_to_episodes(shuffled)) == 2


# --- full state ----------------------------------------------------------------------------------------
def test_save_state_then_load_state_restores_pools_counts_and_sampling(tmp_path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)], config=tiny_config(), seed=5)
    write_steps(buf, random_steps(60))
    buf.sample_transition_batch(32)
    buf.save_state(tmp_path / "state")
    back = CFDGReplayBuffer.load_state(tmp_path / "state")
    assert back.transition_count == buf.transition_count
    assert back.augmented.pool_sizes == buf.augmented.pool_sizes
    assert back.augmented.num_refreshes == 1 and back.refresh_log == buf.refresh_log
    np.testing.assert_array_equal(back.source_histogram, buf.source_histogram)
    a, b = buf.sample_transition_batch(32), back.sample_transition_batch(32)
    np.testing.assert_array_equal(a.observations, b.observations)
    # Writing continues where it stopped: the next refresh is at 100 online transitions.
    write_steps(back, random_steps(42, 9))  # 59 + 41 complete transitions
    assert back.augmented.num_refreshes == 2 and back.refresh_log[-1]["online_step"] == 100


def test_load_state_detects_a_save_torn_between_files(tmp_path) -> None:
    buf = CFDGReplayBuffer(InfiniteBuffer(), episodes=[make_episode(100, True)], config=tiny_config(), seed=5)
    write_steps(buf, random_steps(60))
    buf.save_state(tmp_path / "old")
    write_steps(buf, random_steps(30, 3))
    buf.save_state(tmp_path / "new")
    # a crash after the core file of the new save but before its episodes and meta.json
    (tmp_path / "old" / "augmented.safetensors").write_bytes((tmp_path / "new" / "augmented.safetensors").read_bytes())
    with pytest.raises(ValueError, match="same save"):
        CFDGReplayBuffer.load_state(tmp_path / "old")
    CFDGReplayBuffer.load_state(tmp_path / "new")  # an intact save still loads
