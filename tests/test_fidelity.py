"""Fidelity of the search to the published methods: temperatures, fresh samples, pruning, presets,
clipping, logging, cutout, the derived cell's evaluation, and architecture gradients of every sampler
against finite differences."""


import pytest
import torch
import torch.nn.functional as F

from fastnas.cli.search import MAY_CHANGE
from fastnas.data import ImageData, cutout
from fastnas.infra import config as cfglib
from fastnas.infra.rundir import RunDir
from fastnas.search import PRESETS, SearchConfig, Searcher, evaluate_derived, temperature_schedule, upgrade_saved
from fastnas.space.derive import cell_stats, derive_genotype
from fastnas.space.genotype import Genotype
from fastnas.space.supernet import MixedOp, SuperNet


def config(**kw) -> SearchConfig:
    return cfglib.build_config(SearchConfig, PRESETS, kw, "progressive")


def tiny(tmp_path, **kw) -> Searcher:
    """A one- or two-stage searcher on 64 embedded images, 2 steps per epoch."""
    base = dict(preset="smoke", cells=[3], channels=[4], ops_kept=[8], skip_dropout=[0.0], epochs=[3],
                warmup_epochs=[1], embedded_size=64, batch_size=16, max_steps=2, plots=False,
                derived_eval_images=32)
    base.update(kw)
    cfg = config(**base)
    return Searcher(cfg, RunDir(tmp_path / "run"), torch.device("cpu"))


# ----------------------------------------------------------------- temperatures


def test_softmax_sampler_is_darts_softmax_in_training_and_derivation(tmp_path):
    s = tiny(tmp_path, sampler="softmax")
    s.build_stage(0)
    for epoch in range(3):
        assert s.temperature(0, epoch) == 1.0
    with torch.no_grad():
        s.net.alpha_normal.copy_(torch.randn_like(s.net.alpha_normal))
    probs = s.net.probabilities(s.sampler)["normal"]
    torch.testing.assert_close(probs, F.softmax(s.net.alpha_normal.detach(), -1))


def test_temperature_anneals_over_the_search_epochs_only(tmp_path):
    s = tiny(tmp_path, sampler="gumbel-hard", epochs=[5], warmup_epochs=[2])
    taus = [s.temperature(0, e) for e in range(5)]
    assert taus[0] == taus[1] == taus[2] == 10.0  # warm-up holds tau_start; the first search epoch starts there
    assert taus[4] == pytest.approx(0.1)  # and the last search epoch ends at tau_end
    assert taus[3] == pytest.approx((10.0 + 0.1) / 2)


# ----------------------------------------------------------------- samples per step
@pytest.mark.parametrize("resample, per_step", [(True, 2), (False, 1)])
def test_architecture_step_draws_a_fresh_sample(tmp_path, monkeypatch, resample, per_step):
    s = tiny(tmp_path, arch_resample=resample, epochs=[1], warmup_epochs=[0])
    s.build_stage(0)
    calls = []
    original = SuperNet.sample
    monkeypatch.setattr(SuperNet, "sample", lambda self, sampler: calls.append(1) or original(self, sampler))
    s.train_epoch(0, 0)
    assert len(calls) == per_step * 2  # 2 steps


@pytest.mark.parametrize("straight_through, per_edge", [("all", 8), ("sampled", 1)])
def test_hard_sampler_architecture_step_runs_the_ops_its_estimator_needs(tmp_path, monkeypatch, straight_through,
                                                                        per_edge):
    """gumbel-hard: the weight step runs the sampled op of each edge; the architecture step runs every
    candidate ('all', the default) or only the sampled one (GDAS, the `gdas` preset)."""
    s = tiny(tmp_path, straight_through=straight_through, epochs=[1], warmup_epochs=[0], max_steps=1)
    s.build_stage(0)
    calls = []
    for m in s.net.modules():
        if isinstance(m, MixedOp):
            for op in m.candidates:
                op.register_forward_hook(lambda mod, inp, out: calls.append(mod))
    phases = []
    original = Searcher.arch_step

    def arch_step(self, *a, **k):
        phases.append(len(calls))
        return original(self, *a, **k)

    monkeypatch.setattr(Searcher, "arch_step", arch_step)
    s.train_epoch(0, 0)
    edges = len(s.net.cells) * 14
    assert phases == [edges]  # the weight step: one op per edge
    assert len(calls) - phases[0] == per_edge * edges
    assert config(preset="gdas").straight_through == "sampled" and config().straight_through == "all"


