"""Terminals of generated transitions: the env's rule is exact on real data; the classifier learns it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfdg_aug.datasets import load_dataset
from cfdg_aug.termination import TerminationClassifier, termination_rule
from tests.conftest import SHARED_DATASETS


@pytest.mark.parametrize("name", ["hopper-medium-50k", "walker2d-medium-50k", "halfcheetah-medium-50k",
                                  "hopper-expert-50k"])
def test_env_rule_reproduces_every_real_terminal(name: str) -> None:
    path = SHARED_DATASETS / f"{name}.hdf5"
    if not path.exists():
        pytest.skip("shared datasets not present")
    b = load_dataset(str(path)).to_transition_batch()
    rule = termination_rule(name, b.obs_dim)
    assert rule is not None
    np.testing.assert_array_equal(rule(b.obs, b.act, b.next_obs), b.done > 0.5)


def test_unknown_env_or_layout_has_no_rule() -> None:
    assert termination_rule("CartPole-v1") is None
    assert termination_rule("Hopper-v4", obs_dim=12) is None  # not the default observation layout
    assert termination_rule("Hopper-v4", obs_dim=11) is not None


def test_classifier_recovers_a_rare_threshold_rule_at_the_real_rate() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    act = rng.normal(size=(n, 1)).astype(np.float32)
    nxt = obs + rng.normal(0, 0.3, (n, 3)).astype(np.float32)
    done = (nxt[:, 0] < -2.4).astype(np.float32)  # ~1% of the rows
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = TerminationClassifier(7)
    clf.fit(obs, act, nxt, done, generator=g)
    pred = clf.predict(obs, act, nxt)
    assert abs(pred.mean() - done.mean()) < 0.2 * done.mean()
    recall = pred[done > 0.5].mean()
    assert recall > 0.8
