"""Pure-PyTorch twins of every fastnas op.

They define the semantics the fused kernels are tested against, and they are the automatic fallback
when a kernel is missing (or when ``FASTNAS_BACKEND=reference``). Autograd comes from PyTorch itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def weighted_sum(weights: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """sum_k weights[k] * inputs[k], accumulated in fp32 (fp64 for fp64), in the inputs' dtype."""
    out_dtype = inputs[0].dtype
    acc_dtype = _opmath(out_dtype)
    w = weights.to(acc_dtype)
    acc = w[0] * inputs[0].to(acc_dtype)
    for k in range(1, len(inputs)):
        acc = acc + w[k] * inputs[k].to(acc_dtype)
    return acc.to(out_dtype)


def sample_gumbel(shape, *, dtype, device, generator: torch.Generator | None = None) -> Tensor:
    """Gumbel(0, 1) noise, as torch.nn.functional.gumbel_softmax draws it."""
    e = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
    return -e.log()


def gumbel_softmax(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = False,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Gumbel-softmax over the last dim: returns (weights, index).

    soft = softmax((logits + g) / tau); index = argmax of (logits + g) / tau; weights is soft, or,
    when ``hard``, one_hot(index) in the forward pass with soft's gradient (straight-through).
    """
    acc_dtype = _opmath(logits.dtype)
    if noise is None:
        noise = sample_gumbel(logits.shape, dtype=acc_dtype, device=logits.device,
                              generator=generator)
    z = (logits.to(acc_dtype) + noise.to(acc_dtype)) / tau
    soft = z.softmax(-1)
    index = z.argmax(-1)
    if hard:
        one_hot = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
        weights = one_hot - soft.detach() + soft
    else:
        weights = soft
    return weights.to(logits.dtype), index
