"""The residual-MLP denoiser network F_theta of SynthER (Lu et al. 2023), with a label.

How the label enters (``CFDGConfig.label_injection``):

- ``"embedding"`` (default): a learned vector per label {offline, online, null} of size ``width`` is
  added to the noise-level embedding, and their sum is added to the projected input before the
  residual blocks. The null label is a trained token of its own, which is what classifier-free
  guidance needs: eps(x, null) must be a real unconditional model, not "label = zero".
  Adding it to the noise embedding keeps the input width and the parameter count of SynthER's network
  unchanged, so the unconditional ablation and CFDG differ only by the label.
- ``"concat"``: a one-hot of the 3 labels is concatenated to the input, as SynthER's ``cond_dim``
  conditioning does.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

NUM_LABELS = 3  # offline, online, null


class RandomFourierEmbedding(nn.Module):
    """Fixed random Fourier features of a scalar: [t, sin(2 pi t w), cos(2 pi t w)] (SynthER)."""

    weights: torch.Tensor

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.randn(num_features // 2))

    @property
    def out_dim(self) -> int:
        return 1 + 2 * int(self.weights.shape[0])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1 + num_features)."""
        t = rearrange(t, "b -> b 1")
        freqs = t * rearrange(self.weights, "f -> 1 f") * 2 * math.pi
        return torch.cat((t, freqs.sin(), freqs.cos()), dim=-1)


