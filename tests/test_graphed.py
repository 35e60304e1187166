"""Search iterations replayed as CUDA graphs (``--cuda-graphs``, fastnas.search.graphed).

On a CPU the bookkeeping runs against a stand-in for torch.cuda's graphs whose "capture" records the
iteration on the static inputs and whose "replay" runs it again: warm-up count, one capture per epoch,
batches copied into the static inputs, a new graph when the batch shape or the epoch changes, and a
failed capture that loses no update. What only a GPU can show -- that the captured kernels compute what
the eager step computes -- is the `cuda` test at the end (run by benchmarks/gpu_check.sh)."""

import pytest
import torch
from helpers import tiny_searcher

from fastnas.infra import config as cfglib
from fastnas.search import PRESETS, SearchConfig
from fastnas.search.graphed import StepGraph, graph_blocker, graph_scope


class Recorded:
    """A captured step as a stand-in: replay() runs the recorded call again (on the static inputs)."""

    def __init__(self, fn):
        self.replay = fn


class StandIn:
    def __init__(self, fail: Exception | None = None):
        self.fail, self.side, self.captured = fail, 0, 0

    def side_stream(self, fn):
        self.side += 1
        fn()

    def capture(self, fn, generators):
        if self.fail is not None:
            raise self.fail
        self.captured += 1
        return Recorded(fn)  # a real capture runs nothing either: the caller replays it at once

    def synchronize(self):
        pass


def _searcher(tmp_path, name, preset="darts", **extra):
    return tiny_searcher(tmp_path / name, preset, seed=3, **extra)


def _epoch(s, steps, epoch, arch=True):
    gens = [torch.Generator().manual_seed(100 + epoch)]
    sums = torch.zeros(4)
    if s.graphed is not None:
        s.graphed.reset()  # as train_epoch does
    for _ in range(steps):
        s.step(gens, sums, arch=arch)
    return sums


def _state(s):
    return {k: v.detach().clone() for k, v in s.net.state_dict().items()}


def _same_epochs(eager, graphed, epochs=2, steps=3):
    """`epochs` epochs of each searcher from the same global seeds: the metric sums and every parameter
    and buffer equal to the bit."""
    for epoch in range(epochs):
        torch.manual_seed(epoch)
        a = _epoch(eager, steps, epoch)
        torch.manual_seed(epoch)
        b = _epoch(graphed, steps, epoch)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    sa, sb = _state(eager), _state(graphed)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    return sa


# darts in the slow tier: drnas exercises the same bookkeeping plus a sampler drawing inside the graph
@pytest.mark.parametrize("preset", [pytest.param("darts", marks=pytest.mark.slow), "drnas"])
def test_replayed_steps_compute_what_eager_steps_compute(tmp_path, preset):
    eager, graphed = _searcher(tmp_path, "eager", preset), _searcher(tmp_path, "graphed", preset)
    backend = StandIn()
    graphed.use_graphs(backend=backend)
    graphed.graphed.WARMUP = 1  # (2 on a GPU) one eager step, the capture, one replay: the same bookkeeping
    _same_epochs(eager, graphed)
    # per epoch: 1 warm-up step on the side stream, one capture, 2 replays (the capture's own step included)
    g = graphed.graphed
    assert (backend.side, g.captures, g.replays, g.failed) == (2, 2, 4, None)
    assert backend.captured == 2


