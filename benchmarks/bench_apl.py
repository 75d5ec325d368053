"""APL update throughput: the current update against the pre-issue-16 one, same run, interleaved.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_apl [--steps 3] [--repeats 3] [--threads 1]

Arms (Hopper shapes: obs 11, act 3; batch 256; each arm its own freshly built APL):

- ``old``: :func:`reference_update`, APL's update as it was before issue 16 (d3rlpy's ensemble
  forwarder per computation, the CQL policy actions from a policy pass over the repeated states,
  all target critics evaluated, critic weight gradients in the actor loss). Kept here, and only
  here, as the baseline; ``tests/test_apl.py`` checks that it and the current update compute the
  same losses and parameters from the same weights and random state.
- ``new``: ``APL.update_branch`` as shipped (one pass per critic over all rows).
- ``stacked``: the shipped update with :func:`stacked_ensemble_q` swapped in: one batched pass
  over the ensemble (stacked weights, ``torch.baddbmm``, as CORL's ``VectorizedLinear``), to
  show whether batching the ensemble pays on this machine.
- reduced configurations (fewer critics ``K`` / CQL actions per sampler ``n``), shipped update.

Each arm is timed on the conservative branch (CQL; every offline update) and the greedy branch
(no CQL); ``mixed`` is the rate of a p = 0.5 mix of the two (online once the FIFO holds
``greedy_min_online`` transitions). The update is matrix-multiply bound, so the analytic FLOP
count per update is printed next to each rate.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from d3rlpy.models.torch import get_parameter
from d3rlpy.torch_utility import TorchMiniBatch, soft_sync

from benchmarks._common import write_result
from benchmarks.bench_algos import ACT, OBS, random_batch  # the same hopper-shaped random data
from cfdg_aug.integrations.d3rlpy._convert import transition_batch_to_minibatch
from cfdg_aug.integrations.d3rlpy.apl import APL, APLConfig, APLImpl


# ---- the pre-issue-16 update (baseline and test oracle) ------------------------------------------
def _reference_target(impl: APLImpl, batch: TorchMiniBatch) -> torch.Tensor:
    with torch.no_grad():
        a2, logp2 = impl._sample(batch.next_observations)  # type: ignore[arg-type]
        qs = impl._targ_q_func_forwarder.compute_expected_q(batch.next_observations, a2, "none")
        idx = torch.randperm(impl._n_critics, generator=impl._subset_gen)[: impl._subset]
        target = qs[idx.to(qs.device)].min(dim=0).values
        if impl._backup_entropy:
            target = target - impl._alpha() * logp2
        return target


def _reference_cql(impl: APLImpl, batch: TorchMiniBatch, q_data: torch.Tensor) -> torch.Tensor:
    obs, nxt = batch.observations, batch.next_observations
    assert isinstance(obs, torch.Tensor) and isinstance(nxt, torch.Tensor)
    b, n, a_dim = obs.shape[0], impl._n_samples, impl._action_size
    obs_rep = obs.repeat_interleave(n, dim=0)
    with torch.no_grad():
        a_cur, lp_cur = impl._sample(obs_rep)
        a_nxt, lp_nxt = impl._sample(nxt.repeat_interleave(n, dim=0))
    a_rand = torch.empty(b * n, a_dim, device=obs.device).uniform_(-1.0, 1.0)
    log_density = a_dim * math.log(0.5)

    def q(actions: torch.Tensor) -> torch.Tensor:
        return impl._q_func_forwarder.compute_expected_q(obs_rep, actions, "none").view(-1, b, n)

    cat = torch.cat([q(a_rand) - log_density, q(a_nxt) - lp_nxt.view(1, b, n),
                     q(a_cur) - lp_cur.view(1, b, n)], dim=2)
    lse = torch.logsumexp(cat / impl._cql_temp, dim=2).mean(dim=1) * impl._cql_temp
    return (impl._cql_weight * (lse - q_data.mean(dim=(1, 2)))).sum()


def reference_update(impl: APLImpl, batch: TorchMiniBatch, conservative: bool) -> dict[str, float]:
    """APL's update before issue 16, verbatim in substance: the baseline of this benchmark."""
    m = impl._modules
    m.set_train()
    m.critic_optim.zero_grad()
    q_tpn = _reference_target(impl, batch)
    y = batch.rewards + (impl._gamma ** batch.intervals) * (1.0 - batch.terminals) * q_tpn
    q_data = impl._q_func_forwarder.compute_expected_q(batch.observations, batch.actions, "none")
    td_loss = ((q_data - y.unsqueeze(0)) ** 2).mean(dim=(1, 2)).sum()
    if conservative and impl._cql_weight > 0:
        cql_loss = _reference_cql(impl, batch, q_data)
    else:
        cql_loss = torch.zeros((), device=td_loss.device)
    loss = td_loss + cql_loss
    loss.backward()
    m.critic_optim.step()
    metrics = {"critic_loss": float(loss.detach()), "td_loss": float(td_loss.detach()),
               "conservative_loss": float(cql_loss.detach())}
    m.q_funcs.eval()
    m.actor_optim.zero_grad()
    a, logp = impl._sample(batch.observations)  # type: ignore[arg-type]
    q = impl._q_func_forwarder.compute_expected_q(batch.observations, a, "mean")
    alpha = impl._alpha().detach()
    actor_loss = (alpha * logp - q).mean()
    actor_loss.backward()
    m.actor_optim.step()
    metrics.update({"actor_loss": float(actor_loss.detach()), "temp": float(alpha.reshape(-1)[0])})
    if m.temp_optim is not None:
        m.temp_optim.zero_grad()
        log_temp = get_parameter(m.log_temp)
        temp_loss = -(log_temp * (logp.detach() + impl._target_entropy)).mean()
        temp_loss.backward()
        m.temp_optim.step()
        metrics["temp_loss"] = float(temp_loss.detach())
    soft_sync(m.targ_q_funcs, m.q_funcs, impl._tau)
    return metrics


