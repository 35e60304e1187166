"""One first-order search iteration on the CPU: images/s and peak memory per mixed-op strategy.

    python benchmarks/search_step.py [--batch 32] [--channels 16] [--layers 8] [--iters 3] [--out DIR]

An iteration = an architecture step (Adam on the alphas, one batch) + a weight step (SGD, another
batch), 32x32 inputs, 10 classes. Each configuration runs in its own process so its peak RSS is its
own. images/s counts the weight step's batch (batch / iteration time), as the DARTS logs do.

Configurations:
  darts          softmax weights, the reference Python mixed op, arch step backpropagates into every
                 weight as DARTS' first-order code does (loss.backward())
  softmax-fused  softmax weights, the fused weighted_sum, arch step computes alpha gradients only
  gumbel-hard    GDAS sampling: one op per edge runs, arch step computes alpha gradients only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

# Run from a checkout: import this working tree's fastnas, whatever else is installed.
import harness  # noqa: E402  (first: this checkout on sys.path)

CONFIGS = ("darts", "softmax-fused", "gumbel-hard")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(config: str, batch: int, channels: int, layers: int, iters: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fastnas import ops
    from fastnas.space.sampler import make_sampler
    from fastnas.space.supernet import SuperNet

    torch.manual_seed(0)
    base = rss_mb()
    ops.set_backend("reference" if config == "darts" else "auto")
    net = SuperNet(channels=channels, layers=layers, num_classes=10)
    sampler = make_sampler("gumbel-hard" if config == "gumbel-hard" else "softmax", tau=1.0)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    data = [(torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))) for _ in range(2)]

    def iteration():
        (xa, ya), (xw, yw) = data
        # architecture step
        loss = F.cross_entropy(net(xa, net.sample(sampler)), ya)
        a_opt.zero_grad(set_to_none=True)
        if config == "darts":
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
        else:
            grads = torch.autograd.grad(loss, net.arch_parameters())
            for a, g in zip(net.arch_parameters(), grads, strict=True):
                a.grad = g
        a_opt.step()
        # weight step
        loss = F.cross_entropy(net(xw, net.sample(sampler)), yw)
        w_opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss, net.weight_parameters(), allow_unused=True)
        for p, g in zip(net.weight_parameters(), grads, strict=True):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
        w_opt.step()

    iteration()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - t0)
    times.sort()
    t = times[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": config, "batch": batch, "channels": channels, "layers": layers,
        "threads": torch.get_num_threads(), "iteration_s": t, "images_per_s": batch / t,
        "peak_rss_mb": peak, "baseline_rss_mb": base, "peak_delta_mb": peak - base,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return harness.worker_reply(worker(args.worker, args.batch, args.channels, args.layers, args.iters))
    rows = []
    for config in args.configs.split(","):
        if config not in CONFIGS:
            print(f"error: unknown config {config!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        row = harness.run_worker(__file__, config, ["--batch", args.batch, "--channels", args.channels,
                                                    "--layers", args.layers, "--iters", args.iters])
        if "error" in row:
            print(f"{config}: {row['error']}", file=sys.stderr)
            return 1
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["config"] == "darts"), None)
    lines = [f"C={args.channels}, {args.layers} layers, batch {args.batch}, threads {rows[0]['threads']}", "",
             "| config | s / iteration | images/s | vs darts | peak RSS MB | peak - baseline MB | vs darts |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        mem = f"{r['peak_delta_mb'] / base['peak_delta_mb']:.2f}x" if base else "-"
        lines.append(f"| {r['config']} | {r['iteration_s']:.2f} | {r['images_per_s']:.1f} | {speed} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_delta_mb']:.0f} | {mem} |")
    table = "\n".join(lines)
    harness.write_results(args.out, "search_step", rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
