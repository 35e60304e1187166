"""pytest-benchmark cases: `pytest benchmarks/test_bench_ops.py --benchmark-group-by=param:size`.

Each group holds the fused op and its baselines at one size, so the table shows them side by side.
benchmarks/compare_ops.py prints the same comparison as ratios.
"""

import pytest
import torch
from cases import (
    GUMBEL_IMPLS,
    GUMBEL_SHAPES,
    WS_IMPLS,
    WS_KS,
    WS_SIZES,
    gumbel_step,
    make_ws,
    ws_step,
)


@pytest.mark.parametrize("impl", list(WS_IMPLS))
@pytest.mark.parametrize("K", WS_KS)
@pytest.mark.parametrize("size", WS_SIZES, ids=lambda s: "N{}_C{}_HW{}".format(*s))
def test_weighted_sum_fwd_bwd(benchmark, impl, K, size):
    w, xs, grad = make_ws(*size, K, "cpu")
    benchmark.group = f"weighted_sum {size} K={K}"
    benchmark(ws_step, WS_IMPLS[impl], w, xs, grad)


@pytest.mark.parametrize("impl", list(GUMBEL_IMPLS))
@pytest.mark.parametrize("shape", GUMBEL_SHAPES, ids=lambda s: "E{}_K{}".format(*s))
def test_gumbel_fwd_bwd(benchmark, impl, shape):
    logits = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    benchmark.group = f"gumbel_softmax {shape}"
    benchmark(gumbel_step, GUMBEL_IMPLS[impl], logits, grad)
