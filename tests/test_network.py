"""Evaluation networks: published sizes, auxiliary head, drop-path, a training step."""

import pytest
import torch

from fastnas.space.genotype import PUBLISHED
from fastnas.space.network import EvalNetwork, EvalNetworkImageNet

# Published sizes (millions of parameters, auxiliary head excluded).
PUBLISHED_MILLIONS = {"DARTS_V2": 3.3, "PDARTS": 3.4, "PC_DARTS": 3.6, "DRNAS": 4.1}


def test_darts_v2_exact_parameter_count():
    net = EvalNetwork(PUBLISHED["DARTS_V2"], channels=36, layers=20, num_classes=10, auxiliary=True)
    assert net.num_parameters() == 3_349_342
    aux = sum(p.numel() for p in net.auxiliary_head.parameters())
    assert net.num_parameters(include_auxiliary=True) == 3_349_342 + aux


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_published_sizes(name):
    net = EvalNetwork(PUBLISHED[name])
    assert round(net.num_parameters() / 1e6, 1) == PUBLISHED_MILLIONS[name]


def test_imagenet_mobile_size_and_shape():
    net = EvalNetworkImageNet(PUBLISHED["DARTS_V2"])
    assert round(net.num_parameters() / 1e6, 1) == 4.7  # DARTS reports 4.7M on ImageNet
    small = EvalNetworkImageNet(PUBLISHED["DARTS_V2"], channels=8, layers=3, num_classes=5).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 224, 224)).shape == (1, 5)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_genotypes_build_and_train_a_step(name):
    torch.manual_seed(0)
    net = EvalNetwork(PUBLISHED[name], channels=8, layers=5, num_classes=10, auxiliary=True, drop_path=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net.train()
    logits, aux = net(x)
    assert logits.shape == aux.shape == (4, 10)
    loss = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    opt.step()
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10) and torch.isfinite(out).all()


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    net = EvalNetwork(PUBLISHED["DARTS_V2"], channels=8, layers=5, auxiliary=False, drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    a, aux = net(x)
    b, _ = net(x)
    assert aux is None and not torch.allclose(a, b)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.drop_path_prob = 0.1
    assert all(c.drop_prob == 0.1 for c in net.cells)
    with pytest.raises(ValueError):
        net.drop_path_prob = 1.5