# ---- the batched-ensemble alternative -------------------------------------------------------------
def stacked_ensemble_q(q_funcs: torch.nn.ModuleList, x: torch.Tensor, action: torch.Tensor,
                       members: Sequence[int] | None = None) -> torch.Tensor:
    """``APLImpl.ensemble_q`` as one batched pass: each layer's weights stacked over the members
    and applied with ``torch.baddbmm`` (CORL's ``VectorizedLinear``). d3rlpy's MLP critics only
    (``VectorEncoderWithAction`` + ``ContinuousMeanQFunction``). Returns (K, N, 1). Rows go in
    blocks so that each activation is no larger than in ``APLImpl.ensemble_q``."""
    qs = [q_funcs[i] for i in (range(len(q_funcs)) if members is None else members)]
    layers = [[*q._encoder._layers, q._fc] for q in qs]
    weights = [(torch.stack([mod.weight for mod in mods]).transpose(1, 2),  # (K, in, out)
                torch.stack([mod.bias for mod in mods]).unsqueeze(1))  # (K, 1, out)
               if isinstance(mods[0], torch.nn.Linear) else mods[0]  # activation, shared
               for mods in zip(*layers, strict=True)]
    r = max(1, APLImpl.ROWS_PER_PASS // len(qs))
    out = []
    for s in range(0, x.shape[0], r):
        h = torch.cat([x[s:s + r], action[s:s + r]], dim=1).expand(len(qs), -1, -1)
        for layer in weights:
            h = torch.baddbmm(layer[1], h, layer[0]) if isinstance(layer, tuple) else layer(h)
        out.append(h)
    return torch.cat(out, dim=1)


# ---- timing ---------------------------------------------------------------------------------------
def build_apl(batch_size: int, device: str, **overrides: Any) -> APL:
    algo = APLConfig(batch_size=batch_size, **overrides).create(device=device)
    algo.create_impl((OBS,), ACT)
    return algo


def torch_batch(algo: APL, batch_size: int, rng: np.random.Generator) -> TorchMiniBatch:
    mb = transition_batch_to_minibatch(random_batch(batch_size, rng))
    return TorchMiniBatch.from_batch(batch=mb, gamma=algo.config.gamma, compute_returns_to_go=False,
                                     device=algo._device)


def update_gflop(k: int, n: int, b: int, hidden: Sequence[int] = (256, 256, 256),
                 conservative: bool = True) -> float:
    """Analytic GFLOP of one update (matrix multiplies only): critic rows x3 (forward, input and
    weight gradients), actor's critic rows x2 (no weight gradients), 2 target critics x1, policy
    on s (x3) and s' (x1)."""
    def mlp(d_in: int, d_out: int) -> int:
        dims = [d_in, *hidden, d_out]
        return sum(a * c for a, c in zip(dims[:-1], dims[1:], strict=False))

    q, pi = mlp(OBS + ACT, 1), mlp(OBS, 2 * ACT)
    rows = b * (1 + 3 * n) if conservative else b
    macs = k * rows * q * 3 + k * b * q * 2 + 2 * b * q + b * pi * 4
    return 2 * macs / 1e9


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="updates per timed repeat and arm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu:0")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    b = args.batch_size

    arms: dict[str, tuple[APL, Callable[[APL, TorchMiniBatch, bool], Any], int, int]] = {}

    def shipped(algo: APL, batch: TorchMiniBatch, conservative: bool) -> Any:
        return algo.impl.update_branch(batch, 0, conservative)

    def old(algo: APL, batch: TorchMiniBatch, conservative: bool) -> Any:
        return reference_update(algo.impl, batch, conservative)

    def stacked(algo: APL, batch: TorchMiniBatch, conservative: bool) -> Any:
        return algo.impl.update_branch(batch, 0, conservative)

    for name, fn, k, n in [("old K5 n10", old, 5, 10), ("new K5 n10", shipped, 5, 10),
                           ("stacked K5 n10", stacked, 5, 10),
                           ("new K5 n1", shipped, 5, 1), ("new K3 n1", shipped, 3, 1),
                           ("new K2 n10", shipped, 2, 10), ("new K2 n2", shipped, 2, 2),
                           ("new K2 n1", shipped, 2, 1)]:
        torch.manual_seed(0)
        algo = build_apl(b, args.device, n_critics=k, n_action_samples=n,
                         target_subset_size=min(2, k))
        if fn is stacked:
            algo.impl.ensemble_q = stacked_ensemble_q  # type: ignore[method-assign]
        arms[name] = (algo, fn, k, n)
    batches = {name: torch_batch(a, b, rng) for name, (a, _, _, _) in arms.items()}

    def sync() -> None:
        if "cuda" in args.device:
            torch.cuda.synchronize()

    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for name, (algo, fn, _, _) in arms.items():  # warm-up
        for cons in (True, False):
            fn(algo, batches[name], cons)
    for _ in range(args.repeats):
        for cons, label in ((True, "conservative"), (False, "greedy")):
            for name, (algo, fn, _, _) in arms.items():  # interleaved
                sync()
                t, c = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    fn(algo, batches[name], cons)
                sync()  # CUDA kernels run asynchronously: time them, not their launches
                wall.setdefault(f"{name} {label}", []).append(time.perf_counter() - t)
                cpu.setdefault(f"{name} {label}", []).append(time.process_time() - c)
    # Rates per wall second, and per CPU second of this (single-threaded) process: on a shared
    # machine the second is the better estimate of the rate on an idle one.
    rows: dict[str, dict[str, float]] = {}
    for name, (_, _, k, n) in arms.items():
        r: dict[str, float] = {}
        for clock, times in (("", wall), ("cpu_", cpu)):
            c = args.steps / float(np.median(times[f"{name} conservative"]))
            g = args.steps / float(np.median(times[f"{name} greedy"]))
            r.update({f"{clock}conservative": c, f"{clock}greedy": g, f"{clock}mixed": 2.0 / (1.0 / c + 1.0 / g)})
        r.update(gflop_conservative=update_gflop(k, n, b), gflop_greedy=update_gflop(k, n, b, conservative=False))
        rows[name] = r
    base = rows["old K5 n10"]
    print("updates/s per wall second | per CPU second; GFLOP per update; vs old per CPU second")
    print(f"{'arm':>16s} {'conservative':>14s} {'greedy':>14s} {'mixed':>14s}   {'GFLOP c/g':>12s}   vs old (c, g)")
    for name, r in rows.items():
        print(f"{name:>16s} " + " ".join(f"{r[k]:6.2f} | {r['cpu_' + k]:5.2f}" for k in ("conservative", "greedy", "mixed"))
              + f"   {r['gflop_conservative']:5.2f} / {r['gflop_greedy']:4.2f}   "
              f"{r['cpu_conservative'] / base['cpu_conservative']:.2f}x, {r['cpu_greedy'] / base['cpu_greedy']:.2f}x")
    ratios = {f"{arm}_over_{ref}_{branch}{clock}": rows[f"{arm} K5 n10"][clock_key + branch] / rows[f"{ref} K5 n10"][clock_key + branch]
              for arm, ref in (("new", "old"), ("stacked", "new")) for branch in ("conservative", "greedy")
              for clock, clock_key in (("", ""), ("_cpu", "cpu_"))}
    for key, v in ratios.items():
        print(f"{key:>32s}: {v:.3f}")
    result = {"batch_size": b, "steps": args.steps, "repeats": args.repeats, "device": args.device,
              "updates_per_second": rows, "ratios": ratios}
    path = write_result("bench_apl", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