def resume_config(saved: dict, cli: dict):
    """The config `fastnas search --resume` builds from a checkpoint's saved options."""
    return cfglib.config_for_resume(SearchConfig, upgrade_saved(saved), cli, MAY_CHANGE)[0]


def test_a_run_saved_before_straight_through_resumes_with_the_estimator_it_computed():
    saved = cfglib.to_dict(config())
    assert resume_config(saved, {"workers": 1}).straight_through == "all"
    del saved["straight_through"]  # a checkpoint from before the option: GDAS' estimator
    cfg = resume_config(saved, {"workers": 1})
    assert cfg.straight_through == "sampled" and cfg.workers == 1


# ----------------------------------------------------------------- pruning keeps 'none'
def test_pruning_between_stages_keeps_none_by_its_probability(tmp_path):
    s = tiny(tmp_path, cells=[3, 3], channels=[4, 4], ops_kept=[8, 3], skip_dropout=[0.0, 0.0], epochs=[1, 1],
             warmup_epochs=[0, 0])
    s.build_stage(0)
    none = s.net.edge_primitives["normal"][0].index("none")
    with torch.no_grad():
        s.net.alpha_normal[:, none] = 5.0  # 'none' is the most probable op everywhere
    s.finish_stage(0)
    assert all("none" in ops for ops in s.edge_primitives["normal"])
    # ... but the derivation never picks it
    assert all(op != "none" for op, _ in derive_genotype(s.net, 2, s.sampler).normal)


# ----------------------------------------------------------------- presets
def test_pdarts_is_pdarts_and_the_default_is_the_progressive_gumbel_method():
    p = config(preset="pdarts")
    # the README's command (--dropout_rate 0.1 0.4 0.7) and its train() order (architecture first)
    assert (p.sampler, p.arch_lr, p.cells, p.ops_kept, p.skip_dropout, p.arch_first) == (
        "softmax", 6e-4, [5, 11, 17], [8, 5, 3], [0.1, 0.4, 0.7], True)
    assert temperature_schedule(p) is None
    d = config()
    assert d.skip_dropout == [0.0, 0.4, 0.7] and not d.arch_first  # the paper's text; GDAS' order
    assert (d.preset, d.sampler, d.arch_lr, d.arch_grad_clip) == ("progressive", "gumbel-hard", 3e-4, 5.0)
    assert (temperature_schedule(d).start, temperature_schedule(d).end) == (10.0, 0.1)


# ----------------------------------------------------------------- clipping and logging
def test_architecture_gradient_is_clipped(tmp_path):
    s = tiny(tmp_path, arch_grad_clip=1e-6, arch_lr=0.0)
    s.build_stage(0)
    samples = s.net.sample(s.sampler)
    gen = torch.Generator().manual_seed(0)
    s.arch_step(samples, [s.batch(s.valid_streams[0], gen)])
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in s.net.arch_parameters()))
    assert 0 < float(norm) <= 1e-6 * 1.001


def test_logged_lr_is_the_epochs_own(tmp_path):
    s = tiny(tmp_path, lr=0.1, epochs=[2], warmup_epochs=[1])
    s.build_stage(0)
    rows = [s.train_epoch(0, 0), s.train_epoch(0, 1)]
    assert rows[0]["lr"] == pytest.approx(0.1)  # cosine: the first epoch trains at the initial lr
    assert rows[1]["lr"] == pytest.approx(0.05)
    assert rows[0]["entropy_normal"] <= rows[0]["entropy_max"] + 1e-6


# ----------------------------------------------------------------- cutout
def test_cutout_is_a_16x16_square_of_the_mean_colour_after_normalisation():
    x = torch.full((64, 3, 32, 32), 3.0)
    out = cutout(x, 16, torch.Generator().manual_seed(0))
    for img in out:
        zero = img[0] == 0
        assert torch.equal(zero, img[1] == 0) and torch.equal(zero, img[2] == 0)  # all channels
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert int(zero.sum()) == len(rows) * len(cols)  # one rectangle
        assert len(rows) <= 16 and len(cols) <= 16
        inside_y = rows.min() > 0 and rows.max() < 31
        inside_x = cols.min() > 0 and cols.max() < 31
        if inside_y:
            assert len(rows) == 16
        if inside_x:
            assert len(cols) == 16
    assert (out != 0).any() and torch.equal(cutout(x, 0), x)


