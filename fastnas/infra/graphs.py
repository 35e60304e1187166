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
from contextlib import contextmanager

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


def _describe(exc: Exception) -> str:
    """A capture error in one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@contextmanager
def kept_buffers(module: torch.nn.Module):
    """Undo at the end of the block whatever it wrote into `module`'s buffers (BatchNorm's running
    statistics): a capture's warm-up runs are not the run's steps."""
    buffers = list(module.buffers())
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in zip(buffers, saved, strict=True):
                b.copy_(v)


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

    def graphed_callable(self, fn: Callable, sample_args: tuple) -> Callable:
        """`fn`'s forward and backward captured as two graphs (torch.cuda.make_graphed_callables: one
        autograd node that replays them; outputs and gradients live in static buffers)."""
        return torch.cuda.make_graphed_callables(fn, sample_args, num_warmup_iters=OpGraphs.WARMUP)


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
            self.failed = _describe(exc)
            self.reset()
            self.log(f"warning: CUDA graph capture failed, the run goes on with eager steps ({self.failed})")
            self.backend.synchronize()
            self.iterate(train_batches, valid_batches, sums, arch)  # the failed capture ran nothing
            return
        self.graph, self.static = graph, (static_train, static_valid)
        self.captures += 1
        self.graph.replay()  # the capture ran nothing: this step's update happens here
        self.replays += 1


def _op_key(x: torch.Tensor) -> tuple:
    """What a captured op is specialised to: its input's layout and the autocast state it ran under."""
    dev = x.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    return tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad, amp


class OpGraphs:
    """Single modules, each replayed as its own pair of CUDA graphs (forward, backward), for a step whose
    path changes every time: the hard sampler's weight step runs one op per edge, a different set every
    step, so no graph of the whole step can be replayed; each candidate op is static on its own. Call it
    as ``op_graphs(module, x)`` in place of ``module(x)``: while :attr:`active` and in training mode with
    autograd on, a module with parameters (a convolution; a pooling or identity is one or two launches
    and gains nothing) is captured the first time it runs (PyTorch's "partial-network capture":
    torch.cuda.make_graphed_callables, warm-up on a side stream, capture, one autograd node replaying the
    forward graph and, in the backward pass, the backward graph) and replayed from then on for inputs of
    the layout it was captured with; anything else runs the module. A sep_conv's ~8 forward and ~16
    backward launches become two copies and two replays.

    What the capture's warm-up runs changes nothing: the module's buffers (BatchNorm's running
    statistics) are restored after it, so each step updates them once, as eagerly. A replay writes the
    same output and gradient buffers every time, so a captured module may run once per forward and
    backward pass (one op per edge per step: the hard weight step). A failed capture turns these graphs
    off for the run, with the error logged, and the module runs eagerly.
    """

    WARMUP = 2

    def __init__(self, log: Callable[[str], None] = print, backend=None):
        self.backend = backend if backend is not None else CudaGraphs()
        self.log = log
        self.active = False
        self.failed: str | None = None
        self.graphs: dict[int, tuple] = {}  # id(module) -> (module, key, graphed fn, parameters)
        self.captures = self.replays = self.eager = 0

    def reset(self) -> None:
        """Forget every captured op (a new stage builds new modules)."""
        self.graphs.clear()

    def __call__(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (self.active and self.failed is None and module.training and torch.is_grad_enabled()):
            return module(x)
        entry = self.graphs.get(id(module))
        if entry is None:
            with torch.profiler.record_function(self.CAPTURE):
                entry = self._capture(module, x)
            if entry is None:
                return module(x)
        _, key, fn, params = entry
        if key is None or key != _op_key(x):  # nothing to gain (no parameters), or another layout
            self.eager += 1
            return module(x)
        self.replays += 1
        return fn(x, *params)

    CAPTURE = "fastnas::op_graph_capture"  # the profiler range around a capture (one-off work, in traces)

    def _capture(self, module: torch.nn.Module, x: torch.Tensor):
        params = tuple(p for p in module.parameters() if p.requires_grad)
        if not params:
            entry = self.graphs[id(module)] = (module, None, None, ())
            return entry
        sample = x.detach().clone().requires_grad_(x.requires_grad)

        def fn(inp, *_params):  # the parameters are inputs so that the backward graph computes their grads
            return module(inp)

        try:
            with kept_buffers(module):  # the warm-up's updates of the running statistics are not the run's
                graphed = self.backend.graphed_callable(fn, (sample, *params))
        except Exception as exc:  # noqa: BLE001 -- any capture error: say why, go on eagerly
            self.failed = _describe(exc)
            self.log(f"warning: CUDA graph capture of a candidate op failed, its weight steps go on eagerly "
                     f"({self.failed})")
            return None
        self.captures += 1
        entry = self.graphs[id(module)] = (module, _op_key(x), graphed, params)
        return entry
