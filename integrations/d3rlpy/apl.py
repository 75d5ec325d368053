"""APL (Adaptive Policy Learning, Zheng et al., AAAI 2023) as a d3rlpy algorithm, with CFDG routing.

APL is a SAC-style agent with a critic ensemble. Every update picks one of two branches:

* **greedy (online)** with probability ``online_update_probability`` (0.5) once the recent-online
  FIFO holds at least ``greedy_min_online`` transitions: a plain (SAC-style) TD update on a batch of
  *recent* online data (a FIFO of the last ``online_buffer_size`` = 20K environment transitions);
* **conservative (offline)** otherwise: the same TD update plus the CQL(H) penalty (weight
  ``conservative_weight`` = 5) on a batch of offline data plus *all* online data.

The actor (and the entropy temperature) is updated on the same batch in both branches.

With CFDG (a source-aware buffer: ``CFDGReplayBuffer`` or a core ``AugmentedReplayBuffer``), the
synthetic *offline-like* pool joins the conservative branch and the synthetic *online-like* pool the
greedy branch; each branch batch of size B is drawn by APL itself with ``sample_from(pool, n)``:

* greedy: ``round(B * synthetic_fraction)`` rows from pool 3 (synthetic online), the rest from
  APL's recent-online FIFO (source 1);
* conservative: ``round(B * synthetic_fraction)`` rows from pool 2 (synthetic offline), the rest
  uniformly from the union of pools 0 (real offline) and 1 (all real online): a binomial split in
  proportion to the pool sizes, which is exactly uniform sampling over the union (APL's
  "offline + all online" buffer).

An empty synthetic pool (before the first refresh, or ``augmentation="none"``) gives its rows to
the real part.

How APL gets source-aware batches inside d3rlpy's ``fit_online`` (which only calls
``buffer.sample_transition_batch`` and passes the batch to ``update``): :meth:`APL.fit_online`
(1) wraps the environment so each step ``(s, a, r, s', terminated)`` is also written to APL's
recent-online FIFO, (2) binds the buffer when it is source-aware, then calls d3rlpy's loop. In
:meth:`APL.update`, a bound source-aware buffer makes APL draw the branch batch itself (the batch
d3rlpy sampled is discarded: one vectorised sample per update, see ``bench_algos``). With a plain
d3rlpy ``ReplayBuffer`` (the fallback): the greedy branch samples the FIFO and the conservative
branch uses the batch d3rlpy passed in, so prefill that buffer with the offline data, as usual for
offline-to-online in d3rlpy. With ``fit`` (offline pre-training) the FIFO is empty and every update
is conservative: APL's offline phase is CQL with the critic ensemble. :meth:`bind_buffer` and
:meth:`observe_online` do the same for custom loops.

Defaults and their sources (zhan0903/APL0, ``agents/GCQL.py``, and the CQL code it builds on):
5 critics (MLP 3x256), the TD target is the min of 2 randomly chosen target critics *without* an
entropy term (``backup_entropy=False``), the actor maximises the *mean* of the ensemble, actor lr
1e-4, critic lr 3e-4, temperature lr 1e-4 (rlkit CQL uses the policy lr), target entropy
``-act_dim``, CQL(H) with importance sampling over 10 uniform + 10 current-state + 10
next-state policy actions, CQL temperature 1, no Lagrange tuning (``lagrange_thresh=-1``), tau
0.005, batch 256, greedy branch only once the online FIFO holds at least 10K transitions (``greedy_min_online``). Paper: online
FIFO ~20K, p = 0.5, UTD 10 (:meth:`APL.fit_online` uses ``utd_ratio`` as d3rlpy's ``n_updates``
unless given). Our choices where both are silent: ``synthetic_fraction`` 0.5 (SynthER's 50:50
real : synthetic for online training); critic update, then actor, then temperature (the released
code interleaves them with ``retain_graph``); terminal flag ``terminated`` only (truncation is not
a terminal). CFDG retrains every 10K online steps for APL: use ``APLConfig.cfdg_overrides()``
(``{"refresh_every": 10_000}``) when building the CFDG config.

Save/load: d3rlpy's ``save_model``/``load_model`` (``torch.load`` with ``weights_only=True``) and
``save``/``d3rlpy.load_learnable`` (d3rlpy's ``.d3`` format is a pickle: trusted files only). The
recent-online FIFO is data, like a replay buffer, and is not part of the model file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
import torch
from d3rlpy.algos.qlearning.base import QLearningAlgoBase
from d3rlpy.algos.qlearning.torch.ddpg_impl import DDPGBaseImpl, DDPGBaseModules
from d3rlpy.base import DeviceArg, LearnableConfig
from d3rlpy.constants import ActionSpace
from d3rlpy.dataset import TransitionMiniBatch
from d3rlpy.models.builders import (
    create_continuous_q_function,
    create_normal_policy,
    create_parameter,
)
from d3rlpy.models.encoders import EncoderFactory, VectorEncoderFactory, make_encoder_field
from d3rlpy.models.q_functions import MeanQFunctionFactory
from d3rlpy.models.torch import (
    ActionOutput,
    NormalPolicy,
    Parameter,
    SquashedGaussianDistribution,
    build_squashed_gaussian_distribution,
    get_parameter,
)
from d3rlpy.optimizers import OptimizerWrapper
from d3rlpy.optimizers.optimizers import OptimizerFactory, make_optimizer_field
from d3rlpy.torch_utility import TorchMiniBatch, train_api
from d3rlpy.types import Shape, TorchObservation

from cfdg_aug.config import ConfigError
from cfdg_aug.transitions import (
    SOURCE_REAL_OFFLINE,
    SOURCE_REAL_ONLINE,
    SOURCE_SYNTHETIC_OFFLINE,
    SOURCE_SYNTHETIC_ONLINE,
    TransitionBatch,
)

from ._convert import transition_batch_to_minibatch
from .pex import FrozenConfigMixin, _check_positive, _register

__all__ = ["APLConfig", "APL", "APLImpl", "APLModules", "BRANCH_CONSERVATIVE", "BRANCH_GREEDY",
           "APL_CFDG_REFRESH_EVERY"]

BRANCH_CONSERVATIVE = 0
BRANCH_GREEDY = 1
#: CFDG retraining interval for APL in the paper (online steps); see APLConfig.cfdg_overrides().
APL_CFDG_REFRESH_EVERY = 10_000


def _mlp3x256() -> EncoderFactory:
    return VectorEncoderFactory(hidden_units=[256, 256, 256])


def _encoder_field() -> Any:
    # d3rlpy's own field (for (de)serialisation) with APL's 3x256 default instead of d3rlpy's 2x256
    return dataclasses.field(default_factory=_mlp3x256, metadata=make_encoder_field().metadata)


@dataclasses.dataclass()
class APLConfig(FrozenConfigMixin, LearnableConfig):
    """Adaptive Policy Learning; defaults and sources in the module docstring.

    Args:
        actor_learning_rate, critic_learning_rate, temp_learning_rate: Adam learning rates.
        actor_encoder_factory, critic_encoder_factory: networks (default MLP 3x256).
        n_critics: critic ensemble size (5, APL's strongest variant).
        target_subset_size: TD target = min over this many randomly chosen target critics (2).
        backup_entropy: subtract ``alpha * log pi(a'|s')`` in the TD target (released code: no).
        initial_temperature: initial entropy temperature alpha.
        target_entropy: SAC's target entropy; None means ``-action_size``.
        conservative_weight: CQL penalty weight in the conservative branch (5).
        n_action_samples: actions per sampler (uniform / pi(s) / pi(s')) in the CQL logsumexp (10).
            Cost: a conservative update evaluates ``n_critics`` critics on
            ``batch_size * (1 + 3 * n_action_samples)`` rows, forward and backward (33 GFLOP at
            the defaults, ~2 updates/s on one CPU thread); see docs/benchmarks.md, "APL update
            throughput", for the rates of smaller settings.
        cql_temperature: temperature of the CQL logsumexp (1).
        online_update_probability: probability of the greedy branch (0.5).
        online_buffer_size: capacity of the recent-online FIFO (20K).
        greedy_min_online: the greedy branch is possible only with at least this many
            transitions in the FIFO (released code: 10K).
        synthetic_fraction: share of each branch batch drawn from its synthetic pool (0.5).
        learn_from_online: False makes APL the offline-only control (the runner's ``offline_only``
            arm): the greedy branch is never taken and the conservative branch draws no real online
            row, so every update is the conservative one on offline rows while the environment is
            stepped and the FIFO filled as usual. What APL gains over it is what the online rows
            add to continued offline training. Needs a bound source-aware buffer online (a plain
            d3rlpy buffer cannot tell offline rows from online ones).
        utd_ratio: gradient updates per environment step in ``fit_online`` (10).
        seed: seed of the branch choice and of the FIFO / pool-split sampling.
    """

    actor_learning_rate: float = 1e-4
    critic_learning_rate: float = 3e-4
    temp_learning_rate: float = 1e-4
    actor_optim_factory: OptimizerFactory = make_optimizer_field()
    critic_optim_factory: OptimizerFactory = make_optimizer_field()
    temp_optim_factory: OptimizerFactory = make_optimizer_field()
    actor_encoder_factory: EncoderFactory = _encoder_field()
    critic_encoder_factory: EncoderFactory = _encoder_field()
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    n_critics: int = 5
    target_subset_size: int = 2
    backup_entropy: bool = False
    initial_temperature: float = 1.0
    target_entropy: float | None = None
    conservative_weight: float = 5.0
    n_action_samples: int = 10
    cql_temperature: float = 1.0
    online_update_probability: float = 0.5
    online_buffer_size: int = 20_000
    greedy_min_online: int = 10_000
    synthetic_fraction: float = 0.5
    learn_from_online: bool = True
    utd_ratio: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("actor_learning_rate", "critic_learning_rate", "initial_temperature",
                     "cql_temperature"):
            _check_positive(name, getattr(self, name))
        for name in ("temp_learning_rate", "conservative_weight"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("batch_size", "n_critics", "target_subset_size", "n_action_samples",
                     "online_buffer_size", "utd_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
        if isinstance(self.greedy_min_online, bool) or not isinstance(self.greedy_min_online, int) \
                or not 0 <= self.greedy_min_online <= self.online_buffer_size:
            raise ConfigError(f"greedy_min_online must be an int in [0, online_buffer_size="
                              f"{self.online_buffer_size}], got {self.greedy_min_online!r}")
        if self.target_subset_size > self.n_critics:
            raise ConfigError(f"target_subset_size must be <= n_critics ({self.n_critics}), "
                              f"got {self.target_subset_size!r}")
        for name in ("online_update_probability", "synthetic_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
        if not (0.0 < self.tau <= 1.0):
            raise ConfigError(f"tau must be in (0, 1], got {self.tau!r}")
        if not isinstance(self.learn_from_online, bool):
            raise ConfigError(f"learn_from_online must be True or False, got {self.learn_from_online!r}")
        if not (0.0 <= self.gamma <= 1.0):
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ConfigError(f"target_entropy must be finite or None, got {self.target_entropy!r}")
        self._freeze()

    @staticmethod
    def cfdg_overrides() -> dict[str, int]:
        """Recommended ``CFDGConfig`` overrides for APL: ``CFDGConfig.paper(**APLConfig.cfdg_overrides())``."""
        return {"refresh_every": APL_CFDG_REFRESH_EVERY}

    def create(self, device: DeviceArg = False, enable_ddp: bool = False) -> APL:
        return APL(self, device, enable_ddp)

    @staticmethod
    def get_type() -> str:
        return "apl"


@dataclasses.dataclass(frozen=True)
class APLModules(DDPGBaseModules):
    policy: NormalPolicy
    log_temp: Parameter
    temp_optim: OptimizerWrapper | None


class APLImpl(DDPGBaseImpl):
    """Ensemble SAC critic update (+ CQL(H) in the conservative branch), SAC actor, temperature.

    Where the time goes (1 CPU thread, default config; ``benchmarks/bench_apl.py``): the update is
    bound by matrix multiplies, not by Python. The conservative branch evaluates every critic on
    ``B * (1 + 3 * n_action_samples)`` rows (7,936 at B = 256) forward and backward, ~95% of its
    time. So the update does each piece of work once: one policy pass on ``s`` (whose graph also
    serves the actor loss) and one on ``s'`` (TD target and CQL next-state actions), the CQL
    actions drawn from those distributions; the critics evaluated on the data rows and all CQL
    rows together; only the ``target_subset_size`` target critics that the TD target uses; no
    critic weight gradients in the actor loss. Random draws happen in the same order and shapes as
    a per-computation implementation, so it trains on the same samples.
    """

    _modules: APLModules
    #: rows per critic forward pass (see :meth:`ensemble_q`)
    ROWS_PER_PASS = 1024

    def __init__(self, *, target_subset_size: int, backup_entropy: bool, target_entropy: float,
                 conservative_weight: float, n_action_samples: int, cql_temperature: float,
                 seed: int, **kwargs: Any):
        super().__init__(**kwargs)
        self._subset = target_subset_size
        self._backup_entropy = backup_entropy
        self._target_entropy = target_entropy
        self._cql_weight = conservative_weight
        self._n_samples = n_action_samples
        self._cql_temp = cql_temperature
        self._n_critics = len(self._modules.q_funcs)
        self._subset_gen = torch.Generator(device="cpu").manual_seed(seed)

    def _alpha(self) -> torch.Tensor:
        return get_parameter(self._modules.log_temp).exp()

    def _sample(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squashed-Gaussian sample and log-prob, (N, A) and (N, 1)."""
        return build_squashed_gaussian_distribution(self._modules.policy(x)).sample_with_log_prob()

    @staticmethod
    def ensemble_q(q_funcs: torch.nn.ModuleList, x: torch.Tensor, action: torch.Tensor,
                   members: Sequence[int] | None = None) -> torch.Tensor:
        """Q of each critic in ``members`` (default: all) on the same rows: (K, N, 1).

        One pass per critic, over at most ``ROWS_PER_PASS`` rows at a time. A single batched
        pass over the ensemble (stacked weights and ``torch.baddbmm``, as CORL's
        ``VectorizedLinear``) measured slower on CPU (``bench_apl``: ~0.8x on the conservative
        branch, ~1x on the greedy one; with hundreds of rows per member one GEMM each is already
        efficient) and would tie the critic to one architecture. Row blocks: one pass over all
        7,936 CQL rows made activations of 8 MiB, which the allocator took from and returned
        to the OS on every update (page faults: +30-60% time); 1,024-row blocks do not.
        """
        idx = range(len(q_funcs)) if members is None else members
        n, r = x.shape[0], APLImpl.ROWS_PER_PASS
        if n <= r:
            return torch.stack([q_funcs[i](x, action).q_value for i in idx])
        return torch.stack([torch.cat([q_funcs[i](x[s:s + r], action[s:s + r]).q_value
                                       for s in range(0, n, r)]) for i in idx])

    def _target(self, next_obs: torch.Tensor, pi_next: ActionOutput) -> torch.Tensor:
        """TD target value at s' (before reward and discount): (B, 1); call under no_grad."""
        a2, logp2 = build_squashed_gaussian_distribution(pi_next).sample_with_log_prob()
        idx = torch.randperm(self._n_critics, generator=self._subset_gen)[: self._subset]
        # REDQ-style min over a random subset: only those target critics are evaluated
        target = self.ensemble_q(self._modules.targ_q_funcs, next_obs, a2, idx.tolist()).min(dim=0).values
        if self._backup_entropy:
            target = target - self._alpha() * logp2
        return target

    def compute_target(self, batch: TorchMiniBatch) -> torch.Tensor:
        with torch.no_grad():
            nxt = batch.next_observations
            assert isinstance(nxt, torch.Tensor)
            return self._target(nxt, self._modules.policy(nxt))

    def _cql_actions(self, pi_obs: ActionOutput, pi_next: ActionOutput, b: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """CQL(H) importance-sampled actions for each state s: n uniform, n from pi(.|s), n from
        pi(.|s') (evaluated at s, as rlkit's CQL does). Returns actions (3 * B * n, A), blocks
        [uniform; pi(s'); pi(s)] each in state-major order, and their log densities (3, B, n)."""
        n, a_dim = self._n_samples, self._action_size

        def draw(pi: ActionOutput) -> tuple[torch.Tensor, torch.Tensor]:
            assert pi.logstd is not None
            dist = SquashedGaussianDistribution(pi.mu.detach().repeat_interleave(n, dim=0),
                                                pi.logstd.detach().exp().repeat_interleave(n, dim=0))
            return dist.sample_with_log_prob()

        with torch.no_grad():
            a_cur, lp_cur = draw(pi_obs)
            a_nxt, lp_nxt = draw(pi_next)
        a_rand = torch.empty(b * n, a_dim, device=device).uniform_(-1.0, 1.0)
        log_uniform = torch.full((b, n), a_dim * math.log(0.5), device=device)
        log_w = torch.stack([log_uniform, lp_nxt.view(b, n), lp_cur.view(b, n)])
        return torch.cat([a_rand, a_nxt, a_cur]), log_w

    def _critic_step(self, batch: TorchMiniBatch, pi_obs: ActionOutput, pi_next: ActionOutput,
                     conservative: bool) -> dict[str, float]:
        obs, nxt = batch.observations, batch.next_observations
        assert isinstance(obs, torch.Tensor) and isinstance(nxt, torch.Tensor)
        self._modules.critic_optim.zero_grad()
        with torch.no_grad():
            q_tpn = self._target(nxt, pi_next)
        y = batch.rewards + (self._gamma ** batch.intervals) * (1.0 - batch.terminals) * q_tpn
        b, n, k = obs.shape[0], self._n_samples, self._n_critics
        cql = conservative and self._cql_weight > 0
        if cql:
            a_cql, log_w = self._cql_actions(pi_obs, pi_next, b, obs.device)
            x = torch.cat([obs, obs.repeat_interleave(n, dim=0).repeat(3, 1)])
            q = self.ensemble_q(self._modules.q_funcs, x, torch.cat([batch.actions, a_cql]))
        else:
            q = self.ensemble_q(self._modules.q_funcs, obs, batch.actions)
        q_data = q[:, :b]  # (K, B, 1)
        # sum over critics of each critic's MSE: same gradients as APL's per-critic optimisers
        td_loss = ((q_data - y.unsqueeze(0)) ** 2).mean(dim=(1, 2)).sum()
        if cql:
            # CQL(H): logsumexp over the 3n importance-weighted samples per state, per critic
            cat = q[:, b:, 0].view(k, 3, b, n) - log_w.unsqueeze(0)
            lse = torch.logsumexp(cat / self._cql_temp, dim=(1, 3)).mean(dim=1) * self._cql_temp  # (K,)
            cql_loss = (self._cql_weight * (lse - q_data.mean(dim=(1, 2)))).sum()
        else:
            cql_loss = torch.zeros((), device=td_loss.device)
        loss = td_loss + cql_loss
        loss.backward()
        self._modules.critic_optim.step()
        return {"critic_loss": float(loss.detach()), "td_loss": float(td_loss.detach()),
                "conservative_loss": float(cql_loss.detach())}

    def compute_actor_loss(self, batch: TorchMiniBatch, action: ActionOutput) -> Any:
        raise NotImplementedError("APL updates the actor in _actor_step")

    def _actor_step(self, batch: TorchMiniBatch, pi_obs: ActionOutput) -> dict[str, float]:
        obs = batch.observations
        assert isinstance(obs, torch.Tensor)
        self._modules.q_funcs.eval()
        self._modules.actor_optim.zero_grad()
        a, logp = build_squashed_gaussian_distribution(pi_obs).sample_with_log_prob()
        alpha = self._alpha().detach()
        critic_params = [p for p in self._modules.q_funcs.parameters() if p.requires_grad]
        try:
            # the actor loss needs dQ/da only: no critic weight gradients (a third of its backward)
            for p in critic_params:
                p.requires_grad_(False)
            q = self.ensemble_q(self._modules.q_funcs, obs, a).mean(dim=0)
            actor_loss = (alpha * logp - q).mean()
            actor_loss.backward()
        finally:
            for p in critic_params:
                p.requires_grad_(True)
        self._modules.actor_optim.step()
        metrics = {"actor_loss": float(actor_loss.detach()), "temp": float(alpha.reshape(-1)[0])}
        if self._modules.temp_optim is not None:
            self._modules.temp_optim.zero_grad()
            log_temp = get_parameter(self._modules.log_temp)
            temp_loss = -(log_temp * (logp.detach() + self._target_entropy)).mean()
            temp_loss.backward()
            self._modules.temp_optim.step()
            metrics["temp_loss"] = float(temp_loss.detach())
        return metrics

    def _update(self, batch: TorchMiniBatch, conservative: bool) -> dict[str, float]:
        obs, nxt = batch.observations, batch.next_observations
        assert isinstance(obs, torch.Tensor) and isinstance(nxt, torch.Tensor)
        # One policy pass per state set. pi(.|s) keeps its graph for the actor loss (the critic
        # step does not change the policy); pi(.|s') needs none.
        pi_obs = self._modules.policy(obs)
        with torch.no_grad():
            pi_next = self._modules.policy(nxt)
        metrics = self._critic_step(batch, pi_obs, pi_next, conservative)
        metrics.update(self._actor_step(batch, pi_obs))
        self.update_critic_target()
        return metrics

    @train_api
    def update_branch(self, batch: TorchMiniBatch, grad_step: int, conservative: bool) -> dict[str, float]:
        """One APL update: critic (+CQL when ``conservative``), actor, temperature, targets."""
        return self._update(batch, conservative)

    def inner_update(self, batch: TorchMiniBatch, grad_step: int) -> dict[str, float]:
        return self._update(batch, True)

    def inner_sample_action(self, x: TorchObservation) -> torch.Tensor:
        return build_squashed_gaussian_distribution(self._modules.policy(x)).sample()

    def update_critic_target(self) -> None:
        # d3rlpy's soft_sync (targ * (1 - tau) + tau * p), one foreach call per step
        with torch.no_grad():
            targ = list(self._modules.targ_q_funcs.parameters())
            torch._foreach_mul_(targ, 1.0 - self._tau)
            torch._foreach_add_(targ, torch._foreach_mul(list(self._modules.q_funcs.parameters()), self._tau))


class _RecentOnline:
    """Numpy FIFO of the last ``capacity`` online transitions (APL's greedy-branch data)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._next = 0
        self._arrays: dict[str, np.ndarray] | None = None

    def add(self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, done: float) -> None:
        obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        act = np.asarray(act, dtype=np.float32).reshape(-1)
        if self._arrays is None:
            c = self.capacity
            self._arrays = {"obs": np.zeros((c, obs.size), np.float32),
                            "act": np.zeros((c, act.size), np.float32),
                            "rew": np.zeros(c, np.float32),
                            "next_obs": np.zeros((c, obs.size), np.float32),
                            "done": np.zeros(c, np.float32)}
        a = self._arrays
        if obs.size != a["obs"].shape[1] or act.size != a["act"].shape[1]:
            raise ValueError(f"observe_online: obs/act sizes {obs.size}/{act.size} differ from the "
                             f"stored {a['obs'].shape[1]}/{a['act'].shape[1]}")
        i = self._next
        a["obs"][i], a["act"][i], a["rew"][i] = obs, act, rew
        a["next_obs"][i], a["done"][i] = np.asarray(next_obs, np.float32).reshape(-1), done
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> TransitionBatch:
        assert self._arrays is not None and self.size > 0
        idx = rng.integers(0, self.size, n)
        a = self._arrays
        return TransitionBatch.from_arrays(a["obs"][idx], a["act"][idx], a["rew"][idx],
                                           a["next_obs"][idx], a["done"][idx])


class _RecordingEnv(gymnasium.Wrapper):  # type: ignore[type-arg]
    """Passes everything through; writes each step to APL's recent-online FIFO."""

    def __init__(self, env: Any, sink: APL) -> None:
        super().__init__(env)
        self._sink = sink
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> Any:
        nxt, rew, terminated, truncated, info = self.env.step(action)
        self._sink.observe_online(self._obs, action, float(rew), nxt, float(terminated))
        self._obs = nxt
        return nxt, rew, terminated, truncated, info


class APL(QLearningAlgoBase[APLImpl, APLConfig]):
    """APL; see the module docstring for the branch rule and the CFDG routing.

    Attributes (diagnostics, updated by every :meth:`update`):
        last_branch: ``BRANCH_GREEDY`` (1) or ``BRANCH_CONSERVATIVE`` (0).
        last_batch: the ``TransitionMiniBatch`` the last update trained on.
        last_sources: (B,) int8 source of each row of ``last_batch`` (None when unknown: the
            batch d3rlpy passed in from a plain buffer).
        branch_counts: number of [conservative, greedy] updates so far.
        source_counts: (4,) int64 rows trained on so far per source (``SOURCE_NAMES`` order), from
            the batches whose sources are known. With a source-aware buffer bound, these, not the
            buffer's ``source_histogram``, say what APL trained on: each branch draws its own batch
            and the batch a host loop passes in is not used.
    """

    def __init__(self, config: APLConfig, device: DeviceArg, enable_ddp: bool, impl: Any = None):
        super().__init__(config, device, enable_ddp, impl)
        self._rng = np.random.default_rng(config.seed)
        self._recent = _RecentOnline(config.online_buffer_size)
        self._pools: Any = None
        self.last_branch: int | None = None
        self.last_batch: TransitionMiniBatch | None = None
        self.last_sources: np.ndarray | None = None
        self.branch_counts = np.zeros(2, dtype=np.int64)
        self.source_counts = np.zeros(4, dtype=np.int64)

    def inner_create_impl(self, observation_shape: Shape, action_size: int) -> None:
        cfg = self._config
        policy = create_normal_policy(observation_shape, action_size, cfg.actor_encoder_factory,
                                      device=self._device, enable_ddp=self._enable_ddp)

        def q_function() -> tuple[Any, Any]:
            return create_continuous_q_function(
                observation_shape, action_size, cfg.critic_encoder_factory, MeanQFunctionFactory(),
                n_ensembles=cfg.n_critics, device=self._device, enable_ddp=self._enable_ddp)

        q_funcs, q_fwd = q_function()
        targ_q_funcs, targ_q_fwd = q_function()
        log_temp = create_parameter((1, 1), math.log(cfg.initial_temperature),
                                    device=self._device, enable_ddp=self._enable_ddp)
        actor_optim = cfg.actor_optim_factory.create(
            policy.named_modules(), lr=cfg.actor_learning_rate, compiled=self.compiled)
        critic_optim = cfg.critic_optim_factory.create(
            q_funcs.named_modules(), lr=cfg.critic_learning_rate, compiled=self.compiled)
        temp_optim = (cfg.temp_optim_factory.create(log_temp.named_modules(),
                                                    lr=cfg.temp_learning_rate, compiled=self.compiled)
                      if cfg.temp_learning_rate > 0 else None)
        modules = APLModules(policy=policy, q_funcs=q_funcs, targ_q_funcs=targ_q_funcs,
                             actor_optim=actor_optim, critic_optim=critic_optim,
                             log_temp=log_temp, temp_optim=temp_optim)
        target_entropy = float(-action_size if cfg.target_entropy is None else cfg.target_entropy)
        self._impl = APLImpl(
            observation_shape=observation_shape, action_size=action_size, modules=modules,
            q_func_forwarder=q_fwd, targ_q_func_forwarder=targ_q_fwd, gamma=cfg.gamma,
            tau=cfg.tau, compiled=False, device=self._device,
            target_subset_size=cfg.target_subset_size, backup_entropy=cfg.backup_entropy,
            target_entropy=target_entropy, conservative_weight=cfg.conservative_weight,
            n_action_samples=cfg.n_action_samples, cql_temperature=cfg.cql_temperature,
            seed=cfg.seed)

    def get_action_type(self) -> ActionSpace:
        return ActionSpace.CONTINUOUS

    # ---- data routing ----------------------------------------------------------------------
    @staticmethod
    def _source_aware(buffer: Any) -> Any:
        """The object with ``sample_from``/``pool_sizes`` behind ``buffer``, or None."""
        for cand in (getattr(buffer, "augmented", None), buffer):
            if cand is not None and callable(getattr(cand, "sample_from", None)) \
                    and hasattr(cand, "pool_sizes"):
                return cand
        return None

    def bind_buffer(self, buffer: Any) -> bool:
        """Use ``buffer``'s pools for the branch batches (a ``CFDGReplayBuffer``, a core
        ``AugmentedReplayBuffer``, or anything with ``sample_from`` and ``pool_sizes``).
        ``None`` or a plain buffer unbinds (fallback). Returns whether a source-aware buffer is bound."""
        self._pools = self._source_aware(buffer) if buffer is not None else None
        return self._pools is not None

    @property
    def bound_pools(self) -> Any:
        return self._pools

    @property
    def recent_online_size(self) -> int:
        return self._recent.size

    def observe_online(self, obs: Any, act: Any, rew: float, next_obs: Any, done: float) -> None:
        """Record one environment transition in the recent-online FIFO (``done`` = terminated)."""
        if not self._config.learn_from_online and self._pools is None:
            raise ConfigError("learn_from_online=False needs a bound source-aware buffer (bind_buffer) before "
                              "online steps: the batch a plain buffer passes to update() mixes online rows in")
        self._recent.add(obs, act, rew, next_obs, done)

    def choose_branch(self) -> int:
        """Draw the branch of the next update (consumes the branch RNG)."""
        u = self._rng.random()
        greedy_ok = self._config.learn_from_online and self._recent.size > 0 \
            and self._recent.size >= self._config.greedy_min_online
        return BRANCH_GREEDY if (greedy_ok and u < self._config.online_update_probability) \
            else BRANCH_CONSERVATIVE

    def _split(self, b: int, synthetic_pool: int) -> tuple[int, int]:
        """(real rows, synthetic rows) of a branch batch of size b."""
        n_syn = 0
        if self._pools is not None and self._pools.pool_sizes[_pool_name(self._pools, synthetic_pool)] > 0:
            n_syn = int(round(b * self._config.synthetic_fraction))
        return b - n_syn, n_syn

    def branch_batch(self, branch: int, batch_size: int) -> TransitionBatch:
        """A batch for ``branch`` from the bound pools / the FIFO, ``.source`` set per row."""
        parts: list[TransitionBatch] = []
        if branch == BRANCH_GREEDY:
            n_real, n_syn = self._split(batch_size, SOURCE_SYNTHETIC_ONLINE)
            real = self._recent.sample(self._rng, n_real)
            parts.append(dataclasses.replace(real, source=np.full(n_real, SOURCE_REAL_ONLINE, np.int8)))
            if n_syn:
                parts.append(self._pools.sample_from(SOURCE_SYNTHETIC_ONLINE, n_syn))
        else:
            if self._pools is None:
                raise RuntimeError("branch_batch(conservative) needs a bound source-aware buffer")
            n_real, n_syn = self._split(batch_size, SOURCE_SYNTHETIC_OFFLINE)
            sizes = self._pools.pool_sizes
            n0 = sizes[_pool_name(self._pools, SOURCE_REAL_OFFLINE)]
            n1 = sizes[_pool_name(self._pools, SOURCE_REAL_ONLINE)] if self._config.learn_from_online else 0
            if n0 + n1 == 0:
                raise RuntimeError("conservative branch: the bound buffer holds no real transitions")
            k1 = int(self._rng.binomial(n_real, n1 / (n0 + n1)))
            if n_real - k1:
                parts.append(self._pools.sample_from(SOURCE_REAL_OFFLINE, n_real - k1))
            if k1:
                parts.append(self._pools.sample_from(SOURCE_REAL_ONLINE, k1))
            if n_syn:
                parts.append(self._pools.sample_from(SOURCE_SYNTHETIC_OFFLINE, n_syn))
        return parts[0] if len(parts) == 1 else TransitionBatch.concat(parts)

    # ---- updates ---------------------------------------------------------------------------
    def update(self, batch: TransitionMiniBatch) -> dict[str, float]:
        """One APL update. ``batch`` (from d3rlpy's loop) is used by the conservative branch only
        when no source-aware buffer is bound; otherwise each branch draws its own batch."""
        assert self._impl is not None, "APL is not built"
        branch = self.choose_branch()
        sources: np.ndarray | None
        if branch == BRANCH_GREEDY or self._pools is not None:
            tb = self.branch_batch(branch, self._config.batch_size)
            batch, sources = transition_batch_to_minibatch(tb), tb.source
        else:
            sources = None
        return self._update_on(batch, branch, sources)

    def update_branch(self, batch: TransitionMiniBatch, branch: int) -> dict[str, float]:
        """Update on a given batch with a given branch (custom loops, tests)."""
        if branch not in (BRANCH_CONSERVATIVE, BRANCH_GREEDY):
            raise ValueError(f"branch must be {BRANCH_CONSERVATIVE} or {BRANCH_GREEDY}, got {branch!r}")
        return self._update_on(batch, branch, None)

    def _update_on(self, batch: TransitionMiniBatch, branch: int,
                   sources: np.ndarray | None) -> dict[str, float]:
        assert self._impl is not None, "APL is not built"
        torch_batch = TorchMiniBatch.from_batch(
            batch=batch, gamma=self._config.gamma, compute_returns_to_go=False,
            device=self._device, observation_scaler=self._config.observation_scaler,
            action_scaler=self._config.action_scaler, reward_scaler=self._config.reward_scaler)
        loss = self._impl.update_branch(torch_batch, self._grad_step,
                                        branch == BRANCH_CONSERVATIVE)
        self._grad_step += 1
        self.last_branch, self.last_batch, self.last_sources = branch, batch, sources
        self.branch_counts[branch] += 1
        if sources is not None:
            self.source_counts += np.bincount(sources, minlength=self.source_counts.size)
        loss["greedy"] = float(branch == BRANCH_GREEDY)
        return loss

    def fit_online(self, env: Any, buffer: Any = None, explorer: Any = None,
                   n_steps: int = 1_000_000, n_steps_per_epoch: int = 10_000,
                   update_interval: int = 1, n_updates: int | None = None,
                   **kwargs: Any) -> None:
        """d3rlpy's ``fit_online`` with APL's routing: records online steps in the recent FIFO,
        binds a source-aware ``buffer`` for the run, and uses ``n_updates = config.utd_ratio``
        unless given. Other arguments are d3rlpy's."""
        previous = self._pools
        if not self.bind_buffer(buffer) and not self._config.learn_from_online:
            self._pools = previous
            raise ConfigError("learn_from_online=False needs a source-aware buffer (CFDGReplayBuffer or "
                              "AugmentedReplayBuffer) to keep online rows out of the batches; got "
                              f"{type(buffer).__name__}")
        try:
            super().fit_online(
                _RecordingEnv(env, self), buffer=buffer, explorer=explorer, n_steps=n_steps,
                n_steps_per_epoch=n_steps_per_epoch, update_interval=update_interval,
                n_updates=self._config.utd_ratio if n_updates is None else n_updates, **kwargs)
        finally:
            self._pools = previous


def _pool_name(pools: Any, source: int) -> Any:
    """Key of ``pools.pool_sizes`` for a source int (the core buffer keys by SOURCE_NAMES)."""
    from cfdg_aug.transitions import SOURCE_NAMES

    sizes = pools.pool_sizes
    return source if source in sizes else SOURCE_NAMES[source]


_register(APLConfig)
