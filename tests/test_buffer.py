"""AugmentedReplayBuffer: pools, FIFO, the exact mix rule, errors, determinism, save/load.

Refresh-dependent behaviour is tested here with a small fake generator (fast, with marker values
so every synthetic row is traceable); tests/test_buffer_generator.py runs the same paths with the
real CFDGGenerator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfdg_aug.buffer import (
    AugmentedReplayBuffer,
    BufferFileError,
    EmptyBufferError,
    RefreshStats,
    apportion,
    base_weights,
)
from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.transitions import SOURCE_NAMES, TransitionBatch, TransitionError

OBS, ACT = 3, 2
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers --------------------------------------------------------------------------------------
def make_batch(n: int, marker: float = 0.0, start: int = 0, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """n transitions whose reward is ``marker`` and whose obs[:, 0] is a running index from
    ``start`` (so order and identity of rows can be checked)."""
    rng = rng if rng is not None else np.random.default_rng(start)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    obs[:, 0] = np.arange(start, start + n)
    return {
        "obs": obs, "act": rng.uniform(-1, 1, size=(n, ACT)), "rew": np.full(n, marker),
        "next_obs": rng.normal(size=(n, OBS)), "done": np.zeros(n), "timeout": np.zeros(n, dtype=bool),
    }


@dataclass
class FakeFitStats:
    steps: int
    final_loss: float
    mean_loss: float
    seconds: float
    n_offline: int
    n_online: int
    loss_history: list[float] = field(default_factory=list)


class FakeGenerator:
    """Implements the generator interface the buffer uses. Samples carry reward 2 (offline label)
    or 3 (online label / unlabelled) and obs[:, 1] = number of fits, so pools are traceable."""

    def __init__(self, obs_dim: int = OBS, act_dim: int = ACT, conditional: bool = True) -> None:
        self.obs_dim, self.act_dim, self.conditional = obs_dim, act_dim, conditional
        self.num_fits = 0
        self.fit_sizes: list[tuple[int, int]] = []
        self.sample_calls: list[tuple[int, Any, Any]] = []

    def fit(self, offline: TransitionBatch | None, online: TransitionBatch | None = None, *,
            steps: int | None = None, progress: bool = False) -> FakeFitStats:
        n_off = 0 if offline is None else len(offline)
        n_on = 0 if online is None else len(online)
        self.num_fits += 1
        self.fit_sizes.append((n_off, n_on))
        return FakeFitStats(steps=1, final_loss=0.5, mean_loss=0.75, seconds=0.0, n_offline=n_off, n_online=n_on)

    def sample(self, n: int, label: Any = "online", *, guidance: float | None = None,
               batch_size: int | None = None) -> TransitionBatch:
        if not self.conditional and label is not None:
            raise ValueError("label must be None for an unconditional generator")
        self.sample_calls.append((n, label, guidance))
        marker = 2.0 if label == "offline" else 3.0
        obs = np.zeros((n, self.obs_dim), np.float32)
        obs[:, 1] = self.num_fits
        return TransitionBatch(obs=obs, act=np.zeros((n, self.act_dim), np.float32),
                               rew=np.full(n, marker, np.float32), next_obs=obs.copy(),
                               done=np.zeros(n, np.float32))

    def state_tensors(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return ({f"{prefix}num_fits": torch.tensor([self.num_fits])},
                {f"{prefix}format": "fake", f"{prefix}conditional": str(int(self.conditional))})

    @classmethod
    def from_state_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, prefix: str = "",
                           device: str = "cpu", expected_dims: tuple[int, int] | None = None) -> FakeGenerator:
        g = cls(*(expected_dims or (OBS, ACT)), conditional=metadata[f"{prefix}conditional"] == "1")
        g.num_fits = int(tensors[f"{prefix}num_fits"][0])
        return g


def tiny_config(**kw: Any) -> CFDGConfig:
    base: dict[str, Any] = dict(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                                synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50,
                                min_online=50)
    base.update(kw)
    return CFDGConfig.small(**base)


def fake_buffer(mode: str = "cfdg", online_capacity: int = 1000, seed: int = 0, **cfg: Any) -> AugmentedReplayBuffer:
    config = tiny_config(augmentation=mode, **cfg)
    gen = None if mode == "none" else FakeGenerator(conditional=mode == "cfdg")
    return AugmentedReplayBuffer(OBS, ACT, online_capacity=online_capacity, config=config, seed=seed, generator=gen)


def snapshot(buf: AugmentedReplayBuffer) -> tuple[Any, ...]:
    return (buf.pool_sizes, buf.online_added_total, buf.offline_data().as_dict(), buf.online_data().as_dict(),
            buf.rng.bit_generator.state)


def assert_same_snapshot(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert a[0] == b[0] and a[1] == b[1] and a[4] == b[4]
    for da, db in ((a[2], b[2]), (a[3], b[3])):
        assert da.keys() == db.keys()
        for k in da:
            np.testing.assert_array_equal(da[k], db[k])


def assert_batches_equal(a: TransitionBatch, b: TransitionBatch) -> None:
    for k, v in a.as_dict().items():
        np.testing.assert_array_equal(v, b.as_dict()[k], err_msg=k)


# --- the mix rule ---------------------------------------------------------------------------------
def reference_counts(batch_size: int, cfg: CFDGConfig, sizes: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Independent re-implementation of the documented rule (module docstring of cfdg_aug.buffer)."""
    ro, rn, rs = Fraction(cfg.ratio_offline), Fraction(cfg.ratio_online), Fraction(cfg.ratio_synthetic)
    f = Fraction(cfg.synthetic_online_fraction)
    w = {"cfdg": [ro, rn, rs - rs * f, rs * f], "unconditional": [ro, rn, Fraction(0), rs],
         "none": [ro, rn, Fraction(0), Fraction(0)]}[cfg.augmentation]
    avail = [s > 0 for s in sizes]
    lost = sum(w[i] for i in range(4) if not avail[i])
    e = [w[i] if avail[i] else Fraction(0) for i in range(4)]
    real_w = sum(e[:2])
    if real_w > 0:
        e[0], e[1] = e[0] + lost * e[0] / real_w, e[1] + lost * e[1] / real_w
    if sum(e) == 0:
        e = [Fraction(int(a)) for a in avail]
    quotas = [Fraction(batch_size) * x / sum(e) for x in e]
    counts = [int(q) for q in quotas]  # quotas are >= 0, so int() floors
    leftovers = sorted(((q - c, -i) for i, (q, c) in enumerate(zip(quotas, counts, strict=True))), reverse=True)
    for _, neg_i in leftovers[: batch_size - sum(counts)]:
        counts[-neg_i] += 1
    return tuple(counts)


