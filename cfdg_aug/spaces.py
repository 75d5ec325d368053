"""How an observation or action space becomes flat float columns for the diffusion model, and back.

The generator models real-valued vectors. A space is described by a :class:`SpaceEncoding`: a
sequence of segments, each covering consecutive columns of the flat (encoded) vector and consecutive
components of the raw (flattened) value:

====================  ===============  ==============  ==============================================
segment               raw components   columns         decoded (and projected) as
====================  ===============  ==============  ==============================================
:class:`BoxSegment`   ``size``         ``size``        clipped to ``[low, high]`` (finite bounds) or,
                                                       where a bound is infinite, to the real data's
                                                       range
:class:`DiscreteSegment` 1 (an index)  ``n`` (one-hot) argmax, i.e. always one of the ``n`` values
:class:`MultiBinarySegment` ``n``      ``n`` (bits)    each bit thresholded at 0.5
====================  ===============  ==============  ==============================================

A gymnasium ``Discrete(n, start)`` is one :class:`DiscreteSegment`, ``MultiDiscrete(nvec)`` one
per component, ``MultiBinary(n)`` one :class:`MultiBinarySegment`, ``Box`` one
:class:`BoxSegment`; ``Dict`` / tuple spaces concatenate their parts (the integrations build the
encoding from the host's space: ``cfdg_aug.integrations``). The core knows nothing of gymnasium:
segments are plain frozen dataclasses, saved as JSON with the generator and the buffer.

Why decode at all: a learner must only ever see transitions it could have met. A generated action of
1.7 for an action space of [-1, 1], or a one-hot vector with two halves, is not an element of the
space; :meth:`SpaceEncoding.project` maps every generated row onto the space (clip, argmax,
threshold) before it reaches a pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np


class SpaceError(ValueError):
    """A space description or an encoded array does not fit; the message names what was expected."""


def _check_size(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise SpaceError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _bounds(name: str, value: Any, size: int, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,) * size
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (size,)) if np.ndim(value) == 0 \
        else np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (size,):
        raise SpaceError(f"{name} must be a scalar or have {size} entries, got shape {np.shape(value)}")
    if np.isnan(arr).any():
        raise SpaceError(f"{name} must not contain NaN")
    return tuple(float(x) for x in arr)


@dataclass(frozen=True)
class BoxSegment:
    """``size`` real components, each clipped to ``[low_i, high_i]`` (an infinite bound means: the
    real data's range on that side)."""

    size: int
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        size = _check_size("BoxSegment.size", self.size)
        low = _bounds("BoxSegment.low", self.low if self.low != () else None, size, -math.inf)
        high = _bounds("BoxSegment.high", self.high if self.high != () else None, size, math.inf)
        if any(lo > hi for lo, hi in zip(low, high, strict=True)):
            raise SpaceError(f"BoxSegment.low must be <= high in every component, got low={low}, high={high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    raw_dim = property(lambda self: self.size)
    dim = property(lambda self: self.size)

    @property
    def bounded(self) -> bool:
        return all(math.isfinite(x) for x in (*self.low, *self.high))

    def encode(self, raw: np.ndarray) -> np.ndarray:
        return raw.astype(np.float32, copy=False)

    def decode(self, enc: np.ndarray) -> np.ndarray:
        return enc

    def project(self, enc: np.ndarray, data_low: np.ndarray, data_high: np.ndarray) -> np.ndarray:
        low = np.where(np.isfinite(self.low), np.asarray(self.low), data_low).astype(np.float32)
        high = np.where(np.isfinite(self.high), np.asarray(self.high), data_high).astype(np.float32)
        return np.clip(enc, low, high)

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity: None stands for an unbounded side.
        return {"kind": "box", "size": self.size, "low": [x if math.isfinite(x) else None for x in self.low],
                "high": [x if math.isfinite(x) else None for x in self.high]}


@dataclass(frozen=True)
class DiscreteSegment:
    """One categorical component with ``n`` values ``start .. start + n - 1``, encoded one-hot."""

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        _check_size("DiscreteSegment.n", self.n)
        if isinstance(self.start, bool) or not isinstance(self.start, (int, np.integer)):
            raise SpaceError(f"DiscreteSegment.start must be an int, got {self.start!r}")

    raw_dim = property(lambda self: 1)
    dim = property(lambda self: self.n)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        idx = np.rint(raw[:, 0]).astype(np.int64) - self.start
        bad = (idx < 0) | (idx >= self.n) | (raw[:, 0] != np.rint(raw[:, 0]))
        if bad.any():
            raise SpaceError(f"a Discrete({self.n}, start={self.start}) value must be an integer in "
                             f"[{self.start}, {self.start + self.n - 1}], got {float(raw[bad, 0][0]):g}")
        out = np.zeros((raw.shape[0], self.n), dtype=np.float32)
        out[np.arange(raw.shape[0]), idx] = 1.0
        return out

    def decode(self, enc: np.ndarray) -> np.ndarray:
        return (np.argmax(enc, axis=1) + self.start).astype(np.float32)[:, None]

    def project(self, enc: np.ndarray, data_low: np.ndarray, data_high: np.ndarray) -> np.ndarray:
        out = np.zeros_like(enc)
        out[np.arange(enc.shape[0]), np.argmax(enc, axis=1)] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "discrete", "n": self.n, "start": int(self.start)}


@dataclass(frozen=True)
class MultiBinarySegment:
    """``n`` bits, each 0 or 1 (thresholded at 0.5 when generated)."""

    n: int

    def __post_init__(self) -> None:
        _check_size("MultiBinarySegment.n", self.n)

    raw_dim = property(lambda self: self.n)
    dim = property(lambda self: self.n)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        if not np.isin(raw, (0, 1)).all():
            raise SpaceError(f"a MultiBinary({self.n}) value must hold only 0 and 1")
        return raw.astype(np.float32, copy=False)

    def decode(self, enc: np.ndarray) -> np.ndarray:
        return enc

    def project(self, enc: np.ndarray, data_low: np.ndarray, data_high: np.ndarray) -> np.ndarray:
        return (enc >= 0.5).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "multibinary", "n": self.n}


