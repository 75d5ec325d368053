"""SAC / TD3 / TQC learning on real Hopper-v4 with CFDGReplayBuffer + CFDGCallback (tiny budgets)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.noise import NormalActionNoise

from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import load_embedded
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.integrations.sb3 import CFDGCallback, CFDGReplayBuffer, prefill_offline, pretrain_offline
from cfdg_aug.transitions import (
    SOURCE_REAL_OFFLINE,
    SOURCE_REAL_ONLINE,
    SOURCE_SYNTHETIC_OFFLINE,
    SOURCE_SYNTHETIC_ONLINE,
)

REFRESH_EVERY = 50
TINY = CFDGConfig.small(
    width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2, synthetic_online_size=64,
    synthetic_offline_size=16, refresh_every=REFRESH_EVERY, min_online=REFRESH_EVERY,
)
NET = dict(net_arch=[32, 32])  # SB3 mutates policy_kwargs (adds use_sde): always pass a copy


@pytest.fixture(scope="module")
def hopper_offline() -> Any:
    """The first 2,000 transitions of the embedded hopper-medium dataset (in the package)."""
    data = load_embedded()
    return data.subset(slice(0, 2000))


class RecordingBuffer(CFDGReplayBuffer):
    """Keeps the source of every sampled row, per sample call, and the refresh count at that time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampled: list[tuple[int, np.ndarray]] = []

    def sample(self, batch_size, env=None):  # type: ignore[no-untyped-def]
        out = super().sample(batch_size, env)
        assert self.last_sources is not None
        self.sampled.append((self.num_refreshes, self.last_sources.copy()))
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["sampled"] = []
        return state


class CaptureWriter(KVWriter):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append({**key_values, "_step": step})

    def close(self) -> None:
        pass


def _params(model: Any) -> dict[str, th.Tensor]:
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


def test_sac_with_cfdg_buffer_is_identical_to_plain_buffer_before_first_refresh() -> None:
    def run(buffer_class: type, kwargs: dict[str, Any]) -> dict[str, th.Tensor]:
        model = SAC("MlpPolicy", gym.make("Hopper-v4"), buffer_size=1000, learning_starts=50, batch_size=32,
                    seed=0, policy_kwargs=dict(NET), replay_buffer_class=buffer_class, replay_buffer_kwargs=kwargs)
        model.learn(120)
        return _params(model)

    plain = run(ReplayBuffer, {})
    ours = run(CFDGReplayBuffer, {"config": TINY.replace(refresh_every=10_000, min_online=10_000)})
    assert plain.keys() == ours.keys()
    assert all(th.equal(plain[k], ours[k]) for k in plain)