def test_static_hard_architecture_step_has_score_alls_value_and_gradient():
    """The hard sampler's architecture step in its static form (every candidate under autograd, as a
    soft sample weighted by the one-hot) against the eager form (score_all: the unsampled candidates
    run without autograd): the same logits and the same architecture gradient. Skip dropout on, so the
    unsampled skips draw in both (the same draws, from the same seed)."""
    import torch.nn.functional as F

    from fastnas import ops
    from fastnas.space.sampler import Sample, make_sampler
    from fastnas.space.supernet import SuperNet

    torch.manual_seed(0)
    net = SuperNet(channels=4, layers=3, num_classes=10, skip_dropout=0.3).train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    sampler = make_sampler("gumbel-hard", tau=0.7)
    noise = {c: -torch.log(-torch.log(torch.rand(a.shape))) for c, a in net.named_arch_parameters().items()}
    results = []
    for static in (False, True):
        drawn = {}
        for c, a in net.named_arch_parameters().items():
            w, index = ops.gumbel_softmax(a, 0.7, True, noise=noise[c])
            drawn[c] = Sample(w, index, hard=True, index_list=None if static else index.tolist())
        samples = {c: sampler.for_arch_step(d, static=static) for c, d in drawn.items()}
        assert all(s.hard != static for s in samples.values())
        torch.manual_seed(1)
        logits = net(x, samples)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), net.arch_parameters())
        results.append((logits.detach(), grads))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for a, b in zip(g0, g1, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # the zeros added change no bit
    with pytest.raises(ValueError, match="no static form"):
        make_sampler("gumbel-hard", straight_through="sampled").for_arch_step(drawn["normal"], static=True)


@pytest.mark.parametrize("arch_first", [False, True])
def test_hard_sampler_replays_its_architecture_step_only(tmp_path, arch_first):
    """The default method's sampler under --cuda-graphs (stand-in on the CPU): the weight step stays
    eager on its sampled path, the architecture step (a fresh sample, every candidate) is captured and
    replayed; parameters and metric sums are the eager run's to the bit."""
    opts = {"arch_first": arch_first, "skip_dropout": [0.2] * 3}
    eager = _searcher(tmp_path, "eager", "progressive", **opts)
    graphed = _searcher(tmp_path, "graphed", "progressive", **opts)
    backend = StandIn()
    graphed.use_graphs(backend=backend)
    assert graphed.graph_scope == "architecture step"
    graphed.graphed.WARMUP = 1
    reads = []
    real = graphed.net.sample

    def sample(sampler, host_index=True):
        reads.append(host_index)
        return real(sampler, host_index)

    graphed.net.sample = sample
    sa = _same_epochs(eager, graphed)
    assert not torch.equal(sa["alpha_normal"], _searcher(tmp_path, "fresh", "progressive").net.alpha_normal)
    g = graphed.graphed
    assert (backend.side, g.captures, g.replays, g.failed) == (2, 2, 4, None)
    # per step: the weight step's sample with its indices read back, the architecture step's without
    assert reads == [True, False] * 6 if not arch_first else reads == [False, True] * 6


def _trainer(tmp_path, name, device="cpu", **extra):
    from fastnas.infra.rundir import RunDir
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS as TRAIN_PRESETS
    from fastnas.train import TrainConfig, Trainer

    cli = {"genotype": "DARTS_V2", "preset": "smoke", "device": device, "epochs": 3, "max_steps": 3,
           "plots": False, "export": False, "cutout": 8, "layers": 3, "channels": 4, "workers": 1,
           "drop_path": 0.3, "batch_size": 16, **extra}
    cfg = cfglib.build_config(TrainConfig, TRAIN_PRESETS, cli, "darts")
    torch.manual_seed(0)
    return Trainer(cfg, RunDir(tmp_path / name).__enter__(), torch.device(device), published("DARTS_V2"))


def _train_epochs(t, epochs):
    rows = []
    for epoch in range(epochs):
        torch.manual_seed(10 + epoch)  # augmentation, cutout and drop-path draw from the default generator
        rows.append(t.train_epoch())
        t.epoch += 1
    return rows


def test_retraining_steps_replayed_compute_what_eager_steps_compute(tmp_path):
    """The retraining step under --cuda-graphs (stand-in on the CPU): auxiliary head, drop-path (its rate
    a buffer the graph reads, 0 in the first epoch), cutout, gradient clipping, SGD with the cosine's
    new rate each epoch: the same losses, accuracies and weights as eager steps, to the bit."""
    eager, graphed = _trainer(tmp_path, "eager"), _trainer(tmp_path, "graphed")
    backend = StandIn()
    graphed.use_graphs(backend=backend)
    graphed.graphed.WARMUP = 1
    a, b = _train_epochs(eager, 3), _train_epochs(graphed, 3)
    for ra, rb in zip(a, b, strict=True):
        assert (rb["train_loss"], rb["train_acc"], rb["lr"]) == (ra["train_loss"], ra["train_acc"], ra["lr"])
    assert a[2]["drop_path"] > 0 and a[0]["lr"] > a[2]["lr"]
    sa, sb = eager.net.state_dict(), graphed.net.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    g = graphed.graphed
    assert (backend.side, g.captures, g.replays, g.failed) == (3, 3, 6, None)


def test_retraining_graphs_say_why_not_and_refuse_compile(tmp_path):
    from fastnas.infra.errors import ConfigError
    from fastnas.train import PRESETS as TRAIN_PRESETS
    from fastnas.train import TrainConfig
    from fastnas.train.trainer import graph_blocker as train_blocker

    t = _trainer(tmp_path, "run", cuda_graphs=True)
    assert t.graphed is None
    assert "CUDA graphs: off: the training runs on cpu" in (tmp_path / "run" / "run.log").read_text()
    cfg = cfglib.build_config(TrainConfig, TRAIN_PRESETS, {"genotype": "DARTS_V2", "amp": "fp16"}, "darts")
    assert "fp16" in train_blocker(cfg, torch.device("cuda"), 1)
    with pytest.raises(ConfigError, match="reduce-overhead"):
        cfglib.build_config(TrainConfig, TRAIN_PRESETS, {"genotype": "DARTS_V2", "cuda_graphs": True,
                                                         "compile": True}, "darts")


def test_new_graph_when_the_batch_shape_or_the_warm_up_flag_changes(tmp_path):
    s = _searcher(tmp_path, "run")
    backend = StandIn()
    s.graphed = StepGraph(s.iterate, log=lambda m: None, backend=backend)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    sums = torch.zeros(4)
    for _ in range(4):
        s.graphed([(x, y)], [(x, y)], sums, True)
    assert (backend.side, backend.captured, s.graphed.replays) == (2, 1, 2)
    for _ in range(3):  # weights only (the warm-up epochs): another graph
        s.graphed([(x, y)], None, sums, False)
    assert (backend.side, backend.captured) == (4, 2)
    s.graphed([(x[:4], y[:4])], None, sums, False)  # a smaller batch: warm-up again
    assert (backend.side, backend.captured) == (5, 2)


def test_replay_reads_the_new_batch_not_the_captured_one(tmp_path):
    seen = []

    def iterate(train, valid, sums, arch):
        seen.append(train[0][0].clone())
        sums += train[0][0].sum()

    backend = StandIn()
    step = StepGraph(iterate, log=lambda m: None, backend=backend)
    sums = torch.zeros(())
    batches = [torch.full((2, 3), float(i)) for i in range(5)]
    for b in batches:
        step([(b, torch.zeros(2, dtype=torch.long))], None, sums, False)
    for i, b in enumerate(batches):
        torch.testing.assert_close(seen[i], b)
    assert float(sums) == sum(6.0 * i for i in range(5))


def test_a_failed_capture_logs_why_and_loses_no_update(tmp_path):
    eager, graphed = _searcher(tmp_path, "eager"), _searcher(tmp_path, "graphed")
    logs = []
    graphed.use_graphs(backend=StandIn(RuntimeError("operation not permitted when stream is capturing")))
    graphed.graphed.log = logs.append
    graphed.graphed.WARMUP = 0  # the first step is the failed capture, the second runs eagerly after it
    torch.manual_seed(0)
    a = _epoch(eager, 2, 0)
    torch.manual_seed(0)
    b = _epoch(graphed, 2, 0)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    after = _state(graphed)
    for k, v in _state(eager).items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, msg=k)
    assert graphed.graphed.failed.startswith("RuntimeError: operation not permitted")
    assert len(logs) == 1 and "eager steps" in logs[0]


