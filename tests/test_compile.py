"""The retraining network compiles as one graph (issue 20: drop-path and the auxiliary head expressed so
they compile without graph breaks), and a drop-path rate that changes every epoch does not recompile it
every epoch. Traced with the ``aot_eager`` backend (forward and backward graphs, no C++ codegen), so it
runs in seconds on a CPU; inductor and CUDA graphs (``--compile-mode reduce-overhead``) are measured by
benchmarks/train_speed.py on a GPU."""

import pytest
import torch
import torch.nn.functional as F

from fastnas.space.genotype import published
from fastnas.space.network import EvalNetwork


@pytest.fixture
def dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def _step(fwd, net, opt, x, y):
    logits, aux = fwd(x)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def test_eval_network_compiles_whole_and_drop_path_does_not_recompile_per_epoch(dynamo):
    torch.manual_seed(0)
    net = EvalNetwork(published("DARTS_V2"), 4, 3, 10, auxiliary=True, drop_path=0.0)
    fwd = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net.train()
    losses = []
    for epoch in range(6):  # DARTS' ramp: drop_path * epoch / epochs
        net.drop_path_prob = 0.3 * epoch / 6
        losses.append(_step(fwd, net, opt, x, y))
    assert all(torch.isfinite(v) for v in losses)
    frames = dynamo["stats"]["unique_graphs"]
    # one graph without drop-path, at most one more once it is on: never one per epoch
    assert 1 <= frames <= 2, dict(dynamo["stats"])
    assert not dynamo["graph_break"], dict(dynamo["graph_break"])


@pytest.mark.slow  # 10 s of tracing; the default tier keeps the graph-count case above
def test_compiled_network_computes_what_eager_computes(dynamo):
    torch.manual_seed(0)
    net = EvalNetwork(published("PDARTS"), 4, 3, 10, auxiliary=True, drop_path=0.2)
    fwd = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    torch.manual_seed(1)  # drop-path masks drawn alike
    eager = net(x)
    torch.manual_seed(1)
    compiled = fwd(x)
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1], eager[1])
    net.eval()
    torch.testing.assert_close(fwd(x), net(x))
