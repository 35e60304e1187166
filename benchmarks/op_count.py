"""Operator calls, host synchronizations and host time per step, per method preset and for the
retraining step (issue 20's CPU-side measure): on a GPU every operator call is at least one kernel
launch, and every ``aten::_local_scalar_dense`` (``.item()``, ``.tolist()``, ``float(t)``, ``bool(t)``)
is a host-device synchronization, so these counts are what a GPU step is bound by before any FLOP.

    python benchmarks/op_count.py [--presets darts pcdarts ...] [--retrain] [--out DIR]

One search iteration (a weight step and an architecture step, C=16, 8 cells, batch 32, the preset's
own mechanisms) runs under torch.profiler on the CPU after one unprofiled warm-up iteration; counted:
every ``aten::`` call (nested calls included: a launch-bound GPU pays for each kernel they launch),
the top-level ``aten::`` calls (what Python dispatches), the scalar reads (syncs on a GPU), the
``.tolist()``/``.numpy()`` reads (a CPU tensor's never reach the dispatcher: counted in one more
iteration; syncs on a GPU), the tensors built from Python numbers (``aten::lift_fresh``: host-to-device
copies on a GPU), and the wall time of the iteration against the time spent inside top-level ops (the
rest is Python and dispatch). Each preset runs in its own process.

The last columns count what the host still issues per step with ``--cuda-graphs`` (search and
``fastnas train``): the top-level calls outside the captured graph (drawing the batch, copying it into
the graph's inputs, the hard sampler's eager weight step) plus one per graph launch, counted against a
stand-in for torch.cuda's graphs after its warm-up and capture.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import harness  # noqa: E402  (first: this checkout on sys.path)

PRESETS = ("darts", "darts2", "pcdarts", "gdas", "drnas", "pdarts", "progressive")
SYNC_OPS = ("aten::_local_scalar_dense",)
# Python-level reads: `.tolist()` and `.numpy()` of a CPU tensor never reach the dispatcher (on a GPU they
# copy device-to-host, a sync), so they are counted where Python calls them, in a separate iteration.
PY_READS = ("tolist", "numpy")


def _python_reads(step) -> int:
    """Calls of `.tolist()` / `.numpy()` on tensors while `step()` runs (one more iteration, unprofiled)."""
    from torch.overrides import TorchFunctionMode

    class Reads(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in PY_READS:
                Reads.count += 1
            return func(*args, **(kwargs or {}))

    with Reads():
        step()
    return Reads.count


def _count(prof) -> dict:
    """Operator calls, top-level calls, scalar reads and top-level op time from a profile. fastnas'
    own ops (``fastnas::weighted_sum``, ``fastnas::gumbel_softmax``, their backward) count as one call
    each, their internal aten calls (allocating the output, argument views) as nested: on a GPU the op
    is one kernel launch."""
    ops = [e for e in prof.events() if e.name.startswith(("aten::", "fastnas::")) and not _in_capture(e)]
    events = [e for e in ops if e.name.startswith("aten::")]
    ids = {e.id for e in ops}
    top = [e for e in ops if e.cpu_parent is None or e.cpu_parent.id not in ids]
    return {"aten_calls": len(events), "top_level_calls": len(top),
            "syncs": sum(e.name in SYNC_OPS for e in events),
            "host_copies": sum(e.name == "aten::lift_fresh" for e in events),
            "op_time_s": sum(e.cpu_time_total for e in top) / 1e6}


CAPTURE = "fastnas::op_graph_capture"  # OpGraphs' capture of one op: one-off work, left out of the counts
BOOKKEEPING = "op_count::bookkeeping"  # this script's own calls inside a profile, left out of the counts
# A hard sampler's step runs a different path every step (a sep_conv edge is ~25 calls, a skip one): its
# counts are means over this many steps, and every column replays the same paths.
HARD_STEPS = 4


def _in_capture(event) -> bool:
    parent = event
    while parent is not None:
        if parent.name in (CAPTURE, BOOKKEEPING):
            return True
        parent = parent.cpu_parent
    return False


class Paths:
    """The sampler generator's state before each profiled step of the eager run, restored before the same
    step of each graphed run, so that every column counts the same sampled paths (the paths also depend
    on the alphas, which move by about 3e-4 per step: rarely a different argmax)."""

    def __init__(self, generator):
        self.generator, self.states = generator, []

    def steps(self, step, n: int, record: bool):
        import torch

        for i in range(n):
            with torch.profiler.record_function(BOOKKEEPING):
                if record:
                    self.states.append(self.generator.get_state())
                else:
                    self.generator.set_state(self.states[i])
            step()


def search_worker(name: str, batch: int, channels: int, cells: int) -> dict:
    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.search import PRESETS as P
    from fastnas.search import SearchConfig, Searcher

    preset = P[name]
    stages = len(preset.get("cells", [5, 11, 17]))
    ks = [k for k in preset.get("partial_channels", [1]) if channels % k == 0] or [1]
    cli = {"preset": name, "cells": [cells] * stages, "channels": [channels] * stages, "batch_size": batch,
           "warmup_epochs": [0] * stages, "epochs": [2] * stages, "embedded_size": 8 * batch,
           "plots": False, "derived_eval_images": 0, "partial_channels": [ks[0]] * stages, "device": "cpu"}
    cfg = cfglib.build_config(SearchConfig, P, cli, "progressive")
    with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
        s = Searcher(cfg, run, torch.device("cpu"))
        s.build_stage(0)
        s.net.train()
        gens = [torch.Generator(s.train_data.images.device).manual_seed(0) for _ in s.shards]
        sums = torch.zeros(4)
        s.step(gens, sums)  # warm-up: allocations, first-call costs
        n = HARD_STEPS if cfg.sampler == "gumbel-hard" else 1
        paths = Paths(s.sampler_generator)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            paths.steps(lambda: s.step(gens, sums), n, record=True)  # what the epoch loop repeats
        wall = (time.perf_counter() - t0) / n
        counts = {k: v / n if isinstance(v, float) else round(v / n) for k, v in _count(prof).items()}
        reads = _python_reads(lambda: s.step(gens, sums))
        graphed = _graphed_calls(s, cfg, gens, sums, paths, n)
        graphed.update(_op_graphed_calls(s, cfg, gens, sums, paths, n))
    return {"config": name, "sampler": cfg.sampler, **counts, "python_reads": reads, "wall_s": wall,
            "profiled_steps": n, **graphed}


class _CountingGraphs:
    """A stand-in for torch.cuda's graphs that counts what the host still issues under --cuda-graphs:
    the capture runs the step once (it is recorded, not counted) and a replay is one launch
    (``cudaGraphLaunch``), which the profile cannot see, so it is added by hand."""

    replays = 0

    def side_stream(self, fn):
        fn()

    def capture(self, fn, generators):
        fn()
        counter = self

        class Replay:
            def replay(self):
                counter.replays += 1

        return Replay()

    def synchronize(self):
        pass


def _graphed_calls(s, cfg, gens, sums, paths, n) -> dict:
    """Top-level calls per iteration outside the graph with --cuda-graphs (what a GPU still launches one
    by one: drawing the batch, copying it into the graph's inputs, the hard sampler's eager weight
    step), or why the preset's iteration is not graphed."""
    import torch

    from fastnas.search.graphed import graph_blocker

    blocker = graph_blocker(cfg, torch.device("cuda"), 1)
    if blocker is not None:
        return {"graphed_top_level_calls": None, "graph_scope": "not graphed: " + blocker.split(" (")[0]}
    return {"graphed_top_level_calls": _calls_outside_graph(s, lambda: s.step(gens, sums), paths=paths, n=n),
            "graph_scope": s.graph_scope}


