"""The behaviour filter: generated actions must be ones the data's policies would take in the
generated state (cfdg_aug.behaviour, CFDGConfig.behaviour_quantile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cfdg_aug.behaviour import BehaviourModel
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.generator import STAGE_FIT_BEHAVIOUR, CFDGGenerator
from cfdg_aug.spaces import DiscreteSegment, SpaceEncoding
from cfdg_aug.transitions import TransitionBatch

OBS, ACT = 4, 2


def _policy_batch(n: int, seed: int, noise: float = 0.1, sign: float = 1.0) -> TransitionBatch:
    """a = sign * tanh(W s) + noise: actions are a sharp function of the state, as a policy's are."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(123).normal(size=(OBS, ACT))
    obs = rng.normal(size=(n, OBS))
    act = np.clip(sign * np.tanh(obs @ w) + rng.normal(0, noise, (n, ACT)), -1, 1)
    return TransitionBatch.from_arrays(obs, act, rng.normal(size=n), obs + 0.1 * rng.normal(size=(n, OBS)),
                                       np.zeros(n))


def _tiny(**kw: object) -> CFDGConfig:
    base: dict[str, object] = dict(width=64, depth=2, train_steps=300, num_sample_steps=8, batch_size=256,
                                   lr=1e-3, behaviour_steps=600, redraw_steps=4, redraw_resample=2)  # cheap redraws
    base.update(kw)
    if base.get("behaviour_quantile", 0.2) is None:  # no filter: no behaviour model to give steps to
        del base["behaviour_steps"]
    return CFDGConfig.small(**base)


def test_behaviour_model_scores_a_states_own_action_above_another_states_action() -> None:
    data = _policy_batch(3000, 0)
    model = BehaviourModel(OBS, ACT, width=64)
    model.fit(data.obs, data.act, np.zeros(len(data), np.int64), steps=800, generator=torch.Generator().manual_seed(0))
    own = model.log_prob(data.obs[:500], data.act[:500], 0)
    swapped = model.log_prob(data.obs[:500], data.act[500:1000], 0)
    assert own.shape == (500,)
    assert np.median(own) > np.median(swapped) + 2.0


def test_behaviour_model_conditions_on_the_label_and_mixes_them_for_none() -> None:
    off, on = _policy_batch(2000, 1, sign=1.0), _policy_batch(2000, 2, sign=-1.0)
    obs, act = np.concatenate([off.obs, on.obs]), np.concatenate([off.act, on.act])
    labels = np.repeat(np.array([0, 1]), 2000)
    model = BehaviourModel(OBS, ACT, width=64)
    model.fit(obs, act, labels, steps=800, generator=torch.Generator().manual_seed(0))
    # an online action is likely under the online policy, not the offline one; the mixture accepts both
    assert np.median(model.log_prob(on.obs, on.act, 1)) > np.median(model.log_prob(on.obs, on.act, 0)) + 2.0
    mix = model.log_prob(on.obs, on.act, None)
    assert np.median(mix) > np.median(model.log_prob(on.obs, on.act, 0)) + 2.0


def _score(model: BehaviourModel, kind: str, obs: np.ndarray, act: np.ndarray, label: int | None) -> np.ndarray:
    """The filter's statistic, from the model's public methods (higher = more plausible)."""
    return model.log_prob(obs, act, label) if kind == "log_prob" else -model.mahalanobis(obs, act, label)