@pytest.mark.parametrize("overrides,reason", [
    ({}, "not a GPU"),
    ({"preset": "gdas"}, "GDAS' estimator"),
    ({"preset": "progressive", "arch_resample": False}, "reuses the weight step's sample"),
    ({"preset": "progressive", "arch_order": 2}, "second order"),
    ({"amp": "fp16"}, "fp16"),
])
def test_what_cannot_be_graphed_says_why(overrides, reason):
    cfg = cfglib.build_config(SearchConfig, PRESETS, {"preset": "darts", **overrides}, "progressive")
    device = torch.device("cpu") if not overrides else torch.device("cuda")
    assert reason in graph_blocker(cfg, device, 1)
    darts = cfglib.build_config(SearchConfig, PRESETS, {"preset": "darts"}, "progressive")
    assert "processes" in graph_blocker(darts, torch.device("cuda"), 2)
    assert graph_blocker(darts, torch.device("cuda"), 1) is None
    assert graph_scope(darts) == "iteration"
    for hard in ({"preset": "progressive"}, {"preset": "progressive", "arch_resample": False, "arch_first": True}):
        cfg = cfglib.build_config(SearchConfig, PRESETS, hard, "progressive")
        assert graph_blocker(cfg, torch.device("cuda"), 1) is None and graph_scope(cfg) == "architecture step"


