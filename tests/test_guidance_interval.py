"""Guidance limited to an interval of noise levels: guided inside, plain conditional outside."""

from __future__ import annotations

import pytest
import torch

from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.diffusion.denoiser import ResidualMLPDenoiser
from cfdg_aug.diffusion.edm import CFGDenoiser, EDMDenoiser


def _denoiser() -> EDMDenoiser:
    torch.manual_seed(0)
    net = ResidualMLPDenoiser(5, 32, 2)
    with torch.no_grad():  # a label embedding far from zero, so the branches differ
        net.label_embedding.weight.normal_(0, 1.0)  # type: ignore[union-attr]
    return EDMDenoiser(net).eval()


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_guidance_applies_only_inside_the_interval(sigma: float) -> None:
    d = _denoiser()
    x, s = torch.randn(8, 5), torch.tensor([sigma])
    plain = CFGDenoiser(d, 1, 2, 0.0)(x, s)
    guided = CFGDenoiser(d, 1, 2, 2.0)(x, s)
    limited = CFGDenoiser(d, 1, 2, 2.0, interval=(0.5, 5.0))(x, s)
    assert not torch.allclose(plain, guided)
    torch.testing.assert_close(limited, guided if 0.5 <= sigma <= 5.0 else plain)


def test_guidance_interval_is_validated_and_round_trips() -> None:
    cfg = CFDGConfig.small(guidance_interval=[0.1, 3])
    assert cfg.guidance_interval == (0.1, 3.0)
    assert CFDGConfig.from_json(cfg.to_json()) == cfg
    for bad in [(3.0, 0.1), (0.1,), (-1.0, 1.0), "0.1,3"]:
        with pytest.raises(ConfigError, match="guidance_interval"):
            CFDGConfig.small(guidance_interval=bad)
