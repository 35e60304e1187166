"""One training step replayed as a CUDA graph (:class:`StepGraph`), for the search's and the
retraining's ``--cuda-graphs``; nothing here knows what the step computes.

A step of these networks is thousands of operator calls, each a kernel launch of a few microseconds on
a GPU, while its arithmetic takes a few milliseconds: the step is bound by launches and Python. Where a
step is static (the same kernels every time, nothing read back to the host) it is captured once with
:class:`torch.cuda.CUDAGraph` and replayed with one launch (the "whole network capture" recipe of
PyTorch's CUDA-graph notes: warm up on a side stream, capture, copy each new batch into the static
inputs, replay).

What a graph bakes in as a constant must not change while it is replayed: the caller calls
:meth:`StepGraph.reset` whenever a learning rate, temperature or dropout rate changes (each epoch),
and the step is captured afresh after ``WARMUP`` eager steps (allocations, cuDNN's algorithm choice,
optimizer state). Random draws inside the graph (from torch's default generator, and from any
generator registered with it) advance on every replay as they do eagerly. A capture that fails turns
graphs off for the rest of the run, with the error logged; the failed capture ran nothing, so the step
it was meant for is taken eagerly and no update is lost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def runtime_blocker(device: torch.device, amp: str, world_size: int, run: str) -> str | None:
    """Why a `run` ("search", "training") on `device` cannot replay its steps as CUDA graphs, whatever
    the step computes (None: it can)."""
    if device.type != "cuda":
        return f"the {run} runs on {device.type}, not a GPU"
    if amp == "fp16":
        return "fp16's loss scaler reads its inf check back to the host every step"
    if world_size > 1:
        return "several processes (DDP's gradient buckets are not captured)"
    if not hasattr(torch.cuda, "CUDAGraph"):
        return f"torch {torch.__version__} has no torch.cuda.CUDAGraph"
    return None


def _copy_into(static: Batches, batches: Batches) -> None:
    for (xs, ys), (x, y) in zip(static, batches, strict=True):
        xs.copy_(x, non_blocking=True)
        ys.copy_(y, non_blocking=True)


def _shapes(batches: Batches | None) -> tuple:
    return () if batches is None else tuple((tuple(x.shape), x.stride(), tuple(y.shape)) for x, y in batches)


class CudaGraphs:
    """How :class:`StepGraph` warms up, captures and waits on a GPU (torch.cuda). A test stands in an
    object with the same three methods to run the bookkeeping on a CPU."""

    def side_stream(self, fn: Callable[[], None]) -> None:
        # PyTorch's CUDA-graph notes: warm up on a side stream, as the capture will run on one
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)

    def capture(self, fn: Callable[[], None], generators) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        for g in generators:  # the sampler's own generator advances on every replay
            graph.register_generator_state(g)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            fn()
        return graph

    def synchronize(self) -> None:
        torch.cuda.synchronize()


class StepGraph:
    """Runs ``iterate(train_batches, valid_batches, sums, arch)`` -- one step on batches already drawn
    (a search iteration: training and held-out batches; a retraining step: ``valid_batches`` None) --
    eagerly for ``WARMUP`` steps after each :meth:`reset`, then captures it once and replays it for
    every later step with the same batch shapes, `arch` flag and `sums` tensor."""

    WARMUP = 2

    def __init__(self, iterate: Callable, generators=(), log: Callable[[str], None] = print, backend=None):
        self.iterate = iterate
        self.generators = [g for g in generators if g is not None and g.device.type == "cuda"]
        self.log = log
        self.backend = backend if backend is not None else CudaGraphs()
        self.failed: str | None = None  # the capture error that turned graphs off for this run
        self.captures = self.replays = 0
        self.reset()

    def reset(self) -> None:
        """Forget the graph: what it baked in (learning rate, temperature, dropout rates, the epoch's
        metric sums) is about to change."""
        self.graph = None
        self.static: tuple[Batches, Batches | None] | None = None
        self.key = None
        self.warm = 0

    def __call__(self, train_batches: Batches, valid_batches: Batches | None, sums: torch.Tensor, arch: bool) -> None:
        if self.failed is not None:
            self.iterate(train_batches, valid_batches, sums, arch)
            return
        key = (arch, _shapes(train_batches), _shapes(valid_batches), sums.data_ptr())
        if key != self.key:
            self.reset()
            self.key = key
        if self.graph is not None:
            _copy_into(self.static[0], train_batches)
            if valid_batches is not None:
                _copy_into(self.static[1], valid_batches)
            self.graph.replay()
            self.replays += 1
            return
        if self.warm < self.WARMUP:
            self.backend.side_stream(lambda: self.iterate(train_batches, valid_batches, sums, arch))
            self.warm += 1
            return
        static_train = [(x.clone(), y.clone()) for x, y in train_batches]
        static_valid = None if valid_batches is None else [(x.clone(), y.clone()) for x, y in valid_batches]
        try:
            graph = self.backend.capture(lambda: self.iterate(static_train, static_valid, sums, arch), self.generators)
        except Exception as exc:  # noqa: BLE001 -- any capture error: say why, go on eagerly
            text = str(exc).strip()
            self.failed = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            self.reset()
            self.log(f"warning: CUDA graph capture failed, the run goes on with eager steps ({self.failed})")
            self.backend.synchronize()
            self.iterate(train_batches, valid_batches, sums, arch)  # the failed capture ran nothing
            return
        self.graph, self.static = graph, (static_train, static_valid)
        self.captures += 1
        self.graph.replay()  # the capture ran nothing: this step's update happens here
        self.replays += 1