class _CountingOpGraphs:
    """A stand-in for torch.cuda.make_graphed_callables that counts what the host issues per captured op
    under --op-graphs: the capture runs the op once (inside OpGraphs' ``CAPTURE`` range: left out);
    each call then copies its input into the static one (a real call, counted by the profile) and
    launches the forward graph, each backward copies the incoming gradient and launches the backward
    graph (the launches added by hand). The values are the capture's, stale: only the counts matter."""

    launches = 0

    def graphed_callable(self, fn, sample_args):
        import torch

        out = fn(*sample_args).detach().clone()  # inside OpGraphs' CAPTURE range: not counted
        grad_out = torch.empty_like(out)
        grads = [torch.zeros_like(a) for a in sample_args]
        counter = self

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                for s_, i in zip(sample_args, inputs, strict=True):
                    if s_.data_ptr() != i.data_ptr():
                        s_.copy_(i)
                counter.launches += 1
                return out.detach()

            @staticmethod
            def backward(ctx, grad):
                grad_out.copy_(grad)
                counter.launches += 1
                return tuple(g.detach() for g in grads)

        return Replay.apply


def _op_graphed_calls(s, cfg, gens, sums, paths, n) -> dict:
    """Top-level calls per iteration with --op-graphs (and --cuda-graphs where it applies): the hard
    sampler's eager steps with each sampled convolution replayed from its own graphs."""
    import torch

    from fastnas.search.graphed import graph_blocker, op_graph_blocker

    if op_graph_blocker(cfg, torch.device("cuda"), 1) is not None:
        return {"op_graphed_top_level_calls": None}
    backend = _CountingOpGraphs()
    s.use_op_graphs(backend=backend)
    step = lambda: s.step(gens, sums)  # noqa: E731
    if graph_blocker(cfg, torch.device("cuda"), 1) is None:
        calls = _calls_outside_graph(s, step, extra=lambda: backend.launches, paths=paths, n=n)
    else:
        for _ in range(2):
            step()
        before = backend.launches
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            paths.steps(step, n, record=False)
        calls = round((_count(prof)["top_level_calls"] + backend.launches - before) / n)
    s.op_graphs = None
    s.net.set_op_runner(None)
    return {"op_graphed_top_level_calls": calls}