def test_cpu_search_logs_that_graphs_are_off(tmp_path):
    s = _searcher(tmp_path, "run", cuda_graphs=True)
    assert s.graphed is None
    assert "CUDA graphs: off: the search runs on cpu" in (tmp_path / "run" / "run.log").read_text()


class OpStandIn:
    """torch.cuda.make_graphed_callables as a stand-in on the CPU, with its contract: warm-up runs (which
    touch the module's BatchNorm statistics), the input copied into a static input unless it is one, one
    autograd node whose output and gradients are static buffers rewritten by every call (what a replay
    does), the parameters' gradients handed to autograd as the graph's outputs."""

    def __init__(self, fail: Exception | None = None):
        self.fail, self.captured = fail, 0

    def graphed_callable(self, fn, sample_args):
        from torch.autograd.function import once_differentiable

        from fastnas.infra.graphs import OpGraphs

        if self.fail is not None:
            raise self.fail
        for _ in range(OpGraphs.WARMUP):
            out = fn(*sample_args)
            torch.autograd.grad(out, [a for a in sample_args if a.requires_grad], torch.ones_like(out))
        self.captured += 1
        static, state = sample_args, {}

        class Graphed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                for s_, i in zip(static, inputs, strict=True):
                    if s_.data_ptr() != i.data_ptr():
                        s_.copy_(i)
                with torch.enable_grad():
                    leaf = static[0].detach().requires_grad_()
                    out = fn(leaf, *static[1:])
                state["graph"] = (leaf, out)
                state.setdefault("out", torch.empty_like(out)).copy_(out.detach())
                return state["out"].detach()

            @staticmethod
            @once_differentiable
            def backward(ctx, grad):
                leaf, out = state["graph"]
                grads = torch.autograd.grad(out, [leaf, *static[1:]], grad)
                buffers = state.setdefault("grads", [torch.empty_like(g) for g in grads])
                for b, g in zip(buffers, grads, strict=True):
                    b.copy_(g)
                return tuple(b.detach() for b in buffers)

        return Graphed.apply


@pytest.mark.parametrize("preset, arch_graphs, extra", [
    # progressive in the slow tier: the gdas case runs per-op graphs in both eager steps (the weight step's
    # and the architecture step's) in the default tier
    pytest.param("progressive", False, {}, marks=pytest.mark.slow),
    pytest.param("progressive", True, {}, marks=pytest.mark.slow), ("gdas", False, {}),
    pytest.param("progressive", False, {"arch_order": 2, "arch_first": True}, marks=pytest.mark.slow),
])
def test_per_op_graphs_compute_what_eager_weight_steps_compute(tmp_path, preset, arch_graphs, extra):
    """--op-graphs (stand-in on the CPU): the hard sampler's weight step (and its eager first-order
    architecture step) runs each sampled convolution through its captured graphs; two epochs end with the
    eager run's weights, BatchNorm statistics and metric sums to the bit: the default method alone and
    with its architecture step replayed (--cuda-graphs), GDAS' estimator (only the sampled op in both
    steps), and DARTS' second order, whose unrolled weights the architecture step's ops must see."""
    stages = len(PRESETS[preset].get("cells", [5, 11, 17]))
    opts = {"skip_dropout": [0.2] * stages, "cells": 3, **extra}
    eager = _searcher(tmp_path, "eager", preset, **opts)
    graphed = _searcher(tmp_path, "graphed", preset, **opts)
    backend = OpStandIn()
    graphed.use_op_graphs(backend=backend)
    if arch_graphs:
        graphed.use_graphs(backend=StandIn())
        graphed.graphed.WARMUP = 1
    for epoch in range(2):
        torch.manual_seed(epoch)
        a = _epoch(eager, 3, epoch)
        torch.manual_seed(epoch)
        b = _epoch(graphed, 3, epoch)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    sa, sb = _state(eager), _state(graphed)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    og = graphed.op_graphs
    assert og.failed is None and og.captures == backend.captured > 0 and og.replays > og.captures
    assert not og.active  # only inside the eager steps
    # every candidate with parameters captured before the first step, none later
    from fastnas.space.supernet import MixedOp

    ops = [op for m in graphed.net.modules() if isinstance(m, MixedOp) for op in m.candidates]
    assert og.captures == sum(1 for op in ops if list(op.parameters()))
    assert f"captured {og.captures} candidate ops" in (tmp_path / "graphed" / "run.log").read_text()
    # every replayed op is a candidate with parameters; pools and skips ran eagerly
    for module, key, _, params in og.graphs.values():
        assert (key is None) == (not params) and (not params) == (not list(module.parameters()))


