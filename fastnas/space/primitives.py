"""Candidate operations of the DARTS cell search space (S1), by their DARTS names.

Definitions follow DARTS exactly (ReLU-Conv-BN blocks; sep_conv = two stacked ReLU, depthwise kxk,
pointwise 1x1, BN blocks; dil_conv = ReLU, dilated depthwise kxk, pointwise 1x1, BN; skip with stride
2 = FactorizedReduce), so parameter counts match the published tables. Every op is built from stock
PyTorch modules (compiles and exports).

A user adds a candidate with :func:`register_primitive`::

    register_primitive("conv_3x3", lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# The DARTS search space, in DARTS' order (alpha columns follow it).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Ops with no weights: what a collapsed cell fills up with (DARTS' failure mode), counted per derived cell.
PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none", "noise")

OpFactory = Callable[[int, int, bool], nn.Module]


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv(k, stride) -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> dilated depthwise kxk -> pointwise 1x1 -> BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise kxk, pointwise 1x1, BN) blocks; the first carries the stride."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class Identity(nn.Module):
    """skip_connect at stride 1."""

    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (strided for reduction edges)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """The `noise` op of RobustDARTS' S4 space: standard Gaussian noise of the output's shape, whatever
    the input holds (strided like `none` on reduction edges). A search that picks it over a
    convolution is not searching, which makes it a known-answer test."""

    def __init__(self, stride: int, std: float = 1.0):
        super().__init__()
        self.stride, self.std = stride, std

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x) * self.std


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convs concatenated (DARTS).

    Odd channel counts give the first conv the extra channel (one output channel: the first conv
    alone); odd spatial sizes are padded so both paths agree (DARTS' own version fails there). For
    even sizes and channels it is DARTS' op.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False) if C_out > 1 else None
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        if self.conv_2 is None:
            return self.bn(self.conv_1(x))
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


_REGISTRY: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: Noise(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    ),
}


def register_primitive(name: str, factory: OpFactory, *, overwrite: bool = False) -> None:
    """Add a candidate op: ``factory(C, stride, affine)`` must map (N, C, H, W) to
    (N, C, H/stride, W/stride). It can then be named in a primitives list, a genotype or a config."""
    if not isinstance(name, str) or not name:
        raise ValueError("register_primitive: `name` must be a non-empty string")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"register_primitive: {name!r} is already registered (pass overwrite=True)")
    if not callable(factory):
        raise ValueError(f"register_primitive: factory for {name!r} is not callable")
    _REGISTRY[name] = factory


def unregister_primitive(name: str) -> None:
    """Remove a user-registered op (the DARTS ones stay)."""
    if name in PRIMITIVES:
        raise ValueError(f"unregister_primitive: {name!r} is a built-in DARTS primitive")
    _REGISTRY.pop(name, None)


def available_primitives() -> list[str]:
    """Names of every registered candidate op."""
    return sorted(_REGISTRY)


def is_primitive(name: str) -> bool:
    return name in _REGISTRY


def build_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Instantiate the candidate op `name` for C channels and the given stride."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown primitive {name!r}; known: {', '.join(available_primitives())}"
        ) from None
    return factory(C, stride, affine)
