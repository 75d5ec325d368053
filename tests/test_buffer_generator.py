"""AugmentedReplayBuffer with the real CFDGGenerator (tiny network): refresh, modes, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cfdg_aug.buffer import AugmentedReplayBuffer, RefreshStats
from cfdg_aug.config import CFDGConfig
from cfdg_aug.generator import CFDGGenerator, FitStats
from cfdg_aug.transitions import SOURCE_NAMES, TransitionBatch

OBS, ACT = 3, 2


def tiny(**kw: object) -> CFDGConfig:
    base: dict[str, object] = dict(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                                   synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50,
                                   min_online=50, sample_batch_size=64)
    base.update(kw)
    return CFDGConfig.small(**base)  # type: ignore[arg-type]


def data(n: int, shift: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(shift, 1.0, size=(n, OBS))
    return {"obs": obs, "act": rng.uniform(-1, 1, size=(n, ACT)), "rew": rng.normal(shift, 0.5, size=n),
            "next_obs": obs + 0.1, "done": (rng.random(n) < 0.1).astype(np.float32)}


def filled(mode: str, seed: int = 0) -> AugmentedReplayBuffer:
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=200, config=tiny(augmentation=mode), seed=seed)
    buf.add_offline(data(120, 0.0, 1))
    return buf


def test_cfdg_refresh_on_schedule_fills_and_regenerates_both_pools() -> None:
    seen: list[RefreshStats] = []
    buf = filled("cfdg")
    buf.add_hook(seen.append)
    assert isinstance(buf.generator, CFDGGenerator) and buf.generator.conditional
    for step in range(49):
        buf.add(**{k: v[step] for k, v in data(49, 3.0, 2).items()})
        assert buf.maybe_refresh() is None
    assert buf.pool_sizes["synthetic_online"] == 0
    buf.add(**data(1, 3.0, 3))
    stats = buf.maybe_refresh()
    assert stats is not None and seen == [stats]
    assert isinstance(stats.fit, FitStats) and stats.fit.n_offline == 120 and stats.fit.n_online == 50
    assert stats.guidance == buf.config.guidance and stats.fit_seconds > 0 and stats.sample_seconds > 0
    assert buf.pool_sizes == {"real_offline": 120, "real_online": 50, "synthetic_offline": 16,
                              "synthetic_online": 64}
    first = buf.pool_data("synthetic_online")
    assert np.isfinite(first.obs).all() and set(np.unique(first.done)) <= {0.0, 1.0}
    batch = buf.sample(96)
    assert tuple(np.bincount(batch.source, minlength=4)) == buf.source_counts(96) == (32, 32, 6, 26)
    buf.add(**data(50, 3.0, 4))
    assert buf.maybe_refresh() is not None and buf.num_refreshes == 2
    second = buf.pool_data("synthetic_online")
    assert not np.array_equal(first.obs, second.obs), "synthetic pool must be regenerated at a refresh"


def test_unconditional_mode_uses_an_unlabelled_generator_and_one_pool() -> None:
    buf = filled("unconditional")
    buf.add(**data(50, 3.0, 2))
    stats = buf.maybe_refresh()
    assert stats is not None and stats.guidance is None
    assert buf.generator is not None and not buf.generator.conditional
    assert buf.pool_sizes["synthetic_offline"] == 0 and buf.pool_sizes["synthetic_online"] == 80
    assert set(np.unique(buf.sample(60).source)) == {0, 1, 3}


def test_none_mode_has_no_generator_and_no_synthetic_rows() -> None:
    buf = filled("none")
    buf.add(**data(150, 3.0, 2))
    assert buf.generator is None and buf.maybe_refresh() is None
    assert set(np.unique(buf.sample(500).source)) == {0, 1}


@pytest.mark.parametrize("mode", ["cfdg", "unconditional"])
def test_save_load_restores_generator_and_samples_identically(tmp_path: Path, mode: str) -> None:
    buf = filled(mode, seed=5)
    buf.add(**data(60, 3.0, 2))
    buf.refresh()
    buf.sample(10)
    path = tmp_path / "buf.safetensors"
    buf.save(path)
    back = AugmentedReplayBuffer.load(path, expected_config=buf.config, obs_dim=OBS, act_dim=ACT)
    for name in SOURCE_NAMES:
        a, b = buf.pool_data(name), back.pool_data(name)
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.done, b.done)
    for _ in range(3):
        x, y = buf.sample(40), back.sample(40)
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.source, y.source)
    # the restored generator is the same model in the same RNG state: the next refresh agrees too
    buf.add(**data(40, 3.0, 9))
    back.add(**data(40, 3.0, 9))
    sa, sb = buf.maybe_refresh(), back.maybe_refresh()
    assert sa is not None and sb is not None
    np.testing.assert_allclose(buf.pool_data("synthetic_online").obs, back.pool_data("synthetic_online").obs,
                               rtol=1e-5, atol=1e-5)


def test_buffer_accepts_a_pretrained_generator() -> None:
    gen = CFDGGenerator(OBS, ACT, tiny(), seed=3)
    gen.fit(TransitionBatch.from_arrays(**data(80, 0.0, 1)))
    buf = AugmentedReplayBuffer(OBS, ACT, config=tiny(), generator=gen)
    assert buf.generator is gen


def test_a_generator_whose_config_differs_in_what_it_reads_is_refused_naming_the_fields() -> None:
    gen = CFDGGenerator(OBS, ACT, tiny(), seed=3)
    # train_steps would be the generator's, so the buffer's 500 would be ignored: refused, naming both values.
    with pytest.raises(ValueError, match=r"train_steps \(generator 30, config 500\).*config=generator.config"):
        AugmentedReplayBuffer(OBS, ACT, config=tiny(train_steps=500), generator=gen)
    # What only the buffer reads (the mix, pool sizes, schedule, guidance) may differ.
    buf = AugmentedReplayBuffer(OBS, ACT, config=tiny(refresh_every=80, synthetic_online_size=32, guidance=2.0,
                                                      ratio_online=0.4), generator=gen)
    assert buf.generator is gen and buf.config.refresh_every == 80



def test_auto_guidance_is_chosen_on_rows_held_out_of_the_fit() -> None:
    cfg = tiny(guidance="auto", guidance_candidates=(0.0, 1.0, 3.0), train_steps=60)
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=400, config=cfg, seed=0)
    buf.add_offline(data(300, -1.0, 1))
    buf.add(data(200, 1.0, 2))
    stats = buf.refresh()
    choice = buf.last_guidance_choice
    assert choice is not None and stats.guidance in (0.0, 1.0, 3.0)
    assert buf.generator is not None and buf.generator.default_guidance == stats.guidance
    # 10% of each real pool was kept out of the fit and used only for scoring
    assert stats.fit is not None and (stats.fit.n_offline, stats.fit.n_online) == (270, 180)
    assert choice["n_heldout_online"] == 20 and len(choice["rows"]) == 3


def test_cfdg_leaves_the_synthetic_pool_of_an_untrained_label_empty() -> None:
    """Drop-in use without offline data: the offline label was never trained, so no offline-like
    samples are generated and the batch share goes to the real pools."""
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=200, config=tiny(), seed=0)
    buf.add(data(60, 1.0, 2))
    stats = buf.refresh()
    assert stats.n_synthetic_offline == 0 and stats.n_synthetic_online == 64
    counts = buf.source_counts(90)
    assert counts[0] == 0 and counts[2] == 0 and counts[1] + counts[3] == 90