ratio = st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 1 / 3, 0.1, 3.7])


@FAST
@given(
    batch_size=st.integers(1, 3000), r_off=ratio, r_on=ratio, r_syn=ratio,
    frac=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0, 0.3333]),
    mode=st.sampled_from(["cfdg", "unconditional", "none"]),
    avail=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
)
def test_apportion_matches_independent_implementation(batch_size: int, r_off: float, r_on: float, r_syn: float,
                                                      frac: float, mode: str, avail: tuple[bool, ...]) -> None:
    if r_off + r_on + r_syn == 0 or not any(avail):
        return
    cfg = CFDGConfig(augmentation=mode, ratio_offline=r_off, ratio_online=r_on, ratio_synthetic=r_syn,
                     synthetic_online_fraction=frac)
    got = apportion(batch_size, base_weights(cfg), avail)
    assert got == reference_counts(batch_size, cfg, tuple(int(a) for a in avail))  # type: ignore[arg-type]
    assert sum(got) == batch_size
    assert all(c == 0 for c, a in zip(got, avail, strict=True) if not a)


def test_documented_example_counts() -> None:
    cfg = CFDGConfig()
    assert apportion(256, base_weights(cfg), (True,) * 4) == (86, 85, 17, 68)
    assert apportion(256, base_weights(cfg), (True, True, False, False)) == (128, 128, 0, 0)
    # online pool empty: its weight goes to the real offline pool; synthetic keeps its share.
    assert apportion(300, base_weights(cfg), (True, False, True, True)) == (200, 0, 20, 80)
    # zero-weight offline pool is the only one available: equal split fallback.
    zero_off = CFDGConfig(ratio_offline=0.0)
    assert apportion(10, base_weights(zero_off), (True, False, False, False)) == (10, 0, 0, 0)


