"""The search supernet: sizes, samplers, GDAS hard sampling, equivalence to the plain DARTS sum,
derivation and pruning."""

import pytest
import torch
from torch.testing import assert_close

from fastnas import ops
from fastnas.space.derive import derive_genotype, prune_primitives
from fastnas.space.genotype import Genotype
from fastnas.space.primitives import PRIMITIVES
from fastnas.space.sampler import SAMPLERS, make_sampler
from fastnas.space.supernet import MixedOp, SuperNet
from fastnas.space.topology import num_edges


def darts_search_weight_count(C=16, layers=8, num_classes=10, steps=4, multiplier=4, stem=3):
    """Closed form of the DARTS search network's weights (model_search.py), op by op.

    Per mixed edge (non-affine BN, no parameters): sep_conv_kxk = 2 * (k*k*C + C*C), dil_conv_kxk =
    k*k*C + C*C, pools/none/identity 0, skip at stride 2 = FactorizedReduce = C*C.
    """
    def edge(C, stride):
        n = 2 * (9 * C + C * C) + 2 * (25 * C + C * C) + (9 * C + C * C) + (25 * C + C * C)
        return n + (C * C if stride == 2 else 0)

    total = 3 * 3 * 3 * stem * C + 2 * stem * C  # stem conv + affine BN
    C_pp, C_p, C_cur, red_prev = stem * C, stem * C, C, False
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        if red:
            C_cur *= 2
        total += C_pp * C_cur + C_p * C_cur  # preprocess0 (ReLUConvBN or FactorizedReduce) + preprocess1
        for n in range(steps):
            for j in range(2 + n):
                total += edge(C_cur, 2 if red and j < 2 else 1)
        red_prev = red
        C_pp, C_p = C_p, multiplier * C_cur
    del red_prev
    return total + C_p * num_classes + num_classes


def test_darts_size_search_network_weight_count():
    net = SuperNet(channels=16, layers=8, num_classes=10)
    n = sum(p.numel() for p in net.weight_parameters())
    assert n == darts_search_weight_count() == 1_930_618
    assert [p.shape for p in net.arch_parameters()] == [(14, 8), (14, 8)]
    ids = {id(p) for p in net.weight_parameters()}
    assert all(id(a) not in ids for a in net.arch_parameters())
    assert len(list(net.parameters())) == len(net.weight_parameters()) + 2


