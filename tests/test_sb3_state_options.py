"""SB3 integration: the termination rule survives pickling, generator loads and ``reset``; CFDGCallback
refuses arguments it could only fail on (or silently ignore) minutes into ``learn``."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import SAC

from cfdg_aug.config import CFDGConfig
from cfdg_aug.integrations.sb3 import CFDGBufferError, CFDGCallback, CFDGReplayBuffer
from cfdg_aug.termination import termination_rule

TINY = CFDGConfig.small(
    width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2, synthetic_online_size=64,
    synthetic_offline_size=16, refresh_every=50, min_online=50,
)
OBS_SPACE = spaces.Box(-10.0, 10.0, (11,), np.float32)  # Hopper's observation size: its rule applies
ACT_SPACE = spaces.Box(-1.0, 1.0, (3,), np.float32)


def never_done(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """A module-level termination rule: pickled by reference."""
    return np.zeros(len(obs), dtype=bool)


def make_buffer(**kw: object) -> CFDGReplayBuffer:
    return CFDGReplayBuffer(200, OBS_SPACE, ACT_SPACE, device="cpu", config=TINY, seed=0, **kw)  # type: ignore[arg-type]


def fill(buf: CFDGReplayBuffer, n: int, seed: int = 0) -> None:
    r = np.random.default_rng(seed)
    for _ in range(n):
        buf.add(r.uniform(-1, 1, (1, 11)).astype(np.float32), r.uniform(-1, 1, (1, 11)).astype(np.float32),
                r.uniform(-1, 1, (1, 3)).astype(np.float32), np.array([r.random()], np.float32),
                np.array([0.0], np.float32), [{}])


def hopper_sac(termination: object) -> SAC:
    return SAC("MlpPolicy", gym.make("Hopper-v4"), buffer_size=200, learning_starts=1000, seed=0,
               policy_kwargs=dict(net_arch=[8]), replay_buffer_class=CFDGReplayBuffer,
               replay_buffer_kwargs={"config": TINY, "termination": termination})


# --- A: termination through pickling, load_generator and reset --------------------------------------------
def test_a_module_level_termination_is_pickled_and_used_by_the_loaded_buffer() -> None:
    buf = make_buffer(termination=never_done)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the function pickles
        back = pickle.loads(pickle.dumps(buf))
    assert back.termination_given
    assert back.augmented is not None and back.augmented.generator is not None
    assert back.augmented.generator.termination_fn is never_done


def test_an_env_id_termination_is_pickled_and_used_by_the_loaded_buffer() -> None:
    back = pickle.loads(pickle.dumps(make_buffer(termination="Hopper-v4")))
    assert back.termination_given
    assert back.augmented is not None and back.augmented.generator is not None
    assert back.augmented.generator.termination_fn is termination_rule("Hopper-v4", 11)


def test_a_lambda_termination_is_left_out_with_a_warning_and_the_callback_restores_the_env_rule(
        tmp_path: Path) -> None:
    rule = lambda o, a, n: np.ones(len(o), dtype=bool)  # noqa: E731 - the point: it does not pickle
    model = hopper_sac(rule)
    model.learn(5, callback=CFDGCallback())
    buf = model.replay_buffer
    assert isinstance(buf, CFDGReplayBuffer) and buf.augmented is not None
    assert buf.augmented.generator.termination_fn is rule  # the callback keeps a rule that was given

    path = tmp_path / "buffer.pkl"
    saved = r"termination: the callable '[^']*<lambda>' cannot be pickled, so it is left out.*set_termination\(fn\)"
    with pytest.warns(UserWarning, match=saved):
        model.save_replay_buffer(path)
    assert buf.augmented.generator.termination_fn is rule  # saving changed nothing in the live buffer
    with pytest.warns(UserWarning, match=r"termination: the callable '[^']*<lambda>'.*was left out when"):
        model.load_replay_buffer(path)
    loaded = model.replay_buffer
    assert isinstance(loaded, CFDGReplayBuffer) and loaded.augmented is not None
    assert not loaded.termination_given

    # Not silently a classifier: the callback sets the rule of the model's env, as for a buffer built without one.
    model.learn(5, callback=CFDGCallback(), reset_num_timesteps=False)
    gen = loaded.augmented.generator
    assert gen.termination_env == "Hopper-v4" and gen.termination_fn is termination_rule("Hopper-v4", 11)

    # Given again, the callable is used and kept by the callback.
    loaded.set_termination(rule)
    model.learn(5, callback=CFDGCallback(), reset_num_timesteps=False)
    assert loaded.termination_given and loaded.augmented.generator.termination_fn is rule


def test_load_generator_keeps_the_termination_callable(tmp_path: Path) -> None:
    buf = make_buffer(termination=never_done)
    fill(buf, 60)
    buf.refresh()
    assert buf.save_generator(tmp_path / "gen.safetensors")
    buf.load_generator(tmp_path / "gen.safetensors")
    assert buf.augmented is not None and buf.augmented.generator.termination_fn is never_done
    syn = buf.augmented.pool_data("synthetic_online")
    buf.refresh()  # refits the loaded generator: no classifier is fitted, the rule decides
    assert buf.augmented.generator.termination_model is None
    assert len(syn) and not buf.augmented.pool_data("synthetic_online").done.any()


def test_reset_keeps_the_termination_rule_the_callback_set() -> None:
    buf = make_buffer()
    assert buf.augmented is not None
    buf.augmented.set_termination("Hopper-v4")  # what CFDGCallback does with the model's env
    fill(buf, 5)
    buf.reset()
    assert buf.augmented.generator.termination_env == "Hopper-v4"


def test_a_termination_that_is_neither_callable_nor_an_env_id_is_refused_before_training() -> None:
    with pytest.raises(CFDGBufferError, match="termination must be a callable.*got int"):
        make_buffer(termination=5)
    buf = make_buffer()
    with pytest.raises(CFDGBufferError, match="termination must be a callable.*got list"):
        buf.set_termination([1])  # type: ignore[arg-type]
    assert buf.augmented is not None and buf.augmented.generator.termination_fn is None  # unchanged


# --- C: CFDGCallback checks its arguments at construction -----------------------------------------------
@pytest.mark.parametrize("n", [-1, 0, 5, 9, 2.5, True, "100"])
def test_callback_refuses_a_fidelity_n_below_10_or_not_an_int(n: object) -> None:
    with pytest.raises(ValueError, match=r"fidelity_n must be an int >= 10 \(rows per side\), got"):
        CFDGCallback(fidelity=True, fidelity_n=n)  # type: ignore[arg-type]


def test_callback_accepts_a_fidelity_n_of_10() -> None:
    assert CFDGCallback(fidelity=True, fidelity_n=10).fidelity_n == 10
    assert CFDGCallback(fidelity=True, fidelity_n=np.int64(50)).fidelity_n == 50


def test_callback_refuses_save_freq_without_save_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="save_freq=100 saves the generator into save_path, which is None"):
        CFDGCallback(save_freq=100)
    CFDGCallback(save_freq=100, save_path=tmp_path)
    CFDGCallback(save_freq=0)  # only at the end, and only with save_path: nothing to refuse


def test_callback_refuses_fidelity_env_id_without_fidelity() -> None:
    with pytest.raises(ValueError, match="fidelity_env_id='Hopper-v4' is used only by the fidelity measurement"):
        CFDGCallback(fidelity_env_id="Hopper-v4")
    with pytest.raises(ValueError, match="fidelity_env_id must be a non-empty env id string"):
        CFDGCallback(fidelity=True, fidelity_env_id="")
    CFDGCallback(fidelity=True, fidelity_env_id="Hopper-v4")