@FAST
@given(
    batch_size=st.integers(1, 600), n_off=st.integers(0, 7), n_on=st.integers(0, 7),
    refreshed=st.booleans(), mode=st.sampled_from(["cfdg", "unconditional", "none"]),
    r_syn=st.sampled_from([0.0, 1.0, 2.5]), frac=st.sampled_from([0.0, 0.8, 1.0]),
)
def test_sample_counts_and_sources_follow_rule_at_any_fill_level(batch_size: int, n_off: int, n_on: int,
                                                                  refreshed: bool, mode: str, r_syn: float,
                                                                  frac: float) -> None:
    buf = fake_buffer(mode, online_capacity=5, ratio_synthetic=r_syn, synthetic_online_fraction=frac,
                      min_online=0)
    if n_off:
        buf.add_offline(make_batch(n_off, marker=0.0))
    if n_on:
        buf.add(make_batch(n_on, marker=1.0))
    if refreshed and mode != "none" and (n_off or n_on):
        buf.refresh()
    sizes = tuple(buf.pool_sizes.values())
    if not any(sizes):
        with pytest.raises(EmptyBufferError):
            buf.sample(batch_size)
        return
    expected = reference_counts(batch_size, buf.config, sizes)  # type: ignore[arg-type]
    assert buf.source_counts(batch_size) == expected
    batch = buf.sample(batch_size)
    assert len(batch) == batch_size
    assert tuple(np.bincount(batch.source, minlength=4)) == expected
    # markers: real offline rew 0, real online rew 1, synthetic offline 2, synthetic online 3.
    np.testing.assert_array_equal(batch.rew, batch.source.astype(np.float32))
    assert np.all(np.diff(batch.source) >= 0), "batch must be ordered by source"


def test_none_mode_never_returns_synthetic_data() -> None:
    buf = fake_buffer("none", min_online=0, refresh_every=1)
    buf.add_offline(make_batch(20, marker=0.0))
    for step in range(120):
        buf.add(make_batch(1, marker=1.0, start=step))
        assert not buf.refresh_due()
        assert buf.maybe_refresh() is None
        batch = buf.sample(64)
        assert set(np.unique(batch.source)) <= {0, 1}
    assert buf.generator is None and buf.num_refreshes == 0
    assert buf.pool_sizes["synthetic_offline"] == buf.pool_sizes["synthetic_online"] == 0
    with pytest.raises(ValueError, match="augmentation == 'none'"):
        buf.refresh()


def test_unconditional_mode_fills_one_synthetic_pool_with_whole_share() -> None:
    buf = fake_buffer("unconditional", min_online=0)
    buf.add_offline(make_batch(10, marker=0.0))
    buf.add(make_batch(10, marker=1.0))
    stats = buf.refresh()
    assert buf.pool_sizes["synthetic_offline"] == 0
    assert buf.pool_sizes["synthetic_online"] == 64 + 16
    assert stats.n_synthetic_online == 80 and stats.n_synthetic_offline == 0 and stats.guidance is None
    assert buf.generator.sample_calls == [(80, None, None)]  # type: ignore[union-attr]
    assert buf.source_counts(300) == (100, 100, 0, 100)


def test_proportional_real_mix_draws_uniformly_over_all_real_transitions() -> None:
    buf = fake_buffer("none", online_capacity=1000, real_mix="proportional", min_online=0)
    buf.add_offline(make_batch(3000, marker=0.0))
    assert buf.source_counts(256) == (256, 0, 0, 0)
    buf.add(make_batch(1, marker=1.0))
    assert buf.source_counts(256) == (256, 0, 0, 0)  # quota 256 / 3001 < 1/2: not one row yet
    buf.add(make_batch(999, marker=1.0, start=1))
    assert buf.source_counts(256) == (192, 64, 0, 0)  # 3000 : 1000
    batch = buf.sample(256)
    assert tuple(np.bincount(batch.source, minlength=4)) == (192, 64, 0, 0)
    # The synthetic share keeps its ratio; the real share is split by pool size (exact rationals).
    cfg = CFDGConfig.small(augmentation="cfdg", real_mix="proportional")
    w = base_weights(cfg, (3000, 1000))
    assert w[:2] == (Fraction(3, 2), Fraction(1, 2)) and sum(w[2:]) == Fraction(1)
    assert base_weights(cfg, (0, 0))[:2] == (Fraction(1), Fraction(1))
    with pytest.raises(ValueError, match="real_sizes"):
        base_weights(cfg)
    with pytest.raises(ConfigError, match="real_mix"):
        CFDGConfig.small(real_mix="uniform")


