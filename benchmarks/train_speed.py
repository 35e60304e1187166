"""Training throughput of the DARTS_V2 evaluation network (C=36, 20 cells, auxiliary head,
drop-path 0.2): images/s of one SGD step, fp32 eager vs channels_last vs torch.compile vs bf16.

    python benchmarks/train_speed.py [--device cpu|cuda] [--batch 64] [--steps 3] [--configs ...] [--out DIR]

Each configuration runs in its own process; warm-up steps (compilation included) are excluded and the
median step is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import harness  # noqa: E402  (first: this checkout on sys.path)

CONFIGS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16": {"amp": "bf16"},
    "bf16+channels_last+compile": {"amp": "bf16", "channels_last": True, "compile": True},
}


def worker(name: str, device: str, batch: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fastnas.space.genotype import PUBLISHED
    from fastnas.space.network import EvalNetwork

    opts = CONFIGS[name]
    dev = torch.device(device)
    torch.manual_seed(0)
    fmt = torch.channels_last if opts.get("channels_last") else torch.contiguous_format
    net = EvalNetwork(PUBLISHED["DARTS_V2"], 36, 20, 10, auxiliary=True, drop_path=0.2).to(dev, memory_format=fmt)
    fwd = torch.compile(net) if opts.get("compile") else net
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)
    amp = torch.bfloat16 if opts.get("amp") == "bf16" else None

    def step():
        with torch.autocast(dev.type, dtype=amp) if amp else torch.autocast(dev.type, enabled=False):
            logits, aux = fwd(x)
            loss = F.cross_entropy(logits.float(), y) + 0.4 * F.cross_entropy(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    net.train()
    t0 = time.perf_counter()
    for _ in range(2):
        step()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"config": name, "device": device, "batch": batch, "step_s": t, "images_per_s": batch / t,
            "warmup_s": warmup, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return harness.worker_reply(worker(args.worker, args.device, args.batch, args.steps))
    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            print(f"error: unknown config {name!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        rows.append(harness.run_worker(__file__, name, ["--device", args.device, "--batch", args.batch,
                                                        "--steps", args.steps]))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["config"] == "fp32" and "error" not in r), None)
    lines = [f"DARTS_V2 EvalNetwork C=36, 20 cells, device {args.device}, batch {args.batch}", "",
             "| config | s / step | images/s | vs fp32 eager | warm-up s (2 steps, incl. compile) |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | |")
            continue
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        lines.append(f"| {r['config']} | {r['step_s']:.2f} | {r['images_per_s']:.1f} | {ratio} | {r['warmup_s']:.0f} |")
    table = "\n".join(lines)
    harness.write_results(args.out, f"train_speed_{args.device}", rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