def small_net(**kw):
    torch.manual_seed(0)
    kw.setdefault("channels", 4)
    kw.setdefault("layers", 3)
    return SuperNet(**kw)


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_forward_backward_with_each_sampler(sampler_name):
    net = small_net()
    sampler = make_sampler(sampler_name, tau=1.0)
    x = torch.randn(4, 3, 16, 16)
    logits = net(x, net.sample(sampler))
    assert logits.shape == (4, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for a in net.arch_parameters():
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert net.stem[0].weight.grad is not None


def test_gumbel_hard_runs_one_op_per_edge_and_its_alphas_get_gradient():
    """GDAS' y = w_i * op_i(x): the gradient reaches an edge's alphas through w_i, so every alpha of an
    edge whose sampled op outputs something gets one; an edge that sampled 'none' (output 0) gets none."""
    net = small_net()
    calls = []
    for m in net.modules():
        if isinstance(m, MixedOp):
            for op in m.candidates:
                op.register_forward_hook(lambda mod, inp, out: calls.append(mod))
    sampler = make_sampler("gumbel-hard", tau=1.0)
    samples = net.sample(sampler)
    logits = net(torch.randn(4, 3, 16, 16), samples)
    assert len(calls) == net.layers * num_edges(4)
    logits.logsumexp(-1).sum().backward()
    for cell, a in net.named_arch_parameters().items():
        names = net.edge_primitives[cell]
        for e, i in enumerate(samples[cell].index_list):
            if names[e][i] == "none":
                assert (a.grad[e] == 0).all()
            else:
                assert (a.grad[e] != 0).all(), (cell, e, a.grad[e])


@pytest.mark.parametrize("edge_norm", [False, True])
def test_hard_cells_sum_each_node_in_one_fused_call(edge_norm, monkeypatch):
    """A hard sample (GDAS' form) sums each node's sampled edges with one weighted_sum instead of a
    multiply and an add per edge: the value is the per-edge form's (to the bit without edge
    normalization: the hard weights are exactly 1), and so are the gradients, up to summation order."""
    from fastnas.space.supernet import SearchCell

    torch.manual_seed(0)
    net = SuperNet(channels=4, layers=3, num_classes=10, edge_norm=edge_norm).train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    fused_calls = []
    real = ops.weighted_sum
    monkeypatch.setattr(ops, "weighted_sum", lambda w, xs: fused_calls.append(len(xs)) or real(w, xs))
    results = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(SearchCell, "_fuses", lambda self, sample: False)
        samples = net.sample(make_sampler("gumbel-hard", tau=0.7, generator=torch.Generator().manual_seed(1)))
        logits = net(x, samples)
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y),
                                    net.arch_parameters() + net.weight_parameters(), allow_unused=True)
        results.append((logits.detach(), grads))
    assert fused_calls == [2, 3, 4, 5] * net.layers  # one call per node, on the fused pass only
    (lf, gf), (le, ge) = results
    assert_close(lf, le, rtol=0, atol=0) if not edge_norm else assert_close(lf, le)
    for a, b in zip(gf, ge, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_hard_cells_keep_the_per_edge_form_where_it_differs():
    """Partial channels (the weight scales only the op's share of the channels), score_all (every
    candidate runs) and derived samples (dropped edges) keep the per-edge form."""
    from fastnas.space.sampler import Sample

    net = SuperNet(channels=4, layers=3, num_classes=10, partial_channels=2)
    hard = net.sample(make_sampler("gumbel-hard"))
    assert not net.cells[0]._fuses(hard["normal"])
    full = SuperNet(channels=4, layers=3, num_classes=10)
    s = full.sample(make_sampler("gumbel-hard"))["normal"]
    assert full.cells[0]._fuses(s)
    assert not full.cells[0]._fuses(Sample(s.weights, s.index, True, s.index_list, score_all=True))
    dropped = list(s.index_list)
    dropped[3] = -1
    assert not full.cells[0]._fuses(Sample(s.weights, s.index, True, dropped))


def manual_forward(net, x, w_normal, w_reduce):
    """The DARTS supernet written out independently: per edge sum(w_k * op_k(h)), per node the sum
    of all incoming edges."""
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        w = w_reduce if cell.reduction else w_normal
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        offset = 0
        for _ in range(cell.steps):
            node = 0
            for j, h in enumerate(states):
                edge = cell.edges[offset + j]
                node = node + sum(w[offset + j][k] * cand(h) for k, cand in enumerate(edge.candidates))
            offset += len(states)
            states.append(node)
        s0, s1 = s1, torch.cat(states[-cell.multiplier:], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_softmax_supernet_equals_plain_weighted_sum(backend):
    net = small_net().double()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    sampler = make_sampler("softmax")
    ops.set_backend(backend)
    try:
        out = net(x, net.sample(sampler))
    finally:
        ops.set_backend("auto")
    expected = manual_forward(net, x, net.alpha_normal.softmax(-1), net.alpha_reduce.softmax(-1))
    assert_close(out, expected, rtol=1e-10, atol=1e-10)
    # default forward (no sample) is the softmax one
    assert_close(net(x), out)


def test_fused_and_reference_backends_agree_with_gradients():
    results = []
    for backend in ("auto", "reference"):
        net = small_net()
        ops.set_backend(backend)
        try:
            torch.manual_seed(1)
            net(torch.randn(4, 3, 16, 16), net.sample(make_sampler("gumbel-soft"))).sum().backward()
        finally:
            ops.set_backend("auto")
        results.append([net.alpha_normal.grad, net.alpha_reduce.grad, net.stem[0].weight.grad])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_skip_dropout_applies_to_identity_only():
    edge = MixedOp(4, 1, ["skip_connect", "max_pool_3x3"])
    x = torch.randn(8, 4, 6, 6) + 5
    edge.skip_dropout = 0.5
    w = torch.tensor([1.0, 0.0])
    y = edge(x, w)
    assert (y == 0).float().mean() > 0.3  # identity path dropped ~half
    edge.eval()
    assert_close(edge(x, w), x)
    net = small_net()
    net.set_skip_dropout(0.4)
    assert all(m.skip_dropout == 0.4 for m in net.modules() if isinstance(m, MixedOp))
    with pytest.raises(ValueError):
        net.set_skip_dropout(1.0)


def _probs(rows_normal, rows_reduce=None):
    rows_reduce = rows_reduce if rows_reduce is not None else rows_normal
    return {"normal": torch.as_tensor(rows_normal), "reduce": torch.as_tensor(rows_reduce)}


def test_derivation_top2_edges_and_strongest_nonzero_op():
    net = small_net()
    E, K = 14, 8
    rows = torch.full((E, K), 0.1)
    # node 2 (edges 0, 1): edge 1 strongest via sep_conv_5x5; 'none' is never chosen
    rows[0, PRIMITIVES.index("none")] = 0.9
    rows[0, PRIMITIVES.index("dil_conv_3x3")] = 0.3
    rows[1, PRIMITIVES.index("sep_conv_5x5")] = 0.8
    # node 3 (edges 2, 3, 4): edges 4 and 2 win
    rows[2, PRIMITIVES.index("avg_pool_3x3")] = 0.5
    rows[4, PRIMITIVES.index("sep_conv_3x3")] = 0.7
    g = derive_genotype(net, max_skip_normal=None, probabilities=_probs(rows))
    assert g.normal[:2] == (("sep_conv_5x5", 1), ("dil_conv_3x3", 0))
    assert g.normal[2:4] == (("sep_conv_3x3", 2), ("avg_pool_3x3", 0))
    assert g.normal_concat == (2, 3, 4, 5)


def test_derivation_skip_cap():
    net = small_net()
    rows = torch.full((14, 8), 0.05)
    skip = PRIMITIVES.index("skip_connect")
    sep = PRIMITIVES.index("sep_conv_3x3")
    for e in range(14):  # every edge prefers skip, with distinct strengths
        rows[e, skip] = 0.5 + 0.01 * e
        rows[e, sep] = 0.2
    uncapped = derive_genotype(net, max_skip_normal=None, probabilities=_probs(rows))
    assert sum(op == "skip_connect" for op, _ in uncapped.normal) == 8
    capped = derive_genotype(net, max_skip_normal=2, probabilities=_probs(rows))
    assert sum(op == "skip_connect" for op, _ in capped.normal) == 2
    # the two strongest skips (edges 13 and 12, node 5 from inputs 4 and 3) survive
    assert capped.normal[6:] == (("skip_connect", 4), ("skip_connect", 3))
    # the reduction cell is not capped
    assert sum(op == "skip_connect" for op, _ in capped.reduce) == 8


def test_derivation_parameter_free_cap():
    """The skip cap's rule for every parameter-free op: pooling that dominates the normal cell is ruled
    out, weakest first, down to the cap; the reduction cell keeps its pooling; a node whose edges offer
    nothing but parameter-free ops keeps them (met as far as the space allows, no crash)."""
    from fastnas.space.derive import cell_stats

    net = small_net()
    rows = torch.full((14, 8), 0.01)
    pool, skip = PRIMITIVES.index("max_pool_3x3"), PRIMITIVES.index("skip_connect")
    sep = PRIMITIVES.index("sep_conv_3x3")
    for e in range(14):
        rows[e, pool] = 0.5 + 0.01 * e
        rows[e, skip] = 0.3
        rows[e, sep] = 0.2
    uncapped = derive_genotype(net, max_skip_normal=2, probabilities=_probs(rows))
    assert sum(op == "max_pool_3x3" for op, _ in uncapped.normal) == 8  # the collapse a skip cap leaves
    capped = derive_genotype(net, max_skip_normal=2, probabilities=_probs(rows), max_param_free=2)
    assert [op for op, _ in capped.normal].count("sep_conv_3x3") == 6
    assert capped.normal[6:] == (("max_pool_3x3", 4), ("max_pool_3x3", 3))  # the two strongest stay
    assert all(op == "max_pool_3x3" for op, _ in capped.reduce)
    stats = cell_stats(capped, derive_genotype(net, None, probabilities=_probs(rows)))
    assert (stats["normal_param_free"], stats["uncapped_normal_param_free"], stats["param_free_removed_by_cap"]) \
        == (2, 8, 6)
    # only pooling and skip on every edge: nothing can go, the cell is what the space allows
    only_free = torch.zeros(14, 8)
    only_free[:, pool], only_free[:, skip] = 0.6, 0.4
    names = {c: [["max_pool_3x3", "skip_connect"]] * 14 for c in ("normal", "reduce")}
    net2 = SuperNet(channels=4, layers=3, edge_primitives=names)
    g = derive_genotype(net2, None, probabilities={c: only_free[:, [pool, skip]] for c in names}, max_param_free=0)
    assert len(g.normal) == 8


def test_prune_primitives_and_rebuild():
    net = small_net()
    rows = torch.arange(8, dtype=torch.float32).repeat(14, 1)  # later primitives more likely
    rows[:, 0] = 100.0  # 'none' strongest everywhere
    pruned = prune_primitives(net, keep=3, probabilities=_probs(rows))
    assert pruned["normal"][0] == ["none", "dil_conv_3x3", "dil_conv_5x5"]
    pruned = prune_primitives(net, keep=3, drop_zero_first=True, probabilities=_probs(rows))
    assert pruned["normal"][0] == ["sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    stage = SuperNet(channels=4, layers=3, edge_primitives=pruned)
    assert stage.alpha_normal.shape == (14, 3)
    out = stage(torch.randn(2, 3, 16, 16), stage.sample(make_sampler("gumbel-hard")))
    assert out.shape == (2, 10)
    g = stage.genotype()
    assert {op for op, _ in g.normal} <= {"sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}
    with pytest.raises(ValueError, match="keep"):
        prune_primitives(stage, keep=5)


def test_bad_supernet_arguments():
    with pytest.raises(ValueError, match="14 edges expected"):
        SuperNet(channels=4, layers=3, edge_primitives={"normal": [["skip_connect"]], "reduce": [["skip_connect"]]})
    with pytest.raises(ValueError, match="unknown primitive 'conv_9x9'"):
        SuperNet(channels=4, layers=3, primitives=["conv_9x9"])
    with pytest.raises(ValueError, match="same, non-zero number"):
        SuperNet(channels=4, layers=3, edge_primitives={
            "normal": [["skip_connect"]] * 13 + [["skip_connect", "none"]], "reduce": [["none"]] * 14})
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("uniform")
    with pytest.raises(ValueError, match="temperature"):
        make_sampler("gumbel-hard", tau=0)


def test_genotypes_by_skip_count_follow_pdarts():
    from fastnas.space.derive import genotypes_by_skip_count

    torch.manual_seed(0)
    net = SuperNet(channels=2, layers=3)
    with torch.no_grad():
        net.alpha_normal.normal_(0, 0.1)
        net.alpha_normal[:, PRIMITIVES.index("skip_connect")] += 5.0  # skips win every edge
    entries = genotypes_by_skip_count(net)
    assert [e["skips"] for e in entries] == list(range(8, -1, -1))
    assert [e["max_skip"] for e in entries] == list(range(8, -1, -1))
    assert entries[0]["uncapped"] and not any(e["uncapped"] for e in entries[1:])
    for e in entries:
        g = Genotype.from_dict(e["genotype"])
        assert str(g) == e["text"] and g == derive_genotype(net, e["max_skip"])


def test_skip_cap_keeps_a_skip_that_a_node_cannot_do_without():
    """A last stage can keep only [none, skip_connect] on both edges into a node: the skip cap then
    cannot remove those skips without leaving the node one input short. Derivation keeps them (the cap is
    met as far as the space allows) instead of ending a finished search with a crash, and P-DARTS' list
    of genotypes by skip count stops at the fewest skips the space allows."""
    from fastnas.space.derive import genotypes_by_skip_count

    net = SuperNet(channels=2, layers=3, primitives=["none", "skip_connect"])  # what such a stage keeps
    probs = torch.tensor([[0.3, 0.7]] * 14)
    g = derive_genotype(net, max_skip_normal=2, probabilities={"normal": probs, "reduce": probs})
    assert [op for op, _ in g.normal] == ["skip_connect"] * 8  # no skip can go: every node needs two inputs
    entries = genotypes_by_skip_count(net, probabilities={"normal": probs, "reduce": probs})
    assert [(e["max_skip"], e["skips"], e["uncapped"]) for e in entries] == [(8, 8, True)]

    # With one other op on every edge but node 2's, the cap removes every skip it can: node 2 keeps two.
    names = [["none", "skip_connect"]] * 2 + [["skip_connect", "sep_conv_3x3"]] * 12
    net = SuperNet(channels=2, layers=3, edge_primitives={"normal": names, "reduce": names})
    g = derive_genotype(net, max_skip_normal=0, probabilities={"normal": probs, "reduce": probs})
    assert [op for op, _ in g.normal] == ["skip_connect"] * 2 + ["sep_conv_3x3"] * 6
