"""Fidelity of CFDG on a discrete-action task: CartPole-v1 (Box(4) observations, Discrete(2) actions).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_discrete_fidelity [--steps 3000] [--seeds 0 1]

Data, made here by a scripted controller (push towards the side the pole falls to:
``a = 1 if theta + 0.5 theta_dot + 0.01 x + 0.1 x_dot > 0``) with epsilon-random actions, in
gymnasium's CartPole-v1 (terminations at |x| > 2.4 or |theta| > 12 degrees, truncation at 500):

- "offline": epsilon 0.8 (a poor behaviour policy: episodes of ~40 steps), 20,000 transitions;
- "online": epsilon 0.5 (the better policy online fine-tuning produces: ~230 steps), 8,000 transitions;
- held out (never trained on): 2,000 offline and 2,000 online transitions from other episodes.

The generator is the small profile (width 256, depth 3, 32 Heun steps) with ``--steps`` gradient
steps, ``obs_encoding`` = CartPole's Box bounds, ``act_encoding`` = Discrete(2) (one-hot, argmax on
the way out), termination from the default classifier fitted on the real transitions. Reported per
seed and label: the two-sample classifier AUC and MMD^2 against the held-out real rows, the same
AUC for real-vs-real (training rows vs held-out rows: what "indistinguishable" looks like here),
the share of generated rows whose action is an exact one-hot of a valid action, the terminal rate
of generated vs real transitions (with ``--terminal-n`` samples) and, with the env's own
termination rule set on the same fitted generator, the terminal rate again.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from benchmarks._common import write_result
from cfdg_aug.config import CFDGConfig
from cfdg_aug.diagnostics import compare, fidelity_report
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.spaces import DiscreteSegment, SpaceEncoding
from cfdg_aug.transitions import TransitionBatch

X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * np.pi / 360  # gymnasium CartPole-v1


def cartpole_termination(obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """CartPole-v1's own rule on the next state."""
    return (np.abs(nxt[:, 0]) > X_LIMIT) | (np.abs(nxt[:, 2]) > THETA_LIMIT)


def collect(n: int, epsilon: float, seed: int) -> TransitionBatch:
    """``n`` transitions of the scripted controller with epsilon-random actions (whole episodes
    until n is reached; the last one may be cut, its last row then marked as a timeout)."""
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "act", "rew", "next_obs", "done", "timeout")}
    obs, _ = env.reset(seed=seed)
    while len(rows["obs"]) < n:
        x, x_dot, theta, theta_dot = obs
        a = int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)
        if rng.random() < epsilon:
            a = int(rng.integers(2))
        nxt, rew, term, trunc, _ = env.step(a)
        for k, v in (("obs", obs), ("act", [a]), ("rew", rew), ("next_obs", nxt), ("done", float(term)),
                     ("timeout", bool(trunc and not term))):
            rows[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    rows["timeout"][-1] = rows["timeout"][-1] or not rows["done"][-1]
    return TransitionBatch.from_arrays(*(np.asarray(rows[k]) for k in ("obs", "act", "rew", "next_obs", "done", "timeout")))


def encodings() -> tuple[SpaceEncoding, SpaceEncoding]:
    space = gym.make("CartPole-v1").observation_space
    return SpaceEncoding.box(4, space.low, space.high), SpaceEncoding((DiscreteSegment(2),))


def one_hot(batch: TransitionBatch, act_enc: SpaceEncoding) -> TransitionBatch:
    return TransitionBatch(obs=batch.obs, act=act_enc.encode(batch.act), rew=batch.rew, next_obs=batch.next_obs,
                           done=batch.done, timeout=batch.timeout)


def valid_action_share(batch: TransitionBatch) -> float:
    act = np.asarray(batch.act)
    return float(np.mean((act.sum(axis=1) == 1.0) & np.isin(act, (0.0, 1.0)).all(axis=1)))


def run_seed(seed: int, steps: int, n: int, terminal_n: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    obs_enc, act_enc = encodings()
    offline = one_hot(collect(22_000, 0.8, seed=1000 + seed), act_enc)
    online = one_hot(collect(10_000, 0.5, seed=2000 + seed), act_enc)
    off_fit, off_held = offline[:20_000], offline[20_000:]
    on_fit, on_held = online[:8_000], online[8_000:]
    cfg = CFDGConfig.small(train_steps=steps)
    gen = CFDGGenerator(4, 2, cfg, obs_encoding=obs_enc, act_encoding=act_enc, seed=seed)
    t0 = time.perf_counter()
    gen.fit(off_fit, on_fit)
    fit_s = time.perf_counter() - t0
    rep = fidelity_report(gen, off_held, on_held, n=n, seed=seed, per_dimension=False, terminal_n=terminal_n)
    out: dict[str, Any] = {"seed": seed, "fit_seconds": fit_s, "guidance": rep["guidance"]}
    for label, real_fit, real_held in (("online", on_fit, on_held), ("offline", off_fit, off_held)):
        sec = rep[label]
        sample = gen.sample(n, label)
        out[label] = {
            "auc": sec["auc"], "mmd2": sec["mmd2"],
            "auc_real_vs_real": compare(real_held, real_fit[np.random.default_rng(seed).permutation(len(real_fit))[:n]],
                                        seed=seed, per_dimension=False)["auc"],
            "valid_action_share": valid_action_share(sample),
            "act_out_of_bounds": sec["act_out_of_bounds"],
            "terminal_rate_generated": sec.get("terminal_rate"),
            "terminal_rate_real": sec.get("terminal_rate_real"),
            "terminal_rate_real_heldout": float(np.mean(real_held.done)),
        }
    # The same fitted generator with the env's own termination rule instead of the classifier.
    gen.set_termination(cartpole_termination)
    for label in ("online", "offline"):
        out[label]["terminal_rate_generated_env_rule"] = float(np.mean(gen.sample(terminal_n, label).done))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="generator gradient steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n", type=int, default=2000, help="generated rows per label for AUC / MMD")
    p.add_argument("--terminal-n", type=int, default=20_000, help="generated rows per label for the terminal rate")
    p.add_argument("--out", default="discrete_fidelity", help="results file name (benchmarks/results/NAME.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        r = run_seed(seed, args.steps, args.n, args.terminal_n)
        runs.append(r)
        print(f"seed {seed}: fit {r['fit_seconds']:.0f}s, w={r['guidance']}")
        for label in ("online", "offline"):
            s = r[label]
            print(f"  {label:8s} AUC {s['auc']:.3f} (real vs real {s['auc_real_vs_real']:.3f}), "
                  f"MMD2 {s['mmd2']:.4f}, valid actions {s['valid_action_share']:.1%}, "
                  f"terminal rate {s['terminal_rate_generated']:.4f} (classifier) / "
                  f"{s['terminal_rate_generated_env_rule']:.4f} (env rule) vs real {s['terminal_rate_real']:.4f}")
    result = {"steps": args.steps, "n": args.n, "terminal_n": args.terminal_n, "runs": runs}
    path = write_result(args.out, result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