@pytest.mark.parametrize("kind", ["mahalanobis", "log_prob"])
def test_generated_rows_pass_the_behaviour_filter_and_the_batch_keeps_its_size(kind: str) -> None:
    off, on = _policy_batch(2000, 3), _policy_batch(2000, 4)
    gen = CFDGGenerator(OBS, ACT, _tiny(behaviour_score=kind), seed=0)
    stages: list[str] = []
    gen.fit(off, on, progress=lambda stage, done, total: stages.append(stage))
    assert STAGE_FIT_BEHAVIOUR in stages
    assert gen.behaviour_model is not None and set(gen.behaviour_thresholds) == {"offline", "online", "none"}
    for label, lab in (("online", 1), ("offline", 0), (None, None)):
        batch = gen.sample(500, label)
        assert len(batch) == 500
        stats = gen.last_behaviour_stats
        assert stats is not None
        # This tiny model passes ~20-30% of its draws (at most 4x n drawn): most rows must still pass on
        # their own rather than fill the batch as the best-scoring rejected ones (69-75 of 500 here).
        assert stats["filled_rows"] <= 0.25 * 500
        lp = _score(gen.behaviour_model, kind, batch.obs, batch.act, lab)
        key = label or "none"
        passed = lp >= gen.behaviour_thresholds[key]
        # every row passed, except best-scoring rejected ones that had to fill a draw
        assert int((~passed).sum()) <= stats["filled_rows"]
    # the real data passes at about 1 - quantile
    real_pass = np.mean(_score(gen.behaviour_model, kind, on.obs, on.act, 1) >= gen.behaviour_thresholds["online"])
    assert real_pass == pytest.approx(1 - gen.config.behaviour_quantile, abs=0.02)


def test_filtering_moves_generated_actions_toward_the_real_conditional() -> None:
    off, on = _policy_batch(2000, 5), _policy_batch(2000, 6)
    filtered = CFDGGenerator(OBS, ACT, _tiny(), seed=0)
    filtered.fit(off, on)
    plain = CFDGGenerator(OBS, ACT, _tiny(behaviour_quantile=None), seed=0)
    plain.fit(off, on)
    w = np.random.default_rng(123).normal(size=(OBS, ACT))

    def policy_error(b: TransitionBatch) -> float:  # distance of a from the true policy's action at s
        return float(np.median(np.abs(b.act - np.tanh(b.obs @ w)).sum(1)))

    unfiltered = plain.sample(1000, "online")
    assert plain.behaviour_model is None and plain.last_behaviour_stats is None  # nothing was filtered
    assert policy_error(filtered.sample(1000, "online")) < policy_error(unfiltered)
    assert filtered.last_behaviour_stats is not None


def test_mahalanobis_distance_is_zero_at_the_mean_and_counts_standard_deviations() -> None:
    data = _policy_batch(3000, 10)
    model = BehaviourModel(OBS, ACT, width=64)
    model.fit(data.obs, data.act, np.arange(len(data)) % 2, steps=800, generator=torch.Generator().manual_seed(0))
    obs = data.obs[:200]
    with torch.no_grad():
        mean, log_std = model._dist(torch.from_numpy(obs.astype(np.float32)), torch.zeros(200, dtype=torch.int64))
    at_mean = (mean * model.act_std + model.act_mean).numpy()
    one_sd = at_mean + (torch.exp(log_std) * model.act_std).numpy() * np.array([1.0, 0.0])
    np.testing.assert_allclose(model.mahalanobis(obs, at_mean, 0), 0.0, atol=1e-6)
    np.testing.assert_allclose(model.mahalanobis(obs, one_sd, 0), 1.0, rtol=1e-4)
    # with two labels, None is the distance to the nearer policy
    both = model.mahalanobis(obs, one_sd, None)
    np.testing.assert_allclose(both, np.minimum(model.mahalanobis(obs, one_sd, 0), model.mahalanobis(obs, one_sd, 1)))


