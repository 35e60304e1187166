"""Candidate ops: shapes at every stride and channel count, the registry."""

import pytest
import torch
from torch import nn

from fastnas.space.primitives import (
    PRIMITIVES,
    FactorizedReduce,
    available_primitives,
    build_op,
    register_primitive,
    unregister_primitive,
)


def test_primitives_are_the_darts_space_in_order():
    assert PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", [1, 3, 8, 15])
@pytest.mark.parametrize("hw", [8, 7])
def test_shapes(name, stride, C, hw):
    op = build_op(name, C, stride, affine=True)
    x = torch.randn(2, C, hw, hw)
    y = op(x)
    out = (hw + stride - 1) // stride
    assert y.shape == (2, C, out, out), (name, stride, C, hw)
    if any(p.requires_grad for p in op.parameters()):
        y.sum().backward()
        assert all(p.grad is not None for p in op.parameters())


def test_factorized_reduce_matches_darts_for_even_sizes():
    fr = FactorizedReduce(4, 6)
    x = torch.randn(2, 4, 8, 8)
    r = torch.relu(x)
    expected = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], dim=1))
    torch.testing.assert_close(fr(x), expected)


def test_register_custom_primitive():
    register_primitive("conv_1x1_test", lambda C, stride, affine: nn.Conv2d(C, C, 1, stride=stride))
    try:
        assert "conv_1x1_test" in available_primitives()
        assert build_op("conv_1x1_test", 4, 2)(torch.randn(1, 4, 8, 8)).shape == (1, 4, 4, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_primitive("conv_1x1_test", lambda C, s, a: nn.Identity())
    finally:
        unregister_primitive("conv_1x1_test")
    assert "conv_1x1_test" not in available_primitives()


def test_unknown_primitive_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown primitive 'conv_9x9'"):
        build_op("conv_9x9", 4, 1)
    with pytest.raises(ValueError, match="built-in"):
        unregister_primitive("skip_connect")
