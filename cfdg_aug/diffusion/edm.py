"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

Shaped like k-diffusion: :class:`EDMDenoiser` owns the preconditioning and turns a raw network F into
the denoiser D(x; sigma, c); samplers are plain functions over a denoiser callable and a sigma
schedule; classifier-free guidance is a wrapper denoiser (:class:`CFGDenoiser`), so every sampler gets
it. Equation numbers refer to the EDM paper (Table 1 and Algorithm 2) unless a sampler's docstring
names another paper.

Every sampler has the signature ``sampler(denoise, noise, sigmas, *, generator=None, s_churn=0.0,
s_tmin=0.0, s_tmax=inf, s_noise=1.0) -> x0`` (:data:`SAMPLERS`), so a caller can switch between them
without changing the call; a deterministic sampler refuses ``s_churn > 0`` rather than ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from torch import nn

# D(x, sigma) -> denoised x, shapes (B, D), (B,) -> (B, D)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def preconditioning(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """c_skip, c_out, c_in, c_noise of EDM Table 1 ("Preconditioning"), each shaped like sigma."""
    s2, sd2 = sigma**2, sigma_data**2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()
    c_in = 1 / (s2 + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (EDM Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def training_sigmas(n: int, p_mean: float, p_std: float, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1, "Noise distribution"). Shape (n,)."""
    return (p_mean + p_std * torch.randn(n, generator=generator, device=device)).exp()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then sigma_n = 0 (EDM Eq. 5).

    Shape (n + 1,), decreasing from sigma_max to sigma_min, with a final 0.
    """
    if n < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


class EDMDenoiser(nn.Module):
    """D_theta(x; sigma, c) = c_skip x + c_out F_theta(c_in x; c_noise, c)  (EDM Eq. 7)."""

    def __init__(self, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        col = lambda c: rearrange(c, "b -> b 1")  # noqa: E731
        f = self.net(col(c_in) * x, c_noise, labels)
        return col(c_skip) * x + col(c_out) * f.to(x.dtype)

    def loss(
        self, x0: torch.Tensor, labels: torch.Tensor | None, *, p_mean: float, p_std: float, generator: torch.Generator,
    ) -> torch.Tensor:
        """E[lambda(sigma) ||D(x0 + n; sigma) - x0||^2], n ~ N(0, sigma^2 I) (EDM Eq. 8 with Table 1)."""
        sigma = training_sigmas(x0.shape[0], p_mean, p_std, generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        denoised = self(x0 + noise * rearrange(sigma, "b -> b 1"), sigma, labels)
        per_sample = ((denoised - x0) ** 2).mean(dim=1)
        return (loss_weight(sigma, self.sigma_data) * per_sample).mean()


class CFGDenoiser:
    """Classifier-free guidance as a denoiser: one batched pass evaluates both branches.

    eps~ = (1 + w) eps(x, c) - w eps(x, null) (the CFDG/Ho & Salimans rule). Since
    D = c_skip x + c_out F and D = x - sigma eps are affine in F and eps at fixed (x, sigma), the
    same combination can be taken of the raw network outputs: F~ = (1 + w) F(c) - w F(null).

    Cost: when the network lets the label enter after its input projection
    (``label_injection="embedding"``), the projection and noise embedding are computed once and
    only the residual blocks run on the stacked (2B, width) branches. With w = 0 only the
    conditional branch is evaluated.

    ``interval = (sigma_lo, sigma_hi)``: guidance only where sigma_lo <= sigma <= sigma_hi, plain
    conditional denoising elsewhere (Kynkäänniemi et al. 2024, "Applying guidance in a limited
    interval improves sample and distribution quality in diffusion models": guidance at high noise
    collapses diversity, at low noise it only sharpens details). Outside the interval only the
    conditional branch is evaluated.
    """

    def __init__(self, denoiser: EDMDenoiser, label: int, null_label: int, w: float,
                 interval: tuple[float, float] | None = None) -> None:
        self.denoiser, self.label, self.null_label, self.w = denoiser, label, null_label, w
        self.interval = interval

    def _guided(self, sigma: torch.Tensor) -> bool:
        if self.w == 0:
            return False
        if self.interval is None:
            return True
        s = float(sigma.reshape(-1)[0])  # the samplers pass one noise level per step
        return self.interval[0] <= s <= self.interval[1]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, dev = x.shape[0], x.device
        if not self._guided(sigma):
            return self.denoiser(x, sigma, torch.full((b,), self.label, device=dev, dtype=torch.long))
        net: Any = self.denoiser.net
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.denoiser.sigma_data)
        col = lambda c: rearrange(c, "b -> b 1")  # noqa: E731
        if getattr(net, "shares_trunk", False):
            h = net.trunk(col(c_in) * x, c_noise)  # (B, width), shared by both branches
            labels = torch.tensor([self.label, self.null_label], device=dev)
            h_cond, h_null = rearrange(net.label_vectors(labels), "two w -> two 1 w") + h
            f = net.head(torch.cat([h_cond, h_null]))
        else:
            labels = torch.cat([torch.full((b,), self.label, device=dev, dtype=torch.long),
                                torch.full((b,), self.null_label, device=dev, dtype=torch.long)])
            x_in = col(c_in) * x
            c_noise_both = c_noise if c_noise.shape[0] == 1 else torch.cat([c_noise, c_noise])
            f = net(torch.cat([x_in, x_in]), c_noise_both, labels)
        f_cond, f_null = rearrange(f, "(two b) d -> two b d", two=2)
        f_guided = torch.lerp(f_null, f_cond, 1 + self.w)  # = (1 + w) F(c) - w F(null)
        return col(c_skip) * x + col(c_out) * f_guided.to(x.dtype)


def sample_heun(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EDM Algorithm 2: Heun's 2nd-order sampler with optional stochastic churn.

    ``noise``: (B, D) standard normal; ``sigmas``: (N + 1,) schedule ending in 0. Guidance, if any,
    lives inside ``denoise`` and so applies at both evaluations of every step.
    """
    n = sigmas.shape[0] - 1
    x = noise * sigmas[0]
    # One noise level per step for the whole batch: passed as shape (1,) and broadcast, so the
    # network embeds it once per step rather than once per row.
    ones = x.new_ones(1)
    levels = sigmas.tolist()  # one device-to-host copy, not two per step
    for i in range(n):
        sigma, sigma_next = levels[i], levels[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # Alg. 2 lines 5-6: add noise to move from sigma to sigma_hat
            eps = torch.randn(x.shape, generator=generator, device=x.device) * s_noise
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * eps
        d = (x - denoise(x, sigma_hat * ones)) / sigma_hat  # Alg. 2 line 7
        x_next = x + (sigma_next - sigma_hat) * d  # Euler step, line 8
        if sigma_next != 0:  # 2nd-order correction, lines 9-11
            d_next = (x_next - denoise(x_next, sigma_next * ones)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x


def sample_dpmpp_2m(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2), in the EDM parameterisation as in k-diffusion.

    With alpha_t = 1 and sigma_t = sigma (EDM's variance-exploding ODE), the half log-SNR is
    lambda = -log(sigma), and the exact solution of the probability-flow ODE from sigma_i to
    sigma_{i+1} in terms of the data prediction D is (DPM-Solver++ Eq. 9)

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i + integral of e^{lambda - lambda_{i+1}} D dlambda.

    DPM-Solver++(2M) approximates D over the step by the linear extrapolation through the current
    and previous data predictions, with h_i = lambda_{i+1} - lambda_i and r_i = h_{i-1} / h_i:

        D_i' = (1 + 1 / (2 r_i)) D(x_i; sigma_i) - 1 / (2 r_i) D(x_{i-1}; sigma_{i-1})
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D_i'

    The first step has no previous prediction and is first order (DPM-Solver++(1), i.e. DDIM); a
    step to sigma = 0 returns the data prediction, which is its exact solution (lambda = inf).
    One network evaluation per step: N + 1 sigmas cost N evaluations (Heun: 2N - 1). Because it
    extrapolates data predictions, which stay bounded, rather than noise predictions, it stays
    stable under large classifier-free guidance weights (the reason the paper gives for it).

    Args:
        denoise: D(x; sigma), shapes (B, D), (1,) -> (B, D); guidance, if any, lives inside it and
            so applies at every evaluation.
        noise: (B, D) standard normal; the sampler starts from ``noise * sigmas[0]``.
        sigmas: (N + 1,) decreasing schedule, usually :func:`karras_sigmas` ending in 0.
        s_churn: must be 0 (a deterministic ODE solver); ``s_tmin``, ``s_tmax``, ``s_noise`` and
            ``generator`` are accepted for the common sampler signature and unused.

    Returns:
        (B, D) samples at ``sigmas[-1]``.
    """
    if s_churn != 0:
        raise ValueError(f"s_churn must be 0 for the deterministic DPM-Solver++(2M) sampler, got {s_churn!r} "
                         "(stochastic churn is implemented by sample_heun)")
    x = noise * sigmas[0]
    ones = x.new_ones(1)  # one noise level per step, broadcast over the batch (see sample_heun)
    old_denoised: torch.Tensor | None = None
    h_last = 0.0
    levels = sigmas.tolist()  # one device-to-host copy, not two per step
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise(x, sigma * ones)
        if sigma_next == 0:  # lambda_{i+1} = inf: the step's exact solution is the data prediction
            return denoised
        h = math.log(sigma / sigma_next)  # lambda_{i+1} - lambda_i
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


def sample_repaint(
    denoise: DenoiseFn,
    known: torch.Tensor,
    mask: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    resample: int,
    resample_sigma_max: float = math.inf,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
    Models", Algorithm 1) in EDM's variance-exploding form: draws the columns outside ``mask``
    given the ``known`` values of the columns inside it.

    At each noise level sigma_i the known columns are set to known + sigma_i * eps (fresh noise: a
    sample of q(x_i | x_0) there), one Euler (DDIM) step takes x to sigma_{i+1}, and ``resample - 1``
    times x is noised back up, x + sqrt(sigma_i^2 - sigma_{i+1}^2) * eps, and the step repeated:
    the jumps back let the drawn columns come into agreement with the known ones, which replacing
    the known columns alone (resample = 1) does poorly. ``N * resample`` network evaluations for
    N + 1 sigmas; with ``resample_sigma_max`` only the levels sigma_i <= it are resampled, the
    others take one step: ``N + K * (resample - 1)`` evaluations for K such levels. (Measured on
    the behaviour filter's redraws, the agreement is made at the low noise levels: resampling only
    sigma <= 3 keeps what resampling every level gives, resampling only sigma >= 5 loses it;
    docs/benchmarks.md, "What a refresh's sampling costs".)

    Args:
        denoise: D(x; sigma), shapes (B, D), (1,) -> (B, D).
        known: (B, D), read where ``mask`` ((D,) bool) is True.
        sigmas: (N + 1,) decreasing schedule ending in 0 (:func:`karras_sigmas`).
        resample: evaluations per noise level (RePaint's U), >= 1.
        resample_sigma_max: resample only at levels sigma_i <= this (default: every level).

    Returns:
        (B, D) samples, equal to ``known`` where ``mask`` is True.
    """
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample!r}")

    def randn() -> torch.Tensor:
        return torch.randn(known.shape, generator=generator, device=known.device, dtype=known.dtype)

    ones = known.new_ones(1)
    levels = sigmas.tolist()
    x = randn() * levels[0]
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        u_max = resample if sigma <= resample_sigma_max else 1
        for u in range(u_max):
            x = torch.where(mask, known + sigma * randn(), x)
            denoised = denoise(x, sigma * ones)
            x_next = denoised if sigma_next == 0 else x + (sigma_next - sigma) * (x - denoised) / sigma
            if u < u_max - 1:
                x = x_next + math.sqrt(sigma**2 - sigma_next**2) * randn()
        x = x_next
    return torch.where(mask, known, x)


Sampler = Callable[..., torch.Tensor]
SAMPLERS: dict[str, Sampler] = {"heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}
"""Samplers by name, all called as ``fn(denoise, noise, sigmas, *, generator=None, s_churn=...)``."""


def num_evaluations(sampler: str, steps: int) -> int:
    """Network evaluations (NFE) per sample of ``sampler`` over a ``steps``-step schedule ending in 0
    (a guided evaluation counts once, though it runs both branches)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, got {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return 2 * steps - 1 if sampler == "heun" else steps