def _heteroscedastic(n: int, seed: int) -> TransitionBatch:
    """A policy whose noise depends on the state: sd 0.5 where s_0 > 0, 0.05 elsewhere."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS))
    sd = np.where(obs[:, :1] > 0, 0.5, 0.05)
    act = 0.3 * np.tanh(obs[:, 1:1 + ACT]) + sd * rng.normal(size=(n, ACT))
    return TransitionBatch.from_arrays(obs, act, rng.normal(size=n), obs, np.zeros(n))


@pytest.mark.parametrize("kind, keeps_states", [("mahalanobis", True), ("log_prob", False)])
def test_the_mahalanobis_filter_keeps_the_state_distribution_that_a_likelihood_threshold_skews(
        kind: str, keeps_states: bool) -> None:
    """Rows drawn from the data's own process must pass as the real rows do, whatever their state.
    A log-likelihood threshold rejects the broad-policy states (its -log sigma(s) term), so the kept
    rows hold far fewer of them; the Mahalanobis distance has no such term."""
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=20, behaviour_steps=1500, behaviour_score=kind), seed=0)
    gen.fit(_heteroscedastic(4000, 11), _heteroscedastic(4000, 12))
    fresh = iter(range(100, 200))
    kept = gen._behaviour_filtered(lambda m: _heteroscedastic(m, next(fresh)), 3000, "online")
    broad = float(np.mean(kept.obs[:, 0] > 0))  # 0.5 in the real data
    if keeps_states:
        assert broad == pytest.approx(0.5, abs=0.05)
    else:
        # The real rows' 20% quantile lies among the broad states' rows (their log-likelihoods sit ~4.6
        # lower): it rejects ~40% of those and none of the narrow ones, leaving 0.3 / 0.8 = 0.375.
        assert broad < 0.42


def test_thresholds_can_be_reset_for_another_statistic_and_quantile_without_refitting() -> None:
    off, on = _policy_batch(1500, 13), _policy_batch(1500, 14)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=20, behaviour_steps=300), seed=0)
    gen.fit(off, on)
    model, before = gen.behaviour_model, dict(gen.behaviour_thresholds)
    both = TransitionBatch.concat([off, on])
    labels = np.repeat(np.array([0, 1]), 1500)
    gen.config = gen.config.replace(behaviour_score="log_prob", behaviour_quantile=0.05)
    gen.set_behaviour_thresholds(both, labels)
    assert gen.behaviour_model is model and gen.behaviour_thresholds != before
    assert np.mean(model.log_prob(on.obs, on.act, 1) >= gen.behaviour_thresholds["online"]) == pytest.approx(0.95, abs=0.01)
    gen.config = gen.config.replace(behaviour_quantile=None, behaviour_steps=None, behaviour_score="mahalanobis",
                                    behaviour_redraws=0)
    gen.sample(100, "online")
    assert gen.last_behaviour_stats is None


def test_discrete_actions_are_not_filtered() -> None:
    gen = CFDGGenerator(OBS, 3, _tiny(train_steps=30), act_encoding=SpaceEncoding((DiscreteSegment(3),)), seed=0)
    assert not gen.uses_behaviour_filter
    b = _policy_batch(600, 30)
    act = np.eye(3)[np.random.default_rng(31).integers(0, 3, len(b))]  # one-hot, as the encoding stores them
    gen.fit(TransitionBatch.from_arrays(b.obs, act, b.rew, b.next_obs, b.done))
    assert gen.behaviour_model is None
    assert len(gen.sample(50, "offline")) == 50 and gen.last_behaviour_stats is None


@pytest.mark.parametrize("kind", ["mahalanobis", "log_prob"])
def test_save_load_keeps_the_behaviour_filter(tmp_path: Path, kind: str) -> None:
    data = _policy_batch(600, 7)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=40, behaviour_steps=50, behaviour_score=kind), seed=1)
    gen.fit(data)
    path = tmp_path / "gen.safetensors"
    gen.save(path)
    loaded = CFDGGenerator.load(path)
    assert loaded.behaviour_thresholds == gen.behaviour_thresholds
    assert loaded.config.behaviour_score == kind
    np.testing.assert_array_equal(gen.sample(60, "online").flatten(), loaded.sample(60, "online").flatten())


def test_a_generator_saved_before_behaviour_score_loads_with_its_log_likelihood_filter() -> None:
    """Its thresholds are log-likelihoods: loading it with today's default would misread them."""
    saved = CFDGConfig.small(behaviour_score="log_prob").to_dict()
    del saved["behaviour_score"]
    assert CFDGConfig.from_saved(saved).behaviour_score == "log_prob"
    assert CFDGConfig.from_dict(saved).behaviour_score == "mahalanobis"  # a user's dict: today's default