class ResidualBlock(nn.Module):
    """x + Linear(SiLU(LayerNorm(x)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(F.silu(self.norm(x)))


class ResidualMLPDenoiser(nn.Module):
    """F_theta(x, c_noise, label): (B, D), (B,), (B,) long -> (B, D).

    ``num_labels = 0`` builds an unconditional network (the SynthER-style ablation).
    """

    def __init__(
        self, dim: int, width: int, depth: int, fourier_features: int = 16, num_labels: int = NUM_LABELS,
        label_injection: str = "embedding",
    ) -> None:
        super().__init__()
        self.dim, self.num_labels, self.label_injection = dim, num_labels, label_injection
        self.fourier = RandomFourierEmbedding(fourier_features)
        self.noise_mlp = nn.Sequential(
            nn.Linear(self.fourier.out_dim, 128), nn.SiLU(), nn.Linear(128, width)
        )
        concat = num_labels if (num_labels and label_injection == "concat") else 0
        self.proj = nn.Linear(dim + concat, width)
        self.label_embedding = (
            nn.Embedding(num_labels, width) if (num_labels and label_injection == "embedding") else None
        )
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(depth)))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
        noise_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, D), c_noise (B,) or (1,) (one noise level broadcast to the batch), labels (B,).

        ``noise_embedding``: :meth:`noise_embedding` of ``c_noise`` if already computed (B or 1, width).
        """
        cond = self.noise_embedding(c_noise) if noise_embedding is None else noise_embedding
        if self.num_labels:
            if labels is None:
                raise ValueError("labels are required by a conditional denoiser")
            if self.label_embedding is not None:
                cond = cond + self.label_embedding(labels)
            else:
                x = torch.cat((x, F.one_hot(labels, self.num_labels).to(x.dtype)), dim=-1)
        return self.head(self.proj(x) + cond)

    @property
    def shares_trunk(self) -> bool:
        """True when the label enters after the input projection, so branches can share it."""
        return self.label_embedding is not None

    def noise_embedding(self, c_noise: torch.Tensor) -> torch.Tensor:
        """MLP(Fourier(c_noise)): (B,) or (1,) -> (B or 1, width)."""
        return self.noise_mlp(self.fourier(c_noise))

    def trunk(self, x: torch.Tensor, c_noise: torch.Tensor, noise_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The label-independent part: proj(x) + noise embedding, (B, width)."""
        return self.proj(x) + (self.noise_embedding(c_noise) if noise_embedding is None else noise_embedding)

    def label_vectors(self, labels: torch.Tensor) -> torch.Tensor:
        assert self.label_embedding is not None
        return self.label_embedding(labels)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Residual blocks and output layer, (B, width) -> (B, D)."""
        return self.out(F.silu(self.out_norm(self.blocks(h))))


class SamplingNetwork(nn.Module):
    """A frozen copy of a :class:`ResidualMLPDenoiser` for sampling: in bfloat16, compiled, or both.

    ``dtype=torch.bfloat16``: the weights and the activations, residual stream included, are bf16. On
    CPUs with bf16 matrix units (AVX512-BF16 / AMX) and on GPUs this runs the residual blocks 2-4x
    faster than float32, while autocast, which re-casts every weight and keeps the residual stream in
    float32, gains little (docs/benchmarks.md). Two things stay float32: the noise-level embedding,
    whose Fourier phases 2 pi t w would be off by up to ~0.06 rad in bf16, and the outputs, so that
    the sampler's state and the guidance combination (1 + w) F(c) - w F(null), which amplifies
    errors by 1 + 2w, are computed in float32.

    ``compile=True``: :func:`torch.compile` (Inductor) of the network. It fuses LayerNorm, SiLU and
    the residual add around each matmul; unfused, those take about half the time of a bf16 pass at
    width 256 on a CPU. The first call compiles (seconds); if compiling fails (no C++ compiler on a
    CPU, no Triton on a GPU) a warning is given once and the network runs eagerly. torch caches
    compiled code per function for the whole process, up to ``torch._dynamo.config.recompile_limit``
    variants (shapes, dtypes, grad modes); many generators of different sizes in one process can
    reach it, after which torch logs a warning and runs the rest eagerly.

    The copy lives as long as the generator and :meth:`sync` copies the source network's weights
    into it in place before each use, so compiled code, which reads the parameters as inputs, is
    compiled once per shape for the whole run rather than once per refresh.
    """

    def __init__(self, net: ResidualMLPDenoiser, dtype: torch.dtype = torch.bfloat16, compile: bool = False) -> None:
        super().__init__()
        self.copy = copy.deepcopy(net).to(dtype).requires_grad_(False).eval()
        self.dtype = dtype
        self._source = [net]  # a list so that the float32 source is not registered as a submodule
        self._compiled: dict[str, Any] = {}
        self._rows: dict[str, int] = {}  # the largest batch each compiled function has run on
        if compile:
            # dynamic=None: the first batch shape is compiled static; a second one (another
            # batch_size) compiles a shape-generic version instead of one more static copy each.
            self._compiled = {name: torch.compile(getattr(self.copy, name)) for name in ("head", "forward")}

    @property
    def shares_trunk(self) -> bool:
        return self.copy.shares_trunk

    @property
    def compiled(self) -> bool:
        """Whether compiled code is (still) in use."""
        return bool(self._compiled)

    @torch.no_grad()
    def sync(self, net: ResidualMLPDenoiser) -> None:
        """Copy ``net``'s current weights into the copy, in place (compiled code stays valid)."""
        for mine, theirs in zip(self.copy.state_dict().values(), net.state_dict().values(), strict=True):
            mine.copy_(theirs)
        self._source[0] = net

    def _call(self, name: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``copy.<name>(*args, **kwargs)``, compiled when possible; the batch is ``args[0]``'s rows.

        A batch smaller than one already run (the sampler's short last chunk) is padded with zero
        rows to that size, so compiled code is not specialised to one more shape; the padding is
        cut from the output. The padding happens here, not in the sampler, so the sampler draws
        exactly the noise it draws uncompiled, and the RNG stream is the same either way.
        """
        fn = self._compiled.get(name)
        if fn is not None:
            rows = int(args[0].shape[0])
            full = max(self._rows.get(name, 0), rows)
            try:
                out = fn(*_pad_rows(args, rows, full), **dict(zip(kwargs, _pad_rows(tuple(kwargs.values()), rows, full),
                                                               strict=True)))
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - any backend failure; a real input error re-raises below
                warnings.warn(f"torch.compile of the sampling network failed ({type(e).__name__}: {e}); "
                              "sampling eagerly instead", stacklevel=3)
                self._compiled = {}
            else:
                self._rows[name] = full
                return out[:rows]
        return getattr(self.copy, name)(*args, **kwargs)

    def _noise_embedding(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self._source[0].noise_embedding(c_noise).to(self.dtype)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = self._noise_embedding(c_noise)
        return self._call("forward", x.to(self.dtype), c_noise, labels, noise_embedding=cond).float()

    def trunk(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """(B, width) in ``dtype``."""
        return self.copy.trunk(x.to(self.dtype), c_noise, self._noise_embedding(c_noise))

    def label_vectors(self, labels: torch.Tensor) -> torch.Tensor:
        return self.copy.label_vectors(labels)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """(B, width) -> (B, D) float32."""
        return self._call("head", h.to(self.dtype)).float()


def _pad_rows(args: tuple[Any, ...], rows: int, full: int) -> tuple[Any, ...]:
    """Tensors among ``args`` with ``rows`` leading rows, padded with zero rows to ``full``."""
    if full == rows:
        return args
    return tuple(
        torch.cat([a, a.new_zeros((full - rows, *a.shape[1:]))]) if isinstance(a, torch.Tensor) and a.ndim
        and a.shape[0] == rows else a
        for a in args
    )
