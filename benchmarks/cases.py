"""Shared benchmark cases: the fused ops and the baselines a user would otherwise write."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastnas import ops

# (N, C, H=W) from the issue; K = candidate ops per edge in the three search stages.
WS_SIZES = [(64, 16, 32), (64, 32, 16), (64, 64, 8)]
WS_KS = [8, 5, 3]
# Larger shapes only for GPUs (>= 1M elements is where the bandwidth floor is meaningful).
WS_SIZES_GPU = WS_SIZES + [(256, 16, 32), (256, 64, 32)]
GUMBEL_SHAPES = [(14, 8), (28, 8)]


def ws_loop(w, xs):
    """The DARTS MixedOp: a Python loop of scaled adds."""
    return sum(w[k] * x for k, x in enumerate(xs))


def ws_stack_einsum(w, xs):
    """Stack the candidate outputs and contract with einsum."""
    return torch.einsum("k,k...->...", w, torch.stack(xs))


def ws_fused(w, xs):
    return ops.weighted_sum(w, xs)


WS_IMPLS = {"fused": ws_fused, "loop": ws_loop, "stack_einsum": ws_stack_einsum}


def make_ws(N, C, HW, K, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(K, generator=g).softmax(0).to(device, dtype).requires_grad_(True)
    xs = [torch.randn(N, C, HW, HW, generator=g).to(device, dtype).requires_grad_(True)
          for _ in range(K)]
    grad = torch.randn(N, C, HW, HW, generator=g).to(device, dtype)
    return w, xs, grad


def ws_step(impl, w, xs, grad):
    """One forward + backward; autograd.grad avoids timing gradient accumulation into .grad."""
    out = impl(w, xs)
    return torch.autograd.grad(out, [w, *xs], grad)


def gumbel_fused(logits):
    w, _ = ops.gumbel_softmax(logits, 1.0, True)
    return w


def gumbel_torch(logits):
    return F.gumbel_softmax(logits, tau=1.0, hard=True)


GUMBEL_IMPLS = {"fused": gumbel_fused, "torch": gumbel_torch}


def gumbel_step(impl, logits, grad):
    return torch.autograd.grad(impl(logits), [logits], grad)
