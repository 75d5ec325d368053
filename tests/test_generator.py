"""CFDGGenerator: guidance moves samples toward the asked label, persistence, errors."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cfdg_aug.config import CFDGConfig
from cfdg_aug.generator import CFDGGenerator, CheckpointError
from cfdg_aug.transitions import TransitionBatch, TransitionError

OBS, ACT = 3, 2


def _gaussian_batch(n: int, mean: float, seed: int) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(mean, 1.0, (n, OBS))
    return TransitionBatch.from_arrays(
        obs, rng.normal(mean, 1.0, (n, ACT)), rng.normal(mean, 1.0, n), obs + rng.normal(0, 0.1, (n, OBS)),
        rng.random(n) < 0.1,
    )


def _tiny(**kw: object) -> CFDGConfig:
    base: dict[str, object] = dict(width=64, depth=2, train_steps=1500, num_sample_steps=16, sample_batch_size=2000,
                                   batch_size=256, lr=3e-4, redraw_steps=4, redraw_resample=2)  # cheap redraws
    base.update(kw)
    return CFDGConfig.small(**base)


@pytest.fixture(scope="module")
def toy() -> tuple[TransitionBatch, TransitionBatch, CFDGGenerator]:
    offline, online = _gaussian_batch(2000, -1.0, 1), _gaussian_batch(2000, 1.0, 2)
    gen = CFDGGenerator(OBS, ACT, _tiny(), seed=0)
    gen.fit(offline, online)
    return offline, online, gen


def _mmd(a: np.ndarray, b: np.ndarray, bandwidth: float = 2.0) -> float:
    """Biased MMD^2 with a Gaussian kernel exp(-||x - y||^2 / (2 h^2))."""
    def k(x: np.ndarray, y: np.ndarray) -> float:
        d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        return float(np.exp(-d / (2 * bandwidth**2)).mean())

    return k(a, a) + k(b, b) - 2 * k(a, b)


def test_online_label_samples_are_closer_to_online_data(toy) -> None:  # type: ignore[no-untyped-def]
    offline, online, gen = toy
    s = gen.sample(600, "online", guidance=0.0).flatten()
    on, off = online.flatten()[:600], offline.flatten()[:600]
    assert _mmd(s, on) < 0.25 * _mmd(s, off)
    s_off = gen.sample(600, "offline", guidance=0.0).flatten()
    assert _mmd(s_off, off) < 0.25 * _mmd(s_off, on)


def test_raising_guidance_moves_samples_further_toward_the_label(toy) -> None:  # type: ignore[no-untyped-def]
    _, _, gen = toy
    means = [gen.sample(1500, "online", guidance=w).obs.mean() for w in (0.0, 1.0, 3.0)]
    # Guided samples sit further toward the online label (mean +1, the offline one is -1) than
    # unguided ones, by more than the sampling noise of a 1,500-row mean (~0.03). Past w = 1 this
    # small model's extrapolation (1 + w) F(c) - w F(null) stops moving the mean further.
    assert means[1] - means[0] > 0.1 and means[2] - means[0] > 0.05


def test_unconditional_mode_matches_pooled_data() -> None:
    offline, online = _gaussian_batch(2000, -1.0, 1), _gaussian_batch(2000, 1.0, 2)
    gen = CFDGGenerator(OBS, ACT, _tiny(augmentation="unconditional"), seed=0)
    assert not gen.conditional
    gen.fit(offline, online)
    s = gen.sample(1500, None)
    pooled = np.concatenate([offline.obs, online.obs])
    assert abs(s.obs.mean() - pooled.mean()) < 0.2
    assert abs(s.obs.std() - pooled.std()) < 0.2
    with pytest.raises(ValueError, match="label"):
        gen.sample(10, "online")


def test_samples_are_postprocessed(toy) -> None:  # type: ignore[no-untyped-def]
    offline, online, gen = toy
    s = gen.sample(500, "online", guidance=3.0)
    assert set(np.unique(s.done)) <= {0.0, 1.0}
    real_rew = np.concatenate([offline.rew, online.rew])
    assert s.rew.min() >= real_rew.min() and s.rew.max() <= real_rew.max()
    assert s.obs.dtype == np.float32 and s.obs.shape == (500, OBS) and s.act.shape == (500, ACT)


def test_same_seed_gives_same_samples() -> None:
    data = _gaussian_batch(300, 0.0, 3)
    cfg = _tiny(train_steps=50)
    a, b = CFDGGenerator(OBS, ACT, cfg, seed=7), CFDGGenerator(OBS, ACT, cfg, seed=7)
    a.fit(data), b.fit(data)
    np.testing.assert_array_equal(a.sample(50, "offline").flatten(), b.sample(50, "offline").flatten())
    c = CFDGGenerator(OBS, ACT, cfg, seed=8)
    c.fit(data)
    assert not np.array_equal(a.sample(50, "offline").flatten(), c.sample(50, "offline").flatten())


def test_save_load_sample_identical_and_warm_start_continues(tmp_path: Path) -> None:
    data = _gaussian_batch(300, 0.0, 3)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=60, warm_start=True, warm_start_steps=20), seed=1)
    gen.fit(data)
    path = tmp_path / "gen.safetensors"
    gen.save(path)
    loaded = CFDGGenerator.load(path)
    np.testing.assert_array_equal(gen.sample(40, "online").flatten(), loaded.sample(40, "online").flatten())
    # resuming training from the checkpoint is exact too (optimiser state and RNG restored)
    s1, s2 = gen.fit(data, data), loaded.fit(data, data)
    assert s1.warm_started and s2.warm_started and s1.steps == 20
    assert s1.loss_history == s2.loss_history
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_warm_refit_trains_at_warm_start_lr_and_a_cold_fit_at_lr() -> None:
    data = _gaussian_batch(300, 0.0, 3)
    cfg = _tiny(train_steps=30, warm_start=True, warm_start_steps=10, lr=2e-3, lr_schedule="constant")
    for refit_lr, expected in ((None, 2e-3), (5e-4, 5e-4)):
        gen = CFDGGenerator(OBS, ACT, cfg.replace(warm_start_lr=refit_lr), seed=1)
        gen.fit(data)
        assert gen.optimizer.param_groups[0]["lr"] == 2e-3
        refit = gen.fit(data, data)
        assert refit.warm_started and not refit.diverged  # a divergence restores the optimiser too
        assert gen.optimizer.param_groups[0]["lr"] == expected
    # Under the cosine schedule the refit's steps decay from warm_start_lr, not from lr: same first
    # fit, refits differing only in their peak take different steps.
    a, b = (CFDGGenerator(OBS, ACT, cfg.replace(lr_schedule="cosine", warm_start_lr=x), seed=1) for x in (None, 5e-4))
    a.fit(data), b.fit(data)
    assert a.last_final_loss == b.last_final_loss
    assert a.fit(data, data).loss_history[1:] != b.fit(data, data).loss_history[1:]


def test_two_generators_restored_from_one_state_train_apart() -> None:
    """Restoring from in-memory state tensors copies them: training one restored generator (Adam
    updates its moments in place) leaves the tensors, and so a second restore, unchanged."""
    data = _gaussian_batch(300, 0.0, 3)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=60, warm_start=True, warm_start_steps=20), seed=1)
    gen.fit(data)
    tensors, meta = gen.state_tensors()
    before = {k: v.clone() for k, v in tensors.items()}
    first = CFDGGenerator.from_state_tensors(tensors, meta)
    first.fit(data, data)
    assert all(torch.equal(tensors[k], before[k]) for k in before)
    # so a second restore continues exactly as the first did
    second = CFDGGenerator.from_state_tensors(tensors, meta)
    fresh = CFDGGenerator.from_state_tensors(before, meta)
    assert second.fit(data, data).loss_history == fresh.fit(data, data).loss_history
    # The normaliser and the data range are the restored generator's own arrays too: changing the
    # caller's tensors in place afterwards changes nothing the generator samples with.
    third = CFDGGenerator.from_state_tensors(tensors, meta)
    mean, low = third.normalizer.mean.copy(), third.data_low.copy()
    for k, v in tensors.items():
        if "normalizer." in k or k.endswith(("data_low", "data_high")):
            v.add_(1.0)
    assert np.array_equal(third.normalizer.mean, mean) and np.array_equal(third.data_low, low)


def test_fit_stats_time_each_model_it_trains_and_refresh_stats_report_them() -> None:
    from cfdg_aug._background import fit_stats_from_json
    from cfdg_aug.buffer import RefreshStats
    from cfdg_aug.generator import FIT_STAGES

    data = _gaussian_batch(300, 0.0, 0)
    full = CFDGGenerator(OBS, ACT, _tiny(train_steps=20, dynamics_steps=20, behaviour_steps=20), seed=0)
    stats = full.fit(data, data)
    # the small profile trains all four: termination classifier, dynamics, behaviour filter, diffusion
    assert tuple(stats.stage_seconds) == FIT_STAGES
    assert all(v > 0 for v in stats.stage_seconds.values())
    assert sum(stats.stage_seconds.values()) <= stats.seconds
    bare = CFDGGenerator(OBS, ACT, _tiny(train_steps=20, next_obs_target="delta", behaviour_quantile=None),
                         seed=0, termination=lambda s, a, s2: np.zeros(len(s), dtype=bool))
    assert tuple(bare.fit(data).stage_seconds) == ("generator",)
    # a background refresh sends its stats as JSON: the stages survive the trip
    assert fit_stats_from_json(dataclasses.asdict(stats)).stage_seconds == stats.stage_seconds
    d = RefreshStats(refresh_index=1, online_count=0, fit=stats, n_synthetic_offline=0, n_synthetic_online=0,
                     fit_seconds=stats.seconds, sample_seconds=0.0, guidance=0.0).as_dict()
    assert {k: d[k] for k in d if k.startswith("fit_seconds_")} == {
        f"fit_seconds_{k}": v for k, v in stats.stage_seconds.items()}
    d_none = RefreshStats(refresh_index=1, online_count=0, fit=None, n_synthetic_offline=0, n_synthetic_online=0,
                          fit_seconds=0.0, sample_seconds=0.0, guidance=None).as_dict()
    assert all(d_none[f"fit_seconds_{k}"] is None for k in FIT_STAGES)


def test_mismatched_checkpoint_errors(tmp_path: Path) -> None:
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=5), seed=0)
    gen.fit(_gaussian_batch(50, 0.0, 0))
    path = tmp_path / "gen.safetensors"
    gen.save(path)
    with pytest.raises(CheckpointError, match="width"):
        CFDGGenerator.load(path, expected_config=_tiny(train_steps=5, width=128))
    with pytest.raises(CheckpointError, match="obs_dim"):
        CFDGGenerator.load(path, expected_dims=(OBS + 1, ACT))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk"):
        CFDGGenerator.load(tmp_path / "junk.safetensors")


def test_fit_rejects_bad_input_naming_the_field() -> None:
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=5), seed=0)
    bad = _gaussian_batch(20, 0.0, 0)
    bad.rew[3] = np.nan
    with pytest.raises(TransitionError, match="rew"):
        gen.fit(bad)
    wide = _gaussian_batch(20, 0.0, 0)
    with pytest.raises(TransitionError, match="obs"):
        CFDGGenerator(OBS + 1, ACT, _tiny(train_steps=5)).fit(wide)
    with pytest.raises(ValueError, match="at least one"):
        gen.fit(None, None)
    with pytest.raises(RuntimeError, match="fitted"):
        gen.sample(3)
    gen.fit(_gaussian_batch(20, 0.0, 0))
    with pytest.raises(ValueError, match="guidance"):
        gen.sample(3, guidance=-1.0)
    with pytest.raises(ValueError, match="label"):
        gen.sample(3, "expert")  # type: ignore[arg-type]


def test_cold_refit_restarts_the_ema_warm_up() -> None:
    """Without warm starts every fit re-initialises the network; its EMA must follow the new
    weights from the start instead of averaging them with the random initialisation."""
    data = _gaussian_batch(200, 0.0, 4)
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=40, ema_decay=0.999, warm_start=False, lr=3e-2, lr_schedule="constant"), seed=0)
    gen.fit(data)
    gen.total_steps = 100_000  # a long history: a warm-up keyed on total steps would be saturated at 0.999
    gen.fit(data)
    assert gen._ema_steps == 40
    # after 40 warm-up steps the EMA is a recent average of the new weights, not of the random init
    ema = torch.cat([p.detach().flatten() for p in gen.ema.parameters()])
    model = torch.cat([p.detach().flatten() for p in gen.model.parameters()])
    assert float((ema - model).norm() / model.norm()) < 0.2  # ~0.06 with the restart, ~0.7 without


def test_checkpoint_rng_from_another_device_is_reseeded_not_crashed(tmp_path: Path) -> None:
    import json

    from cfdg_aug.generator import atomic_save_safetensors, load_safetensors

    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=5), seed=3)
    gen.fit(_gaussian_batch(50, 0.0, 0))
    path = tmp_path / "gen.safetensors"
    gen.save(path)
    tensors, meta = load_safetensors(path)
    state = json.loads(meta["state"])
    state["rng_device"] = "cuda"  # as if saved on a GPU: a 16-byte CUDA RNG state
    meta["state"] = json.dumps(state)
    tensors["rng"] = tensors["rng"][:16].clone()
    atomic_save_safetensors(tensors, meta, path)
    with pytest.warns(UserWarning, match="reseeded"):
        a = CFDGGenerator.load(path)
    b = CFDGGenerator.load(path)
    np.testing.assert_array_equal(a.sample(5, "online").flatten(), b.sample(5, "online").flatten())


def test_bf16_sampling_follows_float32_sampling_from_the_same_noise(toy) -> None:  # type: ignore[no-untyped-def]
    """Same trained model and sampler noise, bf16 network: the samples move by a small fraction of
    the data's spread and keep its statistics; guidance still separates the labels."""
    offline, online, gen = toy
    state = gen._rng.get_state()
    ref = gen.sample_normalized(1000, "online", guidance=1.0, precision="float32")
    gen._rng.set_state(state)
    low = gen.sample_normalized(1000, "online", guidance=1.0, precision="bfloat16")
    assert low.dtype == np.float32 and low.shape == ref.shape
    assert 0 < np.abs(low - ref).mean() < 0.05  # normalised units: data std is 1
    np.testing.assert_allclose(low.mean(0), ref.mean(0), atol=0.03)
    s_on = gen.sample(600, "online", guidance=1.0, precision="bfloat16").flatten()
    assert _mmd(s_on, online.flatten()[:600]) < 0.25 * _mmd(s_on, offline.flatten()[:600])