def test_keep_online_mix_gives_the_online_pool_its_unaugmented_share_and_takes_synthetic_from_offline() -> None:
    buf = fake_buffer("cfdg", online_capacity=2000, real_mix="keep_online", min_online=0)
    base = fake_buffer("none", online_capacity=2000, real_mix="proportional", min_online=0)
    for b in (buf, base):
        b.add_offline(make_batch(3000, marker=0.0))
        b.add(make_batch(1000, marker=1.0))
    # Before the first refresh: exactly the unaugmented proportional mix.
    assert buf.source_counts(256) == base.source_counts(256) == (192, 64, 0, 0)
    buf.refresh()
    # After: online keeps 1000/4000 of the batch (64 rows); synthetic 1/3 (f = 0.8); offline the rest.
    counts = buf.source_counts(300)
    assert counts[1] == 75 == 300 * 1000 // 4000 and counts[2] + counts[3] == 100 and counts[0] == 125
    batch = buf.sample(300)
    assert tuple(np.bincount(batch.source, minlength=4)) == counts
    cfg = CFDGConfig.small(augmentation="cfdg", real_mix="keep_online")
    # Online pool as large as the offline one: capped so the synthetic share still fits, offline 0.
    assert base_weights(cfg, (100, 100))[:2] == (Fraction(1, 2), Fraction(3, 2))
    assert base_weights(cfg, (0, 100))[:2] == (Fraction(0), Fraction(2))
    # Without augmentation, or before a refresh, it is the proportional split.
    none = CFDGConfig.small(augmentation="none", real_mix="keep_online")
    assert base_weights(none, (3000, 1000)) == base_weights(CFDGConfig.small(augmentation="none", real_mix="proportional"), (3000, 1000))
    assert base_weights(cfg, (3000, 1000), synthetic_available=False)[:2] == (Fraction(3, 2), Fraction(1, 2))


def test_proportional_real_mix_survives_save_and_load(tmp_path: Path) -> None:
    buf = fake_buffer("none", online_capacity=100, real_mix="proportional", min_online=0)
    buf.add_offline(make_batch(300, marker=0.0))
    buf.add(make_batch(100, marker=1.0))
    buf.save(tmp_path / "b.safetensors")
    back = AugmentedReplayBuffer.load(tmp_path / "b.safetensors")
    assert back.config.real_mix == "proportional" and back.source_counts(200) == buf.source_counts(200) == (150, 50, 0, 0)


# --- FIFO and capacities --------------------------------------------------------------------------
@FAST
@given(capacity=st.integers(1, 20), adds=st.lists(st.integers(1, 30), min_size=1, max_size=12))
def test_online_fifo_never_exceeds_capacity_and_keeps_newest(capacity: int, adds: list[int]) -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=capacity, config=CFDGConfig(augmentation="none"))
    total = 0
    for n in adds:
        buf.add(make_batch(n, marker=1.0, start=total))
        total += n
        assert buf.num_online == min(total, capacity) <= capacity
        assert buf.online_added_total == total
        kept = buf.online_data().obs[:, 0]
        np.testing.assert_array_equal(kept, np.arange(total - buf.num_online, total, dtype=np.float32))
        # what sample() can reach is exactly what online_data() shows
        drawn = buf.sample_from("real_online", 200).obs[:, 0]
        assert set(drawn.tolist()) <= set(kept.tolist())


