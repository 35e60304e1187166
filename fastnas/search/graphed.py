"""Search iterations replayed as CUDA graphs (``--cuda-graphs``): what a search can capture; the
capture and replay are :class:`fastnas.infra.graphs.StepGraph`'s.

A softmax-family iteration (DARTS, P-DARTS, PC-DARTS, DrNAS) is tens of thousands of operator calls
(benchmarks/op_count.py), each a kernel launch of a few microseconds on a GPU, while the arithmetic of
a C=16 supernet at batch 64 is a few milliseconds. Its work is static: every candidate op runs every
step and nothing in it reads a value back to the host (tests/test_host_work.py), so the whole
iteration -- sample, weight step, architecture step, both optimizer updates, the metric sums -- is
captured once per epoch (learning rates, temperature and skip dropout change at epoch boundaries) and
replayed with one launch; the batch is drawn eagerly (indexing, crops, flips on the device) and copied
into the graph's inputs. Skip dropout draws from the default generator, DrNAS' Dirichlet and the soft
Gumbel noise from the sampler's generator, registered with the graph.

The hard Gumbel sampler's weight step runs only the sampled op of each edge, a different set of ops
every step, so it stays eager (and reads the sampled indices back: the host picks the ops). Its
architecture step is graphed on its own (scope ``architecture step``) when it draws its own sample
(a fresh one, GDAS' ``arch_resample``, or the architecture first) and scores every candidate
(``straight_through="all"``): in its static form every candidate runs under autograd weighted by the
one-hot, the same value and architecture gradient as the eager step
(:meth:`fastnas.space.sampler.GumbelHardSampler.for_arch_step`), with more arithmetic (the backward
through the unsampled candidates is zeros) and no dependence on the draw. GDAS' own estimator
(``straight_through="sampled"``) runs only the sampled op in both steps and is not graphed.

Not graphed, with the reason logged once: fp16 (the loss scaler reads its inf check back), several
processes (DDP's gradient buckets), a CPU run, and the hard sampler's cases above.
"""

from __future__ import annotations

import torch

from fastnas.infra.graphs import CudaGraphs, OpGraphs, StepGraph, runtime_blocker

__all__ = ["ARCH_STEP", "ITERATION", "CudaGraphs", "OpGraphs", "StepGraph", "graph_blocker", "graph_scope",
           "op_graph_blocker"]

ITERATION, ARCH_STEP = "iteration", "architecture step"


def graph_scope(cfg) -> str:
    """What one replay covers: the whole ``iteration`` (soft samplers), or the ``architecture step``
    alone (the hard sampler: its weight step runs a different path every step)."""
    return ARCH_STEP if cfg.sampler == "gumbel-hard" else ITERATION


def graph_blocker(cfg, device: torch.device, world_size: int) -> str | None:
    """Why a search with `cfg` cannot replay its iterations as CUDA graphs here (None: it can)."""
    if device.type == "cuda" and cfg.sampler == "gumbel-hard":
        if cfg.straight_through == "sampled":
            return ("the hard Gumbel sampler with GDAS' estimator (straight_through sampled) runs a different "
                    "path in every step, the architecture step's included")
        if not (cfg.arch_resample or cfg.arch_first):
            return ("the hard Gumbel sampler's architecture step reuses the weight step's sample (no "
                    "arch_resample): a graph cannot take that sample's autograd history as an input")
        if cfg.arch_order == 2:
            return ("the hard Gumbel sampler with DARTS' second order: the unrolled step reads the weight "
                    "optimizer's momentum buffers, which the eager weight step creates as each op is first sampled")
    return runtime_blocker(device, cfg.amp, world_size, "search")


def op_graph_blocker(cfg, device: torch.device, world_size: int) -> str | None:
    """Why a search with `cfg` cannot run its weight step's candidate ops as per-op CUDA graphs
    (``--op-graphs``) here (None: it can)."""
    if cfg.sampler != "gumbel-hard":
        return (f"the {cfg.sampler} sampler runs every candidate in every step: --cuda-graphs replays its whole "
                "iteration")
    if device.type != "cuda":
        return f"the search runs on {device.type}, not a GPU"
    if world_size > 1:
        return "several processes (DDP reduces gradients in hooks a replayed backward graph does not fire in order)"
    if cfg.accumulate > 1:
        return ("--accumulate: the parameters' gradients are the graphs' own buffers, which the next shard's "
                "backward replay rewrites before autograd adds it")
    if not hasattr(torch.cuda, "make_graphed_callables"):
        return f"torch {torch.__version__} has no torch.cuda.make_graphed_callables"
    return None