def test_an_unknown_behaviour_score_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="behaviour_score.*mahalanobis.*log_prob"):
        CFDGConfig.small(behaviour_score="likelihood")


@pytest.mark.parametrize("value", [-0.1, 0.6, float("nan")])
def test_behaviour_quantile_outside_0_to_half_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="behaviour_quantile"):
        CFDGConfig.small(behaviour_quantile=value)


def test_refresh_reports_the_share_of_generated_rows_that_passed_the_filter() -> None:
    from cfdg_aug.buffer import AugmentedReplayBuffer

    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=1000,
                                config=_tiny(train_steps=60, behaviour_steps=100, synthetic_online_size=200,
                                             synthetic_offline_size=50), seed=0)
    buf.add_offline(_policy_batch(800, 8))
    buf.add(_policy_batch(400, 9))
    stats = buf.refresh()
    online = buf.generator.last_behaviour_stats  # the online pool is sampled last: its rate is the one reported
    assert online is not None
    assert stats.behaviour_accept_rate == pytest.approx(online["accept_rate"])
    assert stats.as_dict()["behaviour_accept_rate"] == stats.behaviour_accept_rate
    off = AugmentedReplayBuffer(OBS, ACT, online_capacity=1000,
                                config=_tiny(train_steps=60, behaviour_quantile=None, synthetic_online_size=200,
                                             synthetic_offline_size=50), seed=0)
    off.add_offline(_policy_batch(800, 8))
    off.add(_policy_batch(400, 9))
    assert off.refresh().behaviour_accept_rate is None


def test_the_unlabelled_distance_ignores_a_label_without_data() -> None:
    """Fitted on offline rows only, the online head is untrained: it must not let actions pass."""
    data = _policy_batch(2000, 15)
    model = BehaviourModel(OBS, ACT, width=64)
    model.fit(data.obs, data.act, np.zeros(len(data), np.int64), steps=400, generator=torch.Generator().manual_seed(0))
    off_policy = np.random.default_rng(16).uniform(-1, 1, size=(500, ACT))
    np.testing.assert_array_equal(model.mahalanobis(data.obs[:500], off_policy, None),
                                  model.mahalanobis(data.obs[:500], off_policy, 0))


def test_given_observations_are_kept_and_the_rest_of_the_row_drawn_for_them() -> None:
    off, on = _policy_batch(1500, 21), _policy_batch(1500, 22)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=200, redraw_steps=6, redraw_resample=3), seed=0)
    gen.fit(off, on)
    rows = gen.postprocess(gen.sample_normalized(300, "online", given_obs=on.obs[:300], batch_size=64))
    np.testing.assert_allclose(rows.obs, on.obs[:300], atol=1e-5)  # in order, across sampler chunks
    assert not np.allclose(rows.act, on.act[:300], atol=1e-3)  # drawn, not copied
    # drawn for these states: nearer the policy's action at the given state than at another state
    w = np.random.default_rng(123).normal(size=(OBS, ACT))
    err = np.abs(rows.act - np.tanh(on.obs[:300] @ w)).sum(1)
    err_elsewhere = np.abs(rows.act - np.tanh(on.obs[300:600] @ w)).sum(1)
    assert np.median(err) < 0.6 * np.median(err_elsewhere)
    with pytest.raises(ValueError, match=r"given_obs must have shape \(300, 4\), got \(299, 4\)"):
        gen.sample_normalized(300, "online", given_obs=on.obs[:299])


