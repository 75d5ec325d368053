"""What a learner may assume of a generated transition (fitted models, small budgets).

Actions lie in the action space, done is the env's rule on the generated (s, a, s'), binary rewards
stay binary, and a diverged refit leaves the previous model and synthetic pools in place.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfdg_aug import AugmentedReplayBuffer, CFDGConfig, CFDGGenerator
from cfdg_aug.datasets import load_embedded
from cfdg_aug.spaces import SpaceEncoding
from cfdg_aug.termination import termination_rule
from cfdg_aug.transitions import TransitionBatch

# The behaviour filter's redraws at 4 x 2 network evaluations instead of 20 x 10: they dominated the
# sampling time of these tests (test_behaviour.py checks what the redraws do).
FAST = dict(width=128, depth=2, train_steps=600, num_sample_steps=8, sample_batch_size=2048, batch_size=256, lr=3e-4,
            redraw_steps=4, redraw_resample=2)


def _cfg(**kw: object) -> CFDGConfig:
    return CFDGConfig.small(**{**FAST, **kw})


@pytest.fixture(scope="module")
def hopper() -> TransitionBatch:
    return load_embedded().to_transition_batch()


@pytest.fixture(scope="module")
def fitted_hopper(hopper: TransitionBatch) -> CFDGGenerator:
    gen = CFDGGenerator(11, 3, _cfg(), seed=0, termination="Hopper-v4",
                        act_encoding=SpaceEncoding.box(3, -1.0, 1.0))
    gen.fit(hopper[:20_000], hopper[20_000:])
    return gen


def test_generated_actions_stay_inside_the_action_space(fitted_hopper: CFDGGenerator) -> None:
    for label in ("offline", "online"):
        s = fitted_hopper.sample(4000, label, guidance=2.0)  # strong guidance pushes past the data
        assert np.abs(s.act).max() <= 1.0
        # the bound itself is reached (the data's actions sit at +-1 often): clipped to the space, not
        # to something narrower
        assert np.isclose(np.abs(s.act), 1.0).any()


def test_tighter_action_bounds_are_honoured_where_the_data_range_is_wider(hopper: TransitionBatch) -> None:
    gen = CFDGGenerator(11, 3, _cfg(train_steps=50), seed=0,
                        act_encoding=SpaceEncoding.box(3, [-0.5, -1, -1], [0.5, 1, 1]))
    gen.fit(hopper[:5000])
    a = gen.sample(2000, "offline").act
    assert a[:, 0].min() >= -0.5 and a[:, 0].max() <= 0.5
    assert a[:, 1].max() > 0.6  # other components keep their range


def test_generated_done_is_the_env_rule_on_the_generated_transition(fitted_hopper: CFDGGenerator) -> None:
    rule = termination_rule("Hopper-v4", 11)
    assert rule is not None
    s = fitted_hopper.sample(4000, "offline", guidance=0.0)
    np.testing.assert_array_equal(s.done > 0.5, rule(s.obs, s.act, s.next_obs))


def test_generated_states_keep_the_range_of_next_states_not_of_states(fitted_hopper: CFDGGenerator,
                                                                      hopper: TransitionBatch) -> None:
    # A fall ends the episode, so falling heights appear in s' but never in s: the clip of s' must
    # use the range of s' (clipping it to the range of s would remove every terminal).
    assert hopper.next_obs[:, 0].min() < hopper.obs[:, 0].min()
    low, high = fitted_hopper.data_low, fitted_hopper.data_high
    assert low is not None and high is not None
    lay = fitted_hopper.layout
    assert low[lay.next_obs][0] == pytest.approx(hopper.next_obs[:, 0].min())
    s = fitted_hopper.sample(3000, "offline", guidance=0.0)
    assert (s.next_obs >= low[lay.next_obs] - 1e-6).all() and (s.next_obs <= high[lay.next_obs] + 1e-6).all()


def test_classifier_terminals_without_a_known_rule(hopper: TransitionBatch) -> None:
    gen = CFDGGenerator(11, 3, _cfg(train_steps=50), seed=0)  # no env: a classifier
    gen.fit(hopper[:20_000])
    assert gen.termination_model is not None
    assert gen.terminal_rates["offline"] == pytest.approx(float(hopper[:20_000].done.mean()))
    real = hopper[:20_000]
    # Its threshold labels as many real rows terminal as there are real terminals (ties aside) ...
    assert abs(int(gen.termination_model.predict(real.obs, real.act, real.next_obs).sum()) - int(real.done.sum())) <= 2
    # ... and the generated done column is its verdict on the generated (s, a, s').
    s = gen.sample(1000, "offline")
    np.testing.assert_array_equal(s.done > 0.5, gen.termination_model.predict(s.obs, s.act, s.next_obs))


def test_binary_rewards_stay_binary() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    rew = (obs[:, 0] > 1.0).astype(np.float32)  # sparse 0/1, as AntMaze
    batch = TransitionBatch.from_arrays(obs, rng.uniform(-1, 1, (n, 2)), rew, obs + 0.1, np.zeros(n))
    gen = CFDGGenerator(4, 2, _cfg(train_steps=300), seed=0)
    gen.fit(batch)
    s = gen.sample(3000, "offline")
    assert set(np.unique(s.rew)) == {0.0, 1.0}
    assert abs(s.rew.mean() - rew.mean()) < 0.08  # real rate ~0.16
    # and the 1s go with the states that earn them, not at random
    # (at random both would be ~0.16; this 300-step model gives 0.62 and 0.03)
    assert s.rew[s.obs[:, 0] > 1.3].mean() > 0.45 and s.rew[s.obs[:, 0] < 0.0].mean() < 0.08


def test_continuous_rewards_are_not_snapped(hopper: TransitionBatch, fitted_hopper: CFDGGenerator) -> None:
    assert fitted_hopper.reward_values is None
    assert len(np.unique(fitted_hopper.sample(500, "online").rew)) > 400


def _diverging(gen: CFDGGenerator) -> None:
    """Make the next fit's loss non-finite (a broken batch, an exploding step)."""
    real_loss = gen.model.loss

    def nan_loss(*args, **kwargs):  # type: ignore[no-untyped-def]
        return real_loss(*args, **kwargs) * torch.tensor(float("nan"))

    gen.model.loss = nan_loss  # type: ignore[method-assign]


