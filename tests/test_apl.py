"""APL as a d3rlpy algorithm: branch choice, source routing, fit_online, save/load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import d3rlpy
import gymnasium as gym
import numpy as np
import pytest
import torch
from d3rlpy.logging import NoopAdapterFactory
from d3rlpy.models import VectorEncoderFactory

from cfdg_aug.buffer import AugmentedReplayBuffer
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.integrations.d3rlpy._convert import transition_batch_to_minibatch
from cfdg_aug.integrations.d3rlpy.apl import (
    APL,
    BRANCH_CONSERVATIVE,
    BRANCH_GREEDY,
    APLConfig,
    APLImpl,
)
from cfdg_aug.integrations.d3rlpy.buffer import create_fifo_cfdg_replay_buffer
from cfdg_aug.transitions import TransitionBatch
from tests.data_helpers import random_offline_buffer

OBS_DIM, ACT_DIM = 11, 3
# reward marker of each data source; the recent-online FIFO gets its own marker (11) so the test
# can tell "recent online" (greedy) from "all online" (conservative, core pool 1)
MARK_OFFLINE, MARK_ONLINE_POOL, MARK_SYN_OFF, MARK_SYN_ON, MARK_FIFO = 0.0, 10.0, 20.0, 30.0, 11.0
SOURCE_OF_MARK = {MARK_OFFLINE: 0, MARK_ONLINE_POOL: 1, MARK_FIFO: 1, MARK_SYN_OFF: 2, MARK_SYN_ON: 3}


def tiny_apl(**overrides: Any) -> APL:
    enc = VectorEncoderFactory(hidden_units=[16])
    base: dict[str, Any] = dict(batch_size=32, n_critics=2, n_action_samples=2, online_buffer_size=500,
                                greedy_min_online=40, utd_ratio=2, actor_encoder_factory=enc,
                                critic_encoder_factory=enc)
    base.update(overrides)
    d3rlpy.seed(0)
    algo = APLConfig(**base).create(device="cpu:0")
    algo.create_impl((OBS_DIM,), ACT_DIM)
    return algo


def marker_batch(n: int, mark: float) -> TransitionBatch:
    obs = np.full((n, OBS_DIM), mark, np.float32)
    return TransitionBatch.from_arrays(obs, np.zeros((n, ACT_DIM), np.float32), np.full(n, mark, np.float32),
                                       obs.copy(), np.zeros(n, np.float32))


class MarkerGenerator:
    """Stands in for CFDGGenerator: 'samples' constant marker transitions per label."""

    conditional = True
    is_fitted = True

    def fit(self, offline: Any, online: Any = None, **kwargs: Any) -> None:
        return None

    def sample(self, n: int, label: Any = "online", **kwargs: Any) -> TransitionBatch:
        return marker_batch(n, MARK_SYN_ON if label == "online" else MARK_SYN_OFF)


def marker_buffer(n_offline: int = 300, n_online: int = 100) -> AugmentedReplayBuffer:
    cfg = CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                           synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50,
                           min_online=50)
    buf = AugmentedReplayBuffer(OBS_DIM, ACT_DIM, config=cfg, seed=0, generator=MarkerGenerator())  # type: ignore[arg-type]
    buf.add_offline(marker_batch(n_offline, MARK_OFFLINE))
    buf.add(marker_batch(n_online, MARK_ONLINE_POOL))
    buf.refresh()
    assert buf.pool_sizes == {"real_offline": n_offline, "real_online": n_online,
                              "synthetic_offline": 16, "synthetic_online": 64}
    return buf


def fill_fifo(algo: APL, n: int) -> None:
    for _ in range(n):
        algo.observe_online(np.full(OBS_DIM, MARK_FIFO), np.zeros(ACT_DIM), MARK_FIFO,
                            np.full(OBS_DIM, MARK_FIFO), 0.0)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_branch_frequency_matches_probability_and_each_branch_sees_only_its_sources(p: float) -> None:
    algo = tiny_apl(online_update_probability=p)
    buf = marker_buffer()
    assert algo.bind_buffer(buf)
    fill_fifo(algo, 60)
    n_updates, b = 300, algo.config.batch_size
    seen: dict[int, np.ndarray] = {BRANCH_GREEDY: np.zeros(4, np.int64),
                                   BRANCH_CONSERVATIVE: np.zeros(4, np.int64)}
    fifo_rows = pool1_rows_in_conservative = 0
    for _ in range(n_updates):
        loss = algo.update(None)  # type: ignore[arg-type]  # bound: APL draws its own batches
        assert math.isfinite(loss["critic_loss"]) and math.isfinite(loss["actor_loss"])
        rew = algo.last_batch.rewards[:, 0]
        src = algo.last_sources
        assert src is not None and len(rew) == b
        # the stated source of every row agrees with the data actually trained on
        assert all(SOURCE_OF_MARK[float(r)] == s for r, s in zip(rew, src, strict=True))
        seen[algo.last_branch] += np.bincount(src, minlength=4)
        if algo.last_branch == BRANCH_GREEDY:
            assert set(np.unique(rew)) <= {MARK_FIFO, MARK_SYN_ON}
            assert int(np.sum(rew == MARK_SYN_ON)) == round(b * 0.5)  # synthetic_fraction
            fifo_rows += int(np.sum(rew == MARK_FIFO))
        else:
            assert set(np.unique(rew)) <= {MARK_OFFLINE, MARK_ONLINE_POOL, MARK_SYN_OFF}
            assert int(np.sum(rew == MARK_SYN_OFF)) == round(b * 0.5)
            pool1_rows_in_conservative += int(np.sum(rew == MARK_ONLINE_POOL))
    # APL's own tally of what it trained on (the runner's src_* columns), not the buffer's
    np.testing.assert_array_equal(algo.source_counts, seen[BRANCH_GREEDY] + seen[BRANCH_CONSERVATIVE])
    assert algo.source_counts.sum() == n_updates * b
    greedy_freq = algo.branch_counts[BRANCH_GREEDY] / n_updates
    assert abs(greedy_freq - p) < 4 * math.sqrt(p * (1 - p) / n_updates)
    assert seen[BRANCH_GREEDY][[0, 2]].sum() == 0 and seen[BRANCH_GREEDY][[1, 3]].min() > 0
    assert seen[BRANCH_CONSERVATIVE][3] == 0 and seen[BRANCH_CONSERVATIVE][[0, 1, 2]].min() > 0
    # "offline + all online": real rows split in proportion to pool sizes (100 / 400 online)
    real_cons = seen[BRANCH_CONSERVATIVE][[0, 1]].sum()
    assert abs(pool1_rows_in_conservative / real_cons - 0.25) < 0.03


def test_no_greedy_update_before_fifo_reaches_greedy_min_online() -> None:
    algo = tiny_apl(online_update_probability=1.0)
    algo.bind_buffer(marker_buffer())
    fill_fifo(algo, 39)  # greedy_min_online = 40
    for _ in range(20):
        algo.update(None)  # type: ignore[arg-type]
    assert algo.branch_counts.tolist() == [20, 0]
    fill_fifo(algo, 1)
    algo.update(None)  # type: ignore[arg-type]
    assert algo.last_branch == BRANCH_GREEDY


def test_plain_buffer_fallback_uses_passed_batch_for_conservative_and_fifo_for_greedy() -> None:
    algo = tiny_apl()
    assert not algo.bind_buffer(d3rlpy.dataset.create_fifo_replay_buffer(10, env=gym.make("Hopper-v4")))
    fill_fifo(algo, 50)
    passed = transition_batch_to_minibatch(marker_batch(32, MARK_OFFLINE))
    for _ in range(60):
        algo.update(passed)
        if algo.last_branch == BRANCH_CONSERVATIVE:
            assert algo.last_batch is passed and algo.last_sources is None
        else:
            assert np.all(algo.last_batch.rewards == MARK_FIFO) and np.all(algo.last_sources == 1)
    assert algo.branch_counts.min() > 0


def test_conservative_branch_adds_cql_penalty_and_greedy_does_not() -> None:
    algo = tiny_apl()
    batch = transition_batch_to_minibatch(marker_batch(32, 1.0))
    greedy = algo.update_branch(batch, BRANCH_GREEDY)
    cons = algo.update_branch(batch, BRANCH_CONSERVATIVE)
    assert greedy["conservative_loss"] == 0.0 and greedy["critic_loss"] == greedy["td_loss"]
    assert cons["conservative_loss"] != 0.0
    assert cons["critic_loss"] == pytest.approx(cons["td_loss"] + cons["conservative_loss"], rel=1e-5)


def test_config_defaults_frozen_validation_and_cfdg_overrides() -> None:
    cfg = APLConfig()
    assert (cfg.n_critics, cfg.conservative_weight, cfg.online_update_probability,
            cfg.online_buffer_size, cfg.utd_ratio) == (5, 5.0, 0.5, 20_000, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_critics = 2  # type: ignore[misc]
    with pytest.raises(ConfigError, match="online_update_probability"):
        APLConfig(online_update_probability=1.5)
    with pytest.raises(ConfigError, match="target_subset_size"):
        APLConfig(n_critics=2, target_subset_size=3)
    with pytest.raises(ConfigError, match="greedy_min_online"):
        APLConfig(online_buffer_size=100, greedy_min_online=200)
    assert CFDGConfig.paper(**APLConfig.cfdg_overrides()).refresh_every == 10_000


def _params(algo: APL) -> dict[str, torch.Tensor]:
    m = algo.impl.modules
    return {f"{name}.{k}": v.detach().clone() for name in ("policy", "q_funcs")
            for k, v in getattr(m, name).state_dict().items()}


@pytest.mark.parametrize("use_cfdg", [False, True])
def test_fit_online_on_hopper_updates_both_branches_with_finite_losses_and_saves(
        use_cfdg: bool, tmp_path: Path) -> None:
    env = gym.make("Hopper-v4")
    env.action_space.seed(0)
    algo = tiny_apl(greedy_min_online=30)
    before = _params(algo)
    offline = random_offline_buffer(env, 200)
    if use_cfdg:
        cfg = CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                               synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50,
                               min_online=50)
        buffer = create_fifo_cfdg_replay_buffer(10_000, env=env, offline_dataset=offline, config=cfg, seed=0)
    else:
        buffer = offline
    log: list[tuple[dict[str, float], np.ndarray | None]] = []
    orig = algo.update

    def update(batch: Any) -> dict[str, float]:
        out = orig(batch)
        log.append((out, algo.last_sources))
        return out

    algo.update = update  # type: ignore[method-assign]
    algo.fit_online(env, buffer=buffer, n_steps=100, update_start_step=20, show_progress=False,
                    logger_adapter=NoopAdapterFactory())
    assert len(log) >= 2 * 75  # utd_ratio = 2
    assert all(math.isfinite(o[k]) for o, _ in log for k in ("critic_loss", "actor_loss", "temp"))
    assert algo.branch_counts.min() > 0 and algo.recent_online_size == 100
    after = _params(algo)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert algo.bound_pools is None  # unbound after the run
    if use_cfdg:
        assert buffer.augmented.num_refreshes >= 1
        used = np.bincount(np.concatenate([s for _, s in log if s is not None]), minlength=4)
        assert used[2] > 0 and used[3] > 0  # synthetic offline and online rows were trained on

    obs = np.random.default_rng(1).normal(size=(16, OBS_DIM)).astype(np.float32)
    algo.save(str(tmp_path / "apl.d3"))
    loaded = d3rlpy.load_learnable(str(tmp_path / "apl.d3"))
    assert isinstance(loaded, APL) and loaded.config == algo.config
    assert np.array_equal(loaded.predict(obs), algo.predict(obs))
    algo.save_model(str(tmp_path / "apl.pt"))
    fresh = tiny_apl(greedy_min_online=30)
    assert not np.array_equal(fresh.predict(obs), algo.predict(obs))
    fresh.load_model(str(tmp_path / "apl.pt"))
    assert np.array_equal(fresh.predict(obs), algo.predict(obs))


# ---- issue 16: the faster update computes what the per-computation update did ---------------------
def _apl_pair(**overrides: Any) -> tuple[APL, APL]:
    """Two APLs with identical weights, optimiser states and subset generators."""
    enc = VectorEncoderFactory(hidden_units=[32, 32])
    kw: dict[str, Any] = dict(n_critics=5, n_action_samples=3, actor_encoder_factory=enc,
                              critic_encoder_factory=enc)
    kw.update(overrides)
    a, b = tiny_apl(**kw), tiny_apl(**kw)
    for name in ("policy", "q_funcs", "targ_q_funcs", "log_temp"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(a.impl.modules, name).state_dict().values(),
                                                     getattr(b.impl.modules, name).state_dict().values(),
                                                     strict=True))
    return a, b


def _torch_batch(algo: APL, seed: int) -> Any:
    from d3rlpy.torch_utility import TorchMiniBatch

    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(32, OBS_DIM)).astype(np.float32)
    tb = TransitionBatch.from_arrays(obs, rng.uniform(-1, 1, (32, ACT_DIM)).astype(np.float32),
                                     rng.normal(size=32).astype(np.float32),
                                     obs + 0.1 * rng.normal(size=(32, OBS_DIM)).astype(np.float32),
                                     (rng.random(32) < 0.2).astype(np.float32))
    return TorchMiniBatch.from_batch(batch=transition_batch_to_minibatch(tb), gamma=0.99,
                                     compute_returns_to_go=False, device="cpu:0")


@pytest.mark.parametrize("rows_per_pass", [1024, 50])
@pytest.mark.parametrize("overrides", [{}, {"backup_entropy": True, "cql_temperature": 2.0},
                                       {"n_critics": 2, "n_action_samples": 1}])
def test_update_matches_the_pre_issue16_per_computation_update_on_same_weights_and_seed(
        overrides: dict[str, Any], rows_per_pass: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.bench_apl import reference_update

    monkeypatch.setattr(APLImpl, "ROWS_PER_PASS", rows_per_pass)  # 50: critic passes in row blocks
    new, old = _apl_pair(**overrides)
    for step, conservative in enumerate([True, False, True, True]):
        batch = _torch_batch(new, step)
        torch.manual_seed(100 + step)
        got = new.impl.update_branch(batch, step, conservative)
        torch.manual_seed(100 + step)
        want = reference_update(old.impl, batch, conservative)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (step, k)
        if conservative:
            assert got["conservative_loss"] != 0.0
    for name in ("policy", "q_funcs", "targ_q_funcs", "log_temp"):
        for key, v in getattr(old.impl.modules, name).state_dict().items():
            w = getattr(new.impl.modules, name).state_dict()[key]
            assert torch.allclose(w, v, rtol=1e-5, atol=1e-5), (name, key, float((w - v).abs().max()))
    # the actor loss froze the critics only for its own backward pass
    assert all(p.requires_grad for p in new.impl.modules.q_funcs.parameters())


@pytest.mark.parametrize("rows_per_pass", [1024, 20])
def test_ensemble_q_matches_d3rlpy_forwarder_and_a_batched_stacked_pass(
        rows_per_pass: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.bench_apl import stacked_ensemble_q

    monkeypatch.setattr(APLImpl, "ROWS_PER_PASS", rows_per_pass)
    algo = _apl_pair()[0]
    impl, q_funcs = algo.impl, algo.impl.modules.q_funcs
    x = torch.randn(64, OBS_DIM)
    a = torch.rand(64, ACT_DIM) * 2 - 1
    loop = impl.ensemble_q(q_funcs, x, a)
    assert loop.shape == (5, 64, 1)
    assert torch.allclose(loop, impl._q_func_forwarder.compute_expected_q(x, a, "none"), rtol=1e-6, atol=1e-6)
    assert torch.equal(impl.ensemble_q(q_funcs, x, a, [3, 1]), loop[[3, 1]])
    stacked = stacked_ensemble_q(q_funcs, x, a)
    assert torch.allclose(stacked, loop, rtol=1e-5, atol=1e-5)
    # same gradients for every critic weight
    params = list(q_funcs.parameters())
    g_loop = torch.autograd.grad((loop ** 2).sum(), params)
    g_stacked = torch.autograd.grad((stacked ** 2).sum(), params)
    assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-5) for u, v in zip(g_loop, g_stacked, strict=True))


def test_same_seed_same_updates() -> None:
    runs = []
    for _ in range(2):
        algo = tiny_apl(n_action_samples=3)
        algo.bind_buffer(marker_buffer())
        fill_fifo(algo, 60)
        torch.manual_seed(7)
        losses = [algo.update(None) for _ in range(6)]  # type: ignore[arg-type]
        runs.append((losses, _params(algo)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_small_profile_runs_the_reduced_agent_with_standardised_observations() -> None:
    from cfdg_aug.experiments.runner import build_algo, resolve_config

    small = resolve_config("apl", "none", "embedded", "small", 0)
    algo = build_algo(small, "Hopper-v4", "cpu:0")
    assert (algo.config.n_critics, algo.config.n_action_samples) == (2, 1)
    # the greedy branch must be reachable inside the small online budget
    assert algo.config.greedy_min_online < small.online_steps
    assert isinstance(algo.config.observation_scaler, d3rlpy.preprocessing.StandardObservationScaler)
    paper = build_algo(resolve_config("apl", "none", "embedded", "paper", 0), "Hopper-v4", "cpu:0")
    assert (paper.config.n_critics, paper.config.n_action_samples, paper.config.greedy_min_online) == \
        (APLConfig().n_critics, APLConfig().n_action_samples, APLConfig().greedy_min_online)


def test_learn_from_online_false_takes_no_greedy_update_and_no_online_row() -> None:
    """The offline-only control: every update conservative, on offline (and synthetic offline-like)
    rows only, however full the FIFO and the online pool."""
    algo = tiny_apl(online_update_probability=1.0, learn_from_online=False)
    assert algo.bind_buffer(marker_buffer(n_offline=100, n_online=400))
    fill_fifo(algo, 60)
    for _ in range(50):
        algo.update(None)  # type: ignore[arg-type]
        assert set(np.unique(algo.last_batch.rewards)) <= {MARK_OFFLINE, MARK_SYN_OFF}
    assert algo.branch_counts.tolist() == [50, 0]
    assert algo.source_counts[1] == algo.source_counts[3] == 0 and algo.source_counts[[0, 2]].min() > 0


def test_learn_from_online_false_refuses_a_plain_buffer_before_the_first_step() -> None:
    algo = tiny_apl(learn_from_online=False)
    env = gym.make("Hopper-v4")
    with pytest.raises(ConfigError, match="learn_from_online=False needs a source-aware buffer"):
        algo.fit_online(env, d3rlpy.dataset.create_fifo_replay_buffer(10, env=env), n_steps=5)
    assert algo.bound_pools is None
    with pytest.raises(ConfigError, match="needs a bound source-aware buffer"):
        fill_fifo(algo, 1)
    assert algo.recent_online_size == 0
    with pytest.raises(ConfigError, match="learn_from_online must be True or False, got 0"):
        APLConfig(learn_from_online=0)  # type: ignore[arg-type]
