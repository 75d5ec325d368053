"""Datasets: loaders, validation errors, normalised scores, maker, physics check, Minari round trip."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cfdg_aug.datasets import (
    DatasetError,
    OfflineDataset,
    dataset_from_arrays,
    embedded_dataset_path,
    env_family,
    load_d4rl,
    load_dataset,
    load_embedded,
    normalized_score,
    physics_check,
    write_d4rl,
)
from cfdg_aug.datasets.d4rl import d4rl_url
from cfdg_aug.datasets.scores import REF_SCORES
from cfdg_aug.transitions import TransitionBatch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_HOPPER = SHARED / "datasets" / "hopper-medium-50k.hdf5"
SHARED_MINARI = SHARED / "datasets" / "minari"
HOPPER_POLICY = SHARED / "policies" / "tqc" / "Hopper-v3_1" / "Hopper-v3.zip"

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def embedded() -> OfflineDataset:
    return load_embedded()


@pytest.fixture
def small_file(tmp_path: Path, embedded: OfflineDataset) -> Path:
    """A 400-row D4RL file cut from the embedded set (crosses an episode boundary)."""
    return write_d4rl(tmp_path / "small.hdf5", embedded.subset(slice(0, 400)))


def _check_against_attrs(ds: OfflineDataset) -> None:
    a = ds.attrs
    assert len(ds) == a["stats_n_transitions"]
    assert int(ds.terminals.sum()) == a["stats_n_terminals"]
    assert int(ds.timeouts.sum()) == a["stats_n_timeouts"]
    eps = ds.episodes()
    assert len(eps) == a["stats_n_episodes_total"]
    rets = ds.episode_returns()
    assert rets.size == a["stats_n_episodes_complete"]
    np.testing.assert_allclose(rets.mean(), a["stats_mean_return"], rtol=1e-6)
    np.testing.assert_allclose(rets.std(), a["stats_std_return"], rtol=1e-5)
    np.testing.assert_allclose(rets.min(), a["stats_min_return"], rtol=1e-6)
    assert ds.has_partial_tail() == bool(a["last_episode_partial"])
    assert eps[-1].stop - eps[-1].start == a["stats_partial_tail_steps"]
    np.testing.assert_allclose(normalized_score(ds.env_id, rets.mean()), a["stats_normalized_score"], rtol=1e-6)
    # Episodes tile the data; each complete one ends on exactly one flag and has none inside.
    ends = ds.terminals | ds.timeouts
    assert eps[0].start == 0 and eps[-1].stop == len(ds)
    for prev, nxt in zip(eps, eps[1:], strict=False):
        assert prev.stop == nxt.start
    for sl in eps[:-1] if ds.has_partial_tail() else eps:
        assert ends[sl.stop - 1] and not ends[sl.start:sl.stop - 1].any()
    # Within an episode, next_observations[t] is observations[t+1].
    for sl in eps[:5]:
        np.testing.assert_array_equal(ds.next_observations[sl][:-1], ds.observations[sl][1:])


def test_embedded_set_counts_boundaries_and_returns_match_file_attributes(embedded: OfflineDataset) -> None:
    assert embedded_dataset_path().stat().st_size <= 5_000_000
    assert embedded.env_id == "Hopper-v4" and embedded.obs_dim == 11 and embedded.act_dim == 3
    assert embedded.observations.dtype == np.float32 and embedded.terminals.dtype == np.bool_
    assert embedded.infos_qpos is not None and embedded.infos_qpos.shape == (len(embedded), 6)
    _check_against_attrs(embedded)
    # "medium": mediocre but learnable behaviour.
    assert 30 <= embedded.attrs["stats_normalized_score"] <= 50
    for key in ("command", "policy_zip_sha256", "noise", "seed", "version_mujoco", "version_gymnasium"):
        assert key in embedded.attrs


@pytest.mark.skipif(not SHARED_HOPPER.is_file(), reason="shared datasets not present")
def test_shared_hopper_file_counts_and_returns_match_its_attributes() -> None:
    _check_against_attrs(load_d4rl(SHARED_HOPPER))


def test_load_dataset_specs_resolve_embedded_path_and_d4rl_name(tmp_path: Path, small_file: Path) -> None:
    assert len(load_dataset("embedded")) == len(load_dataset("hopper-medium-embedded")) == 28000
    assert len(load_dataset(str(small_file))) == 400
    shutil.copy(small_file, tmp_path / "hopper-medium-v2.hdf5")
    ds = load_d4rl("hopper-medium-v2", cache_dir=tmp_path)
    assert len(ds) == 400
    with pytest.raises(FileNotFoundError, match="hopper-expert-v2"):
        load_d4rl("hopper-expert-v2", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        load_dataset(str(tmp_path / "nope.hdf5"))
    assert d4rl_url("hopper-medium-replay-v2").endswith("gym_mujoco_v2/hopper_medium_replay-v2.hdf5")
    assert "ant_maze_v2" in d4rl_url("antmaze-large-diverse-v2")


def test_episodes_split_on_terminals_and_timeouts_with_a_partial_tail() -> None:
    n = 10
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[2] = True
    tout[5] = True  # a timeout ends an episode but is not a terminal
    ds = dataset_from_arrays(
        {"observations": np.zeros((n, 2)), "actions": np.zeros((n, 1)), "rewards": np.arange(n, dtype=float),
         "next_observations": np.zeros((n, 2)), "terminals": term, "timeouts": tout}, name="toy",
    )
    assert ds.episodes() == [slice(0, 3), slice(3, 6), slice(6, 10)]
    np.testing.assert_array_equal(ds.episode_returns(), [0 + 1 + 2, 3 + 4 + 5])
    np.testing.assert_array_equal(ds.episode_returns(complete_only=False), [3, 12, 6 + 7 + 8 + 9])
    tb = ds.to_transition_batch()
    assert isinstance(tb, TransitionBatch)
    np.testing.assert_array_equal(tb.done, term.astype(np.float32))
    np.testing.assert_array_equal(tb.timeout, tout)


def _corrupt(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    with h5py.File(path, "r+") as f:
        fn(f)


def test_missing_key_error_names_file_and_key(small_file: Path) -> None:
    _corrupt(small_file, lambda f: f.__delitem__("actions"))
    with pytest.raises(DatasetError, match=r"small\.hdf5.*'actions'.*missing"):
        load_d4rl(small_file)


def test_mismatched_lengths_error_names_file_and_key(small_file: Path) -> None:
    def cut(f: h5py.File) -> None:
        r = f["rewards"][:300]
        del f["rewards"]
        f["rewards"] = r

    _corrupt(small_file, cut)
    with pytest.raises(DatasetError, match=r"small\.hdf5.*'rewards'.*300 rows.*400"):
        load_d4rl(small_file)


@pytest.mark.parametrize("key", ["observations", "next_observations", "rewards", "infos/qvel"])
def test_nan_error_names_file_key_and_row(small_file: Path, key: str) -> None:
    def poison(f: h5py.File) -> None:
        a = f[key][()]
        a[17] = np.nan
        f[key][...] = a

    _corrupt(small_file, poison)
    with pytest.raises(DatasetError, match=rf"small\.hdf5.*'{key}'.*NaN.*row 17"):
        load_d4rl(small_file)


def test_wrong_dtype_and_non_binary_flags_are_rejected(small_file: Path) -> None:
    def bad_terminals(f: h5py.File) -> None:
        t = f["terminals"][()].astype(np.float32)
        t[3] = 0.5
        del f["terminals"]
        f["terminals"] = t

    _corrupt(small_file, bad_terminals)
    with pytest.raises(DatasetError, match=r"'terminals'.*0/1"):
        load_d4rl(small_file)
    with pytest.raises(DatasetError, match=r"'actions'.*float"):
        dataset_from_arrays({"observations": np.zeros((3, 2)), "actions": np.array([["a"], ["b"], ["c"]]),
                             "rewards": np.zeros(3), "next_observations": np.zeros((3, 2)),
                             "terminals": np.zeros(3, bool)}, name="x", source="mem")


def test_failed_write_keeps_the_existing_file(small_file: Path, embedded: OfflineDataset) -> None:
    before = small_file.read_bytes()
    bad = {"observations": np.full((5, 11), np.nan), "actions": np.zeros((5, 3)), "rewards": np.zeros(5),
           "next_observations": np.zeros((5, 11)), "terminals": np.zeros(5, bool)}
    with pytest.raises(DatasetError, match="observations"):
        write_d4rl(small_file, bad)
    assert small_file.read_bytes() == before
    assert not [p for p in small_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_file_without_next_observations_gets_them_from_the_following_row(small_file: Path) -> None:
    full = load_d4rl(small_file)
    _corrupt(small_file, lambda f: f.__delitem__("next_observations"))
    ds = load_d4rl(small_file)
    assert ds.attrs["next_observations_reconstructed"] is True
    assert len(ds) == len(full) - 1  # the last row has no successor (no timeouts in this slice)
    # D4RL's convention: after a terminal the following row is the next episode's reset (unused: done=1).
    inner = ~full.terminals[:-1]
    assert (~inner).sum() >= 1
    np.testing.assert_array_equal(ds.next_observations[inner], full.next_observations[:-1][inner])
    np.testing.assert_array_equal(ds.terminals, full.terminals[:-1])


# --- normalised scores ----------------------------------------------------------------------------
@pytest.mark.parametrize("env", ["hopper", "hopper-medium-v2", "Hopper-v4", "halfcheetah-expert-v2", "HalfCheetah-v4",
                                 "walker2d-random-v2", "Walker2d-v4", "ant-medium-v2", "Ant-v4",
                                 "antmaze-medium-play-v2", "AntMaze_Large_Diverse_GR-v4", "D4RL/antmaze/umaze-v1"])
def test_reference_random_and_expert_returns_score_0_and_100(env: str) -> None:
    lo, hi = REF_SCORES[env_family(env)]
    assert normalized_score(env, lo) == pytest.approx(0.0, abs=1e-12)
    assert normalized_score(env, hi) == pytest.approx(100.0, abs=1e-9)
    arr = normalized_score(env, np.array([lo, hi, (lo + hi) / 2]))
    np.testing.assert_allclose(arr, [0, 100, 50], atol=1e-9)


def test_env_family_distinguishes_ant_from_antmaze_and_rejects_unknown() -> None:
    assert env_family("Ant-v4") == "ant" and env_family("ant-expert-v2") == "ant"
    assert env_family("antmaze-large-play-v2") == "antmaze" and env_family("AntMaze_Medium-v4") == "antmaze"
    assert env_family("HalfCheetah-v4") == "halfcheetah" and env_family("mujoco/walker2d/medium-v0") == "walker2d"
    assert normalized_score("hopper", 3234.3) == pytest.approx(100)
    with pytest.raises(ValueError, match="pendulum"):
        env_family("pendulum-v1")


# --- physics check --------------------------------------------------------------------------------
def test_physics_check_real_transitions_match_to_float32_rounding(embedded: OfflineDataset) -> None:
    rep = physics_check(embedded, max_transitions=300)
    assert rep.method == "qpos_qvel" and rep.n_checked == 300
    assert rep.next_state_error.max() < 1e-6
    assert rep.reward_error.max() < 1e-6
    assert not rep.terminal_mismatch.any()


def test_physics_check_flags_perturbed_transitions(embedded: OfflineDataset, rng: np.random.Generator) -> None:
    sub = embedded.subset(slice(0, 300))
    bad = sub.subset(slice(None))
    bad.next_observations = sub.next_observations + rng.normal(0, 0.05, sub.next_observations.shape).astype(np.float32)
    bad.rewards = sub.rewards + 0.5
    rep = physics_check(bad)
    assert rep.next_state_error.min() > 1e-3
    assert rep.reward_error.min() > 1e-2
    # Changing the action changes the outcome: the simulator really steps with the stored action.
    bad2 = sub.subset(slice(None))
    bad2.actions = -sub.actions
    assert np.median(physics_check(bad2).next_state_error) > 1e-3


def test_physics_check_reconstructs_state_from_observations_and_skips_clipped_velocities(
    embedded: OfflineDataset,
) -> None:
    batch = embedded.to_transition_batch()[:600]
    rep = physics_check(batch, "hopper-medium-v2")
    assert rep.method == "reconstructed"
    assert rep.n_checked + rep.skipped.size == 600
    assert np.all(np.abs(batch.obs[rep.skipped, 5:]).max(axis=1) >= 10 * (1 - 1e-7))
    # float32-rounded start states: small errors, not the 1e-8 of qpos/qvel.
    assert rep.next_state_median < 1e-6 and rep.next_state_p90 < 1e-5
    assert rep.reward_error.max() < 1e-5
    with pytest.raises(ValueError, match="obs_dim"):
        physics_check(batch, "HalfCheetah-v4")


# --- dataset maker, Minari ------------------------------------------------------------------------
def test_maker_is_deterministic_and_records_provenance(tmp_path: Path) -> None:
    from cfdg_aug.datasets.make import make_dataset

    a = make_dataset("Hopper-v4", tmp_path / "a.hdf5", policy=None, n_transitions=200, noise=0.0, seed=3, progress=False)
    b = make_dataset("hopper-random-v2", tmp_path / "b.hdf5", policy=None, n_transitions=200, noise=0.0, seed=3,
                     progress=False)
    c = make_dataset("Hopper-v4", tmp_path / "c.hdf5", policy=None, n_transitions=200, noise=0.0, seed=4, progress=False)
    da, db, dc = load_d4rl(a), load_d4rl(b), load_d4rl(c)
    np.testing.assert_array_equal(da.observations, db.observations)
    np.testing.assert_array_equal(da.actions, db.actions)
    assert not np.array_equal(da.actions, dc.actions)
    assert da.attrs["seed"] == 3 and da.attrs["env_id"] == "Hopper-v4" and da.attrs["behaviour"] == "random"
    assert da.attrs["stats_n_transitions"] == 200 and "command" in da.attrs and "version_mujoco" in da.attrs
    assert da.terminals.sum() > 0  # random hopper falls quickly
    assert physics_check(da).next_state_error.max() < 1e-6


@pytest.mark.skipif(not HOPPER_POLICY.is_file(), reason="shared policies not present")
def test_policy_actor_matches_sb3_predict_and_maker_records_policy_hash(tmp_path: Path, embedded: OfflineDataset) -> None:
    from cfdg_aug.datasets.make import make_dataset
    from cfdg_aug.datasets.policy import SB3Actor, file_sha256

    actor = SB3Actor(HOPPER_POLICY, -np.ones(3), np.ones(3))
    sb3c = pytest.importorskip("sb3_contrib")
    import gymnasium as gym

    env = gym.make("Hopper-v4")
    model = sb3c.TQC.load(HOPPER_POLICY, custom_objects={
        "observation_space": env.observation_space, "action_space": env.action_space,
        "learning_rate": 0.0, "lr_schedule": lambda _: 0.0})
    obs = embedded.observations[:200]
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actor(obs), expected, atol=1e-6)
    out = make_dataset("Hopper-v4", tmp_path / "p.hdf5", policy=HOPPER_POLICY, n_transitions=100, noise=0.2, seed=1,
                       progress=False)
    ds = load_d4rl(out)
    assert ds.attrs["policy_zip_sha256"] == file_sha256(HOPPER_POLICY) and ds.attrs["policy_algo"] == "tqc"
    assert '"std": 0.2' in ds.attrs["noise"]


def test_cli_help_and_bad_arguments() -> None:
    from cfdg_aug.datasets.make import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert main(["--env", "Hopper-v4", "--out", "/tmp/never.hdf5", "--n-transitions", "0", "--no-progress"]) == 2
    assert not Path("/tmp/never.hdf5").exists()


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("minari")
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def test_minari_round_trip_gives_the_same_transitions(tmp_path: Path, minari_root: Path) -> None:
    from cfdg_aug.datasets import load_minari
    from cfdg_aug.datasets.make import make_dataset

    kw = dict(policy=None, n_transitions=300, noise=0.0, seed=5, progress=False)
    d4 = load_d4rl(make_dataset("Hopper-v4", tmp_path / "r.hdf5", **kw))
    folder = make_dataset("Hopper-v4", "local/roundtrip-v0", fmt="minari", **kw)
    assert Path(folder).is_dir() and str(minari_root) in str(folder)
    mi = load_minari("local/roundtrip-v0")
    assert len(mi) == len(d4) == 300
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "infos_qpos", "infos_qvel"):
        np.testing.assert_array_equal(getattr(mi, key), getattr(d4, key), err_msg=key)
    assert mi.env_id == "Hopper-v4"
    assert [s for s in mi.episodes()] == [s for s in d4.episodes()]
    assert len(load_dataset("minari:local/roundtrip-v0")) == 300
    with pytest.raises(DatasetError, match="local/absent-v0"):
        load_minari("local/absent-v0")


def test_minari_antmaze_dict_observations_flatten_in_documented_order(minari_root: Path, rng: np.random.Generator) -> None:
    import gymnasium as gym

    from cfdg_aug.datasets import load_minari
    from cfdg_aug.datasets.minari_io import write_minari

    # AntMaze spaces (gymnasium-robotics AntMaze_*-v4): 27-dim observation, 2-dim goals, 8 actions.
    obs_space = gym.spaces.Dict({
        "achieved_goal": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
        "desired_goal": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
        "observation": gym.spaces.Box(-np.inf, np.inf, (27,), np.float64),
    })
    act_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
    episodes = []
    for t, (term, trunc) in zip((7, 5), ((True, False), (False, True)), strict=False):
        episodes.append({
            "observations": {"observation": rng.normal(size=(t + 1, 27)), "achieved_goal": rng.normal(size=(t + 1, 2)),
                             "desired_goal": np.tile(rng.normal(size=2), (t + 1, 1))},
            "actions": rng.uniform(-1, 1, (t, 8)).astype(np.float32),
            "rewards": np.r_[np.zeros(t - 1), 1.0],
            "terminations": np.r_[np.zeros(t - 1, bool), term], "truncations": np.r_[np.zeros(t - 1, bool), trunc],
        })
    write_minari(None, "local/antmaze-toy-v0", episodes=episodes, observation_space=obs_space, action_space=act_space)
    ds = load_minari("local/antmaze-toy-v0")
    assert len(ds) == 12 and ds.obs_dim == 31 and ds.act_dim == 8
    assert ds.attrs["observation_keys"] == '["observation", "achieved_goal", "desired_goal"]'
    ep0 = episodes[0]["observations"]
    expected0 = np.concatenate([ep0["observation"], ep0["achieved_goal"], ep0["desired_goal"]], axis=1).astype(np.float32)
    np.testing.assert_array_equal(ds.observations[:7], expected0[:-1])
    np.testing.assert_array_equal(ds.next_observations[:7], expected0[1:])
    assert ds.episodes() == [slice(0, 7), slice(7, 12)]
    assert ds.terminals[6] and ds.timeouts[11] and not ds.terminals[11]
    np.testing.assert_array_equal(ds.episode_returns(), [1.0, 1.0])
    assert normalized_score("antmaze-medium-play-v2", ds.episode_returns().mean()) == pytest.approx(100.0)


@pytest.mark.skipif(not (SHARED_MINARI / "local" / "hopper-medium-v0").is_dir() or not SHARED_HOPPER.is_file(),
                    reason="shared Minari copy not present")
def test_shared_minari_copy_matches_the_d4rl_file(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("minari")
    from cfdg_aug.datasets import load_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(SHARED_MINARI))
    mi = load_minari("local/hopper-medium-v0")
    d4 = load_d4rl(SHARED_HOPPER)
    n = len(d4)
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "infos_qpos"):
        np.testing.assert_array_equal(getattr(mi, key)[:n], getattr(d4, key), err_msg=key)


def test_antmaze_env_needs_gymnasium_robotics_with_a_clear_error() -> None:
    from cfdg_aug.datasets import make_env
    from cfdg_aug.datasets.envs import antmaze_gym_id, resolve_env_id

    assert antmaze_gym_id("antmaze-medium-diverse-v2") == ("AntMaze_Medium_Diverse_GR-v4", 1000)
    assert antmaze_gym_id("antmaze-umaze-v2") == ("AntMaze_UMaze-v4", 700)
    assert resolve_env_id("walker2d-medium-v2") == "Walker2d-v4"
    try:
        import gymnasium_robotics  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gymnasium-robotics"):
            make_env("antmaze-large-play-v2")
    else:  # pragma: no cover - only where gymnasium-robotics is installed
        env = make_env("antmaze-umaze-v2")
        assert set(env.observation_space.spaces) == {"observation", "achieved_goal", "desired_goal"}