def test_sac_refreshes_on_schedule_mixes_sources_logs_and_updates(hopper_offline: Any) -> None:
    env = gym.make("Hopper-v4")
    model = SAC("MlpPolicy", env, buffer_size=1000, learning_starts=20, batch_size=60, seed=1, policy_kwargs=dict(NET),
                replay_buffer_class=RecordingBuffer, replay_buffer_kwargs={"config": TINY, "seed": 7})
    buf = model.replay_buffer
    assert isinstance(buf, RecordingBuffer)
    assert prefill_offline(model, hopper_offline) == 2000
    capture = CaptureWriter()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    before = _params(model)
    cb = CFDGCallback(fidelity=True, fidelity_n=200)
    model.learn(170, callback=cb, log_interval=1)

    # Refreshes happen right after the 50th, 100th and 150th online transitions are stored.
    assert [s.online_count for s in cb.refreshes] == [50, 100, 150]
    assert [s.refresh_index for s in cb.refreshes] == [1, 2, 3]
    assert all(s.fit is not None and np.isfinite(s.fit.final_loss) for s in cb.refreshes)
    assert buf.num_refreshes == 3

    # Batch composition counted from the rows SAC actually trained on.
    pre = [src for n, src in buf.sampled if n == 0]
    post = [src for n, src in buf.sampled if n >= 1]
    # SB3 trains after env steps 21..170 (num_timesteps > learning_starts); the refresh runs inside the
    # add of step 50, before that step's gradient step.
    assert len(pre) == 49 - 20 and len(post) == 170 - 49
    for src in pre:  # before the first refresh: half real offline, half real online
        assert tuple(np.bincount(src, minlength=4)) == (30, 30, 0, 0)
    expected = buf.augmented.source_counts(60)
    assert expected[SOURCE_SYNTHETIC_ONLINE] > expected[SOURCE_SYNTHETIC_OFFLINE] > 0
    for src in post:
        assert tuple(np.bincount(src, minlength=4)) == expected
    total = np.bincount(np.concatenate(post), minlength=4)
    assert all(total[s] > 0 for s in (SOURCE_REAL_OFFLINE, SOURCE_REAL_ONLINE, SOURCE_SYNTHETIC_OFFLINE,
                                        SOURCE_SYNTHETIC_ONLINE))

    # Parameters were updated.
    after = _params(model)
    assert any(not th.equal(before[k], after[k]) for k in before if "actor" in k)
    assert any(not th.equal(before[k], after[k]) for k in before if k.startswith("critic."))

    # The SB3 logger received the CFDG keys.
    keys = set().union(*capture.rows)
    for k in ("cfdg/fit_final_loss", "cfdg/refresh_seconds", "cfdg/fit_seconds_generator", "cfdg/pool/real_offline",
              "cfdg/pool/synthetic_online", "cfdg/num_refreshes", "cfdg/batch/synthetic_online"):
        assert k in keys, k
    losses = [r["cfdg/fit_final_loss"] for r in capture.rows if "cfdg/fit_final_loss" in r]
    assert losses and all(np.isfinite(losses))
    aucs = [r["cfdg/fidelity/online_auc"] for r in capture.rows if "cfdg/fidelity/online_auc" in r]
    assert len(cb.fidelity_history) == 3 and "fidelity/offline_mmd2" in cb.fidelity_history[0]
    assert aucs == [h["fidelity/online_auc"] for h in cb.fidelity_history]  # the logger got what was measured

    # Synthetic terminals obey the env's rule, which the callback took from the model's env.
    gen = buf.augmented.generator
    assert gen is not None and gen.termination_env == "Hopper-v4"
    syn = buf.augmented.pool_data("synthetic_online")
    np.testing.assert_array_equal(syn.done > 0.5, gen.termination_fn(syn.obs, syn.act, syn.next_obs))
    pools = [r["cfdg/pool/real_offline"] for r in capture.rows if "cfdg/pool/real_offline" in r]
    assert set(pools) == {2000}


@pytest.mark.parametrize("algo", ["TD3", "TQC"])
def test_td3_and_tqc_run_the_same_path(algo: str) -> None:
    env = gym.make("Hopper-v4")
    kwargs: dict[str, Any] = dict(buffer_size=500, learning_starts=20, batch_size=40, seed=2,
                                  replay_buffer_class=RecordingBuffer, replay_buffer_kwargs={"config": TINY})
    if algo == "TD3":
        model: Any = TD3("MlpPolicy", env, policy_kwargs=dict(NET), action_noise=NormalActionNoise(np.zeros(3), 0.1 * np.ones(3)),
                         **kwargs)
    else:
        from sb3_contrib import TQC

        model = TQC("MlpPolicy", env, policy_kwargs=dict(net_arch=[32, 32], n_critics=2, n_quantiles=5), **kwargs)
    before = _params(model)
    cb = CFDGCallback()
    model.learn(110, callback=cb)
    assert [s.online_count for s in cb.refreshes] == [50, 100]
    buf = model.replay_buffer
    post = np.concatenate([src for n, src in buf.sampled if n >= 1])
    # no offline data: the offline label was never trained, so only online-like samples are mixed in
    assert (post == SOURCE_SYNTHETIC_ONLINE).any() and not (post == SOURCE_SYNTHETIC_OFFLINE).any()
    after = _params(model)
    assert any(not th.equal(before[k], after[k]) for k in before)


