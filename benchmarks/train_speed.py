"""Training throughput of the DARTS_V2 evaluation network (C=36, 20 cells, auxiliary head,
drop-path 0.2): images/s of one SGD step, fp32 eager vs channels_last vs torch.compile vs bf16, and
the product's own step (``trainer...`` configs: ``fastnas train``'s Trainer.step with its data drawn
and augmented on the device, cutout 16, eager or ``--cuda-graphs``).

    python benchmarks/train_speed.py [--device cpu|cuda] [--batch 64] [--steps 3] [--configs ...] [--out DIR]

Each configuration runs in its own process; warm-up steps (compilation or the graph's capture
included) are excluded. The plain configs report the median step, synchronised after each; the
trainer configs time ``--steps`` steps back to back (as an epoch runs them) between two
synchronisations. Peak memory: the process's peak allocated CUDA memory, or its peak RSS on a CPU.
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
    # fastnas train's own step (Trainer.step): the batch drawn from the device-resident data, augmented
    # and cut out there, then the step eager or replayed as a CUDA graph
    "trainer": {"trainer": True},
    "trainer+cuda_graphs": {"trainer": True, "cuda_graphs": True},
    "trainer+bf16+cuda_graphs": {"trainer": True, "amp": "bf16", "cuda_graphs": True},
    "trainer+bf16+channels_last+cuda_graphs": {"trainer": True, "amp": "bf16", "channels_last": True,
                                               "cuda_graphs": True},
}


def _peak_mb(dev) -> float:
    import resource

    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainer_worker(name: str, device: str, batch: int, steps: int) -> dict:
    """Time ``fastnas train``'s step: DARTS_V2, C=36, 20 cells, the DARTS recipe (auxiliary 0.4,
    cutout 16, drop-path at 0.2), on embedded CIFAR-sized data held on the device."""
    import tempfile

    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS, TrainConfig, Trainer

    opts = {k: v for k, v in CONFIGS[name].items() if k != "trainer"}
    cli = {"genotype": "DARTS_V2", "device": device, "batch_size": batch, "embedded_size": batch * (steps + 8),
           "plots": False, "export": False, **opts}
    cfg = cfglib.build_config(TrainConfig, PRESETS, cli, "darts")
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
        torch.manual_seed(0)
        t = Trainer(cfg, run, dev, published("DARTS_V2"))
        t.net.train()
        t.net.drop_path_prob = 0.2
        sums = torch.zeros(3, device=dev)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        t0 = time.perf_counter()
        for _ in range(4):  # the eager warm-up steps, the capture and a first replay (with --cuda-graphs)
            t.step(sums)
        sync()
        warmup = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            t.step(sums)
        sync()
        dt = (time.perf_counter() - t0) / steps
        g = t.graphed
        mode = ("eager" if not cfg.cuda_graphs else "eager (no graphs here)" if g is None
                else f"graphs failed: {g.failed}" if g.failed else f"cuda graphs ({g.replays} replays)")
    return {"config": name, "device": device, "batch": batch, "step_s": dt, "images_per_s": batch / dt,
            "warmup_s": warmup, "threads": torch.get_num_threads(), "peak_mb": _peak_mb(dev), "mode": mode}


def worker(name: str, device: str, batch: int, steps: int) -> dict:
    if CONFIGS[name].get("trainer"):
        return trainer_worker(name, device, batch, steps)
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
            "warmup_s": warmup, "threads": torch.get_num_threads(), "peak_mb": _peak_mb(dev), "mode": "eager"}


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
             "| config | s / step | images/s | vs fp32 eager | vs trainer eager | warm-up s (incl. compile or "
             "capture) | peak MB | mode |",
             "|---|---|---|---|---|---|---|---|"]
    trainer = next((r for r in rows if r["config"] == "trainer" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | | | |")
            continue
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        vs_trainer = (f"{r['images_per_s'] / trainer['images_per_s']:.2f}x"
                      if trainer and r["config"].startswith("trainer") else "-")
        lines.append(f"| {r['config']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {ratio} | {vs_trainer} | "
                     f"{r['warmup_s']:.0f} | {r.get('peak_mb', 0):.0f} | {r.get('mode', '-')} |")
    table = "\n".join(lines)
    harness.write_results(args.out, f"train_speed_{args.device}", rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
