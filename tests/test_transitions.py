from __future__ import annotations

import numpy as np
import pytest

from cfdg_aug.normalizer import Normalizer
from cfdg_aug.transitions import TransitionBatch, TransitionError, TransitionLayout


def _arrays(n: int = 5, obs_dim: int = 3, act_dim: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return dict(
        obs=rng.normal(size=(n, obs_dim)), act=rng.normal(size=(n, act_dim)), rew=rng.normal(size=n),
        next_obs=rng.normal(size=(n, obs_dim)), done=rng.random(n) < 0.3,
    )


def test_flatten_unflatten_round_trip() -> None:
    b = TransitionBatch.from_arrays(**_arrays())
    flat = b.flatten()
    assert flat.shape == (5, 2 * 3 + 2 + 2) and flat.dtype == np.float32
    back = TransitionLayout(3, 2).unflatten(flat)
    for k in ("obs", "act", "rew", "next_obs", "done"):
        np.testing.assert_array_equal(getattr(back, k), getattr(b, k))


def test_single_transition_becomes_batch_of_one() -> None:
    b = TransitionBatch.from_arrays(np.zeros(3), np.zeros(2), 1.5, np.ones(3), True)
    assert len(b) == 1 and b.rew[0] == 1.5 and b.done[0] == 1.0


def test_d4rl_names_accepted() -> None:
    a = _arrays()
    b = TransitionBatch.validated({"observations": a["obs"], "actions": a["act"], "rewards": a["rew"],
                                   "next_observations": a["next_obs"], "terminals": a["done"],
                                   "timeouts": np.zeros(5, bool)})
    assert len(b) == 5 and b.timeout is not None


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        ("rew", lambda a: a.__setitem__("rew", np.array([0, np.nan, 0, 0, 0.0]))),
        ("next_obs", lambda a: a["next_obs"].__setitem__((2, 1), np.inf)),
        ("act", lambda a: a.__setitem__("act", np.zeros((5, 4)))),
        ("next_obs", lambda a: a.__setitem__("next_obs", np.zeros((5, 2)))),
        ("rew", lambda a: a.__setitem__("rew", np.zeros(4))),
        ("obs", lambda a: a.__setitem__("obs", np.array([["a", "b", "c"]] * 5))),
        ("done", lambda a: a.__setitem__("done", np.full(5, 0.5))),
        ("act", lambda a: a.__setitem__("act", np.zeros((5, 2), dtype=bool))),
    ],
)
def test_bad_input_names_the_field(field: str, mutate) -> None:  # type: ignore[no-untyped-def]
    a = _arrays()
    mutate(a)
    with pytest.raises(TransitionError, match=rf"(?<!next_)\b{field}\b"):  # "obs" must not match "next_obs"
        TransitionBatch.from_arrays(**a, obs_dim=3, act_dim=2)


def test_missing_field_is_named() -> None:
    a = _arrays()
    del a["next_obs"]
    with pytest.raises(TransitionError, match="next_obs"):
        TransitionBatch.validated(a)


def test_normalizer_handles_constant_dimensions() -> None:
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    x[:, 2] = 7.0
    norm = Normalizer.fit(x)
    z = norm.normalize(x)
    assert np.all(np.isfinite(z)) and np.allclose(z[:, 2], 0.0)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(norm.unnormalize(z), x, atol=1e-5)
