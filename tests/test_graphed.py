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
from fastnas.search.graphed import StepGraph, graph_blocker


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


@pytest.mark.parametrize("preset", ["darts", "drnas"])
def test_replayed_steps_compute_what_eager_steps_compute(tmp_path, preset):
    eager, graphed = _searcher(tmp_path, "eager", preset), _searcher(tmp_path, "graphed", preset)
    backend = StandIn()
    graphed.graphed = StepGraph(graphed.iterate, log=lambda m: None, backend=backend)
    graphed.graphed.WARMUP = 1  # (2 on a GPU) one eager step, the capture, one replay: the same bookkeeping
    for epoch in range(2):
        torch.manual_seed(epoch)
        a = _epoch(eager, 3, epoch)
        torch.manual_seed(epoch)
        b = _epoch(graphed, 3, epoch)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    sa, sb = _state(eager), _state(graphed)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    # per epoch: 1 warm-up step on the side stream, one capture, 2 replays (the capture's own step included)
    g = graphed.graphed
    assert (backend.side, g.captures, g.replays, g.failed) == (2, 2, 4, None)
    assert backend.captured == 2


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
    graphed.graphed = StepGraph(graphed.iterate, log=logs.append,
                                backend=StandIn(RuntimeError("operation not permitted when stream is capturing")))
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
    ({"sampler": "gumbel-hard"}, "different path"),
    ({"amp": "fp16"}, "fp16"),
])
def test_what_cannot_be_graphed_says_why(overrides, reason):
    cfg = cfglib.build_config(SearchConfig, PRESETS, {"preset": "darts", **overrides}, "progressive")
    device = torch.device("cpu") if not overrides else torch.device("cuda")
    assert reason in graph_blocker(cfg, device, 1)
    darts = cfglib.build_config(SearchConfig, PRESETS, {"preset": "darts"}, "progressive")
    assert "processes" in graph_blocker(darts, torch.device("cuda"), 2)
    assert graph_blocker(darts, torch.device("cuda"), 1) is None


def test_cpu_search_logs_that_graphs_are_off(tmp_path):
    s = _searcher(tmp_path, "run", cuda_graphs=True)
    assert s.graphed is None
    assert "CUDA graphs: off: the search runs on cpu" in (tmp_path / "run" / "run.log").read_text()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["darts", "pcdarts", "darts2"])
def test_cuda_graph_replay_matches_eager_on_a_gpu(tmp_path, preset):
    """The real capture: parameters after two epochs of replayed steps equal the eager run's (skip
    dropout off, so both draw nothing; fp32 reductions may reorder, hence the tolerance)."""
    runs = {}
    for mode in ("eager", "graphs"):
        s = tiny_searcher(tmp_path / mode, preset, device="cuda", cells=3, channels=8, batch_size=16, seed=1,
                          ops_kept=[8], skip_dropout=[0.0], embedded_size=512, cuda_graphs=mode == "graphs")
        sums = []
        for epoch in range(2):
            gens = [torch.Generator("cuda").manual_seed(100 + epoch)]
            total = torch.zeros(4, device="cuda")
            if s.graphed is not None:
                s.graphed.reset()
            for _ in range(6):
                s.step(gens, total)
            sums.append(total.cpu())
        runs[mode] = (s, sums)
    g = runs["graphs"][0].graphed
    assert g is not None and g.failed is None and g.captures == 2 and g.replays == 8, (g and g.failed)
    for a, b in zip(runs["eager"][1], runs["graphs"][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    ea, gb = runs["eager"][0].net.state_dict(), runs["graphs"][0].net.state_dict()
    for k in ea:
        torch.testing.assert_close(gb[k].float(), ea[k].float(), rtol=1e-3, atol=1e-4, msg=k)