# ----------------------------------------------------------------- the derived cell inside the supernet
def test_derived_samples_run_exactly_the_genotype(tmp_path):
    net = SuperNet(4, 3, 10)
    geno = derive_genotype(net, 2)
    samples = net.derived_samples(geno)
    ran = []
    hooks = [m.register_forward_hook(lambda m, i, o: ran.append(1)) for c in net.cells for m in c.edges]
    net(torch.randn(2, 3, 16, 16), samples)
    for h in hooks:
        h.remove()
    assert len(ran) == 8 * len(net.cells)  # 2 edges per node, 4 nodes, every cell


def test_evaluate_derived_scores_and_restores_the_supernet(tmp_path):
    net = SuperNet(4, 3, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = ImageData(torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 10, (40,)), 10,
                     (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "t")
    out = evaluate_derived(net, derive_genotype(net, 2), data, data, 40, 16, torch.device("cpu"))
    assert 0.0 <= out["derived_acc"] <= 1.0 and out["derived_images"] == 40
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training


def test_cell_stats_count_collapse():
    g = Genotype.parse("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('max_pool_3x3', 0), "
                       "('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('avg_pool_3x3', 1), ('sep_conv_3x3', 0), "
                       "('sep_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
                       "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
                       "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=range(2, 6))")
    uncapped = Genotype(g.reduce, g.reduce_concat, g.reduce, g.reduce_concat)  # 3 skips in its "normal"
    stats = cell_stats(g, uncapped)
    assert stats == {"normal_skips": 2, "normal_param_free": 4, "reduce_param_free": 8, "skips_removed_by_cap": 1,
                     "uncapped_normal_param_free": 8, "param_free_removed_by_cap": 4}


# ----------------------------------------------------------------- arch gradients vs finite differences




# ----------------------------------------------------------------- the order of the two steps
@pytest.mark.parametrize("arch_first", [True, False])
def test_arch_first_steps_the_architecture_then_weights_under_it(tmp_path, arch_first):
    """DARTS/P-DARTS/PC-DARTS/DrNAS (train_search.py train()): architect.step, then the weight step,
    whose forward sees the moved alphas; GDAS: the weights first. Recorded per call: which step, and the
    softmax weights it ran with, against softmax(alpha) at that moment."""
    s = tiny(tmp_path, sampler="softmax", arch_first=arch_first, arch_lr=0.5)
    s.build_stage(0)
    calls = []
    weight_step, arch_step = s.weight_step, s.arch_step

    def record(name, step):
        def wrapped(samples, *args):
            alpha = s.net.arch_parameters()[0].detach().clone()
            calls.append((name, samples["normal"].weights.detach().clone(), alpha))
            return step(samples, *args)
        return wrapped

    s.weight_step, s.arch_step = record("weight", weight_step), record("arch", arch_step)
    gens = [torch.Generator().manual_seed(0)]
    s.step(gens, torch.zeros(4), arch=True)
    assert [c[0] for c in calls] == (["arch", "weight"] if arch_first else ["weight", "arch"])
    first, second = calls
    # each step ran with the architecture as it was when it ran: the second sees the first's move
    # only when the first was the architecture step
    assert torch.allclose(second[1], F.softmax(second[2], -1))
    assert torch.equal(second[2], first[2]) != arch_first
    assert PRESETS["darts"]["arch_first"] and PRESETS["pdarts"]["arch_first"] and PRESETS["pcdarts"]["arch_first"]
    assert PRESETS["drnas"]["arch_first"] and not PRESETS["gdas"].get("arch_first", False)


# ----------------------------------------------------------------- GDAS on the DARTS space
def test_gdas_mixed_op_is_forward_gdas_of_its_darts_space_cell():
    """AutoDL-Projects search_cells.py MixedOp.forward_gdas: ``self._ops[index](x) * weights[index]``.
    The gradient a hard sample's architecture parameters get, against that formula written out."""
    torch.manual_seed(0)
    op = MixedOp(4, 1, ["sep_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip_connect"], pool_bn=False)
    x = torch.randn(2, 4, 6, 6)
    g = torch.randn(2, 4, 6, 6)  # a fixed upstream gradient
    alpha = torch.randn(4, requires_grad=True)
    gumbel = torch.tensor([0.3, -0.2, 1.5, 0.1])

    def hard(a):
        probs = F.softmax((a.log_softmax(-1) + gumbel) / 0.5, -1)
        one_hot = torch.zeros_like(probs).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
        return one_hot - probs.detach() + probs

    w = hard(alpha)
    i = int(w.argmax())
    (op(x, w, i) * g).sum().backward()
    ours = alpha.grad.clone()
    alpha.grad = None
    w = hard(alpha)
    (op.candidates[i](x) * w[i] * g).sum().backward()
    torch.testing.assert_close(ours, alpha.grad)
    # pooling candidates without BN (GDAS' POOLING op), with it by default (DARTS' MixedOp)
    assert isinstance(op.candidates[1], torch.nn.MaxPool2d)
    assert isinstance(MixedOp(4, 1, ["max_pool_3x3"]).candidates[0], torch.nn.Sequential)


def test_gdas_genotype_rule_takes_the_two_strongest_pairs_per_node():
    """search_model_gdas_nasnet.py genotype(): per node, every (op, input) over non-'none' ops sorted by
    weight, the first two; an input may come twice. DARTS' rule takes two distinct inputs."""
    from fastnas.space.derive import _derive_once

    names = [["none", "sep_conv_3x3", "max_pool_3x3"]] * 14
    probs = [[0.1, 0.2, 0.7]] * 14
    probs[0] = [0.0, 0.5, 0.5 - 1e-3]  # node 2, input 0: both ops beat input 1's best
    probs[1] = [0.1, 0.45, 0.44]
    gdas = _derive_once([list(p) for p in probs], names, 4, "gdas")
    darts = _derive_once([list(p) for p in probs], names, 4, "darts")
    assert [(op, j) for op, j, _, _ in gdas[:2]] == [("sep_conv_3x3", 0), ("max_pool_3x3", 0)]
    assert [(op, j) for op, j, _, _ in darts[:2]] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


def test_gdas_preset_is_its_scripts_recipe_and_network(tmp_path):
    g = config(preset="gdas")
    assert (g.cells, g.channels, g.epochs, g.warmup_epochs, g.batch_size) == ([6], [16], [250], [0], 256)
    assert (g.lr, g.lr_min, g.momentum, g.nesterov, g.weight_decay) == (0.025, 0.001, 0.9, True, 5e-4)
    assert (g.sampler, g.straight_through, g.arch_lr, g.arch_weight_decay) == ("gumbel-hard", "sampled", 3e-4, 1e-3)
    assert (g.pool_bn, g.final_bn_relu, g.derivation, g.arch_first) == (False, True, "gdas", False)
    s = tiny(tmp_path, preset="gdas", cells=[6], batch_size=16, epochs=[1], warmup_epochs=[0])
    s.build_stage(0)
    assert s.net.derivation == "gdas" and isinstance(s.net.final_act[0], torch.nn.BatchNorm2d)
    assert s.w_opt.param_groups[0]["nesterov"] and [c.reduction for c in s.net.cells] == [0, 0, 1, 0, 1, 0]
    # the FRC's convolutions carry a bias in the search network (bias=not affine), none when retrained
    from fastnas.space.network import FixedReductionCell

    convs = [m for m in FixedReductionCell(8, 8, 8, False, affine=False).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs[2:])  # after the two preprocessing ReLUConvBNs
    convs = [m for m in FixedReductionCell(8, 8, 8, False, affine=True).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs)


# ----------------------------------------------------------------- DrNAS: one network through the stages
def test_drnas_preset_is_its_train_search(tmp_path):
    d = config(preset="drnas")
    assert "none" not in d.primitives and len(d.primitives) == 7 and d.ops_kept == [7, 4]
    assert (d.partial_channels, d.epochs, d.warmup_epochs, d.cells, d.channels) == (
        [6, 4], [25, 25], [10, 10], [20, 20], [36, 36])
    # reg_type 'l2' (the code's default): Adam weight decay, no KL
    assert (d.arch_weight_decay, d.dirichlet_anchor, d.sampler) == (1e-3, 0.0, "dirichlet")
    assert (d.stage_transition, d.derive_from, d.pool_bn, d.arch_first) == ("continue", "softmax", False, True)
    with pytest.raises(cfglib.ConfigError, match="one or the other"):
        config(preset="drnas", dirichlet_anchor=1e-3)
    assert config(preset="drnas", dirichlet_anchor=1e-3, arch_weight_decay=0.0).dirichlet_anchor == 1e-3


def test_drnas_derives_from_softmax_of_alpha_not_the_dirichlet_mean():
    """DrNAS' genotype() ranks edges by softmax(alpha); the Dirichlet mean (elu(alpha)+1 normalised) can
    rank two edges the other way round."""
    from fastnas.space.sampler import make_sampler

    net = SuperNet(channels=4, layers=3, primitives=["sep_conv_3x3", "max_pool_3x3"], derive_softmax=True)
    twin = SuperNet(channels=4, layers=3, primitives=["sep_conv_3x3", "max_pool_3x3"])
    with torch.no_grad():  # node 3's edges from inputs 0, 1, 2 (edges 2, 3, 4)
        for n in (net, twin):
            n.alpha_normal.zero_()
            n.alpha_normal[2] = torch.tensor([3.0, 0.0])  # softmax .953, mean (elu + 1) 4/5 = .800
            n.alpha_normal[3] = torch.tensor([0.0, -2.9])  # softmax .948, mean .948
            n.alpha_normal[4] = torch.tensor([2.95, 0.0])  # softmax .950, mean .798
    dirichlet = make_sampler("dirichlet")
    assert list(net.genotype(None, dirichlet).normal[2:4]) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 2)]
    assert list(twin.genotype(None, dirichlet).normal[2:4]) == [("sep_conv_3x3", 1), ("sep_conv_3x3", 0)]