@FAST
@given(adds=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_growing_offline_pool_keeps_everything_in_order(adds: list[int]) -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none"))
    total = 0
    for n in adds:
        buf.add_offline(make_batch(n, start=total))
        total += n
    assert buf.num_offline == total and buf.offline_capacity is None
    np.testing.assert_array_equal(buf.offline_data().obs[:, 0], np.arange(total, dtype=np.float32))
    # amortised doubling: never more than twice what is stored (first add allocates exactly)
    assert buf._pools[0].capacity <= 2 * total


def test_fixed_offline_capacity_rejects_overflow_and_keeps_data() -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, offline_capacity=10, config=CFDGConfig(augmentation="none"))
    buf.add_offline(make_batch(8))
    before = snapshot(buf)
    with pytest.raises(ValueError, match="offline_capacity 10 exceeded"):
        buf.add_offline(make_batch(3, start=8))
    assert_same_snapshot(before, snapshot(buf))
    buf.add_offline(make_batch(2, start=8))
    assert buf.num_offline == 10


def test_memory_per_transition_is_raw_float32_plus_timeout_flag() -> None:
    n = 1000
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=n, config=CFDGConfig(augmentation="none"))
    buf.add_offline(make_batch(n))
    buf.add(make_batch(n))
    raw = (2 * OBS + ACT + 2) * 4
    assert buf.nbytes / (2 * n) == raw + 1


# --- input forms and errors -----------------------------------------------------------------------
def test_accepts_single_transition_mapping_d4rl_names_and_transition_batch() -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none"))
    buf.add(np.zeros(OBS), np.zeros(ACT), 1.0, np.ones(OBS), True, timeout=False)
    d = make_batch(4, start=1)
    buf.add({"observations": d["obs"], "actions": d["act"], "rewards": d["rew"],
             "next_observations": d["next_obs"], "terminals": d["done"], "timeouts": np.array([0, 0, 0, 1])})
    buf.add(TransitionBatch.from_arrays(**make_batch(2, start=5)))
    data = buf.online_data()
    assert len(data) == 7
    np.testing.assert_array_equal(data.done, [1, 0, 0, 0, 0, 0, 0])
    # truncation is kept apart from termination
    np.testing.assert_array_equal(data.timeout, [False, False, False, False, True, False, False])


BAD_INPUTS = [
    ("obs", lambda d: d.update(obs=np.zeros((5, OBS + 1))), "obs"),
    ("next_obs", lambda d: d.update(next_obs=np.zeros((5, OBS - 1))), "next_obs"),
    ("act", lambda d: d.update(act=np.zeros((5, ACT + 2))), "act"),
    ("nan", lambda d: d["rew"].__setitem__(2, np.nan), "rew"),
    ("inf", lambda d: d["obs"].__setitem__((1, 0), np.inf), "obs"),
    ("overflow", lambda d: d.update(act=np.full((5, ACT), 1e300)), "act"),
    ("dtype", lambda d: d.update(act=np.array([["a", "b"]] * 5)), "act"),
    ("complex", lambda d: d.update(obs=np.zeros((5, OBS), dtype=complex)), "obs"),
    ("length", lambda d: d.update(rew=np.zeros(4)), "rew"),
    ("done_values", lambda d: d.update(done=np.full(5, 0.5)), "done"),
    ("timeout_length", lambda d: d.update(timeout=np.zeros(6, dtype=bool)), "timeout"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("case,mutate,field_name", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("where", ["add", "add_offline"])
def test_bad_input_is_rejected_naming_field_and_buffer_unchanged(case: str, mutate: Any, field_name: str,
                                                                  where: str) -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=7, config=CFDGConfig(augmentation="none"))
    buf.add_offline(make_batch(6))
    buf.add(make_batch(9, start=100))  # wrapped ring: pos != 0
    before = snapshot(buf)
    d = make_batch(5, start=50)
    mutate(d)
    with pytest.raises(TransitionError, match=rf"(?<!next_)\b{field_name}\b"):  # "obs" must not match "next_obs"
        getattr(buf, where)(**d)
    assert_same_snapshot(before, snapshot(buf))


def test_missing_fields_and_mixed_call_forms_are_rejected() -> None:
    buf = AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none"))
    with pytest.raises(TransitionError, match="missing field.*rew"):
        buf.add(np.zeros((2, OBS)), np.zeros((2, ACT)), None, np.zeros((2, OBS)), np.zeros(2))
    with pytest.raises(TransitionError, match="not both"):
        buf.add(make_batch(2), act=np.zeros((2, ACT)))
    with pytest.raises(TransitionError, match="missing field"):
        buf.add_offline({"obs": np.zeros((2, OBS))})
    assert buf.online_added_total == 0 and buf.num_offline == 0


@pytest.mark.parametrize("kw,field_name", [
    ({"online_capacity": 0}, "online_capacity"), ({"online_capacity": -3}, "online_capacity"),
    ({"online_capacity": True}, "online_capacity"), ({"online_capacity": 2.5}, "online_capacity"),
    ({"offline_capacity": 0}, "offline_capacity"), ({"offline_capacity": -1}, "offline_capacity"),
])
def test_bad_capacity_is_rejected(kw: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        AugmentedReplayBuffer(OBS, ACT, **kw)


def test_bad_dims_ratios_and_sampling_arguments_are_rejected() -> None:
    with pytest.raises(TransitionError, match="obs_dim"):
        AugmentedReplayBuffer(0, ACT)
    with pytest.raises(ConfigError, match="ratio"):
        AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(ratio_offline=0.0, ratio_online=0.0, ratio_synthetic=0.0))
    with pytest.raises(ValueError, match="ratio_offline \\+ ratio_online"):
        AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none", ratio_offline=0.0, ratio_online=0.0))
    buf = AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none"))
    with pytest.raises(EmptyBufferError, match="empty buffer"):
        buf.sample(4)
    with pytest.raises(EmptyBufferError, match="real_online"):
        buf.sample_from(1, 4)
    buf.add(make_batch(3))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            buf.sample(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pool"):
        buf.sample_from("bogus", 2)
    with pytest.raises(ValueError, match="pool"):
        buf.sample_from(4, 2)
    with pytest.raises(ValueError, match="generator must be None"):
        AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none"), generator=FakeGenerator())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conditional"):
        AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="cfdg"),
                              generator=FakeGenerator(conditional=False))  # type: ignore[arg-type]


