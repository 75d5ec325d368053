"""actor_data="real": IQL's actor loss on the real (leading) rows of a source-ordered batch only."""

from __future__ import annotations

import d3rlpy
import numpy as np
import pytest
import torch
from d3rlpy.torch_utility import TorchMiniBatch

from cfdg_aug.config import ConfigError
from cfdg_aug.experiments.runner import parse_set, resolve_config
from cfdg_aug.integrations.d3rlpy import transition_batch_to_minibatch
from cfdg_aug.integrations.d3rlpy.actor_rows import _head_batch, real_rows_of, restrict_actor_to_leading_rows
from cfdg_aug.transitions import TransitionBatch


def _iql() -> d3rlpy.algos.IQL:
    d3rlpy.seed(0)
    algo = d3rlpy.algos.IQLConfig(batch_size=8).create(device="cpu:0")
    algo.create_impl((4,), 2)
    return algo


def _batch(n: int) -> TorchMiniBatch:
    rng = np.random.default_rng(0)
    tb = TransitionBatch.from_arrays(rng.normal(size=(n, 4)).astype(np.float32),
                                     rng.uniform(-0.9, 0.9, size=(n, 2)).astype(np.float32),
                                     rng.normal(size=n).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32),
                                     np.zeros(n, np.float32))
    return TorchMiniBatch.from_batch(transition_batch_to_minibatch(tb), gamma=0.99, compute_returns_to_go=False,
                                     device="cpu:0")


def test_actor_loss_uses_only_the_leading_rows_and_the_whole_batch_when_asked_for_none() -> None:
    algo, batch = _iql(), _batch(8)
    impl = algo.impl
    with torch.no_grad():
        head = _head_batch(batch, 5)
        expected_head = impl.compute_actor_loss(head, impl._modules.policy(head.observations)).actor_loss
        expected_all = impl.compute_actor_loss(batch, impl._modules.policy(batch.observations)).actor_loss
        rows: list[int | None] = [5]
        restrict_actor_to_leading_rows(impl, lambda: rows[0])
        got = impl.compute_actor_loss(batch, impl._modules.policy(batch.observations)).actor_loss
        assert got == pytest.approx(float(expected_head)) and float(expected_head) != pytest.approx(float(expected_all))
        for whole in (None, 0, 8, 20):
            rows[0] = whole
            got = impl.compute_actor_loss(batch, impl._modules.policy(batch.observations)).actor_loss
            assert got == pytest.approx(float(expected_all))


def test_real_rows_are_read_from_the_buffers_last_batch() -> None:
    class Buf:
        last_source_counts: tuple[int, ...] | None = None

    buf = Buf()
    rows = real_rows_of(buf)
    assert rows() is None
    buf.last_source_counts = (150, 21, 17, 68)
    assert rows() == 171


def test_small_iql_profile_trains_the_actor_on_real_rows_and_none_arms_keep_their_ids() -> None:
    small = resolve_config("iql", "cfdg", "embedded", "small", 0)
    paper_like = resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["actor_data=all"]))
    assert small.actor_data == "real" and small.to_dict()["actor_data"] == "real"
    assert "actor_data" not in paper_like.to_dict() and paper_like.run_id() != small.run_id()
    # Without synthetic rows the setting changes nothing: left out of the none arms' ids.
    none = resolve_config("iql", "none", "embedded", "small", 0)
    assert none.actor_data == "real" and "actor_data" not in none.to_dict()
    assert none.run_id() == resolve_config("iql", "none", "embedded", "small", 0, parse_set(["actor_data=all"])).run_id()
    assert resolve_config("iql", "cfdg", "embedded", "paper", 0).actor_data == "all"
    assert resolve_config("pex", "cfdg", "embedded", "small", 0).actor_data == "all"
    with pytest.raises(ConfigError, match="actor_data must be one of"):
        resolve_config("iql", "cfdg", "embedded", "small", 0, parse_set(["actor_data=synthetic"]))
    with pytest.raises(ConfigError, match="algo 'iql' only"):
        resolve_config("apl", "cfdg", "embedded", "small", 0, parse_set(["actor_data=real"]))