def test_carry_over_keeps_kept_candidates_and_widens_them_by_copies():
    from fastnas.space.derive import prune_primitives
    from fastnas.space.widen import carry_over

    torch.manual_seed(0)
    prims = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
    old = SuperNet(channels=8, layers=3, primitives=prims, partial_channels=2, pool_bn=False)
    with torch.no_grad():
        old.alpha_normal.normal_()
        old.alpha_reduce.normal_()
    kept = prune_primitives(old, 2)
    new = SuperNet(channels=8, layers=3, primitives=prims, edge_primitives=kept, partial_channels=1, pool_bn=False)
    carry_over(old, new, torch.Generator().manual_seed(1))
    for kind, alpha in (("normal", new.alpha_normal), ("reduce", new.alpha_reduce)):
        old_alpha = getattr(old, f"alpha_{kind}")
        for e, ops in enumerate(kept[kind]):
            for k, op in enumerate(ops):
                assert alpha[e, k] == old_alpha[e, prims.index(op)]
    # a kept separable convolution: its first 4 (of now 8) channels are the old ones; the others copies
    cell = 0
    for e, ops in enumerate(kept["normal"]):
        if "sep_conv_3x3" in ops:
            w_new = new.cells[cell].edges[e].candidates[ops.index("sep_conv_3x3")][1].weight  # depthwise
            w_old = old.cells[cell].edges[e].candidates[prims.index("sep_conv_3x3")][1].weight
            assert w_new.shape[0] == 2 * w_old.shape[0]
            assert torch.equal(w_new[:4], w_old)
            assert all(any(torch.equal(w_new[c], w_old[s]) for s in range(4)) for c in range(4, 8))
            break
    else:
        pytest.fail("no edge kept sep_conv_3x3")
    assert torch.equal(new.stem[0].weight, old.stem[0].weight)


