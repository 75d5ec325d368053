"""What a d3rlpy critic believes about a set of transitions: a read-only probe for diagnostics.

An augmentation reaches IQL's (and PEX's) actor only through the critic: the actor imitates real
rows weighted by ``exp(beta * (Q(s, a) - V(s)))``, and Q and V are fitted on every row of the batch,
synthetic ones included. When an augmented run ends below its baseline, the first question is what
the synthetic rows did to Q and V. :func:`critic_probe` answers it for one set of rows:

- ``q``: mean of ``Q(s, a)``, the minimum over the target ensemble, as IQL's advantage uses it;
- ``v``: mean of ``V(s)`` (algorithms with a state-value function: IQL, PEX);
- ``adv``: mean of ``Q(s, a) - V(s)``; ``adv_std``: its standard deviation over the rows, the
  spread that IQL's weights ``exp(beta * adv)`` turn into a preference among the rows' actions
  (the mean is near zero by construction of the expectile);
- ``td``: mean of ``r + gamma * (1 - done) * V(s') - Q(s, a)``, the residual of IQL's critic target
  (the current ensemble's mean Q): positive where the critic under-estimates what the row says.

It computes under ``torch.no_grad`` and draws no random numbers, so probing a run
does not change it. Rows pass through the algorithm's own observation, action and reward scalers,
exactly as :meth:`d3rlpy.algos.QLearningAlgoBase.update` passes a batch.
"""

from __future__ import annotations

from typing import Any

import torch
from d3rlpy.torch_utility import TorchMiniBatch

from cfdg_aug.transitions import TransitionBatch

from ._convert import transition_batch_to_minibatch

PROBE_STATS: tuple[str, ...] = ("q", "v", "adv", "adv_std", "td")
"""The statistics :func:`critic_probe` returns (all but ``q`` only with a value function)."""


def critic_probe(algo: Any, batch: TransitionBatch) -> dict[str, float]:
    """Mean critic statistics over ``batch`` (see the module docstring), as plain floats.

    ``algo`` is a built d3rlpy Q-learning algorithm; ``batch`` holds raw (unscaled) rows, shapes
    ``obs`` (N, obs_dim), ``act`` (N, act_dim), ``rew`` / ``done`` (N,). An empty batch gives ``{}``.
    """
    if len(batch) == 0:
        return {}
    impl = algo.impl
    if impl is None:
        raise ValueError("algo is not built: critic_probe needs a built d3rlpy algorithm (call build_with_dataset)")
    cfg = algo.config
    tb = TorchMiniBatch.from_batch(
        batch=transition_batch_to_minibatch(batch), gamma=cfg.gamma, compute_returns_to_go=False,
        device=algo._device, observation_scaler=cfg.observation_scaler, action_scaler=cfg.action_scaler,
        reward_scaler=cfg.reward_scaler,
    )
    value_func = getattr(impl.modules, "value_func", None)
    out: dict[str, float] = {}
    with torch.no_grad():
        q_min = impl._targ_q_func_forwarder.compute_expected_q(tb.observations, tb.actions, "min")
        out["q"] = float(q_min.mean())
        if value_func is not None:
            v = value_func(tb.observations)
            q_mean = impl._q_func_forwarder.compute_expected_q(tb.observations, tb.actions, "mean")
            target = tb.rewards + cfg.gamma * (1.0 - tb.terminals) * value_func(tb.next_observations)
            out["v"] = float(v.mean())
            out["adv"] = float((q_min - v).mean())
            out["adv_std"] = float((q_min - v).std(unbiased=False))
            out["td"] = float((target - q_mean).mean())
    return out


__all__ = ["PROBE_STATS", "critic_probe"]
