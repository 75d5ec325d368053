"""SpaceEncoding: every generated row decodes to a valid element of its space."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cfdg_aug.spaces import BoxSegment, DiscreteSegment, MultiBinarySegment, SpaceEncoding, SpaceError


def _mixed() -> SpaceEncoding:
    return SpaceEncoding((BoxSegment(2, (-1.0, -2.0), (1.0, math.inf)), DiscreteSegment(3, start=1),
                          MultiBinarySegment(2)))


def test_encode_decode_round_trips_raw_values() -> None:
    enc = _mixed()
    raw = np.array([[0.5, 7.0, 2, 1, 0], [-1.0, -2.0, 3, 0, 1]], dtype=np.float32)
    e = enc.encode(raw)
    assert e.shape == (2, enc.dim) == (2, 7) and enc.raw_dim == 5
    np.testing.assert_array_equal(e[:, 2:5], [[0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(enc.decode(e), raw)


def test_project_maps_any_row_onto_the_space() -> None:
    enc = _mixed()
    rng = np.random.default_rng(0)
    noisy = rng.normal(0, 3, (500, enc.dim)).astype(np.float32)
    data_low, data_high = np.full(enc.dim, -5.0), np.full(enc.dim, 4.0)
    p = enc.project(noisy, data_low, data_high)
    assert p[:, 0].min() >= -1 and p[:, 0].max() <= 1          # finite bounds
    assert p[:, 1].min() >= -2 and p[:, 1].max() <= 4          # infinite high: the data's range
    np.testing.assert_array_equal(p[:, 2:5].sum(1), 1)          # one-hot
    assert set(np.unique(p[:, 5:])) <= {0.0, 1.0}               # bits
    np.testing.assert_array_equal(np.argmax(p[:, 2:5], 1), np.argmax(noisy[:, 2:5], 1))
    assert enc.contains(p).all() and not enc.contains(noisy).all()
    assert set(enc.decode(p)[:, 2]) <= {1.0, 2.0, 3.0}


def test_json_round_trip_keeps_infinite_bounds() -> None:
    enc = _mixed()
    again = SpaceEncoding.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert again == enc


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SpaceEncoding(()), "at least one segment"),
        (lambda: SpaceEncoding.box(3, low=[0, 0], high=1), "low must be a scalar or have 3 entries"),
        (lambda: SpaceEncoding.box(2, low=1, high=0), "low must be <= high"),
        (lambda: DiscreteSegment(0), "n must be a positive int"),
        (lambda: SpaceEncoding((DiscreteSegment(2),)).encode([[2]]), r"integer in \[0, 1\], got 2"),
        (lambda: SpaceEncoding((MultiBinarySegment(2),)).encode([[0, 2]]), "only 0 and 1"),
        (lambda: SpaceEncoding.box(2).encode(np.zeros((3, 4))), r"shape \(N, 2\)"),
    ],
)
def test_bad_spaces_and_values_are_refused_with_the_field_named(make, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpaceError, match=match):
        make()
