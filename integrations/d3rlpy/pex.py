"""PEX (Policy Expansion, Zhang et al., ICLR 2023) as a d3rlpy algorithm.

PEX fine-tunes online from a pre-trained IQL: the offline policy is kept *frozen*, a new policy is
added and trained with the IQL losses, and at every step both propose an action and one of them is
executed, chosen with probability ``softmax(inverse_temperature * Q(s, a_i))``. The critic, the
target critic and the value network start from the offline IQL's.

Choices, with their sources (Haichao-Zhang/PEX, ``pex/algorithms/pex.py`` and ``main_online.py``):

* Offline proposal: the offline policy's *mode* (``policy_offline.act(deterministic=True)``).
* New-policy proposal: a *sample* while collecting data; its mode in :meth:`PEX.predict`.
* The choice uses the minimum over the critic ensemble of the *online* (not target) critic.
* ``policy_target="composed"`` (default, the released code): the new policy is regressed by
  advantage-weighted log-likelihood toward freshly *composed* actions (the PEX choice applied to
  the batch states), weighted by ``exp(beta * (Q_target(s, a_c) - V(s)))``.
  ``policy_target="dataset"``: plain IQL policy extraction on the batch actions (the paper's text).
* The new policy starts from random weights (released code); ``init_new_policy_from_offline=True``
  copies the offline policy instead. Optimiser states start fresh (released code).
* ``predict`` (evaluation) is deterministic: both modes, the one with the larger Q. The released
  evaluation instead used epsilon-greedy sampling with eps=0.1 for both the proposal and the choice;
  d3rlpy's ``predict`` contract (and ``save_policy``) require a deterministic greedy action.
* IQL hyperparameters (expectile, beta = ``weight_temp``, max weight, tau, learning rates) are taken
  from the pre-trained IQL's config by :meth:`PEX.from_iql`, so offline and online losses agree.
* Online schedule in the released code (arguments of ``fit_online``, not of the config):
  5,000 initial collection steps (``update_start_step=5000``), 1 update per step, 1M replay.

Batches: PEX uses whatever ``sample_transition_batch`` returns, so with the CFDG buffer batches mix
real offline : real online : synthetic exactly as for IQL.

Save/load: d3rlpy's own mechanisms. ``save_model``/``load_model`` write/read a ``torch.save`` file
(read back with ``torch.load``'s default ``weights_only=True``, no arbitrary unpickling);
``save`` / ``d3rlpy.load_learnable`` use d3rlpy's ``.d3`` format, which is a *pickle*: only load
``.d3`` files you trust. The frozen offline policy is part of both (module ``offline_policy``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import torch
from d3rlpy.algos.qlearning.base import QLearningAlgoBase
from d3rlpy.algos.qlearning.iql import IQL, IQLConfig
from d3rlpy.algos.qlearning.torch.ddpg_impl import DDPGBaseActorLoss
from d3rlpy.algos.qlearning.torch.iql_impl import IQLImpl, IQLModules
from d3rlpy.base import DeviceArg, LearnableConfig, register_learnable
from d3rlpy.constants import ActionSpace
from d3rlpy.models.builders import (
    create_continuous_q_function,
    create_normal_policy,
    create_value_function,
)
from d3rlpy.models.encoders import EncoderFactory, make_encoder_field
from d3rlpy.models.q_functions import MeanQFunctionFactory
from d3rlpy.models.torch import ActionOutput, NormalPolicy, build_gaussian_distribution
from d3rlpy.optimizers.optimizers import OptimizerFactory, make_optimizer_field
from d3rlpy.serializable_config import CONFIG_STORAGE
from d3rlpy.torch_utility import TorchMiniBatch
from d3rlpy.types import Shape, TorchObservation

from cfdg_aug.config import ConfigError

__all__ = ["PEXConfig", "PEX", "PEXImpl", "PEXModules"]

PolicyTarget = Literal["composed", "dataset"]
_POLICY_TARGETS = ("composed", "dataset")


class FrozenConfigMixin:
    """Makes a d3rlpy config immutable after ``__init__``.

    d3rlpy's ``LearnableConfig`` is a non-frozen dataclass and Python refuses a frozen dataclass
    subclass of a non-frozen one, so immutability is enforced here instead: assignment after
    construction raises ``dataclasses.FrozenInstanceError``. ``dataclasses.replace`` still works
    (it builds a new object). Fitted scalers are mutated in place by d3rlpy, which stays allowed.
    """

    _frozen_fields: bool = False

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen_fields", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen_fields:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen_fields:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def _register(config_cls: type[LearnableConfig]) -> None:
    """Register with d3rlpy unless already registered (d3rlpy asserts on duplicates)."""
    registered = CONFIG_STORAGE[LearnableConfig].config_list
    if registered.get(config_cls.get_type()) is not config_cls:
        register_learnable(config_cls)


@dataclasses.dataclass()
class PEXConfig(FrozenConfigMixin, LearnableConfig):
    r"""Policy Expansion (PEX) on top of IQL.

    Build with :meth:`PEX.from_iql` (a trained d3rlpy IQL object or a ``.d3`` file); a PEX created
    with ``PEXConfig().create()`` alone has no offline policy and refuses to train.

    Args (IQL fields have d3rlpy's IQL meaning and defaults; :meth:`PEX.from_iql` copies them from
    the pre-trained IQL unless a config is passed):
        inverse_temperature: :math:`\alpha` in ``P(i) ∝ exp(alpha * Q(s, a_i))``; PEX default 10.
        policy_target: ``"composed"`` (released code) or ``"dataset"`` (plain IQL extraction).
        init_new_policy_from_offline: start the new policy as a copy of the offline one
            (released code: False, a fresh policy).
    """

    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    actor_optim_factory: OptimizerFactory = make_optimizer_field()
    critic_optim_factory: OptimizerFactory = make_optimizer_field()
    actor_encoder_factory: EncoderFactory = make_encoder_field()
    critic_encoder_factory: EncoderFactory = make_encoder_field()
    value_encoder_factory: EncoderFactory = make_encoder_field()
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    n_critics: int = 2
    expectile: float = 0.7
    weight_temp: float = 3.0
    max_weight: float = 100.0
    inverse_temperature: float = 10.0
    policy_target: str = "composed"
    init_new_policy_from_offline: bool = False

    def __post_init__(self) -> None:
        _check_positive("actor_learning_rate", self.actor_learning_rate)
        _check_positive("critic_learning_rate", self.critic_learning_rate)
        _check_positive("inverse_temperature", self.inverse_temperature, allow_zero=True)
        _check_positive("weight_temp", self.weight_temp, allow_zero=True)
        _check_positive("max_weight", self.max_weight)
        if not (0.0 < self.expectile < 1.0):
            raise ConfigError(f"expectile must be in (0, 1), got {self.expectile!r}")
        if not (0.0 < self.tau <= 1.0):
            raise ConfigError(f"tau must be in (0, 1], got {self.tau!r}")
        if not (0.0 <= self.gamma <= 1.0):
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not isinstance(self.n_critics, int) or self.n_critics < 1:
            raise ConfigError(f"n_critics must be an int >= 1, got {self.n_critics!r}")
        if self.policy_target not in _POLICY_TARGETS:
            raise ConfigError(
                f"policy_target must be one of {_POLICY_TARGETS}, got {self.policy_target!r}")
        self._freeze()

    @classmethod
    def from_iql_config(cls, iql_config: IQLConfig, **overrides: Any) -> PEXConfig:
        """A PEX config with every IQL field (architecture, scalers, losses) taken from an IQL."""
        shared = {f.name: getattr(iql_config, f.name) for f in dataclasses.fields(IQLConfig)}
        shared.update(overrides)
        return cls(**shared)

    def create(self, device: DeviceArg = False, enable_ddp: bool = False) -> PEX:
        return PEX(self, device, enable_ddp)

    @staticmethod
    def get_type() -> str:
        return "pex"


@dataclasses.dataclass(frozen=True)
class PEXModules(IQLModules):
    offline_policy: NormalPolicy


class PEXImpl(IQLImpl):
    """IQL losses for critic/value; PEX action composition and policy target."""

    _modules: PEXModules

    def __init__(self, *, inverse_temperature: float, policy_target: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._inverse_temperature = inverse_temperature
        self._policy_target = policy_target
        # never trained: outside every optimiser, and no gradient is ever needed through it
        self._modules.offline_policy.requires_grad_(False)

    # ---- action composition -------------------------------------------------------------
    def propose(self, x: TorchObservation, *, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Both proposals, each (N, act_dim): offline mode, new policy sample (or mode)."""
        a_off = self._modules.offline_policy(x).squashed_mu
        out = self._modules.policy(x)
        a_new = out.squashed_mu if deterministic else build_gaussian_distribution(out).sample()
        return a_off, a_new

    def choice_logits(self, x: TorchObservation, a_off: torch.Tensor,
                      a_new: torch.Tensor) -> torch.Tensor:
        """(N, 2) logits ``inverse_temperature * min_k Q_k(s, a_i)``; column 0 offline, 1 new."""
        q_off = self._q_func_forwarder.compute_expected_q(x, a_off, "min")
        q_new = self._q_func_forwarder.compute_expected_q(x, a_new, "min")
        return self._inverse_temperature * torch.cat([q_off, q_new], dim=1)

    def compose(self, x: TorchObservation, *, deterministic: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PEX action selection.

        Returns (actions (N, act_dim), chosen index (N,) with 0 = offline / 1 = new policy,
        choice probabilities (N, 2)). ``deterministic``: modes and argmax instead of sampling.
        """
        with torch.no_grad():
            a_off, a_new = self.propose(x, deterministic=deterministic)
            logits = self.choice_logits(x, a_off, a_new)
            probs = torch.softmax(logits, dim=1)
            if deterministic:
                idx = logits.argmax(dim=1)
            else:
                idx = torch.distributions.Categorical(logits=logits).sample()
            w = idx.unsqueeze(1).to(a_off.dtype)
            return (1.0 - w) * a_off + w * a_new, idx, probs

    def inner_sample_action(self, x: TorchObservation) -> torch.Tensor:
        return self.compose(x, deterministic=False)[0]

    def inner_predict_best_action(self, x: TorchObservation) -> torch.Tensor:
        return self.compose(x, deterministic=True)[0]

    # ---- new-policy loss ----------------------------------------------------------------
    def compute_actor_loss(self, batch: TorchMiniBatch, action: ActionOutput) -> DDPGBaseActorLoss:
        if self._policy_target == "dataset":
            return super().compute_actor_loss(batch, action)
        with torch.no_grad():
            target_actions, _, _ = self.compose(batch.observations, deterministic=False)
            q_t = self._targ_q_func_forwarder.compute_expected_q(
                batch.observations, target_actions, "min")
            v_t = self._modules.value_func(batch.observations)
            weight = (self._weight_temp * (q_t - v_t)).exp().clamp(max=self._max_weight)
        log_probs = build_gaussian_distribution(action).log_prob(target_actions)
        return DDPGBaseActorLoss(-(weight * log_probs).mean())


class PEX(QLearningAlgoBase[PEXImpl, PEXConfig]):
    """PEX algorithm; use :meth:`from_iql`. Works with ``fit`` and ``fit_online``."""

    @classmethod
    def from_iql(cls, iql: IQL | str | Path, config: PEXConfig | None = None, *,
                 device: DeviceArg = None) -> PEX:
        """Expand a pre-trained IQL into PEX.

        Args:
            iql: a built d3rlpy ``IQL`` or the path of a ``.d3`` file written by ``IQL.save``
                (a pickle: trusted files only).
            config: PEX hyperparameters; default ``PEXConfig.from_iql_config(iql.config)``. Its
                architecture fields (encoders, ``n_critics``) must equal the IQL's; the IQL's
                fitted scalers are always used (the offline networks were trained on them).
            device: d3rlpy device argument; default the IQL's device (for a ``.d3`` path, which
                records no device: d3rlpy's default, the CPU; pass ``device="cuda:0"`` for a GPU).
        """
        if isinstance(iql, (str, Path)):
            import d3rlpy

            path = Path(iql)
            if not path.is_file():
                raise FileNotFoundError(f"iql: no IQL checkpoint at {str(path)!r}")
            iql = d3rlpy.load_learnable(str(path), device=device)
        if not isinstance(iql, IQL):
            raise TypeError(f"iql must be a d3rlpy IQL (or a path to one), got {type(iql).__name__}")
        if iql.impl is None:
            raise ValueError("iql is not built: train it (fit) or load it before PEX.from_iql")
        if config is None:
            config = PEXConfig.from_iql_config(iql.config)
        else:
            for name in ("actor_encoder_factory", "critic_encoder_factory",
                         "value_encoder_factory", "n_critics"):
                mine, theirs = getattr(config, name), getattr(iql.config, name)
                if mine.__class__ is not theirs.__class__ or (
                        dataclasses.is_dataclass(mine) and dataclasses.asdict(mine)  # type: ignore[arg-type]
                        != dataclasses.asdict(theirs)) or (
                        not dataclasses.is_dataclass(mine) and mine != theirs):
                    raise ConfigError(
                        f"config.{name} must match the pre-trained IQL's ({theirs!r}), got {mine!r}")
            config = dataclasses.replace(  # type: ignore[call-arg]  # d3rlpy's config fields are inherited
                config, observation_scaler=iql.config.observation_scaler,
                action_scaler=iql.config.action_scaler, reward_scaler=iql.config.reward_scaler)
        algo = config.create(device=iql._device if device is None else device)
        algo.create_impl(iql.impl.observation_shape, iql.impl.action_size)
        algo._load_offline(iql)
        return algo

    def _load_offline(self, iql: IQL) -> None:
        assert self._impl is not None and iql.impl is not None
        src, dst = iql.impl.modules, self._impl.modules
        dst.offline_policy.load_state_dict(src.policy.state_dict())
        dst.q_funcs.load_state_dict(src.q_funcs.state_dict())
        dst.targ_q_funcs.load_state_dict(src.targ_q_funcs.state_dict())
        dst.value_func.load_state_dict(src.value_func.state_dict())
        if self._config.init_new_policy_from_offline:
            dst.policy.load_state_dict(src.policy.state_dict())

    def inner_create_impl(self, observation_shape: Shape, action_size: int) -> None:
        cfg = self._config

        def policy() -> NormalPolicy:
            return create_normal_policy(
                observation_shape, action_size, cfg.actor_encoder_factory, min_logstd=-5.0,
                max_logstd=2.0, use_std_parameter=True, device=self._device,
                enable_ddp=self._enable_ddp)

        def q_function() -> tuple[Any, Any]:
            return create_continuous_q_function(
                observation_shape, action_size, cfg.critic_encoder_factory,
                MeanQFunctionFactory(), n_ensembles=cfg.n_critics, device=self._device,
                enable_ddp=self._enable_ddp)

        new_policy, offline_policy = policy(), policy()
        q_funcs, q_fwd = q_function()
        targ_q_funcs, targ_q_fwd = q_function()
        value_func = create_value_function(
            observation_shape, cfg.value_encoder_factory, device=self._device,
            enable_ddp=self._enable_ddp)
        actor_optim = cfg.actor_optim_factory.create(
            new_policy.named_modules(), lr=cfg.actor_learning_rate, compiled=self.compiled)
        critic_optim = cfg.critic_optim_factory.create(
            list(q_funcs.named_modules()) + list(value_func.named_modules()),
            lr=cfg.critic_learning_rate, compiled=self.compiled)
        modules = PEXModules(
            policy=new_policy, q_funcs=q_funcs, targ_q_funcs=targ_q_funcs, value_func=value_func,
            actor_optim=actor_optim, critic_optim=critic_optim, offline_policy=offline_policy)
        self._impl = PEXImpl(
            observation_shape=observation_shape, action_size=action_size, modules=modules,
            q_func_forwarder=q_fwd, targ_q_func_forwarder=targ_q_fwd, gamma=cfg.gamma,
            tau=cfg.tau, expectile=cfg.expectile, weight_temp=cfg.weight_temp,
            max_weight=cfg.max_weight, compiled=self.compiled, device=self._device,
            inverse_temperature=cfg.inverse_temperature, policy_target=cfg.policy_target)

    def _require_offline(self) -> None:
        if self._impl is None:
            raise ValueError(
                "PEX needs a pre-trained IQL: build it with PEX.from_iql(iql_or_path), or load a "
                "saved PEX with d3rlpy.load_learnable; a fresh PEXConfig().create() has no "
                "offline policy")

    def fit(self, dataset: Any, n_steps: int, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        self._require_offline()
        return super().fit(dataset, n_steps, *args, **kwargs)

    def fit_online(self, env: Any, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self._require_offline()
        return super().fit_online(env, *args, **kwargs)

    def choice_probabilities(self, x: Any) -> Any:
        """(N, 2) numpy probabilities of executing [offline, new] proposal for observations x
        (N, obs_dim), with the new policy's *sampled* proposal (as during data collection)."""
        return self._compose_numpy(x, deterministic=False)[2]

    def sample_action_with_choice(self, x: Any) -> tuple[Any, Any, Any]:
        """Like ``sample_action`` but also returns the chosen index (N,) (0 offline, 1 new) and
        the (N, 2) choice probabilities."""
        return self._compose_numpy(x, deterministic=False)

    def _compose_numpy(self, x: Any, *, deterministic: bool) -> tuple[Any, Any, Any]:
        from d3rlpy.torch_utility import convert_to_torch_recursively

        self._require_offline()
        assert self._impl is not None
        tx = convert_to_torch_recursively(x, self._device)
        with torch.no_grad():
            if self._config.observation_scaler:
                tx = self._config.observation_scaler.transform(tx)
            self._impl.modules.set_eval()
            act, idx, probs = self._impl.compose(tx, deterministic=deterministic)
            if self._config.action_scaler:
                act = self._config.action_scaler.reverse_transform(act)
        return act.cpu().numpy(), idx.cpu().numpy(), probs.cpu().numpy()

    def get_action_type(self) -> ActionSpace:
        return ActionSpace.CONTINUOUS


_register(PEXConfig)