def test_save_and_load_replay_buffer_via_model_with_generator_beside_it(tmp_path: Path, hopper_offline: Any) -> None:
    env = gym.make("Hopper-v4")
    model = SAC("MlpPolicy", env, buffer_size=500, learning_starts=20, batch_size=32, seed=3, policy_kwargs=dict(NET),
                replay_buffer_class=CFDGReplayBuffer,
                replay_buffer_kwargs={"config": TINY, "offline_data": hopper_offline.subset(slice(0, 300))})
    ckpt = CheckpointCallback(save_freq=60, save_path=str(tmp_path), name_prefix="m", save_replay_buffer=True)
    cfdg_cb = CFDGCallback(save_freq=60, save_path=tmp_path, name_prefix="m")
    model.learn(120, callback=CallbackList([ckpt, cfdg_cb]))
    # Checkpoint at step 60 (after the refresh at 50) and 120: model zip, pickled buffer and generator together.
    for steps in (60, 120):
        assert (tmp_path / f"m_{steps}_steps.zip").exists()
        assert (tmp_path / f"m_replay_buffer_{steps}_steps.pkl").exists()
        assert (tmp_path / f"m_cfdg_generator_{steps}_steps.safetensors").exists()
    old = copy.deepcopy(model.replay_buffer)  # deepcopy goes through __getstate__ too
    assert isinstance(old, CFDGReplayBuffer)
    saved_gen = tmp_path / "gen.safetensors"
    assert model.replay_buffer.save_generator(saved_gen)

    path = tmp_path / "buffer.pkl"
    model.save_replay_buffer(path)
    model.replay_buffer = None
    model.load_replay_buffer(path)
    buf = model.replay_buffer
    assert isinstance(buf, CFDGReplayBuffer)
    for name in ("observations", "actions", "rewards", "dones", "next_observations", "timeouts"):
        np.testing.assert_array_equal(getattr(buf, name), getattr(old, name))
    assert buf.pool_sizes == old.pool_sizes and buf.pool_sizes["real_offline"] == 300
    assert buf.num_refreshes == 2 and buf.augmented.online_added_total == 120
    assert buf.generator is not None and not buf.generator.is_fitted  # not in the pickle, by design
    buf.load_generator(saved_gen)
    assert buf.generator is not None and buf.generator.is_fitted
    ckpt_gen = CFDGGenerator.load(tmp_path / "m_cfdg_generator_120_steps.safetensors")
    assert ckpt_gen.is_fitted and ckpt_gen.num_fits == 2

    # Training continues with the reloaded buffer; the callback re-registers its hook on it.
    cb = CFDGCallback()
    model.learn(40, callback=cb, reset_num_timesteps=False)
    assert [s.online_count for s in cb.refreshes] == [150]
    assert buf.generator.num_fits == 3  # warm-started from the reloaded generator


def test_pretrain_offline_updates_agent_without_env_steps(hopper_offline: Any) -> None:
    model = SAC("MlpPolicy", gym.make("Hopper-v4"), buffer_size=500, learning_starts=0, batch_size=32, seed=4,
                policy_kwargs=dict(NET), replay_buffer_class=CFDGReplayBuffer, replay_buffer_kwargs={"config": TINY})
    with pytest.raises(ValueError, match="prefill_offline"):
        pretrain_offline(model, 5)
    prefill_offline(model, hopper_offline, limit=500)
    assert model.replay_buffer.augmented.num_offline == 500
    before = _params(model)
    stats = pretrain_offline(model, 25, chunk_size=10)
    assert stats.gradient_steps == 25 and stats.n_updates_after - stats.n_updates_before == 25
    assert model.num_timesteps == 0 and model.replay_buffer.size() == 0
    after = _params(model)
    assert any(not th.equal(before[k], after[k]) for k in before if k.startswith("actor."))
    assert not hasattr(model, "_logger")  # learn() still sets up its own logger
    model.learn(30)
    assert model.num_timesteps == 30


def test_callback_refuses_a_plain_replay_buffer() -> None:
    model = SAC("MlpPolicy", gym.make("Hopper-v4"), buffer_size=100, learning_starts=5, policy_kwargs=dict(NET))
    with pytest.raises(TypeError, match="CFDGReplayBuffer"):
        model.learn(10, callback=CFDGCallback())