def test_redrawing_keeps_the_states_that_rejection_sampling_narrows() -> None:
    """Rows from a process whose actions are wrong in half of the states (s_0 > 0): rejection sampling
    keeps almost only the other half; redrawing the action for the rejected state keeps both, when
    the redraw (here the data's own policy) draws passing actions."""
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=20, behaviour_steps=1500, behaviour_redraws=2), seed=0)
    gen.fit(_policy_batch(3000, 23), _policy_batch(3000, 24))
    fresh = iter(range(100, 200))

    def wrong_where_positive(m: int) -> TransitionBatch:
        b = _policy_batch(m, next(fresh))
        bad = b.obs[:, 0] > 0
        act = b.act.copy()
        act[bad] = -act[bad]  # the opposite action: far outside the policy there
        return TransitionBatch.from_arrays(b.obs, act, b.rew, b.next_obs, b.done)

    def policy_actions(obs: np.ndarray) -> TransitionBatch:
        b = _policy_batch(len(obs), next(fresh))
        w = np.random.default_rng(123).normal(size=(OBS, ACT))
        return TransitionBatch.from_arrays(obs, np.clip(np.tanh(obs @ w), -1, 1), b.rew, obs, b.done)

    plain = gen._behaviour_filtered(wrong_where_positive, 2000, "online")
    redrawn = gen._behaviour_filtered(wrong_where_positive, 2000, "online", policy_actions)
    stats = gen.last_behaviour_stats
    assert stats is not None and stats["redrawn_rows"] > 0 and stats["filled_rows"] == 0
    assert len(plain) == len(redrawn) == 2000
    assert np.mean(plain.obs[:, 0] > 0) < 0.25
    assert np.mean(redrawn.obs[:, 0] > 0) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("kw, match", [
    (dict(behaviour_quantile=None, behaviour_redraws=2), "behaviour_redraws=2 applies only with a behaviour filter"),
    (dict(redraw_steps=0), "redraw_steps must be >= 1, got 0"),
    (dict(behaviour_redraws=-1), "behaviour_redraws must be >= 0, got -1"),
    (dict(behaviour_redraws=1, redraw_resample=0), "redraw_resample must be >= 1, got 0"),
    (dict(redraw_resample_sigma_max=0.0), "redraw_resample_sigma_max must be > 0, got 0.0"),
    (dict(redraw_resample_sigma_max="1"), "redraw_resample_sigma_max must be a finite number, got '1'"),
    (dict(redraw_in_terminal_search=1), "redraw_in_terminal_search must be True or False, got 1"),
])
def test_redraws_without_a_filter_and_redraw_settings_out_of_range_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CFDGConfig.small(**kw)


def test_a_generator_saved_before_behaviour_redraws_loads_without_redraws() -> None:
    saved = CFDGConfig.small().to_dict()
    for name in ("behaviour_redraws", "redraw_steps", "redraw_resample", "redraw_resample_sigma_max"):
        del saved[name]
    config = CFDGConfig.from_saved(saved)
    assert (config.behaviour_redraws, config.redraw_steps, config.redraw_resample) == (0, 20, 10)
    assert config.redraw_resample_sigma_max is None


def test_a_generator_saved_before_redraws_resampled_only_low_noise_levels_resamples_every_level() -> None:
    saved = CFDGConfig.small().to_dict()
    assert saved["redraw_resample_sigma_max"] == 3.0
    del saved["redraw_resample_sigma_max"]
    config = CFDGConfig.from_saved(saved)
    assert config.behaviour_redraws == 3 and config.redraw_resample_sigma_max is None


