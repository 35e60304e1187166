"""The samplers (fastnas.space.sampler): their temperatures, and the architecture gradient each gives
against finite differences (float64) or, for the Dirichlet, against the gradient of the expectation."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fastnas.infra import config as cfglib
from fastnas.infra.errors import ConfigError
from fastnas.search import PRESETS, SearchConfig, temperature_schedule
from fastnas.space.sampler import Sample, TemperatureSchedule, make_sampler
from fastnas.space.supernet import SuperNet


def config(**kw) -> SearchConfig:
    return cfglib.build_config(SearchConfig, PRESETS, kw, "progressive")


def test_softmax_and_dirichlet_ignore_the_gumbel_schedule():
    assert temperature_schedule(config(sampler="softmax")) is None
    assert temperature_schedule(config(sampler="dirichlet")) is None
    sched = temperature_schedule(config(sampler="softmax", tau_start=2.0))  # asked for: constant 2
    assert sched(0, 10) == sched(9, 10) == 2.0
    g = temperature_schedule(config(sampler="gumbel-hard"))
    assert (g.start, g.end) == (10.0, 0.1)
    with pytest.raises(ConfigError, match="takes no temperature"):
        config(sampler="dirichlet", tau_start=5.0)


def _tiny_net():
    torch.manual_seed(0)
    net = SuperNet(3, 3, 4, primitives=["none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"]).double()
    with torch.no_grad():
        net.alpha_normal.copy_(0.5 * torch.randn_like(net.alpha_normal))
        net.alpha_reduce.copy_(0.5 * torch.randn_like(net.alpha_reduce))
    net.eval()  # BN on running stats: a smooth, deterministic function of the weights
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    return net, x, y


def _fd(f, alpha, eps=1e-6):
    g = torch.zeros_like(alpha)
    for idx in range(alpha.numel()):
        with torch.no_grad():
            flat = alpha.view(-1)
            old = float(flat[idx])
            flat[idx] = old + eps
            up = f()
            flat[idx] = old - eps
            down = f()
            flat[idx] = old
        g.view(-1)[idx] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("name", ["softmax", "gumbel-soft"])
def test_soft_sampler_arch_gradient_matches_finite_differences(name):
    net, x, y = _tiny_net()
    tau = 0.7
    noise = {c: -torch.log(-torch.log(torch.rand(a.shape, dtype=torch.float64)))
             for c, a in net.named_arch_parameters().items()}

    def loss():
        samples = {}
        for c, a in net.named_arch_parameters().items():
            z = a / tau if name == "softmax" else (a + noise[c]) / tau
            samples[c] = Sample(F.softmax(z, -1))
        return F.cross_entropy(net(x, samples), y)

    if name == "softmax":  # the sampler object itself, not a copy of its formula
        sampler = make_sampler("softmax", tau=tau)
        samples = {c: sampler(a) for c, a in net.named_arch_parameters().items()}
        torch.testing.assert_close(F.cross_entropy(net(x, samples), y), loss())
    grads = torch.autograd.grad(loss(), net.arch_parameters())
    for a, g in zip(net.arch_parameters(), grads, strict=True):
        torch.testing.assert_close(g, _fd(lambda: float(loss()), a), atol=1e-7, rtol=1e-5)


def test_gumbel_sampler_with_given_noise_matches_the_soft_formula():
    from fastnas import ops

    alpha = torch.randn(14, 5, dtype=torch.float64, requires_grad=True)
    u = torch.rand(14, 5, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u))
    w, _ = ops.gumbel_softmax(alpha, 0.5, False, noise=gumbel)
    torch.testing.assert_close(w, F.softmax((alpha + gumbel) / 0.5, -1))


@pytest.mark.parametrize("straight_through", ["sampled", "all"])
def test_hard_sampler_straight_through_gradient_matches_finite_differences(straight_through):
    """The alpha gradient is dL/dw, taken at the one-hot w, through the soft probabilities' Jacobian.
    'sampled' (GDAS): the forward runs one op per edge, the unsampled ops entering as w_k * 1. 'all'
    (Jang et al.): every op runs, weighted by w, so dL/dw_k = <upstream gradient, op_k output>; the
    value is still the sampled network's. Both factors are checked by finite differences: the loss in w
    with the path fixed, and softmax((alpha + g) / tau)."""
    from fastnas import ops

    net, x, y = _tiny_net()
    tau = 0.8
    sampler = make_sampler("gumbel-hard", tau=tau, straight_through=straight_through)
    noise = {c: -torch.log(-torch.log(torch.rand(a.shape, dtype=torch.float64)))
             for c, a in net.named_arch_parameters().items()}
    def draw():
        drawn = {}
        for c, a in net.named_arch_parameters().items():
            w, index = ops.gumbel_softmax(a, tau, True, noise=noise[c])
            drawn[c] = Sample(w, index, hard=True, index_list=index.tolist())
        return drawn

    drawn = draw()
    samples = {c: sampler.for_arch_step(s) for c, s in drawn.items()}
    assert all(s.hard and s.score_all == (straight_through == "all") for s in samples.values())
    logits = net(x, samples)
    torch.testing.assert_close(logits, net(x, drawn))  # the value is the sampled network's either way
    grads = torch.autograd.grad(F.cross_entropy(logits, y), net.arch_parameters())
    for (c, a), g in zip(net.named_arch_parameters().items(), grads, strict=True):
        arch = samples[c]
        w0 = arch.weights.detach().clone().requires_grad_(False)

        def loss_in_w(w, c=c, arch=arch):
            s = {k: dataclasses.replace(v, weights=v.weights.detach()) for k, v in samples.items()}
            s[c] = dataclasses.replace(arch, weights=w)
            return float(F.cross_entropy(net(x, s), y))

        dl_dw = _fd(lambda w0=w0, f=loss_in_w: f(w0), w0)
        soft = F.softmax((a.detach() + noise[c]) / tau, -1)
        # d soft_k / d alpha_j = soft_k (delta_kj - soft_j) / tau, per edge
        expected = soft * (dl_dw - (dl_dw * soft).sum(-1, keepdim=True)) / tau
        torch.testing.assert_close(g, expected, atol=1e-7, rtol=1e-5)
        assert torch.equal(arch.index, (a.detach() + noise[c]).argmax(-1))
    if straight_through == "all":  # every op's own output scores it: the gradients differ from GDAS'
        gdas = make_sampler("gumbel-hard", tau=tau, straight_through="sampled")
        gdas_samples = {c: gdas.for_arch_step(s) for c, s in draw().items()}
        g_sampled = torch.autograd.grad(F.cross_entropy(net(x, gdas_samples), y), net.arch_parameters())
        assert not torch.allclose(g_sampled[0], grads[0])


def test_hard_sampler_straight_through_option_is_checked():
    with pytest.raises(ValueError, match="straight_through"):
        make_sampler("gumbel-hard", straight_through="some")


def test_dirichlet_pathwise_gradient_matches_the_expectation():
    """DrNAS' reparameterized Dirichlet: averaged over samples, the pathwise gradient of a linear loss
    sum(w * c) must equal the gradient of its expectation sum(c * m), m = conc / sum(conc), conc =
    elu(alpha) + 1, which finite differences give (torch's Dirichlet gradient is an approximation and a
    single fixed-seed draw is not smooth in alpha, so one sample cannot be compared)."""
    torch.manual_seed(0)
    alpha = (0.7 * torch.randn(3, 5, dtype=torch.float64)).requires_grad_(True)
    c = torch.randn(3, 5, dtype=torch.float64)
    n = 40000
    sampler = make_sampler("dirichlet", generator=torch.Generator().manual_seed(3))
    w = sampler(alpha.repeat(n, 1)).weights.view(n, 3, 5)
    (grad,) = torch.autograd.grad((w * c).sum() / n, alpha)

    def expected():
        conc = F.elu(alpha) + 1
        return float((c * conc / conc.sum(-1, keepdim=True)).sum())

    torch.testing.assert_close(grad, _fd(expected, alpha), atol=0.02, rtol=0.05)
    torch.testing.assert_close(sampler.probabilities(alpha).double(), (F.elu(alpha.detach()) + 1) /
                               (F.elu(alpha.detach()) + 1).sum(-1, keepdim=True))


def test_temperature_schedule():
    lin = TemperatureSchedule(10.0, 0.1)
    assert lin(0, 25) == 10.0 and abs(lin(24, 25) - 0.1) < 1e-12
    assert abs(lin(12, 25) - 5.05) < 1e-12
    exp = TemperatureSchedule(10.0, 0.1, "exponential")
    assert abs(exp(12, 25) - 1.0) < 1e-9
    with pytest.raises(ValueError):
        TemperatureSchedule(kind="cosine")
