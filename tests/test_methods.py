"""The method mechanisms against hand-written references on tiny networks: PC-DARTS' partial channels,
channel shuffle and edge normalization, DARTS' second-order gradient, DrNAS' anchor; and every method
preset runs a few steps on the embedded data."""

import json
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fastnas.cli.search import main
from fastnas.search import PRESETS
from fastnas.search.anchor import DirichletAnchor
from fastnas.search.arch_grad import unrolled_arch_grads
from fastnas.space.derive import derive_genotype
from fastnas.space.primitives import PRIMITIVES
from fastnas.space.sampler import Sample
from fastnas.space.supernet import MixedOp, SuperNet, channel_shuffle


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 1).flatten().tolist() == list(range(8))


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_route_one_kth(stride):
    torch.manual_seed(0)
    C, K = 8, 4
    op = MixedOp(C, stride, PRIMITIVES, partial_channels=K).double()
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1])) for m in op.candidates]
    x = torch.randn(2, C, 8, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0)
    y = op(x, w)
    for h in hooks:
        h.remove()
    assert seen == [C // K] * len(PRIMITIVES)  # every candidate sees exactly C/K channels
    # the reference: the weighted candidates on the first C/K channels, the rest passed (pooled when
    # strided), concatenated and shuffled in K groups
    part = sum(wk * cand(x[:, : C // K]) for wk, cand in zip(w, op.candidates, strict=True))
    rest = x[:, C // K:] if stride == 1 else F.max_pool2d(x[:, C // K:], 2, 2)
    assert_close(y, channel_shuffle(torch.cat([part, rest], 1), K))
    assert y.shape == (2, C, 8 // stride, 8 // stride)


def test_partial_channels_must_divide():
    with pytest.raises(ValueError, match="partial_channels"):
        SuperNet(channels=6, layers=3, partial_channels=4)


def test_edge_normalization_scales_edges_and_derivation():
    torch.manual_seed(0)
    net = SuperNet(channels=4, layers=3, edge_norm=True)
    assert len(net.arch_parameters()) == 4 and all(id(b) not in {id(p) for p in net.weight_parameters()}
                                                   for b in (net.beta_normal, net.beta_reduce))
    ew = net.edge_weights()["normal"]
    starts = [0, 2, 5, 9]
    for i, s in enumerate(starts):  # a softmax over each node's incoming edges
        assert_close(ew[s:s + 2 + i].sum(), torch.tensor(1.0))
    # node 3 (edges 2, 3, 4): edge 2 has the strongest op, but beta puts edge 4 far ahead of edge 2
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[2, PRIMITIVES.index("sep_conv_3x3")] = 3.0
        net.alpha_normal[3, PRIMITIVES.index("sep_conv_5x5")] = 2.0
        net.alpha_normal[4, PRIMITIVES.index("dil_conv_3x3")] = 1.0
        net.beta_normal[2:5] = torch.tensor([0.0, 2.0, 4.0])
    node3 = derive_genotype(net, None).normal[2:4]
    p = torch.softmax(net.alpha_normal.detach(), -1)
    ew = net.edge_weights()["normal"].detach()
    score = {j: float(p[2 + j, 1:].max() * ew[2 + j]) for j in range(3)}
    expected = sorted(range(3), key=lambda j: -score[j])[:2]
    assert sorted(j for _, j in node3) == sorted(expected) and 0 not in [j for _, j in node3]
    # without edge normalization the strongest op's edge is kept
    plain = SuperNet(channels=4, layers=3)
    with torch.no_grad():
        plain.alpha_normal.copy_(net.alpha_normal)
    assert 0 in [j for _, j in derive_genotype(plain, None).normal[2:4]]
    # the forward multiplies each edge's output by its weight: beta equal everywhere == 1/n per node
    x = torch.randn(2, 3, 8, 8)
    assert net(x).shape == (2, 10)


def test_second_order_gradient_matches_finite_differences():
    torch.manual_seed(0)
    # avg pool and identity keep the objective smooth enough for finite differences (ReLU and max pool
    # kinks make central differences of the Hessian-vector product jump)
    net = SuperNet(channels=2, layers=1, primitives=["avg_pool_3x3", "skip_connect"]).double()
    net.train()
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    x, y = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    xv, yv = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.tensor([3, 2, 1, 0])
    # a momentum buffer, as after some weight steps
    F.cross_entropy(net(x), y).backward()
    opt.step()
    opt.zero_grad()
    lr = 0.1
    alphas = net.arch_parameters()

    def samples():
        return {c: Sample(torch.softmax(a, -1)) for c, a in net.named_arch_parameters().items()}

    grads, _, _ = unrolled_arch_grads(net, samples(), (x, y), (xv, yv), opt, lr, lambda loss: loss, nullcontext,
                                      eps=1e-4)
    # DARTS' own epsilon (0.01 / ||v||) is the default and close to it
    darts_eps, _, _ = unrolled_arch_grads(net, samples(), (x, y), (xv, yv), opt, lr, lambda loss: loss, nullcontext)
    assert_close(darts_eps[1], grads[1], rtol=1e-2, atol=1e-4)

    def unrolled_objective():
        # L_val(w - lr * (mu * buf + grad_w L_train + wd * w), alpha), everything recomputed
        weights = dict((n, p) for n, p in net.named_parameters() if not n.startswith(("alpha", "beta")))
        loss = F.cross_entropy(net(x, samples()), y)
        g = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        saved = {n: p.detach().clone() for n, p in weights.items()}
        with torch.no_grad():
            for p, gi in zip(weights.values(), g, strict=True):
                step = (torch.zeros_like(p) if gi is None else gi) + 3e-4 * p
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    step = step + 0.9 * buf
                p.sub_(lr * step)
        val = float(F.cross_entropy(net(xv, samples()), yv).detach())
        with torch.no_grad():
            for n, p in weights.items():
                p.copy_(saved[n])
        return val

    h = 1e-5
    a = alphas[1]  # one cell: it is a reduction cell
    assert grads[0] is None and grads[1] is not None
    for e, k in [(0, 0), (1, 1), (3, 1), (4, 0)]:
        with torch.no_grad():
            a[e, k] += h
        up = unrolled_objective()
        with torch.no_grad():
            a[e, k] -= 2 * h
        down = unrolled_objective()
        with torch.no_grad():
            a[e, k] += h
        fd = (up - down) / (2 * h)
        assert grads[1][e, k].item() == pytest.approx(fd, rel=1e-3, abs=1e-6), (e, k)
        first_order = float(torch.autograd.grad(F.cross_entropy(net(xv, samples()), yv), a)[0][e, k])
        assert abs(first_order - fd) > 10 * abs(grads[1][e, k].item() - fd)  # the second-order term matters


def test_arch_gradient_objects():
    from fastnas.search.arch_grad import FirstOrder, SecondOrder, make_arch_gradient

    assert isinstance(make_arch_gradient(1), FirstOrder) and isinstance(make_arch_gradient(2), SecondOrder)
    with pytest.raises(ValueError, match="arch_order must be 1 or 2"):
        make_arch_gradient(3)


def _kl_to_uniform(c):
    c0 = c.sum(-1)
    K = c.shape[-1]
    return (torch.lgamma(c0) - torch.lgamma(c).sum(-1) - math.lgamma(K)
            + ((c - 1) * (torch.digamma(c) - torch.digamma(c0)[..., None])).sum(-1))


def test_drnas_anchor_value_and_gradient():
    torch.manual_seed(0)
    net = SuperNet(channels=2, layers=3).double()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 1)
    anchor = DirichletAnchor(1e-3)
    expected = sum(_kl_to_uniform(F.elu(a) + 1).sum() for a in net.named_arch_parameters().values())
    value = anchor.value(net)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    with_anchor = float(anchor(torch.tensor(2.0), net, None).detach())
    assert with_anchor == pytest.approx(2.0 + 1e-3 * float(expected.detach()), rel=1e-6)
    g = torch.autograd.grad(anchor.value(net), net.alpha_normal)[0]
    h = 1e-6
    for e, k in [(0, 0), (5, 3), (13, 7)]:
        with torch.no_grad():
            net.alpha_normal[e, k] += h
            up = float(anchor.value(net).detach())
            net.alpha_normal[e, k] -= 2 * h
            down = float(anchor.value(net).detach())
            net.alpha_normal[e, k] += h
        assert g[e, k].item() == pytest.approx((up - down) / (2 * h), rel=1e-3, abs=1e-6)
    # the prior itself is the minimum
    with torch.no_grad():
        for a in net.arch_parameters():
            a.zero_()
    assert float(anchor.value(net).detach()) == pytest.approx(0.0, abs=1e-9)


# every method preset, shrunk to a few steps of a small network on the embedded data
def _shrink(name):
    p = PRESETS[name]
    stages = len(p.get("cells", [5, 11, 17]))
    k = p.get("partial_channels", [1] * stages)
    return ["--preset", name, "--embedded-size", "128", "--batch-size", "16", "--max-steps", "2",
            "--cells", *["3"] * stages, "--channels", *[str(4 * max(k))] * stages,
            "--epochs", *["2"] * stages, "--warmup-epochs", *["1"] * stages, "--no-plots",
            "--derived-eval-images", "32"]


# darts2 (12 s on 2 cores: second order, three forward-backward passes per step) runs in the slow tier;
# its gradient is checked against finite differences in the default one (test_second_order_gradient_...).
# pcdarts and drnas (6 and 11 s) too: their mechanisms (partial channels, edge normalization, Dirichlet,
# the continued network) have their own default-tier tests (test_supernet, test_sampler, test_fidelity)
@pytest.mark.parametrize("name", ["darts", pytest.param("darts2", marks=pytest.mark.slow),
                                  pytest.param("pcdarts", marks=pytest.mark.slow), "gdas",
                                  pytest.param("drnas", marks=pytest.mark.slow)])
def test_method_presets_run(tmp_path, name):
    out = tmp_path / name
    assert main([*_shrink(name), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert cfg["preset"] == name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_loss"] is not None and math.isfinite(rows[-1]["valid_loss"])
    by_skips = json.loads((out / "genotypes_by_skip_count.json").read_text())
    assert by_skips[-1]["skips"] == 0 and by_skips[0]["uncapped"]


# ----------------------------------------------------------------------------- GDAS' fixed reduction cell
def test_fixed_reduction_cell_shape_and_parameters():
    from fastnas.space.network import FixedReductionCell

    cell = FixedReductionCell(48, 48, 32, reduction_prev=False)
    out = cell(torch.randn(2, 48, 16, 16), torch.randn(2, 48, 16, 16))
    assert out.shape == (2, 128, 8, 8)
    # preprocess 2 x (48*32 + BN 2*32); per conv branch: 1x3 and 3x1 grouped (8 groups) + BN + 1x1 + BN;
    # per pool branch: BN
    pre = 2 * (48 * 32 + 2 * 32)
    branch = 2 * (32 * 4 * 3) + 2 * 32 + 32 * 32 + 2 * 32
    assert sum(p.numel() for p in cell.parameters()) == pre + 2 * branch + 2 * (2 * 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        FixedReductionCell(12, 12, 12, reduction_prev=False)


def test_genotype_with_fixed_reduction_round_trips():
    from fastnas.infra.errors import GenotypeError
    from fastnas.space.genotype import Genotype, published

    g = Genotype(published("DARTS_V2").normal, (2, 3, 4, 5), (), (2, 3, 4, 5), reduce_cell="gdas_frc")
    assert Genotype.parse(str(g)) == g and "reduce_cell='gdas_frc'" in str(g)
    assert Genotype.from_dict(json.loads(g.to_json())) == g
    with pytest.raises(GenotypeError, match="unknown fixed reduction"):
        Genotype(g.normal, (2, 3, 4, 5), (), (2, 3, 4, 5), reduce_cell="nope").validate()
    with pytest.raises(GenotypeError, match="must be empty"):
        Genotype(g.normal, (2, 3, 4, 5), g.normal, (2, 3, 4, 5), reduce_cell="gdas_frc").validate()
    from fastnas.cost import CostModel, EvalShape, measure_genotype

    for metric in ("params", "flops"):
        model = CostModel(metric, EvalShape(8, 5), reduce_cell="gdas_frc")
        assert model.genotype_cost(g) == measure_genotype(g, EvalShape(8, 5), metric)
    from fastnas.space.genotype import random_genotype

    r = random_genotype(__import__("random").Random(0), reduce_cell="gdas_frc")
    assert r.reduce == () and r.reduce_cell == "gdas_frc" and len(r.normal) == 8


def test_search_with_fixed_reduction_then_retrain(tmp_path):
    from fastnas.cli.train import main as train_main
    from fastnas.space.genotype import Genotype

    out = tmp_path / "frc"
    args = [*_shrink("gdas"), "--channels", "4", "--fixed-reduction", "gdas_frc", "--out", str(out)]
    assert main(args) == 0
    g = Genotype.from_json(out / "genotype.json")
    assert g.reduce_cell == "gdas_frc" and g.reduce == ()
    assert train_main(["--genotype", str(out), "--preset", "smoke", "--epochs", "1", "--max-steps", "2",
                       "--embedded-size", "128", "--no-export", "--no-plots", "--out", str(tmp_path / "t")]) == 0
    # a width the grouped convolutions cannot take is refused before anything runs
    assert main([*_shrink("gdas"), "--channels", "6", "--fixed-reduction", "gdas_frc",
                 "--out", str(tmp_path / "bad")]) == 2