def _calls_outside_graph(owner, step, extra=None, paths=None, n=1) -> int:
    """`owner` (a Searcher or Trainer) replays through a counting stand-in; after its eager warm-up
    steps and the capture, `n` more `step()`s are profiled (on `paths`' sampled paths): their top-level
    calls plus their graph launches, per step."""
    import torch

    backend = _CountingGraphs()
    owner.use_graphs(backend=backend)
    for _ in range(owner.graphed.WARMUP + 1):
        step()
    before, before_extra = backend.replays, extra() if extra else 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        if paths is None:
            for _ in range(n):
                step()
        else:
            paths.steps(step, n, record=False)
    launches = (extra() - before_extra) if extra else 0  # another stand-in's launches (--op-graphs)
    return round((_count(prof)["top_level_calls"] + backend.replays - before + launches) / n)


def retrain_worker(name: str, batch: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fastnas.space.genotype import PUBLISHED
    from fastnas.space.network import EvalNetwork

    torch.manual_seed(0)
    net = EvalNetwork(PUBLISHED["DARTS_V2"], 36, 20, 10, auxiliary=True, drop_path=0.2)
    # as fastnas train's Trainer builds them: foreach updates and clipping (what a GPU does by default)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, foreach=True)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    # "bf16": autocast as `--amp bf16` runs it; the casts it adds are counted like any other call
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("bf16"))

    def step():
        with amp:
            logits, aux = net(x)
            loss = F.cross_entropy(logits.float(), y) + 0.4 * F.cross_entropy(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0, foreach=True)
        opt.step()

    net.train()
    step()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - t0
    casts = sum(e.name == "aten::_to_copy" for e in prof.events())  # dtype casts (autocast's included)
    return {"config": name, "sampler": "-", **_count(prof), "python_reads": _python_reads(step),
            "casts": casts, "wall_s": wall, **_graphed_train_calls(batch, "bf16" if name.endswith("bf16") else "off")}


def _graphed_train_calls(batch: int, amp: str) -> dict:
    """Top-level calls per step outside the graph for ``fastnas train --cuda-graphs``'s step (the same
    network and recipe: drawing, augmenting and cutting out the batch, copying it into the graph's inputs,
    one launch)."""
    import tempfile

    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS, TrainConfig, Trainer

    cfg = cfglib.build_config(TrainConfig, PRESETS, {"genotype": "DARTS_V2", "device": "cpu", "batch_size": batch,
                                                     "embedded_size": 8 * batch, "amp": amp, "plots": False,
                                                     "export": False}, "darts")
    with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
        t = Trainer(cfg, run, torch.device("cpu"), published("DARTS_V2"))
        t.net.train()
        t.net.drop_path_prob = 0.2
        sums = torch.zeros(3)
        calls = _calls_outside_graph(t, lambda: t.step(sums))
    return {"graphed_top_level_calls": calls, "graph_scope": "training step"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="*", default=list(PRESETS), help="search presets (none: only retraining)")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=True,
                   help="also the DARTS_V2 retraining step (C=36, 20 cells, auxiliary head, batch 32), in fp32 "
                        "and under bf16 autocast")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        if a.worker.startswith("retrain DARTS_V2"):
            return harness.worker_reply(retrain_worker(a.worker, a.batch))
        return harness.worker_reply(search_worker(a.worker, a.batch, a.channels, a.cells))
    rows = []
    names = [*a.presets, *(["retrain DARTS_V2", "retrain DARTS_V2 bf16"] if a.retrain else [])]
    for name in names:
        row = harness.run_worker(__file__, name, ["--batch", a.batch, "--channels", a.channels, "--cells", a.cells])
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = render(rows, a.channels, a.cells, a.batch)
    print(table)
    harness.write_results(a.out, "op_count", rows, table)
    return 0


def render(rows: list[dict], channels: int, cells: int, batch: int) -> str:
    """The Markdown table of `rows` (what main writes beside the JSON)."""
    lines = [f"Operator calls per step on the CPU (search: one iteration = weight step + architecture step, C="
             f"{channels}, {cells} cells, batch {batch}; retraining: DARTS_V2, C=36, 20 cells, batch "
             f"{batch})", "",
             "| step | sampler | aten calls (nested incl.) | top-level calls | scalar reads (GPU syncs) "
             "| tolist/numpy reads (GPU syncs) | tensors from host numbers (H2D copies) | dtype casts "
             "| wall s | in top-level ops | outside ops (Python, dispatch) "
             "| top-level calls with --cuda-graphs (graph launches incl.) | what one replay covers "
             "| with --cuda-graphs --op-graphs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | | | | | | | | | |")
            continue
        outside = max(0.0, r["wall_s"] - r["op_time_s"])
        graphed = r.get("graphed_top_level_calls")
        per_op = r.get("op_graphed_top_level_calls")
        lines.append(f"| {r['config']} | {r['sampler']} | {r['aten_calls']:,} | {r['top_level_calls']:,} | "
                     f"{r['syncs']} | {r['python_reads']} | {r['host_copies']} | {r.get('casts', '-')} | "
                     f"{r['wall_s']:.2f} | "
                     f"{r['op_time_s']:.2f} | {outside:.2f} | {'-' if graphed is None else f'{graphed:,}'} | "
                     f"{r.get('graph_scope', '-')} | {'-' if per_op is None else f'{per_op:,}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