@pytest.mark.parametrize("arch_order", [1, 2])
def test_per_op_graphs_are_on_in_the_eager_steps_only(tmp_path, arch_order):
    """Which forward passes go through the captured ops: the weight step, and the architecture step when
    it runs eagerly in first order; never DARTS' second order (its unrolled weights are not the ones a
    graph captured) nor a replayed architecture step (captured around the modules themselves)."""
    s = _searcher(tmp_path, "run", "progressive", arch_order=arch_order, arch_first=arch_order == 2)
    s.use_op_graphs(backend=OpStandIn())
    seen = {}
    for name in ("weight_step", "arch_step"):
        real = getattr(s, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name] = s.op_graphs.active
            return _real(*args, **kwargs)

        setattr(s, name, spy)
    s.step([torch.Generator().manual_seed(0)], torch.zeros(4))
    assert seen == {"weight_step": False, "arch_step": arch_order == 1}  # weight_step turns it on inside
    assert s.op_graphs.replays > 0 and not s.op_graphs.active


def test_per_op_graphs_keep_buffers_layouts_and_modes_apart():
    """One op through OpGraphs: the capture's warm-up leaves the running statistics as they were (the
    step updates them once, as eagerly); another input layout, evaluation mode, no autograd or an
    inactive runner run the module itself; a failed capture is logged and the op runs eagerly."""
    from fastnas.infra.graphs import OpGraphs
    from fastnas.space.primitives import build_op

    torch.manual_seed(0)
    op, twin = build_op("sep_conv_3x3", 4, 1, affine=False), build_op("sep_conv_3x3", 4, 1, affine=False)
    twin.load_state_dict(op.state_dict())
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    graphs = OpGraphs(backend=OpStandIn())
    torch.testing.assert_close(graphs(op, x), twin(x), rtol=0, atol=0)  # inactive: the module itself
    assert graphs.captures == 0
    graphs.active = True
    y, y_ref = graphs(op, x), twin(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for (name, b), b_ref in zip(op.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, rtol=0, atol=0, msg=name)  # one update, not the warm-up's three
    gx, *gw = torch.autograd.grad(y.square().sum(), [x, *op.parameters()])
    gx_ref, *gw_ref = torch.autograd.grad(y_ref.square().sum(), [x, *twin.parameters()])
    torch.testing.assert_close(gx, gx_ref)
    for a, b in zip(gw, gw_ref, strict=True):
        torch.testing.assert_close(a, b)
    assert (graphs.captures, graphs.replays) == (1, 1)
    graphs(op, torch.randn(3, 4, 8, 8, requires_grad=True))  # another batch size: eager
    with torch.no_grad():
        graphs(op, x)
    op.eval()
    graphs(op, x)
    assert (graphs.captures, graphs.replays, graphs.eager) == (1, 1, 1)
    pool = torch.nn.MaxPool2d(3, 1, 1)
    graphs(pool, x)
    assert graphs.captures == 1  # nothing to gain: no parameters, no graph

    logs = []
    failing = OpGraphs(log=logs.append, backend=OpStandIn(fail=RuntimeError("operation not permitted when "
                                                                           "stream is capturing")))
    failing.active = True
    op.train()
    before = [b.clone() for b in op.buffers()]
    torch.testing.assert_close(failing(op, x), twin.train()(x))
    assert failing.failed.startswith("RuntimeError: operation not permitted") and "go on eagerly" in logs[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, op.buffers(), strict=True))  # the eager run's update
    failing(op, x)
    assert len(logs) == 1 and failing.captures == 0