def test_continue_transition_carries_weights_alphas_momentum_and_the_cosine(tmp_path):
    s = tiny(tmp_path, preset="drnas", cells=[3, 3], channels=[8, 8], ops_kept=[7, 4], skip_dropout=[0.0, 0.0],
             epochs=[2, 2], warmup_epochs=[0, 0], partial_channels=[2, 1], batch_size=16)
    s.build_stage(0)
    gens = [torch.Generator().manual_seed(0)]
    for _ in range(2):
        s.step(gens, torch.zeros(4), arch=True)
    s.w_sched.step()
    s.w_sched.step()
    alpha, lr = s.net.alpha_normal.detach().clone(), s.w_opt.param_groups[0]["lr"]
    stem = s.net.stem[0].weight.detach().clone()
    momentum = s.w_opt.state[s.net.stem[0].weight]["momentum_buffer"].clone()
    s.epoch = 2
    s.finish_stage(0)
    assert s.stage == 1 and s.net.partial_channels == 1
    assert torch.equal(s.net.stem[0].weight, stem)
    assert torch.equal(s.w_opt.state[s.net.stem[0].weight]["momentum_buffer"], momentum)
    kept = s.edge_primitives["normal"]
    prims = config(preset="drnas").primitives
    cols = torch.tensor([[prims.index(op) for op in ops] for ops in kept])
    assert torch.equal(s.net.alpha_normal.detach(), alpha.gather(1, cols))
    assert s.a_opt.state[s.net.alpha_normal]["exp_avg"].shape == s.net.alpha_normal.shape
    # one cosine over both stages: it goes on from where stage 1 left it, not from the top
    assert s.w_sched.T_max == 4 and s.w_sched.last_epoch == 2 and s.w_opt.param_groups[0]["lr"] == lr < 0.1
    s.step(gens, torch.zeros(4), arch=True)  # and the carried network trains
