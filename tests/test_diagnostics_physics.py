"""Physics error and classifier AUC on real MuJoCo transitions (the repo's embedded hopper set),
and how both degrade on corrupted transitions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

from cfdg_aug.diagnostics import classifier_auc, noise_floor, physics_error  # noqa: E402
from cfdg_aug.transitions import TransitionBatch  # noqa: E402

ENV = "Hopper-v4"


@pytest.fixture(scope="module")
def halves() -> tuple[TransitionBatch, TransitionBatch]:
    """Two disjoint random sets of 2,000 real transitions."""
    from cfdg_aug.datasets import load_embedded

    b = load_embedded().to_transition_batch()
    perm = np.random.default_rng(0).permutation(len(b))
    return b[perm[:2000]], b[perm[2000:4000]]


@pytest.fixture(scope="module")
def floor(halves: tuple[TransitionBatch, TransitionBatch]) -> dict[str, float]:
    return noise_floor(halves[0], ENV, max_transitions=400)


def _with_next_obs(b: TransitionBatch, next_obs: np.ndarray) -> TransitionBatch:
    return TransitionBatch(b.obs, b.act, b.rew, next_obs.astype(np.float32), b.done)


def test_real_transitions_resimulate_below_1e6_and_within_the_floor(
    halves: tuple[TransitionBatch, TransitionBatch], floor: dict[str, float],
) -> None:
    assert floor["next_state"] < 1e-6 and floor["reward"] < 1e-6
    rep = physics_error(halves[1], ENV, max_transitions=400, floor=floor)
    assert rep["n_checked"] > 300  # a few have a velocity at the +-10 clip and are skipped
    assert rep["next_state_median"] < 1e-6 and rep["next_state_p90"] < 1e-6
    assert rep["reward_median"] < 1e-6 and rep["reward_p90"] < 1e-6
    assert rep["terminal_mismatch_rate"] == 0.0
    assert rep["frac_within_floor"] > 0.95


def test_real_vs_real_classifier_auc_is_near_chance(halves: tuple[TransitionBatch, TransitionBatch]) -> None:
    assert abs(classifier_auc(halves[0].flatten(), halves[1].flatten(), seed=0)["auc"] - 0.5) < 0.1


def test_noisy_next_states_fail_both_checks(
    halves: tuple[TransitionBatch, TransitionBatch], floor: dict[str, float],
) -> None:
    a, b = halves
    rng = np.random.default_rng(1)
    sd = a.next_obs.std(axis=0)
    slightly = _with_next_obs(b, b.next_obs + 0.01 * sd * rng.normal(size=b.next_obs.shape))
    rep = physics_error(slightly, ENV, max_transitions=400, floor=floor)
    assert rep["next_state_median"] > 1e-4
    assert rep["frac_within_floor"] < 0.05
    # Noise the classifier can see (0.5 std of every next-state dimension).
    clearly = _with_next_obs(b, b.next_obs + 0.5 * sd * rng.normal(size=b.next_obs.shape))
    assert classifier_auc(a.flatten(), clearly.flatten(), seed=0)["auc"] > 0.75


def test_shuffled_next_states_fail_both_checks(
    halves: tuple[TransitionBatch, TransitionBatch], floor: dict[str, float],
) -> None:
    a, b = halves
    shuffled = _with_next_obs(b, b.next_obs[np.random.default_rng(2).permutation(len(b))])
    rep = physics_error(shuffled, ENV, max_transitions=400, floor=floor)
    assert rep["next_state_median"] > 0.1
    assert rep["frac_within_floor"] == 0.0
    assert classifier_auc(a.flatten(), shuffled.flatten(), seed=0)["auc"] > 0.9


def test_fidelity_report_adds_physics_when_given_an_env(halves: tuple[TransitionBatch, TransitionBatch]) -> None:
    from cfdg_aug import CFDGConfig, CFDGGenerator
    from cfdg_aug.diagnostics import fidelity_report

    cfg = CFDGConfig.small(width=32, depth=1, train_steps=30, num_sample_steps=4, redraw_steps=4, redraw_resample=2)
    gen = CFDGGenerator(11, 3, cfg, seed=0)
    gen.fit(halves[0][:1000], halves[1][:1000])
    rep = fidelity_report(gen, halves[0][1000:], halves[1][1000:], env_id=ENV, n=150, physics_n=100,
                          per_dimension=False)
    assert rep["physics_skipped"] is None and rep["noise_floor"]["next_state"] < 1e-6
    ph = rep["online"]["physics"]
    # 30 training steps: generated physics is far off the floor, and the report says so.
    assert ph["next_state_median"] > 1e-2 and ph["frac_within_floor"] < 0.05
    no_env = fidelity_report(gen, halves[0][1000:], halves[1][1000:], n=150, per_dimension=False)
    assert no_env["online"]["physics"] is None and no_env["physics_skipped"] == "no env_id given"
