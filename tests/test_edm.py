"""EDM identities and the samplers (Heun, DPM-Solver++(2M)) against an exact denoiser."""

from __future__ import annotations

import pytest
import torch

from cfdg_aug.diffusion.edm import (
    SAMPLERS,
    karras_sigmas,
    loss_weight,
    num_evaluations,
    preconditioning,
    sample_dpmpp_2m,
    sample_heun,
    sample_repaint,
)


def test_preconditioning_limits() -> None:
    sd = 0.5
    c_skip, c_out, c_in, c_noise = preconditioning(torch.tensor([1e-6, 1e6]), sd)
    # sigma -> 0: D(x) -> x (skip everything, no network output)
    assert abs(c_skip[0] - 1) < 1e-6 and c_out[0] < 1e-5
    # sigma -> inf: D(x) -> sigma_data * F (no skip), and the input is scaled to unit variance
    assert c_skip[1] < 1e-9 and abs(c_out[1] - sd) < 1e-6 and abs(c_in[1] * 1e6 - 1) < 1e-6
    assert torch.allclose(c_noise, torch.log(torch.tensor([1e-6, 1e6])) / 4)
    # unit-variance effective training target: lambda * c_out^2 = 1 (EDM Eq. 8 / Table 1)
    s = torch.tensor([0.01, 0.3, 5.0])
    assert torch.allclose(loss_weight(s, sd) * preconditioning(s, sd)[1] ** 2, torch.ones(3))


def test_karras_schedule_endpoints_and_monotone() -> None:
    s = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert s.shape == (19,)
    assert abs(float(s[0]) - 80.0) < 1e-3 and abs(float(s[-2]) - 0.002) < 1e-6 and float(s[-1]) == 0.0
    assert torch.all(s[1:] < s[:-1])


def test_heun_with_exact_denoiser_reproduces_gaussian_data() -> None:
    # For x0 ~ N(mu, diag(v)), E[x0 | x0 + sigma n = x] = mu + v / (v + sigma^2) (x - mu): the exact D.
    mu = torch.tensor([2.0, -1.0, 0.5])
    var = torch.tensor([0.25, 1.0, 4.0])

    def exact(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma[:, None] ** 2
        return mu + var / (var + s2) * (x - mu)

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 3, generator=g, dtype=torch.float64)
    x = sample_heun(exact, noise, karras_sigmas(40, 0.002, 80.0, 7.0).double())
    assert torch.allclose(x.mean(0), mu.double(), atol=0.05)
    assert torch.allclose(x.var(0), var.double(), rtol=0.05)