def test_sampling_precision_is_validated() -> None:
    from cfdg_aug.config import ConfigError

    with pytest.raises(ConfigError, match="sampling_precision"):
        CFDGConfig.small(sampling_precision="float16")
    gen = CFDGGenerator(OBS, ACT, _tiny(train_steps=5), seed=0)
    gen.fit(_gaussian_batch(100, 0.0, 3))
    with pytest.raises(ValueError, match="precision"):
        gen.sample(10, "online", precision="fp8")


def _compile_pair(**kw: object) -> tuple[CFDGGenerator, CFDGGenerator, TransitionBatch]:
    data = _gaussian_batch(300, 0.0, 4)
    cfg = _tiny(width=32, train_steps=30, num_sample_steps=6, sample_batch_size=128, warm_start=False, sampler="heun", s_churn=10.0,
                sampling_precision="float32", **kw)
    eager, compiled = CFDGGenerator(OBS, ACT, cfg, seed=0), CFDGGenerator(OBS, ACT, cfg, seed=0)
    eager.fit(data, data)
    compiled.fit(data, data)
    return eager, compiled, data


def test_compiled_sampling_matches_eager_and_follows_refits() -> None:
    """The compiled copy gives eager's samples (up to fused-kernel rounding) and leaves the RNG where
    eager leaves it, also for an uneven n (a padded last chunk, with churn noise); after a
    from-scratch refit it samples from the new network."""
    from torch._dynamo.utils import counters

    eager, compiled, data = _compile_pair()
    graphs_before = counters["stats"]["unique_graphs"]
    for refit in (False, True):
        if refit:
            for g in (eager, compiled):
                g.fit(data, data, steps=30)
            assert compiled.num_fits == 2 and not compiled.config.warm_start  # a new network, not a warm start
        for n in (256, 200, 77):  # 200 = 128 + 72: the last chunk runs padded to 128 rows
            ref = eager.sample_normalized(n, "online", guidance=1.0)
            fast = compiled.sample_normalized(n, "online", guidance=1.0, compile=True)
            np.testing.assert_allclose(fast, ref, atol=1e-4, err_msg=f"n={n}, refit={refit}")
    state = compiled._rng.get_state()
    first = compiled.sample_normalized(200, "online", guidance=1.0, compile=True)
    compiled._rng.set_state(state)
    np.testing.assert_array_equal(compiled.sample_normalized(200, "online", guidance=1.0, compile=True), first)
    net = compiled._sampling_nets[("float32", True)]
    assert net.compiled and net._rows["head"] == 2 * 128  # guided: both branches of a full chunk
    assert len(compiled._sampling_nets) == 1  # one cached copy, synced in place across refits
    assert counters["stats"]["unique_graphs"] > graphs_before  # compiled code really ran
    restored = pickle.loads(pickle.dumps(compiled))  # compiled code is a cache, left out of pickles
    assert restored._sampling_nets == {} and restored.sample(10, "online", compile=True).obs.shape == (10, OBS)