@pytest.mark.parametrize("overrides, reason", [
    ({"preset": "darts"}, "runs every candidate in every step"),
    ({"preset": "progressive"}, "runs on cpu"),
])
def test_per_op_graphs_say_why_not(tmp_path, overrides, reason):
    from fastnas.search.graphed import op_graph_blocker

    cfg = cfglib.build_config(SearchConfig, PRESETS, {**overrides, "op_graphs": True}, "progressive")
    assert reason in op_graph_blocker(cfg, torch.device("cpu"), 1)
    assert op_graph_blocker(cfg, torch.device("cuda"), 1) is None or overrides["preset"] == "darts"
    assert "several processes" in op_graph_blocker(
        cfglib.build_config(SearchConfig, PRESETS, {"op_graphs": True}, "progressive"), torch.device("cuda"), 2)
    # shards accumulate into .grad, which would alias the graph's gradient buffer that the next shard rewrites
    assert "--accumulate" in op_graph_blocker(
        cfglib.build_config(SearchConfig, PRESETS, {"op_graphs": True, "accumulate": 2}, "progressive"),
        torch.device("cuda"), 1)
    s = _searcher(tmp_path, "run", "progressive", op_graphs=True)
    assert s.op_graphs is None
    assert "CUDA graphs per op: off: the search runs on cpu" in (tmp_path / "run" / "run.log").read_text()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["darts", "pcdarts", "darts2", "progressive"])
def test_cuda_graph_replay_matches_eager_on_a_gpu(tmp_path, preset):
    """The real capture: parameters after two epochs of replayed steps equal the eager run's (skip
    dropout off; fp32 reductions may reorder, hence the tolerance). progressive: the hard sampler's
    architecture step replayed, its weight step eager; both draw their samples from the sampler's
    generator, which the graph advances as eager draws do, so both runs take the same paths."""
    runs = _eager_and_graphed_runs(tmp_path, preset, {"cuda_graphs": True})
    g = runs["graphs"].graphed
    assert g is not None and g.failed is None and g.captures == 2 and g.replays == 8, (g and g.failed)


def _eager_and_graphed_runs(tmp_path, preset, graph_options, device="cuda"):
    """Two epochs of 6 steps of a tiny `preset` search, eagerly and with `graph_options`, from the same
    seeds (skip dropout off): the metric sums and every parameter and buffer agree within fp32
    reordering. The two searchers, by mode."""
    runs, sums = {}, {}
    stages = len(PRESETS[preset].get("cells", [5, 11, 17]))
    for mode in ("eager", "graphs"):
        s = tiny_searcher(tmp_path / mode, preset, device=device, cells=3, channels=8, batch_size=16, seed=1,
                          skip_dropout=[0.0] * stages, embedded_size=512, **({} if stages > 1 else {"ops_kept": [8]}),
                          **(graph_options if mode == "graphs" else {}))
        sums[mode] = []
        for epoch in range(2):
            gens = [torch.Generator(device).manual_seed(100 + epoch)]
            total = torch.zeros(4, device=device)
            if s.graphed is not None:
                s.graphed.reset()
            for _ in range(6):
                s.step(gens, total)
            sums[mode].append(total.cpu())
        runs[mode] = s
    for a, b in zip(sums["eager"], sums["graphs"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    ea, gb = runs["eager"].net.state_dict(), runs["graphs"].net.state_dict()
    for k in ea:
        torch.testing.assert_close(gb[k].float(), ea[k].float(), rtol=1e-3, atol=1e-4, msg=k)
    return runs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_retraining_matches_eager_on_a_gpu(tmp_path):
    """The real capture of the retraining step: three epochs (drop-path on from the second) of replayed
    steps give the eager run's losses and weights within fp32 reordering."""
    runs = {}
    for mode in ("eager", "graphs"):
        t = _trainer(tmp_path, mode, device="cuda", max_steps=6, cuda_graphs=mode == "graphs")
        runs[mode] = (t, _train_epochs(t, 3))
    g = runs["graphs"][0].graphed
    assert g is not None and g.failed is None and g.captures == 3 and g.replays == 12, (g and g.failed)
    for ra, rb in zip(runs["eager"][1], runs["graphs"][1], strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-3 * max(1.0, abs(ra["train_loss"]))
    ea, gb = runs["eager"][0].net.state_dict(), runs["graphs"][0].net.state_dict()
    for k in ea:
        torch.testing.assert_close(gb[k].float(), ea[k].float(), rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch_graphs", [False, True])
def test_per_op_graphs_match_eager_on_a_gpu(tmp_path, arch_graphs):
    """The real per-op capture (torch.cuda.make_graphed_callables) in the hard sampler's weight step,
    alone and with the architecture step replayed: two epochs give the eager run's weights within fp32
    reordering, and the run took the same paths (the samples come from the sampler's generator)."""
    runs = _eager_and_graphed_runs(tmp_path, "progressive", {"op_graphs": True, "cuda_graphs": arch_graphs})
    og = runs["graphs"].op_graphs
    assert og is not None and og.failed is None and og.captures > 0 and og.replays > og.captures, (og and og.failed)