Segment = Union[BoxSegment, DiscreteSegment, MultiBinarySegment]  # noqa: UP007 - a runtime alias
_KINDS = {"box": BoxSegment, "discrete": DiscreteSegment, "multibinary": MultiBinarySegment}


@dataclass(frozen=True)
class SpaceEncoding:
    """A space as a sequence of segments. ``raw_dim`` components in, ``dim`` columns out.

    Shapes: :meth:`encode` (N, raw_dim) -> (N, dim); :meth:`decode` (N, dim) -> (N, raw_dim);
    :meth:`project` (N, dim) -> (N, dim), each row a valid encoded element.
    """

    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        segs = tuple(self.segments)
        if not segs:
            raise SpaceError("a SpaceEncoding needs at least one segment")
        for s in segs:
            if not isinstance(s, (BoxSegment, DiscreteSegment, MultiBinarySegment)):
                raise SpaceError(f"segments must be BoxSegment, DiscreteSegment or MultiBinarySegment, got {s!r}")
        object.__setattr__(self, "segments", segs)

    # --- constructors ------------------------------------------------------------------------------
    @classmethod
    def box(cls, size: int, low: Any = None, high: Any = None) -> SpaceEncoding:
        """One real segment (``low`` / ``high``: scalars or per-component arrays; None = unbounded)."""
        size = _check_size("size", size)
        return cls((BoxSegment(size, _bounds("low", low, size, -math.inf), _bounds("high", high, size, math.inf)),))

    @classmethod
    def concat(cls, parts: Iterable[SpaceEncoding]) -> SpaceEncoding:
        return cls(tuple(s for p in parts for s in p.segments))

    # --- sizes -------------------------------------------------------------------------------------
    @property
    def raw_dim(self) -> int:
        return sum(s.raw_dim for s in self.segments)

    @property
    def dim(self) -> int:
        return sum(s.dim for s in self.segments)

    @property
    def is_box(self) -> bool:
        """True when every component is real-valued (the raw value is the encoded vector)."""
        return all(isinstance(s, BoxSegment) for s in self.segments)

    @property
    def discrete(self) -> bool:
        """True when the space is a single :class:`DiscreteSegment` (e.g. a DQN action space)."""
        return len(self.segments) == 1 and isinstance(self.segments[0], DiscreteSegment)

    def _slices(self) -> list[tuple[Segment, slice, slice]]:
        out, r, c = [], 0, 0
        for s in self.segments:
            out.append((s, slice(r, r + s.raw_dim), slice(c, c + s.dim)))
            r, c = r + s.raw_dim, c + s.dim
        return out

    # --- conversions ---------------------------------------------------------------------------------
    def encode(self, raw: Any) -> np.ndarray:
        """(N, raw_dim) raw values (indices for Discrete) -> (N, dim) float32 columns."""
        a = np.asarray(raw, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None] if self.raw_dim == 1 else a[None]
        if a.ndim != 2 or a.shape[1] != self.raw_dim:
            raise SpaceError(f"values must have shape (N, {self.raw_dim}), got {np.shape(raw)}")
        if self.is_box:
            return a.astype(np.float32)
        return np.concatenate([s.encode(a[:, rs]) for s, rs, _ in self._slices()], axis=1).astype(np.float32)

    def decode(self, enc: Any) -> np.ndarray:
        """(N, dim) columns -> (N, raw_dim) float32 raw values (argmax index for Discrete)."""
        e = np.asarray(enc, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise SpaceError(f"encoded values must have shape (N, {self.dim}), got {e.shape}")
        if self.is_box:
            return e
        return np.concatenate([s.decode(e[:, cs]) for s, _, cs in self._slices()], axis=1)

    def project(self, enc: np.ndarray, data_low: Any = None, data_high: Any = None) -> np.ndarray:
        """Map (N, dim) generated columns onto the space: Box parts clipped to their bounds (the
        data's range ``data_low`` / ``data_high``, shape (dim,), where a bound is infinite; None =
        no data bound), Discrete parts to an exact one-hot, MultiBinary parts to 0/1."""
        e = np.asarray(enc, dtype=np.float32)
        lo = np.full(self.dim, -np.inf, np.float32) if data_low is None else np.asarray(data_low, np.float32)
        hi = np.full(self.dim, np.inf, np.float32) if data_high is None else np.asarray(data_high, np.float32)
        return np.concatenate([s.project(e[:, cs], lo[cs], hi[cs]) for s, _, cs in self._slices()], axis=1)

    def contains(self, enc: np.ndarray, atol: float = 1e-6) -> np.ndarray:
        """(N,) bool: whether each encoded row is a valid element (finite bounds only)."""
        e = np.asarray(enc, dtype=np.float32)
        return np.all(np.isclose(self.project(e), e, atol=atol, rtol=0), axis=1)

    # --- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, d: Any) -> SpaceEncoding:
        try:
            segs: list[Segment] = []
            for s in d["segments"]:
                kind = s["kind"]
                if kind == "box":
                    segs.append(BoxSegment(int(s["size"]),
                                           tuple(-math.inf if x is None else float(x) for x in s["low"]),
                                           tuple(math.inf if x is None else float(x) for x in s["high"])))
                elif kind in _KINDS:
                    segs.append(_KINDS[kind](**{k: v for k, v in s.items() if k != "kind"}))
                else:
                    raise SpaceError(f"unknown segment kind {kind!r}")
        except (KeyError, TypeError) as e:
            raise SpaceError(f"malformed space encoding {d!r}: {e}") from None
        return cls(tuple(segs))


def check_dim(name: str, encoding: SpaceEncoding | None, dim: int) -> SpaceEncoding:
    """``encoding`` (or an unbounded box of ``dim`` columns when None), checked to have ``dim`` columns."""
    if encoding is None:
        return SpaceEncoding.box(dim)
    if not isinstance(encoding, SpaceEncoding):
        raise SpaceError(f"{name} must be a SpaceEncoding, got {type(encoding).__name__}")
    if encoding.dim != dim:
        raise SpaceError(f"{name} encodes {encoding.dim} columns but the layout has {dim}")
    return encoding


__all__ = [
    "BoxSegment", "DiscreteSegment", "MultiBinarySegment", "Segment", "SpaceEncoding", "SpaceError",
    "check_dim",
]
