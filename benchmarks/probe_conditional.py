"""Can one CUDA graph run the hard sampler's candidate op chosen on the device? A feasibility probe.

    python benchmarks/probe_conditional.py [--out DIR] [--batch 96] [--channels 16]

The hard Gumbel sampler's weight step runs one candidate per edge, chosen by the sampled index, so the
host reads the index back every step and launches the chosen op's kernels one by one (`--op-graphs`
replays each op's own graphs, still a launch or two per op and the read). CUDA 12.4+ graphs have
conditional nodes, which PyTorch exposes while capturing (``torch.cuda.CUDAGraph``'s
``begin_capture_to_if_node(pred)`` / ``end_capture_to_conditional_node()``, the mechanism behind
``torch.cond`` under graphs): a body captured once runs at replay only when a device boolean is true.
One graph could then hold every candidate of an edge, each in an IF node on ``index == k``, and replay
the sampled one with no read back and no host launches.

This probe asks the three questions that decide whether to build that: does a candidate op's forward and
backward (``torch.autograd.grad`` inside the body) capture into IF nodes; does the replay give the eager
op's output and gradients for every index; and how long does the replay take against the op run eagerly
(forward and backward). One edge of DARTS' candidates at stage-1 size (C=16, 32x32, batch 96). Writes
``probe_conditional.json`` and prints a table; without CUDA, or with a torch that lacks the nodes, it
says so and exits 0 (nothing to probe).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import harness  # noqa: F401  (first: this checkout on sys.path)

CANDIDATES = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
              "skip_connect")


def unavailable() -> str | None:
    """Why the probe cannot run here (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if not hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node"):
        return f"torch {torch.__version__} has no CUDA graph conditional nodes (CUDAGraph.begin_capture_to_if_node)"
    return None


@contextmanager
def if_node(pred):
    """Capture the body into a conditional node of the graph being captured: at replay it runs only when
    the 0-dim bool `pred` (on the device) is true."""
    import torch

    graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
    graph.begin_capture_to_if_node(pred)
    try:
        yield
    finally:
        graph.end_capture_to_conditional_node()


def build(batch: int, channels: int):
    """The candidates of one edge (as the supernet builds them: non-affine, pooling followed by a BN),
    a fixed input and upstream gradient."""
    import torch
    from torch import nn

    from fastnas.space.primitives import build_op

    torch.manual_seed(0)
    ops = []
    for name in CANDIDATES:
        op = build_op(name, channels, 1, affine=False)
        if "pool" in name:
            op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
        ops.append(op.cuda().train())  # as in the weight step: BatchNorm on the batch's statistics
    x = torch.randn(batch, channels, 32, 32, device="cuda")
    grad_out = torch.randn_like(x)
    return ops, x, grad_out


def eager_step(op, x, grad_out):
    """The op forward and backward as the weight step runs it: output, input gradient, parameter
    gradients."""
    import torch

    xk = x.detach().requires_grad_()
    y = op(xk)
    params = [p for p in op.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y, [xk, *params], grad_out)
    return y.detach(), grads[0], list(grads[1:])


def capture(ops, x, grad_out, index):
    """One graph holding every candidate's forward and backward, each in an IF node on ``index == k``;
    the chosen one writes the static output and gradient buffers. Returns the graph, the predicates it
    reads (to keep alive with it) and the buffers."""
    import torch

    out, grad_x = torch.zeros_like(x), torch.zeros_like(x)
    param_grads = [[torch.zeros_like(p) for p in op.parameters() if p.requires_grad] for op in ops]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch's graph capture wants
        for op in ops:
            for _ in range(2):
                eager_step(op, x, grad_out)
    torch.cuda.current_stream().wait_stream(stream)
    graph, preds = torch.cuda.CUDAGraph(), []
    with torch.cuda.graph(graph):
        for k, op in enumerate(ops):
            preds.append(index == k)  # computed on the device at every replay; kept alive with the graph
            with if_node(preds[-1]):
                y, gx, gps = eager_step(op, x, grad_out)
                out.copy_(y)
                grad_x.copy_(gx)
                for buf, g in zip(param_grads[k], gps, strict=True):
                    buf.copy_(g)
    return graph, preds, out, grad_x, param_grads


def time_ms(fn, reps: int = 20) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def probe(batch: int, channels: int) -> dict:
    import torch

    why = unavailable()
    if why is not None:
        return {"available": False, "why": why, "torch": torch.__version__}
    ops, x, grad_out = build(batch, channels)
    index = torch.zeros((), dtype=torch.int64, device="cuda")
    try:
        graph, _preds, out, grad_x, param_grads = capture(ops, x, grad_out, index)
    except Exception as exc:  # the answer to question 1
        return {"available": True, "captured": False, "why": f"{type(exc).__name__}: {str(exc)[:300]}",
                "torch": torch.__version__}
    rows = []
    for k, (name, op) in enumerate(zip(CANDIDATES, ops, strict=True)):
        index.fill_(k)
        graph.replay()
        y, gx, gps = eager_step(op, x, grad_out)
        torch.cuda.synchronize()
        err = max([(out - y).abs().max().item(), (grad_x - gx).abs().max().item()]
                  + [(b - g).abs().max().item() for b, g in zip(param_grads[k], gps, strict=True)])
        rows.append({"op": name, "max_abs_diff": err,
                     "replay_ms": time_ms(graph.replay),
                     "eager_ms": time_ms(lambda op=op: eager_step(op, x, grad_out))})
    return {"available": True, "captured": True, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
            "batch": batch, "channels": channels, "ops": rows,
            "matches_eager": all(r["max_abs_diff"] < 1e-4 for r in rows)}


def render(result: dict) -> str:
    if not result["available"] or not result.get("captured"):
        return f"CUDA graph conditional nodes: not probed or failed: {result['why']}"
    lines = [f"One edge's candidates in one CUDA graph, each in an IF node on the sampled index (batch "
             f"{result['batch']}, C={result['channels']}, 32x32, forward and backward; {result['device']})", "",
             "| op (index) | max abs diff vs eager | replay ms | eager ms | eager / replay |", "|---|---|---|---|---|"]
    for r in result["ops"]:
        lines.append(f"| {r['op']} | {r['max_abs_diff']:.2e} | {r['replay_ms']:.3f} | {r['eager_ms']:.3f} | "
                     f"{r['eager_ms'] / r['replay_ms']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--out", default=None, help="write probe_conditional.json and .md into this folder")
    a = p.parse_args(argv)
    if a.batch < 1 or a.channels < 1:
        print("error: --batch and --channels must be >= 1", file=sys.stderr)
        return 2
    result = probe(a.batch, a.channels)
    text = render(result)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe_conditional.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "probe_conditional.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