def test_heun_with_churn_also_reproduces_gaussian_data() -> None:
    mu, var = torch.tensor([1.0]), torch.tensor([0.5])

    def exact(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mu + var / (var + sigma[:, None] ** 2) * (x - mu)

    g = torch.Generator().manual_seed(1)
    x = sample_heun(exact, torch.randn(20_000, 1, generator=g), karras_sigmas(40, 0.002, 80.0, 7.0),
                    s_churn=20.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0, generator=g)
    assert abs(float(x.mean()) - 1.0) < 0.05 and abs(float(x.var()) - 0.5) < 0.05


class GaussianData:
    """x0 ~ N(mu, diag(var)): the exact denoiser and the exact probability-flow ODE solution are known.

    D(x; sigma) = E[x0 | x0 + sigma n = x] = (var x + sigma^2 mu) / (var + sigma^2), and the ODE
    dx/dsigma = (x - D) / sigma started at x_T = sigma_max n ends at
    x0 = mu + sqrt(var / (var + sigma_max^2)) (x_T - mu).
    """

    mu = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)

    def __init__(self) -> None:
        self.calls = 0

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        s2 = sigma[:, None] ** 2
        return (self.var * x + s2 * self.mu) / (self.var + s2)

    def ode_solution(self, noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
        return self.mu + (self.var / (self.var + sigma_max**2)).sqrt() * (sigma_max * noise - self.mu)


def _gaussian_noise(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dpmpp_2m_with_exact_denoiser_reproduces_gaussian_data() -> None:
    data, noise = GaussianData(), _gaussian_noise()
    x = sample_dpmpp_2m(data.denoise, noise, karras_sigmas(32, 0.002, 80.0, 7.0).double())
    assert torch.allclose(x.mean(0), data.mu, atol=0.05)
    assert torch.allclose(x.std(0), data.var.sqrt(), rtol=0.05)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_error_against_the_exact_ode_solution_shrinks_as_steps_double(name: str) -> None:
    data, noise = GaussianData(), _gaussian_noise(5_000)
    exact = data.ode_solution(noise, 80.0)
    rms = {}
    for n in (8, 16, 32):
        x = SAMPLERS[name](data.denoise, noise, karras_sigmas(n, 0.002, 80.0, 7.0).double())
        rms[n] = float(((x - exact) ** 2).mean().sqrt())
    # Second-order solvers: doubling the steps should divide the error by ~4; ask for at least 2.
    assert rms[16] < rms[8] / 2 and rms[32] < rms[16] / 2, rms
    assert rms[32] < 0.05, rms


def test_dpmpp_2m_is_deterministic_given_the_noise() -> None:
    data = GaussianData()
    sigmas = karras_sigmas(10, 0.002, 80.0, 7.0).double()
    a = sample_dpmpp_2m(data.denoise, _gaussian_noise(100, seed=3), sigmas, generator=torch.Generator().manual_seed(1))
    b = sample_dpmpp_2m(data.denoise, _gaussian_noise(100, seed=3), sigmas, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_dpmpp_2m(data.denoise, _gaussian_noise(100, seed=4), sigmas))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_num_evaluations_counts_the_denoiser_calls(name: str, steps: int) -> None:
    data = GaussianData()
    SAMPLERS[name](data.denoise, _gaussian_noise(4), karras_sigmas(steps, 0.002, 80.0, 7.0).double())
    assert data.calls == num_evaluations(name, steps)


def test_dpmpp_2m_refuses_churn_and_num_evaluations_refuses_unknown_samplers() -> None:
    data = GaussianData()
    with pytest.raises(ValueError, match="s_churn must be 0"):
        sample_dpmpp_2m(data.denoise, _gaussian_noise(4), karras_sigmas(4, 0.002, 80.0, 7.0).double(), s_churn=1.0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        num_evaluations("euler", 4)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        num_evaluations("heun", 0)


def test_cfg_shared_trunk_equals_two_separate_evaluations() -> None:
    """The fast guided pass must equal (1 + w) D(x; c) - w D(x; null) computed the slow way."""
    from cfdg_aug.diffusion.denoiser import ResidualMLPDenoiser
    from cfdg_aug.diffusion.edm import CFGDenoiser, EDMDenoiser

    for injection in ("embedding", "concat"):
        torch.manual_seed(0)
        den = EDMDenoiser(ResidualMLPDenoiser(7, 32, 2, label_injection=injection)).eval()
        x, sigma = torch.randn(5, 7), torch.tensor([0.7])
        w = 1.7
        with torch.no_grad():
            fast = CFGDenoiser(den, 1, 2, w)(x, sigma)
            d_c = den(x, sigma.expand(5), torch.full((5,), 1))
            d_u = den(x, sigma.expand(5), torch.full((5,), 2))
        assert torch.allclose(fast, (1 + w) * d_c - w * d_u, atol=1e-5), injection


def test_bf16_network_matches_float32_on_both_guided_paths() -> None:
    """The bf16 sampling copy follows the float32 network to bf16 accuracy, returns float32, and its
    shared-trunk guided pass still equals two separate evaluations."""
    from cfdg_aug.diffusion.denoiser import ResidualMLPDenoiser, SamplingNetwork
    from cfdg_aug.diffusion.edm import CFGDenoiser, EDMDenoiser

    for injection in ("embedding", "concat"):
        torch.manual_seed(0)
        net = ResidualMLPDenoiser(7, 64, 3, label_injection=injection).eval()
        fp32, bf16 = EDMDenoiser(net), EDMDenoiser(SamplingNetwork(net))
        x, sigma, w = torch.randn(256, 7), torch.tensor([0.7]), 1.0
        with torch.no_grad():
            ref, low = CFGDenoiser(fp32, 1, 2, w)(x, sigma), CFGDenoiser(bf16, 1, 2, w)(x, sigma)
            d_c = bf16(x, sigma.expand(256), torch.full((256,), 1))
            d_u = bf16(x, sigma.expand(256), torch.full((256,), 2))
        assert low.dtype == torch.float32
        rel = float((low - ref).norm() / ref.norm())
        assert 0 < rel < 2e-2, (injection, rel)  # bf16 has 8 mantissa bits: ~0.4% per rounding
        assert torch.allclose(low, (1 + w) * d_c - w * d_u, atol=2e-2), injection
        assert next(bf16.net.copy.parameters()).dtype == torch.bfloat16
        assert next(net.parameters()).dtype == torch.float32  # the trained network is untouched


def _correlated_gaussian_denoiser(mu: torch.Tensor, cov: torch.Tensor):  # type: ignore[no-untyped-def]
    """The exact D(x; sigma) = E[x0 | x0 + sigma n = x] for x0 ~ N(mu, cov)."""
    def exact(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = float(sigma.reshape(-1)[0]) ** 2
        gain = cov @ torch.linalg.inv(cov + s2 * torch.eye(len(mu), dtype=cov.dtype))
        return mu + (x - mu) @ gain.T

    return exact


def test_repaint_draws_the_conditional_of_the_free_columns_given_the_known_ones() -> None:
    # x0 = (x1, x2) Gaussian with correlation 0.9: given x1 = 2, x2 ~ N(0.9 * 2, 1 - 0.81).
    mu = torch.zeros(2, dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    denoise = _correlated_gaussian_denoiser(mu, cov)
    known = torch.zeros(4000, 2, dtype=torch.float64)
    known[:, 0] = 2.0
    mask = torch.tensor([True, False])
    sigmas = karras_sigmas(20, 0.002, 20.0, 7.0).double()
    x = sample_repaint(denoise, known, mask, sigmas, resample=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0], known[:, 0])  # the known column is returned as given
    # RePaint approximates the conditional (here 1.69 at 20 levels x 10, nearer with more resampling)
    assert abs(float(x[:, 1].mean()) - 1.8) < 0.15
    assert abs(float(x[:, 1].var()) - 0.19) < 0.06
    # the jumps back are what make it condition: replacing the known column alone (one evaluation
    # per level) leaves the free column far short of its conditional mean
    plain = sample_repaint(denoise, known, mask, sigmas, resample=1, generator=torch.Generator().manual_seed(0))
    assert abs(float(plain[:, 1].mean()) - 1.8) > 3 * abs(float(x[:, 1].mean()) - 1.8)


def test_repaint_keeps_the_known_rows_dtype() -> None:
    """Noise drawn in float32 would promote bfloat16 rows (the sampler's bf16 path) to float32."""
    known = torch.ones(8, 3, dtype=torch.bfloat16)
    x = sample_repaint(lambda x, s: 0.5 * x, known, torch.tensor([True, False, False]), karras_sigmas(4, 0.1, 1.0, 7.0),
                       resample=2, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.bfloat16 and torch.equal(x[:, 0], known[:, 0])


def test_repaint_refuses_a_resample_count_below_one() -> None:
    with pytest.raises(ValueError, match="resample must be >= 1, got 0"):
        sample_repaint(lambda x, s: x, torch.zeros(2, 2), torch.tensor([True, False]), karras_sigmas(4, 0.1, 1.0, 7.0),
                       resample=0)


def test_repaint_resampling_only_the_low_noise_levels_keeps_the_conditional_with_fewer_evaluations() -> None:
    """``resample_sigma_max``: the small profile's redraws (schedule 20 -> 0.06, 20 levels x 10)
    resample only sigma <= 3: 20 + 12 * 9 = 128 evaluations instead of 200, same conditional
    (here even sigma <= 1, 92 evaluations, keeps it)."""
    mu = torch.zeros(2, dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    exact = _correlated_gaussian_denoiser(mu, cov)
    calls = [0]

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return exact(x, sigma)

    known = torch.zeros(4000, 2, dtype=torch.float64)
    known[:, 0] = 2.0
    mask = torch.tensor([True, False])
    sigmas = karras_sigmas(20, 0.06, 20.0, 7.0).double()

    def draw(**kw: float) -> tuple[torch.Tensor, int]:
        calls[0] = 0
        x = sample_repaint(denoise, known, mask, sigmas, resample=10, generator=torch.Generator().manual_seed(0), **kw)
        return x, calls[0]

    every, n_every = draw()
    low, n_low = draw(resample_sigma_max=3.0)
    lower, n_lower = draw(resample_sigma_max=1.0)
    high, n_high = draw(resample_sigma_max=0.0)  # below every level: no level resampled
    assert (n_every, n_low, n_lower, n_high) == (200, 128, 92, 20)
    assert torch.equal(draw(resample_sigma_max=float("inf"))[0], every)
    plain = sample_repaint(denoise, known, mask, sigmas, resample=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(high, plain)
    for fewer in (low, lower):  # 1.709 and 1.695 against 1.696
        assert abs(float(fewer[:, 1].mean()) - float(every[:, 1].mean())) < 0.03
    assert abs(float(high[:, 1].mean()) - 1.8) > 0.5  # what resampling buys: the replacement method's 0.82
