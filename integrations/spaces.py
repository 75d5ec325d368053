"""From the host library's spaces to the core's :class:`~cfdg_aug.spaces.SpaceEncoding`, and back.

The core models flat float vectors; the host libraries store observations and actions in their
own shapes and dtypes (SB3: ``(n_envs, *obs_shape)`` arrays or a dict of them; d3rlpy: one array
or a tuple of arrays per step). This module is the one place that knows both:

- :func:`encoding_from_space` turns a gymnasium (or gym) space into a ``SpaceEncoding``:
  ``Box`` -> one real segment with the space's bounds (flattened C-order), ``Discrete`` ->
  one-hot, ``MultiDiscrete`` -> one one-hot per component, ``MultiBinary`` -> bits, ``Dict`` /
  ``Tuple`` -> their parts concatenated in the space's key order (what SB3's ``DictReplayBuffer``
  iterates).
- :class:`FlatLayout` flattens a structured value (array, dict or tuple of arrays, each
  ``(N, *shape)``) into ``(N, raw_dim)`` raw columns and back, restoring shapes and dtypes.
- :func:`refuse_images` raises :class:`ImageObservationError` for image observations when the
  buffer augments: the generator models flat vectors, and a diffusion model of pixels is a
  different product. ``augmentation="none"`` works with images (the class is then its parent).

Raw vs encoded: a raw value is what the host stores (a Discrete action is one index); encoded is
what the core stores (that index one-hot). ``encoding.encode`` / ``decode`` convert between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cfdg_aug.spaces import DiscreteSegment, MultiBinarySegment, SpaceEncoding

__all__ = [
    "FlatLayout",
    "ImageObservationError",
    "UnsupportedSpaceError",
    "encoding_from_space",
    "is_image_shape",
    "refuse_images",
    "sb3_action_encoding",
]


class UnsupportedSpaceError(ValueError):
    """A space the generator cannot model (the message names the field and what is supported)."""


class ImageObservationError(UnsupportedSpaceError):
    """Image observations under augmentation: refused at construction, by design."""


SUPPORTED = "Box (any shape, flattened), Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of these"


def _kind(space: Any) -> str:
    # Duck-typed on the class name so that gym (d3rlpy's legacy envs) and gymnasium spaces both work.
    for klass in type(space).__mro__:
        if klass.__name__ in ("Box", "Discrete", "MultiDiscrete", "MultiBinary", "Dict", "Tuple"):
            return klass.__name__
    return type(space).__name__


def is_image_shape(shape: Sequence[int], dtype: Any) -> bool:
    """Images: 3 or more dimensions (H, W, C or C, H, W; stacked frames), or 2-D ``uint8``."""
    shape = tuple(shape)
    return len(shape) >= 3 or (len(shape) == 2 and np.dtype(dtype) == np.uint8)


def _leaf_spaces(space: Any, name: str) -> list[tuple[str, Any]]:
    kind = _kind(space)
    if kind == "Dict":
        out = []
        for key, sub in space.spaces.items():
            if _kind(sub) in ("Dict", "Tuple"):
                raise UnsupportedSpaceError(
                    f"{name}[{key!r}]: nested Dict/Tuple spaces are not supported (SB3 does not support them "
                    "either); flatten the nesting"
                )
            out.append((f"{name}[{key!r}]", sub))
        return out
    if kind == "Tuple":
        return [(f"{name}[{i}]", sub) for i, sub in enumerate(space.spaces)]
    return [(name, space)]


def refuse_images(shapes: Sequence[tuple[str, Sequence[int], Any]]) -> None:
    """Raise :class:`ImageObservationError` if any ``(name, shape, dtype)`` is an image."""
    for name, shape, dtype in shapes:
        if is_image_shape(shape, dtype):
            raise ImageObservationError(
                f"{name}: image observations (shape {tuple(shape)}, {np.dtype(dtype)}) cannot be augmented, since "
                f"the CFDG generator models flat vectors ({SUPPORTED}); pass "
                "config=CFDGConfig(augmentation=\"none\") to use this buffer without augmentation (it then "
                "behaves exactly as its parent)"
            )


def space_has_images(space: Any) -> bool:
    return any(_kind(s) == "Box" and is_image_shape(s.shape, s.dtype) for _, s in _leaf_spaces(space, "space"))


def encoding_from_space(space: Any, name: str = "observation_space") -> SpaceEncoding:
    """The ``SpaceEncoding`` of a gymnasium/gym space (see the module docstring).

    Raises :class:`UnsupportedSpaceError` naming ``name`` for anything else (``Text``, ``Graph``,
    ``Sequence``, nested ``Dict``...). Images are not refused here (see :func:`refuse_images`).
    """
    parts: list[SpaceEncoding] = []
    for leaf_name, sub in _leaf_spaces(space, name):
        kind = _kind(sub)
        if kind == "Box":
            size = int(np.prod(sub.shape)) if sub.shape else 1
            parts.append(SpaceEncoding.box(size, np.asarray(sub.low, np.float64).reshape(-1),
                                           np.asarray(sub.high, np.float64).reshape(-1)))
        elif kind == "Discrete":
            parts.append(SpaceEncoding((DiscreteSegment(int(sub.n), int(getattr(sub, "start", 0))),)))
        elif kind == "MultiDiscrete":
            nvec = np.asarray(sub.nvec).reshape(-1)
            start = np.asarray(getattr(sub, "start", np.zeros_like(nvec))).reshape(-1)
            parts.append(SpaceEncoding(tuple(DiscreteSegment(int(n), int(s)) for n, s in zip(nvec, start, strict=True))))
        elif kind == "MultiBinary":
            parts.append(SpaceEncoding((MultiBinarySegment(int(np.prod(sub.shape))),)))
        else:
            raise UnsupportedSpaceError(f"{leaf_name}: {type(sub).__name__} spaces are not supported; supported: {SUPPORTED}")
    return SpaceEncoding.concat(parts)


def sb3_action_encoding(action_space: Any) -> SpaceEncoding:
    """The encoding of what SB3 *stores* as actions.

    For ``Box`` spaces SB3's off-policy algorithms store ``policy.scale_action(a)``, i.e. actions
    mapped from ``[low, high]`` to ``[-1, 1]`` (``OffPolicyAlgorithm._sample_action``), so the
    bounds of the stored values are [-1, 1] whenever the space's bounds are finite (infinite
    bounds cannot be scaled: the data's range is used). Other spaces are stored as raw values.
    """
    if _kind(action_space) == "Box":
        size = int(np.prod(action_space.shape)) if action_space.shape else 1
        finite = np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()
        return SpaceEncoding.box(size, -1.0, 1.0) if finite else SpaceEncoding.box(size)
    return encoding_from_space(action_space, "action_space")


@dataclass(frozen=True)
class FlatLayout:
    """How a structured value becomes ``(N, raw_dim)`` raw float columns, and back.

    ``keys``: None for a single array, dict keys for a dict, ``0..k-1`` for a tuple/list;
    ``shapes`` / ``dtypes``: per part (without the batch axis).
    """

    kind: str  # "array" | "dict" | "tuple"
    keys: tuple[Any, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def array(cls, shape: Sequence[int], dtype: Any) -> FlatLayout:
        return cls("array", (None,), (tuple(int(s) for s in shape),), (np.dtype(dtype),))

    @classmethod
    def from_dict_shapes(cls, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, Any]) -> FlatLayout:
        keys = tuple(shapes)
        return cls("dict", keys, tuple(tuple(int(s) for s in shapes[k]) for k in keys),
                   tuple(np.dtype(dtypes[k]) for k in keys))

    @classmethod
    def tuple_of(cls, shapes: Sequence[Sequence[int]], dtypes: Sequence[Any]) -> FlatLayout:
        return cls("tuple", tuple(range(len(shapes))), tuple(tuple(int(s) for s in sh) for sh in shapes),
                   tuple(np.dtype(d) for d in dtypes))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s)) if s else 1 for s in self.shapes)

    @property
    def raw_dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, value: Any, n: int) -> np.ndarray:
        """``value`` (an array ``(n, *shape)``, a dict or a sequence of them) -> ``(n, raw_dim)`` float64."""
        if self.kind == "array":
            parts = [value]
        elif self.kind == "dict":
            parts = [value[k] for k in self.keys]
        else:
            parts = list(value)
            if len(parts) != len(self.keys):
                raise ValueError(f"observation must have {len(self.keys)} parts, got {len(parts)}")
        cols = []
        for part, shape, size in zip(parts, self.shapes, self.sizes, strict=True):
            a = np.asarray(part, dtype=np.float64)
            if a.size != n * size:
                raise ValueError(f"observation part must hold {n} x {shape}, got shape {a.shape}")
            cols.append(a.reshape(n, size))
        return np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]

    def unflatten(self, flat: np.ndarray, *, dtypes: bool = True) -> Any:
        """``(n, raw_dim)`` -> the structured value, each part ``(n, *shape)`` in its dtype
        (float32 everywhere with ``dtypes=False``)."""
        n = flat.shape[0]
        out, c = [], 0
        for shape, size, dt in zip(self.shapes, self.sizes, self.dtypes, strict=True):
            part = flat[:, c:c + size].reshape(n, *shape)
            out.append(_cast(part, dt) if dtypes else np.ascontiguousarray(part, dtype=np.float32))
            c += size
        if self.kind == "array":
            return out[0]
        if self.kind == "dict":
            return dict(zip(self.keys, out, strict=True))
        return out


def _cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        a = np.rint(a)
    return np.ascontiguousarray(a, dtype=dtype)