# --- determinism ----------------------------------------------------------------------------------
def filled(seed: int) -> AugmentedReplayBuffer:
    buf = fake_buffer("cfdg", online_capacity=30, seed=seed, min_online=0)
    buf.add_offline(make_batch(40, marker=0.0))
    buf.add(make_batch(45, marker=1.0, start=40))
    buf.refresh()
    return buf


def test_same_seed_gives_same_batches_and_different_seed_differs() -> None:
    a, b, c = filled(1), filled(1), filled(2)
    for _ in range(3):
        ba, bb, bc = a.sample(64), b.sample(64), c.sample(64)
        assert_batches_equal(ba, bb)
        assert not np.array_equal(ba.obs, bc.obs)
    assert_batches_equal(a.sample_from("synthetic_online", 5), b.sample_from(3, 5))


def test_sample_from_returns_only_that_pool() -> None:
    buf = filled(0)
    for i, name in enumerate(SOURCE_NAMES):
        batch = buf.sample_from(name, 50)
        assert len(batch) == 50
        np.testing.assert_array_equal(batch.source, np.full(50, i))
        np.testing.assert_array_equal(batch.rew, np.full(50, float(i), np.float32))
    assert len(buf.sample_from(0, 0)) == 0


# --- refresh schedule -----------------------------------------------------------------------------
def refresh_points(min_online: int, every: int, adds: list[int]) -> list[int]:
    buf = fake_buffer("cfdg", min_online=min_online, refresh_every=every)
    buf.add_offline(make_batch(5))
    points = []
    for n in adds:
        buf.add(make_batch(n, marker=1.0))
        stats = buf.maybe_refresh()
        assert not buf.refresh_due()
        if stats is not None:
            points.append(stats.online_count)
    return points


def test_refresh_fires_exactly_at_configured_points() -> None:
    assert refresh_points(50, 50, [1] * 260) == [50, 100, 150, 200, 250]
    assert refresh_points(0, 50, [1] * 110) == [50, 100]
    # min_online beyond the first multiple: first refresh as soon as min_online is reached
    assert refresh_points(120, 50, [1] * 260) == [120, 150, 200, 250]
    # min_online below refresh_every: nothing before the first multiple
    assert refresh_points(20, 50, [1] * 60) == [50]
    # a batched add jumping several multiples gives one refresh, the schedule continues after
    assert refresh_points(50, 50, [175, 10, 15, 1, 60]) == [175, 200, 261]