def test_a_diverged_refit_restores_the_previous_generator(hopper: TransitionBatch) -> None:
    cfg = _cfg(train_steps=100, warm_start=True, warm_start_steps=50)
    gen = CFDGGenerator(11, 3, cfg, seed=0)
    gen.fit(hopper[:3000], hopper[3000:4000])
    state = gen._rng.get_state()
    before = gen.sample(300, "online").flatten()
    gen._rng.set_state(state)
    _diverging(gen)
    stats = gen.fit(hopper[:3000], hopper[3000:5000])
    assert stats.diverged and stats.previous_final_loss is not None
    assert gen.num_fits == 1
    gen._rng.set_state(state)
    np.testing.assert_array_equal(gen.sample(300, "online").flatten(), before)


def test_a_loss_far_above_the_previous_fit_counts_as_diverged(hopper: TransitionBatch) -> None:
    cfg = _cfg(train_steps=100, warm_start_steps=50, divergence_ratio=1.5)
    gen = CFDGGenerator(11, 3, cfg, seed=0)
    gen.fit(hopper[:3000])
    assert not gen.fit(hopper[:3000]).diverged and gen.num_fits == 2  # an ordinary refit is not
    gen.last_final_loss = gen.last_final_loss / 10  # as if the previous fit had ended much lower
    assert gen.fit(hopper[:3000]).diverged
    assert gen.num_fits == 2


def test_buffer_keeps_its_synthetic_pools_when_the_refit_diverges(hopper: TransitionBatch) -> None:
    cfg = _cfg(train_steps=60, warm_start=True, warm_start_steps=30,
                           synthetic_online_size=200, synthetic_offline_size=50, refresh_every=100, min_online=100)
    buf = AugmentedReplayBuffer(11, 3, config=cfg, seed=0)
    buf.add_offline(hopper[:2000])
    buf.add(hopper[2000:2100])
    first = buf.refresh()
    pools = (buf.pool_data("synthetic_online").flatten(), buf.pool_data("synthetic_offline").flatten())
    assert buf.generator is not None
    _diverging(buf.generator)
    buf.add(hopper[2100:2200])
    with pytest.warns(RuntimeWarning, match="diverged"):
        second = buf.maybe_refresh()
    assert second is not None and second.diverged and not first.diverged
    assert second.as_dict()["diverged"] == 1 and second.sample_seconds == 0.0
    np.testing.assert_array_equal(buf.pool_data("synthetic_online").flatten(), pools[0])
    np.testing.assert_array_equal(buf.pool_data("synthetic_offline").flatten(), pools[1])
    assert buf.num_refreshes == 2 and not buf.refresh_due()