def test_the_terminal_search_filters_the_rows_it_scans_without_redrawing_them() -> None:
    """The search for missing terminals scans up to 2n rows and drops nearly all: it filters them by
    rejection alone (``redraw_in_terminal_search=False``), while the batch it completes, and every
    scanned row with ``redraw_in_terminal_search=True`` (runs made before it), get the redraws."""
    off, on = _policy_batch(1500, 25), _policy_batch(1500, 26)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=100, behaviour_redraws=2), seed=0)
    gen.fit(off, on)
    gen.set_termination(lambda o, a, s2: s2[:, 0] > 1.5)  # ~7% of rows fall
    gen.terminal_rates["online"] = 0.5  # a rate the model's rows do not reach: the search runs
    redrawn: list[bool] = []  # per sample_normalized call: was it a redraw (states given)?
    sample_normalized, match = gen.sample_normalized, gen._match_terminal_rate
    searched: list[list[bool]] = []  # the calls made by each search

    def recorded(m: int, label: object = "online", **kw: object) -> np.ndarray:
        redrawn.append(kw.get("given_obs") is not None)
        return sample_normalized(m, label, **kw)  # type: ignore[arg-type]

    def spied(batch: TransitionBatch, rate: float, draw: object, search: object) -> TransitionBatch:
        def scan(m: int) -> TransitionBatch:
            start = len(redrawn)
            rows = search(m)  # type: ignore[operator]
            searched.append(redrawn[start:])
            return rows

        return match(batch, rate, draw, scan)  # type: ignore[arg-type]

    gen.sample_normalized, gen._match_terminal_rate = recorded, spied  # type: ignore[method-assign]
    for in_search in (False, True):
        gen.config = gen.config.replace(redraw_in_terminal_search=in_search)
        redrawn.clear()
        searched.clear()
        batch = gen.sample(300, "online")
        stats = gen.last_terminal_stats
        assert stats is not None and stats["extra_rows"] > 0 and searched
        assert batch.done.mean() > stats["generated_rate"]  # the search found terminals
        assert any(redrawn[:len(redrawn) - sum(map(len, searched))])  # the batch itself was redrawn
        assert any(any(calls) for calls in searched) == in_search
    assert CFDGConfig.small().redraw_in_terminal_search is False


def test_sample_redraws_rejected_rows_for_their_states_and_counts_them() -> None:
    off, on = _policy_batch(1500, 25), _policy_batch(1500, 26)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=100, behaviour_steps=600, behaviour_redraws=2, redraw_steps=6,
                                        redraw_resample=3), seed=0)
    gen.fit(off, on)
    calls: list[tuple[np.ndarray | None, TransitionBatch]] = []  # (given states, rows) of every draw
    sample_normalized = gen.sample_normalized

    def recorded(m: int, label: object = "online", **kw: object) -> np.ndarray:
        out = sample_normalized(m, label, **kw)  # type: ignore[arg-type]
        calls.append((kw.get("given_obs"), gen.postprocess(out)))  # type: ignore[arg-type]
        return out

    gen.sample_normalized = recorded  # type: ignore[method-assign]
    batch = gen.sample(400, "online")
    stats = gen.last_behaviour_stats
    assert stats is not None and len(batch) == 400
    assert stats["redrawn_rows"] > 0 and stats["redrawn_accepted_rows"] > 0

    def rejected(rows: TransitionBatch) -> np.ndarray:
        return _score(gen.behaviour_model, "mahalanobis", rows.obs, rows.act, 1) < gen.behaviour_thresholds["online"]

    # the first draw is n rows; each redraw gets exactly the states the draw before it rejected, in order
    (first_given, previous), *rest = calls
    assert first_given is None and len(previous) == 400
    redraws = [(given, rows) for given, rows in rest if given is not None]
    assert 1 <= len(redraws) <= 2 and sum(len(g) for g, _ in redraws) == stats["redrawn_rows"]
    for given, rows in redraws:
        np.testing.assert_array_equal(given, previous.obs[rejected(previous)])
        np.testing.assert_allclose(rows.obs, given, atol=1e-5)
        previous = rows
    assert stats["redrawn_accepted_rows"] == sum(int((~rejected(r)).sum()) for _, r in redraws)
    passed = _score(gen.behaviour_model, "mahalanobis", batch.obs, batch.act, 1) >= gen.behaviour_thresholds["online"]
    assert int((~passed).sum()) <= stats["filled_rows"]