def test_refresh_counts_added_not_stored_transitions() -> None:
    buf = fake_buffer("cfdg", online_capacity=10, min_online=30, refresh_every=30)
    buf.add_offline(make_batch(5))
    buf.add(make_batch(29, marker=1.0))
    assert not buf.refresh_due()
    buf.add(make_batch(1, marker=1.0))
    assert buf.num_online == 10 and buf.refresh_due()


def test_refresh_rewrites_synthetic_pools_and_calls_hooks() -> None:
    seen: list[RefreshStats] = []
    buf = fake_buffer("cfdg", min_online=0)
    buf.add_hook(seen.append)
    with pytest.raises(EmptyBufferError, match="real pools are empty"):
        buf.refresh()
    buf.add_offline(make_batch(30, marker=0.0))
    buf.add(make_batch(12, marker=1.0))
    s1 = buf.refresh()
    first = buf.pool_data("synthetic_online")
    buf.add(make_batch(5, marker=1.0))
    buf.refresh()
    second = buf.pool_data("synthetic_online")
    assert buf.num_refreshes == 2 and [s.refresh_index for s in seen] == [1, 2] and seen[0] is s1
    assert buf.generator.fit_sizes == [(30, 12), (30, 17)]  # type: ignore[union-attr]
    # the fake stamps obs[:, 1] with the fit number: the pool was regenerated, not appended to
    assert np.all(first.obs[:, 1] == 1) and np.all(second.obs[:, 1] == 2) and len(second) == 64
    g = buf.config.guidance
    assert buf.generator.sample_calls[-2:] == [(16, "offline", g), (64, "online", g)]  # type: ignore[union-attr]
    d = s1.as_dict()
    assert d["fit_n_offline"] == 30 and d["fit_n_online"] == 12 and d["n_synthetic_online"] == 64
    # the refresh's own timings, not the generator's FitStats.seconds under the same key
    assert d["fit_seconds"] == s1.fit_seconds > 0 and d["guidance_seconds"] == s1.guidance_seconds >= 0
    assert all(v is None or isinstance(v, (int, float)) for v in d.values())


def test_auto_guidance_without_enough_online_data_refuses_before_fitting() -> None:
    buf = fake_buffer("cfdg", min_online=0, guidance="auto")
    buf.add(make_batch(3, marker=1.0))
    with pytest.raises(ValueError, match="min_online"):
        buf.refresh()
    assert buf.num_refreshes == 0 and buf.pool_sizes["synthetic_online"] == 0


def test_invalid_generator_output_leaves_pools_unchanged() -> None:
    buf = fake_buffer("cfdg", min_online=0)
    buf.add(make_batch(3, marker=1.0))
    buf.refresh()
    before = buf.pool_data("synthetic_offline").as_dict()
    gen = buf.generator
    orig = gen.sample  # type: ignore[union-attr]

    def bad_sample(n: int, label: Any = "online", **kw: Any) -> TransitionBatch:
        b = orig(n, label, **kw)
        if label == "online":
            b.rew[0] = np.nan
        return b

    gen.sample = bad_sample  # type: ignore[union-attr,method-assign]
    with pytest.raises(TransitionError, match="synthetic_online"):
        buf.refresh()
    np.testing.assert_array_equal(buf.pool_data("synthetic_offline").obs, before["obs"])
    assert buf.num_refreshes == 1


# --- save / load ----------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_off=st.integers(0, 30), n_on=st.integers(0, 40), refreshed=st.booleans(), draws=st.integers(0, 3),
       mode=st.sampled_from(["cfdg", "unconditional", "none"]))