def test_compile_failure_warns_and_samples_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn, **_: object):  # type: ignore[no-untyped-def]
        def run(*a: object, **k: object) -> torch.Tensor:
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, compiled, _ = _compile_pair()
    ref = eager.sample_normalized(128, "online", guidance=1.0)
    with pytest.warns(UserWarning, match="torch.compile of the sampling network failed"):
        fast = compiled.sample_normalized(128, "online", guidance=1.0, compile=True)
    np.testing.assert_allclose(fast, ref, atol=1e-6)  # eager copy of the same float32 weights
    assert not compiled._sampling_nets[("float32", True)].compiled


def test_boolean_config_fields_reject_non_booleans() -> None:
    from cfdg_aug.config import ConfigError

    with pytest.raises(ConfigError, match="sampling_compile must be True or False, got 'yes'"):
        CFDGConfig.small(sampling_compile="yes")
    with pytest.raises(ConfigError, match="warm_start"):
        CFDGConfig.small(warm_start=1)


def test_compiled_training_matches_eager_and_survives_refits_and_pickling() -> None:
    """training_compile runs the same arithmetic (up to fused-kernel rounding): same losses and
    weights after the same steps from the same seed; a cold refit compiles the new network."""
    from torch._dynamo.utils import counters

    data = _gaussian_batch(300, 0.0, 4)
    cfg = _tiny(width=32, train_steps=20, warm_start=False, bf16_autocast=False, sampling_precision="float32")
    eager = CFDGGenerator(OBS, ACT, cfg, seed=0)
    fast = CFDGGenerator(OBS, ACT, cfg.replace(training_compile=True), seed=0)
    graphs_before = counters["stats"]["unique_graphs"]
    for _ in range(2):  # the second fit is cold (warm_start=False): a new network to compile
        a, b = eager.fit(data, data), fast.fit(data, data)
        np.testing.assert_allclose(b.loss_history, a.loss_history, rtol=1e-3, atol=1e-4)
        for p_eager, p_fast in zip(eager.model.parameters(), fast.model.parameters(), strict=True):
            torch.testing.assert_close(p_fast, p_eager, rtol=1e-3, atol=1e-4)
    assert counters["stats"]["unique_graphs"] > graphs_before and not fast._training_compile_failed
    assert fast._compiled_loss is not None and fast._compiled_loss[0] is fast.model
    restored = pickle.loads(pickle.dumps(fast))
    assert restored._compiled_loss is None and restored.fit(data, data, steps=3).steps == 3
