"""Side-by-side op benchmark with ratios: fused vs baselines, forward + backward.

    python benchmarks/compare_ops.py [--device cpu|cuda] [--out DIR] [--quick]

CPU: torch.utils.benchmark medians of one forward+backward, the implementations interleaved over
several rounds (the median round is reported). CUDA: CUDA-event medians (warm-up
excluded) of forward and backward separately, and the achieved bandwidth of the fused op against the
ideal bytes ((K+1)*S*e forward, (2K+1)*S*e backward) and the device's measured copy bandwidth.
Writes ops_<device>.json and ops_<device>.md to --out, prints the table last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import harness  # noqa: E402  (first: this checkout on sys.path)
import torch
import torch.utils.benchmark as tb
from cases import (  # noqa: E402
    GUMBEL_IMPLS,
    GUMBEL_SHAPES,
    WS_IMPLS,
    WS_KS,
    WS_SIZES,
    WS_SIZES_GPU,
    gumbel_step,
    make_ws,
    ws_step,
)

import fastnas  # noqa: E402
from fastnas import ops  # noqa: E402


def cpu_median(fn, min_run_time: float) -> float:
    t = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median


def cuda_median(fn, iters: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(device) -> float:
    """Measured device copy bandwidth (read + write bytes per second) on a 1 GiB buffer."""
    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = cuda_median(lambda: dst.copy_(src), iters=20)
    return 2 * src.numel() * 4 / t


def interleaved(fns: dict, timer, rounds: int) -> dict:
    """Median over `rounds` of each impl's time, the impls alternating within every round, so a
    slow spell of the machine hits all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timer(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def run(device: str, quick: bool) -> dict:
    cuda = device == "cuda"
    timer = cuda_median if cuda else (lambda fn: cpu_median(fn, 0.2 if quick else 0.4))
    rounds = 1 if cuda else (3 if quick else 5)
    sizes = WS_SIZES_GPU if cuda else WS_SIZES
    rows = []
    peak = copy_bandwidth(device) if cuda else None
    for size in sizes:
        for K in WS_KS:
            w, xs, grad = make_ws(*size, K, device)
            row = {"op": "weighted_sum", "N": size[0], "C": size[1], "HW": size[2], "K": K}
            fns = {name: (lambda impl=impl: ws_step(impl, w, xs, grad)) for name, impl in WS_IMPLS.items()}
            for name, t in interleaved(fns, timer, rounds).items():
                row[f"{name}_s"] = t
            row["vs_loop"] = row["loop_s"] / row["fused_s"]
            row["vs_stack_einsum"] = row["stack_einsum_s"] / row["fused_s"]
            if cuda:
                S, e = xs[0].numel(), xs[0].element_size()
                wd = w.detach()
                xd = [x.detach() for x in xs]
                with torch.no_grad():
                    fwd = timer(lambda: torch.ops.fastnas.weighted_sum(wd, xd))
                bwd = timer(lambda: torch.ops.fastnas.weighted_sum_backward(grad, wd, xd, [True, True]))
                row.update(
                    fused_fwd_s=fwd,
                    fused_bwd_s=bwd,
                    fwd_GBps=(K + 1) * S * e / fwd / 1e9,
                    bwd_GBps=(2 * K + 1) * S * e / bwd / 1e9,
                    peak_GBps=peak / 1e9,
                )
                row["fwd_of_floor"] = row["fwd_GBps"] / row["peak_GBps"]
                row["bwd_of_floor"] = row["bwd_GBps"] / row["peak_GBps"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    for shape in GUMBEL_SHAPES:
        logits = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        row = {"op": "gumbel_softmax", "E": shape[0], "K": shape[1]}
        fns = {
            name: (lambda impl=impl: gumbel_step(impl, logits, grad)) for name, impl in GUMBEL_IMPLS.items()
        }
        for name, t in interleaved(fns, timer, rounds).items():
            row[f"{name}_s"] = t
        row["vs_torch"] = row["torch_s"] / row["fused_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastnas": fastnas.__version__,
        "kernels": {f"{k[0]}/{k[1]}": v for k, v in ops._KERNELS.items()},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    cuda = result["device"] == "cuda"
    lines = [f"device: {result['device_name']}, threads {result['threads']}, torch {result['torch']}",
             "",
             "| op | size | K | fused ms | loop ms | stack+einsum ms | fused vs loop | fused vs einsum |"
             + (" fwd GB/s (of floor) | bwd GB/s (of floor) |" if cuda else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if cuda else "")]
    for r in result["rows"]:
        if r["op"] == "weighted_sum":
            line = (f"| weighted_sum | N{r['N']} C{r['C']} {r['HW']}x{r['HW']} | {r['K']} | "
                    f"{r['fused_s'] * 1e3:.3f} | {r['loop_s'] * 1e3:.3f} | "
                    f"{r['stack_einsum_s'] * 1e3:.3f} | {r['vs_loop']:.2f}x | "
                    f"{r['vs_stack_einsum']:.2f}x |")
            if cuda:
                line += (f" {r['fwd_GBps']:.0f} ({r['fwd_of_floor']:.0%}) |"
                         f" {r['bwd_GBps']:.0f} ({r['bwd_of_floor']:.0%}) |")
            lines.append(line)
    lines += ["", "| op | E x K | fused ms | F.gumbel_softmax ms | fused vs torch |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["op"] == "gumbel_softmax":
            lines.append(f"| gumbel_softmax (hard, fwd+bwd) | {r['E']}x{r['K']} | "
                         f"{r['fused_s'] * 1e3:.4f} | {r['torch_s'] * 1e3:.4f} | {r['vs_torch']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="folder for ops_<device>.json/.md")
    p.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if not ops.kernel_available("weighted_sum", args.device):
        print(f"error: no fused kernel for {args.device}; build the extension first", file=sys.stderr)
        return 2
    result = run(args.device, args.quick)
    table = markdown(result)
    harness.write_results(args.out, f"ops_{args.device}", result, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