def test_save_load_round_trips_exactly(tmp_path: Path, n_off: int, n_on: int, refreshed: bool, draws: int,
                                       mode: str) -> None:
    buf = fake_buffer(mode, online_capacity=16, seed=7, min_online=0)
    if n_off:
        buf.add_offline(make_batch(n_off, marker=0.0))
    if n_on:
        buf.add(make_batch(n_on, marker=1.0, start=100))
    if refreshed and mode != "none" and (n_off or n_on):
        buf.refresh()
    for _ in range(draws):
        if n_off or n_on:
            buf.sample(9)
    path = tmp_path / "buf.safetensors"
    buf.save(path)
    back = AugmentedReplayBuffer.load(path, generator_cls=FakeGenerator, expected_config=buf.config,
                                      obs_dim=OBS, act_dim=ACT)
    assert back.config == buf.config and back.pool_sizes == buf.pool_sizes
    assert back.online_added_total == buf.online_added_total and back.num_refreshes == buf.num_refreshes
    assert back.refresh_due() == buf.refresh_due() and back.offline_capacity == buf.offline_capacity
    for name in SOURCE_NAMES:
        assert_batches_equal(back.pool_data(name), buf.pool_data(name))
    if mode != "none" and buf._generator is not None:
        assert back.generator.num_fits == buf.generator.num_fits  # type: ignore[union-attr]
    if n_off or n_on:
        for _ in range(3):
            assert_batches_equal(back.sample(33), buf.sample(33))
    # FIFO continues identically after the restore (ring position restored)
    buf.add(make_batch(5, marker=1.0, start=500))
    back.add(make_batch(5, marker=1.0, start=500))
    assert_batches_equal(back.online_data(), buf.online_data())


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    buf = filled(3)
    path = tmp_path / "b.safetensors"
    buf.save(path)
    buf.add(make_batch(4, marker=1.0))
    buf.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]  # no temp files left
    back = AugmentedReplayBuffer.load(path, generator_cls=FakeGenerator)
    assert back.online_added_total == buf.online_added_total


def test_load_rejects_mismatched_config_dims_and_garbage(tmp_path: Path) -> None:
    buf = filled(0)
    path = tmp_path / "b.safetensors"
    buf.save(path)
    with pytest.raises(BufferFileError, match="ratio_online"):
        AugmentedReplayBuffer.load(path, generator_cls=FakeGenerator,
                                   expected_config=buf.config.replace(ratio_online=2.0))
    with pytest.raises(BufferFileError, match="obs_dim"):
        AugmentedReplayBuffer.load(path, generator_cls=FakeGenerator, obs_dim=OBS + 1)
    with pytest.raises(BufferFileError, match="act_dim"):
        AugmentedReplayBuffer.load(path, generator_cls=FakeGenerator, act_dim=ACT + 1)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="safetensors"):
        AugmentedReplayBuffer.load(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something else"})
    with pytest.raises(BufferFileError, match="not a saved AugmentedReplayBuffer"):
        AugmentedReplayBuffer.load(other)
    with pytest.raises(FileNotFoundError):
        AugmentedReplayBuffer.load(tmp_path / "missing.safetensors")


def test_sample_returns_float32_fields_owned_by_the_batch() -> None:
    buf = filled(0)
    batch = buf.sample(32)
    for name in ("obs", "act", "rew", "next_obs", "done"):
        arr = getattr(batch, name)
        assert arr.dtype == np.float32, name
        torch.from_numpy(arr)  # strided views must be accepted by torch
    # writing into a batch must not corrupt the stored pools
    batch.rew[:] = 99.0
    batch.obs[:] = 99.0
    assert not np.any(buf.pool_data(0).rew == 99.0) and not np.any(buf.pool_data(3).obs == 99.0)
    assert batch.timeout is not None and batch.timeout.dtype == np.bool_
    assert batch.source is not None and batch.source.dtype == np.int8
    assert batch.obs.shape == (32, OBS) and batch.act.shape == (32, ACT) and batch.rew.shape == (32,)
    assert math.isclose(float(np.mean(batch.source == 0)), 11 / 32)


def test_state_tensors_with_prefix_embed_in_a_larger_state() -> None:
    buf = filled(4)
    tensors, meta = buf.state_tensors(prefix="replay.")
    assert all(k.startswith("replay.") for k in [*tensors, *meta])
    tensors["other.weight"] = torch.ones(3)  # a host's own state next to ours
    back = AugmentedReplayBuffer.from_state_tensors(tensors, meta, prefix="replay.", generator_cls=FakeGenerator)
    assert_batches_equal(back.sample(20), buf.sample(20))
    with pytest.raises(BufferFileError, match="not a saved"):
        AugmentedReplayBuffer.from_state_tensors(tensors, meta, generator_cls=FakeGenerator)
