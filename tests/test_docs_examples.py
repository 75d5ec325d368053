"""Every ```python block in README.md and docs/*.md runs, except blocks whose first line is
``# illustrative`` (fragments, or full runs whose tested version is a script in examples/)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for i, m in enumerate(BLOCK.finditer(page.read_text())):
            code = m.group(1)
            if not code.lstrip().startswith("# illustrative"):
                out.append((page.relative_to(REPO_ROOT).as_posix(), i, code))
    return out


def test_there_are_runnable_doc_examples() -> None:
    assert {p for p, _, _ in _blocks()} >= {"README.md", "docs/datasets.md", "docs/fidelity.md"}


@pytest.mark.parametrize(("page", "index", "code"), _blocks(), ids=lambda v: v if isinstance(v, (str, int)) else "")
def test_doc_example_runs(page: str, index: int, code: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples may write files
    try:
        exec(compile(code, f"{page}[block {index}]", "exec"), {"__name__": "__docs__"})
    finally:
        os.chdir(cwd)


# --- docs/troubleshooting.md: every quoted message is one the code produces ---------------------------
# Each backtick span in the table's first column is a message start: ``...`` stands for any text,
# ``<file>``-style placeholders for one value. Spans with a trigger below are matched against what the
# code actually raises (or warns); the others (CLI, d3rlpy, warnings that need special hardware) must
# have every literal piece of 8+ characters in the source of cfdg_aug/ and integrations/.
TROUBLESHOOTING = REPO_ROOT / "docs" / "troubleshooting.md"
SPAN = re.compile(r"`([^`]+)`")
PLACEHOLDER = re.compile(r"\.\.\.|<[^<>]+>")


def _device_unavailable(monkeypatch: pytest.MonkeyPatch) -> str:
    import torch

    from cfdg_aug.config import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return _raised(lambda: check_device("cuda", "device"))


def _table_spans() -> list[str]:
    spans: list[str] = []
    for line in TROUBLESHOOTING.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| message") or line.startswith("|---"):
            continue
        first = line.strip().strip("|").split(" | ")[0]
        spans += SPAN.findall(first)
    return spans


def _source_text() -> str:
    parts = [p.read_text() for root in ("cfdg_aug", "integrations") for p in sorted((REPO_ROOT / root).rglob("*.py"))]
    text = "\n".join(parts)
    # Join implicit string concatenations across lines: "abc "\n    f"def" -> "abc def".
    return re.sub(r"[\"']\s*\n\s*[rbf]*[\"']", "", text)


def _in_source(span: str, source: str) -> list[str]:
    body = re.sub(r"^(error: |\w+(Error|Warning): )", "", span)
    pieces = [p.strip() for p in PLACEHOLDER.split(body)]
    return [p for p in pieces if len(p) >= 8 and p not in source]


def _matches(span: str, actual: str) -> bool:
    # " ... " may stand for punctuation too ("augmented ..." matches "augmented, since ...").
    pattern = "".join(".*?" if m.strip() == "..." else ".+?" if m.startswith("<") else re.escape(m)
                      for m in re.split(r"(\s*\.\.\.\s*|<[^<>]+>)", span) if m)
    msg = actual.split(": ", 1)[1] if ": " in actual else actual
    return bool(re.match(pattern, actual, re.S) or re.match(pattern, msg, re.S))


def _raised(fn: Any) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        return f"{type(e).__name__}: {e}"
    raise AssertionError("no error raised")


def _warned(fn: Any) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    assert caught, "no warning"
    return f"{caught[0].category.__name__}: {caught[0].message}"


def _d4rl_file(path: Path, **changes: Any) -> Path:
    import h5py

    n = 400
    arrays: dict[str, Any] = dict(observations=np.zeros((n, 3), np.float32), actions=np.zeros((n, 2), np.float32),
                                  rewards=np.zeros(n, np.float32), terminals=np.zeros(n, bool),
                                  next_observations=np.zeros((n, 3), np.float32))
    arrays.update(changes)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return path


def _batch(n: int = 32, obs_dim: int = 11, act_dim: int = 3, **changes: Any) -> Any:
    from cfdg_aug import TransitionBatch

    r = np.random.default_rng(0)
    arrays: dict[str, Any] = dict(obs=r.normal(size=(n, obs_dim)).astype(np.float32),
                                  act=r.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                                  rew=r.normal(size=n).astype(np.float32),
                                  next_obs=r.normal(size=(n, obs_dim)).astype(np.float32), done=np.zeros(n, np.float32))
    arrays.update(changes)
    return TransitionBatch.from_arrays(**arrays)


def _tiny(**kw: Any) -> Any:
    from cfdg_aug import CFDGConfig

    return CFDGConfig.small(width=16, depth=1, train_steps=2, num_sample_steps=2, **kw)


def _import_blocked(monkeypatch: pytest.MonkeyPatch, module: str, blocked: str) -> str:
    import importlib
    import sys

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)
    return _raised(lambda: importlib.import_module(module))


def _failed_background_prefit(monkeypatch: pytest.MonkeyPatch) -> str:
    import sys

    from cfdg_aug import AugmentedReplayBuffer
    from cfdg_aug.transitions import TransitionBatch

    rng = np.random.default_rng(0)
    buf = AugmentedReplayBuffer(2, 1, config=_tiny(), seed=0)
    buf.add_offline(TransitionBatch(obs=rng.normal(size=(20, 2)), act=rng.uniform(-1, 1, (20, 1)), rew=np.zeros(20),
                                    next_obs=rng.normal(size=(20, 2)), done=np.zeros(20)))
    with monkeypatch.context() as m:
        m.setattr(sys, "executable", "/bin/false")  # the child exits 1 without output
        buf.prefit(background=True)
    return _raised(buf.refresh)  # waits for the process (maybe_refresh would until the first refresh)


def _triggers(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import sys

    from gymnasium import spaces

    from cfdg_aug import AugmentedReplayBuffer, CFDGConfig, CFDGGenerator
    from cfdg_aug.datasets import load_d4rl, load_dataset, make_env
    from cfdg_aug.integrations.sb3 import CFDGDictReplayBuffer, CFDGReplayBuffer
    from cfdg_aug.integrations.spaces import encoding_from_space

    nan_rew = np.zeros(20, np.float32)
    nan_rew[12] = np.nan

    def fitted(**kw: Any) -> Any:
        g = CFDGGenerator(11, 3, _tiny(**kw))
        g.fit(_batch())
        return g

    def saved_generator() -> Path:
        p = tmp / "g.safetensors"
        fitted(augmentation="unconditional").save(p)
        return p

    def saved_buffer() -> Path:
        p = tmp / "b.safetensors"
        buf = AugmentedReplayBuffer(11, 3, config=_tiny(), online_capacity=100)
        buf.add_offline(_batch())
        buf.save(p)
        return p

    def blocked(name: str, fn: Any) -> str:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, name, None)
            return _raised(fn)

    box = spaces.Box(-1, 1, (2,))
    return {
        "TransitionError: rew contains NaN or inf (first at row 12)": lambda: _raised(lambda: _batch(20, rew=nan_rew)),
        "TransitionError: act must have 3 columns (act_dim), got shape (256, 4)": lambda: _raised(
            lambda: AugmentedReplayBuffer(11, 3, config=_tiny()).add(_batch(256, act_dim=4))),
        "TransitionError: all fields must have the same length N; obs has 5, rew has 4": lambda: _raised(
            lambda: _batch(5, rew=np.zeros(4, np.float32))),
        "TransitionError: obs must hold real numbers (float or int), got dtype <U1": lambda: _raised(
            lambda: _batch(20, obs=np.full((20, 11), "a"))),
        "act ... got dtype bool": lambda: _raised(lambda: _batch(20, act=np.zeros((20, 3), bool))),
        "TransitionError: done must be 0/1 (or bool)": lambda: _raised(lambda: _batch(20, done=np.full(20, 2.0))),
        "EmptyBufferError: cannot sample from an empty buffer: every pool holds 0 transitions": lambda: _raised(
            lambda: AugmentedReplayBuffer(11, 3, config=_tiny()).sample(4)),
        "EmptyBufferError: refresh() needs real data to fit the generator, but both real pools are empty":
            lambda: _raised(lambda: AugmentedReplayBuffer(11, 3, config=_tiny()).refresh()),
        "ConfigError: p_uncond must be in [0.0, 1.0), got 1.0": lambda: _raised(lambda: CFDGConfig(p_uncond=1.0)),
        "ConfigError: ratio_offline + ratio_online + ratio_synthetic must be > 0": lambda: _raised(
            lambda: CFDGConfig(ratio_offline=0, ratio_online=0, ratio_synthetic=0)),
        "ConfigError: unknown CFDGConfig field(s): widht; known: ...": lambda: _raised(
            lambda: CFDGConfig.from_dict({"widht": 3})),
        "ConfigError: guidance_candidates must be a list of finite numbers >= 0, e.g. [0, 1, 2] "
        "(--set cfdg.guidance_candidates=[0,1,2]), got '0,1,2'": lambda: _raised(
            lambda: CFDGConfig(guidance_candidates="0,1,2")),  # type: ignore[arg-type]
        "ConfigError: device 'cuda' is not available: ...": lambda: _device_unavailable(monkeypatch),
        "ConfigError: seed must be an int >= 0, got -1": lambda: _raised(
            lambda: __import__("cfdg_aug.experiments.runner", fromlist=["resolve_config"]).resolve_config(
                "iql", "none", "embedded", "small", -1)),
        "CheckpointError: checkpoint was written with another config; differing fields (checkpoint vs expected): ...":
            lambda: _raised(lambda: CFDGGenerator.load(saved_generator(), expected_config=CFDGConfig.small())),
        "CheckpointError: checkpoint has obs_dim=11, act_dim=3; expected ...": lambda: _raised(
            lambda: CFDGGenerator.load(saved_generator(), expected_dims=(17, 6))),
        "CheckpointError: <file> is not a readable safetensors ...": lambda: _raised(
            lambda: (tmp / "bad.safetensors").write_bytes(b"garbage" * 10) and CFDGGenerator.load(tmp / "bad.safetensors")),
        "BufferFileError: obs_dim mismatch: the file holds obs_dim=11, expected 17": lambda: _raised(
            lambda: AugmentedReplayBuffer.load(saved_buffer(), obs_dim=17)),
        "config mismatch: ...": lambda: _raised(
            lambda: AugmentedReplayBuffer.load(saved_buffer(), expected_config=CFDGConfig.paper())),
        "RuntimeError: the generator must be fitted before sampling": lambda: _raised(
            lambda: CFDGGenerator(11, 3, _tiny()).sample(4)),
        "ValueError: label must be None for an unconditional generator": lambda: _raised(
            lambda: fitted(augmentation="unconditional").sample(4, label="online")),
        "ValueError: config.guidance is 'auto' but no weight has been chosen yet": lambda: _raised(
            lambda: fitted(guidance="auto").sample(4, label="online")),
        "DatasetError: <file>: key 'rewards': missing (required key)": lambda: _raised(
            lambda: load_d4rl(_d4rl_file(tmp / "a.hdf5", rewards=None))),
        "DatasetError: <file>: key 'rewards': has 300 rows but 'observations' has 400": lambda: _raised(
            lambda: load_d4rl(_d4rl_file(tmp / "b.hdf5", rewards=np.zeros(300, np.float32)))),
        "DatasetError: <file>: key 'observations': contains NaN or inf (first at row ...)": lambda: _raised(
            lambda: load_d4rl(_d4rl_file(tmp / "c.hdf5", observations=np.full((400, 3), np.nan, np.float32)))),
        "ImportError: reading D4RL-layout hdf5 files (the embedded demo set included) needs h5py: "
        'pip install "cfdg-aug[mujoco]"': lambda: blocked("h5py", lambda: load_dataset("embedded")),
        "ImportError: the environment 'Hopper-v4' needs gymnasium: pip install \"cfdg-aug[mujoco]\"": lambda: blocked(
            "gymnasium", lambda: make_env("Hopper-v4")),
        "... needs mujoco: ...": lambda: blocked("mujoco", lambda: make_env("Hopper-v4")),
        'ImportError: reading or writing Minari datasets needs minari: pip install "cfdg-aug[minari]"':
            lambda: blocked("minari", lambda: load_dataset("minari:D4RL/hopper/medium-v0")),
        'ImportError: cfdg_aug.integrations.d3rlpy needs d3rlpy: pip install "cfdg-aug[d3rlpy]"':
            lambda: _import_blocked(monkeypatch, "cfdg_aug.integrations.d3rlpy", "d3rlpy"),
        'cfdg_aug.integrations.sb3 needs stable-baselines3: pip install "cfdg-aug[sb3]"':
            lambda: _import_blocked(monkeypatch, "cfdg_aug.integrations.sb3", "stable_baselines3"),
        "ImportError: AntMaze needs gymnasium-robotics ...": lambda: blocked(
            "gymnasium_robotics", lambda: make_env("antmaze-umaze-v2")),
        "ImageObservationError: observation_space: image observations (shape (84, 84, 1), uint8) cannot be "
        "augmented ...": lambda: _raised(
            lambda: CFDGReplayBuffer(10, spaces.Box(0, 255, (84, 84, 1), np.uint8), box, device="cpu")),
        "UnsupportedSpaceError: observation_space['pos']: nested Dict/Tuple spaces are not supported ...":
            lambda: _raised(lambda: encoding_from_space(spaces.Dict({"pos": spaces.Dict({"a": box})}))),
        "... Text spaces are not supported; supported: ...": lambda: _raised(
            lambda: encoding_from_space(spaces.Text(5))),
        "SpaceError: a Discrete(3, start=0) value must be an integer in [0, 2], got 7": lambda: _raised(
            lambda: CFDGReplayBuffer(10, box, spaces.Discrete(3), device="cpu", config=_tiny()).add(
                np.zeros((1, 2)), np.zeros((1, 2)), np.array([[7]]), np.zeros(1), np.zeros(1), [{}])),
        "BackgroundRefreshError: background pre-fit failed (exit status <N>): ...": lambda: _failed_background_prefit(
            monkeypatch),
        "CFDGBufferError: observation_space: a Dict space needs CFDGDictReplayBuffer ...": lambda: _raised(
            lambda: CFDGReplayBuffer(10, spaces.Dict({"a": box}), box, device="cpu")),
        "UserWarning: actions: a stored Box action lies outside [-1, 1] ...": lambda: _warned(
            lambda: CFDGReplayBuffer(10, box, spaces.Box(-2, 2, (2,)), device="cpu", config=_tiny()).add(
                np.zeros((1, 2)), np.zeros((1, 2)), np.array([[1.5, 0.0]]), np.zeros(1), np.zeros(1), [{}])),
        "CFDGBufferError: this buffer holds image observations with augmentation='none': it is SB3's own buffer, "
        "without an offline pool ...": lambda: _raised(
            lambda: CFDGDictReplayBuffer(10, spaces.Dict({"im": spaces.Box(0, 255, (3, 8, 8), np.uint8)}), box,
                                         device="cpu", config=CFDGConfig(augmentation="none")).refresh()),
    }


def test_troubleshooting_messages_are_the_ones_the_code_produces(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    spans = _table_spans()
    triggers = _triggers(tmp_path, monkeypatch)
    assert not set(triggers) - set(spans), f"triggers for messages no longer in the table: {set(triggers) - set(spans)}"
    source = _source_text()
    wrong: list[str] = []
    missing: list[str] = []
    for span in spans:
        if span in triggers:
            actual = triggers[span]()
            if not _matches(span, actual):
                wrong.append(f"{span!r}\n    code: {actual[:300]!r}")
        elif (absent := _in_source(span, source)):
            missing.append(f"{span!r}: not in the source: {absent}")
    assert not wrong, "troubleshooting.md quotes messages the code does not raise:\n" + "\n".join(wrong)
    assert not missing, "troubleshooting.md quotes messages not found in the code:\n" + "\n".join(missing)


# --- docs/sb3.md: the quick command runs CFDG (at least one refresh) ----------------------------------
def test_sb3_quick_command_refreshes_as_the_page_says(tmp_path: Path) -> None:
    import importlib.util
    import shlex

    page = (REPO_ROOT / "docs" / "sb3.md").read_text()
    cmds = [m.group(1) for block in re.findall(r"```bash\n(.*?)```", page, re.S)
            for m in re.finditer(r"python examples/sb3_hopper\.py([^\n]*)", block)]
    assert cmds, "docs/sb3.md shows no `python examples/sb3_hopper.py ...` quick command"
    args = shlex.split(cmds[0])
    said = re.search(r'"refreshes": (\d+)', page)
    assert said, "docs/sb3.md does not say how many refreshes the quick command does"
    i = args.index("--out")
    args[i + 1] = str(tmp_path)
    spec = importlib.util.spec_from_file_location("sb3_hopper_docs", REPO_ROOT / "examples" / "sb3_hopper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main([*args, "--eval-episodes", "1"])
    assert summary["refreshes"] >= 1
    assert summary["refreshes"] == int(said.group(1))


# --- docs/experiments.md: the smoke-test command is the runner's SMOKE_SET -----------------------------
def test_experiments_page_smoke_command_is_the_smoke_set() -> None:
    from cfdg_aug.experiments.runner import SMOKE_SET

    page = (REPO_ROOT / "docs" / "experiments.md").read_text()
    marker = page.index("SMOKE_SET of cfdg_aug/experiments/runner.py")
    command = page[marker:].split("\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    assert command.lstrip().startswith("cfdg-aug run "), command[:80]
    assert re.findall(r"--set (\S+)", command) == list(SMOKE_SET)
