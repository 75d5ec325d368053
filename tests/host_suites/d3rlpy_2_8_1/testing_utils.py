# Vendored from d3rlpy (takuseno/d3rlpy tests/testing_utils.py, 2.x), MIT licence: see LICENSE here and ../README.md. An excerpt: the three helpers the vendored tests import, unchanged.
from typing import Sequence, cast, overload

import numpy as np

from d3rlpy.dataset import Episode
from d3rlpy.types import DType, NDArray, Observation, ObservationSequence, Shape

# Excerpt: the helpers that the vendored tests import (create_observation, create_observations,
# create_episode), unchanged. See ../README.md.


@overload
def create_observation(
    observation_shape: Sequence[int], dtype: DType = np.float32
) -> NDArray:
    ...


@overload
def create_observation(
    observation_shape: Sequence[Sequence[int]], dtype: DType = np.float32
) -> Sequence[NDArray]:
    ...


def create_observation(
    observation_shape: Shape, dtype: DType = np.float32
) -> Observation:
    observation: Observation
    if isinstance(observation_shape[0], (list, tuple)):
        observation = [
            np.random.random(shape).astype(dtype) for shape in observation_shape
        ]
    else:
        observation = np.random.random(observation_shape).astype(dtype)
    return observation


@overload
def create_observations(
    observation_shape: Sequence[int], length: int, dtype: DType = np.float32
) -> NDArray:
    ...


@overload
def create_observations(
    observation_shape: Sequence[Sequence[int]],
    length: int,
    dtype: DType = np.float32,
) -> Sequence[NDArray]:
    ...


def create_observations(
    observation_shape: Shape, length: int, dtype: DType = np.float32
) -> ObservationSequence:
    observations: ObservationSequence
    if isinstance(observation_shape[0], (list, tuple)):
        observations = [
            np.random.random((length, *shape)).astype(dtype)
            for shape in cast(Sequence[Sequence[int]], observation_shape)
        ]
    else:
        observations = np.random.random((length, *observation_shape)).astype(
            dtype
        )
    return observations


def create_episode(
    observation_shape: Shape,
    action_size: int,
    length: int,
    discrete_action: bool = False,
    terminated: bool = False,
) -> Episode:
    observations = create_observations(observation_shape, length)

    actions: NDArray
    if discrete_action:
        actions = np.random.randint(action_size, size=(length, 1))
    else:
        actions = np.random.random((length, action_size))

    return Episode(
        observations=observations,
        actions=actions,
        rewards=np.random.random((length, 1)).astype(np.float32),
        terminated=terminated,
    )