def test_terminal_rate_is_matched_per_label_when_the_model_generates_more_falls() -> None:
    rng = np.random.default_rng(0)
    n = 6000
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    nxt = obs + rng.normal(0, 0.2, (n, 3)).astype(np.float32)

    def rule(o: np.ndarray, a: np.ndarray, s2: np.ndarray) -> np.ndarray:
        return s2[:, 0] > 2.0  # ~2.5% of the real rows

    done = rule(obs, None, nxt).astype(np.float32)  # type: ignore[arg-type]
    batch = TransitionBatch.from_arrays(obs, rng.uniform(-1, 1, (n, 1)), rng.normal(size=n), nxt, done)
    gen = CFDGGenerator(3, 1, _cfg(train_steps=400, terminal_oversample=8.0, next_obs_target="delta"), seed=0,
                        termination=rule)
    gen.fit(batch[:4000], batch[4000:])
    s = gen.sample(8000, "offline")
    assert len(s) == 8000
    stats = gen.last_terminal_stats
    assert stats is not None and stats["generated_rate"] > 1.5 * gen.terminal_rates["offline"]
    assert abs(s.done.mean() - gen.terminal_rates["offline"]) < 0.2 * gen.terminal_rates["offline"]
    np.testing.assert_array_equal(s.done > 0.5, rule(s.obs, s.act, s.next_obs))  # thinning keeps valid rows
    unmatched = CFDGGenerator(3, 1, _cfg(train_steps=400, terminal_oversample=8.0, next_obs_target="delta",
                                         match_terminal_rate=False), seed=0, termination=rule)
    unmatched.fit(batch[:4000], batch[4000:])
    assert unmatched.sample(8000, "offline").done.mean() > 1.5 * gen.terminal_rates["offline"]


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import cfdg_aug.generator as generator_module
    from cfdg_aug.config import ConfigError

    gen = CFDGGenerator(3, 1, _cfg(bf16_autocast="auto", sampling_precision="auto"), seed=0)
    for has_bf16, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(generator_module, "bf16_supported", lambda device, v=has_bf16: v)
        assert gen.training_precision == expected and gen.sampling_dtype == expected
    pinned = CFDGGenerator(3, 1, _cfg(bf16_autocast=False, sampling_precision="float32"), seed=0)
    assert pinned.training_precision == "float32" and pinned.sampling_dtype == "float32"
    with pytest.raises(ConfigError, match="bf16_autocast must be True, False or 'auto'"):
        _cfg(bf16_autocast="yes")


def test_terminal_rate_is_reached_by_drawing_more_when_the_model_generates_too_few_falls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that falls at a third of the real rate: the extra draws find the missing terminal rows
    (all of them valid by the rule); with the search disabled the batch keeps the model's rate."""
    import cfdg_aug.generator as generator_module

    rng = np.random.default_rng(1)
    n = 6000
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    nxt = obs + rng.normal(0, 0.2, (n, 3)).astype(np.float32)

    def rule(o: np.ndarray, a: np.ndarray, s2: np.ndarray) -> np.ndarray:
        return s2[:, 0] > 2.0

    batch = TransitionBatch.from_arrays(obs, rng.uniform(-1, 1, (n, 1)), rng.normal(size=n), nxt,
                                        rule(obs, None, nxt).astype(np.float32))  # type: ignore[arg-type]
    gen = CFDGGenerator(3, 1, _cfg(train_steps=400, next_obs_target="delta", terminal_oversample=1.0), seed=0,
                        termination=rule)
    gen.fit(batch[:4000], batch[4000:])
    gen.sample(20000, "offline")
    assert gen.last_terminal_stats is not None
    model_rate = gen.last_terminal_stats["generated_rate"]
    assert model_rate > 0
    gen.terminal_rates["offline"] = 2.5 * model_rate  # the model falls at 0.4x the rate asked for
    s = gen.sample(8000, "offline")
    stats = gen.last_terminal_stats
    assert stats is not None and stats["generated_rate"] < 0.6 * gen.terminal_rates["offline"]
    assert stats["extra_rows"] > 0
    assert abs(s.done.mean() - gen.terminal_rates["offline"]) < 0.2 * gen.terminal_rates["offline"]
    np.testing.assert_array_equal(s.done > 0.5, rule(s.obs, s.act, s.next_obs))
    monkeypatch.setattr(generator_module, "TERMINAL_SEARCH_ROWS", 0)
    assert gen.sample(8000, "offline").done.mean() < 0.6 * gen.terminal_rates["offline"]
