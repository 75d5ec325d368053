from __future__ import annotations

import dataclasses

import pytest

from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.diffusion.edm import num_evaluations


def test_profiles_are_valid_and_differ_where_documented() -> None:
    paper, small = CFDGConfig.paper(), CFDGConfig.small()
    assert (paper.width, paper.depth, paper.num_sample_steps, paper.train_steps) == (1024, 6, 128, 100_000)
    assert (paper.sigma_min, paper.sigma_max, paper.rho, paper.p_mean, paper.p_std) == (0.002, 80.0, 7.0, -1.2, 1.2)
    assert (paper.ratio_offline, paper.ratio_online, paper.ratio_synthetic) == (1.0, 1.0, 1.0)
    assert paper.synthetic_online_fraction == 0.8 and paper.refresh_every == 100_000
    assert small.width < paper.width and small.num_sample_steps < paper.num_sample_steps


def test_small_profile_samples_with_a_few_step_solver() -> None:
    """The small profile's sampler (DPM-Solver++(2M), chosen in benchmarks/bench_sampler.py) costs
    under a sixth of the network evaluations of the 32-step Heun it replaced; Heun stays selectable."""
    small = CFDGConfig.small()
    assert num_evaluations(small.sampler, small.num_sample_steps) * 6 <= num_evaluations("heun", 32)
    assert CFDGConfig.small(sampler="heun", num_sample_steps=32).sampler == "heun"


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFDGConfig().width = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 0), ("depth", -1), ("width", 2.5), ("p_uncond", 1.0), ("p_uncond", -0.1), ("guidance", -1.0),
        ("guidance", "strong"), ("guidance", float("nan")), ("sigma_min", 0.0), ("augmentation", "synther"),
        ("label_injection", "film"), ("ema_decay", 1.0), ("synthetic_online_fraction", 1.5), ("lr", 0.0),
        ("refresh_every", 0), ("batch_size", True), ("ratio_online", -1.0), ("fourier_features", 15),
    ],
)
def test_bad_field_raises_error_naming_it(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        CFDGConfig(**{field: value})


def test_ratios_must_sum_to_something_positive() -> None:
    with pytest.raises(ConfigError, match="ratio"):
        CFDGConfig(ratio_offline=0.0, ratio_online=0.0, ratio_synthetic=0.0)


def test_sigma_min_below_sigma_max() -> None:
    with pytest.raises(ConfigError, match="sigma_min"):
        CFDGConfig(sigma_min=100.0)


def test_json_round_trip_and_unknown_fields() -> None:
    cfg = CFDGConfig.small(guidance="auto", guidance_candidates=(0.0, 2.0))
    assert CFDGConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="widht"):
        CFDGConfig.from_dict({"widht": 3})


def test_replace_validates() -> None:
    with pytest.raises(ConfigError, match="depth"):
        CFDGConfig().replace(depth=0)


@pytest.mark.parametrize("settings, field", [
    (dict(warm_start_steps=100), "warm_start_steps"),
    (dict(warm_start_lr=1e-3), "warm_start_lr"),
    (dict(next_obs_target="delta", dynamics_steps=100), "dynamics_steps"),
    (dict(behaviour_quantile=None, behaviour_steps=100), "behaviour_steps"),
    (dict(done_threshold=0.3), "done_threshold"),
    (dict(behaviour_quantile=None, behaviour_score="log_prob"), "behaviour_score"),
])
def test_a_setting_whose_parent_is_off_is_refused_not_ignored(settings: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}=.* applies only with"):
        CFDGConfig(**settings)
    CFDGConfig(**{k: v for k, v in settings.items() if k != field})  # without it, the rest is accepted


def test_the_same_settings_are_accepted_with_their_parent_on() -> None:
    settings = dict(warm_start=True, warm_start_steps=100, warm_start_lr=1e-3, dynamics_steps=100, behaviour_steps=100,
                    termination="column", done_threshold=0.3, behaviour_redraws=2)
    cfg = CFDGConfig(**settings)
    assert {k: getattr(cfg, k) for k in settings} == settings  # kept as given, none dropped


def test_the_small_profile_redraws_rejected_rows_and_drops_its_redraws_with_the_filter() -> None:
    assert CFDGConfig.small().behaviour_redraws == 3 and CFDGConfig().behaviour_redraws == 0  # paper: not measured
    assert CFDGConfig.small(behaviour_quantile=None).behaviour_redraws == 0
    with pytest.raises(ConfigError, match="behaviour_redraws=3 applies only with a behaviour filter"):
        CFDGConfig.small(behaviour_quantile=None, behaviour_redraws=3)  # set by the user: refused


@pytest.mark.parametrize("lr", [0, -1e-3])
def test_a_refit_learning_rate_that_is_not_positive_is_refused(lr: float) -> None:
    with pytest.raises(ConfigError, match="warm_start_lr must be > 0"):
        CFDGConfig.small(warm_start_lr=lr)


def test_turning_off_the_small_profiles_warm_start_drops_its_refit_length() -> None:
    assert CFDGConfig.small(warm_start=False).warm_start_steps is None
    with pytest.raises(ConfigError, match="warm_start_steps"):
        CFDGConfig.small(warm_start=False, warm_start_steps=500)  # set by the user: refused


def test_a_saved_config_with_a_setting_that_had_no_effect_loads_without_it() -> None:
    """Versions before the refusal accepted them (old runs' small profile saved dynamics_steps with a
    diffused next state): loading keeps what the file did, which ignored them."""
    saved = CFDGConfig.small(next_obs_target="delta").to_dict() | {"dynamics_steps": 5000, "done_threshold": 0.3}
    loaded = CFDGConfig.from_saved(saved)
    assert loaded.dynamics_steps is None and loaded.done_threshold == 0.5 and loaded.next_obs_target == "delta"
    with pytest.raises(ConfigError, match="dynamics_steps"):
        CFDGConfig.from_dict(saved)
