"""Training throughput of the DARTS_V2 evaluation network (C=36, 20 cells, auxiliary head,
drop-path 0.2): images/s of one SGD step, fp32 eager vs channels_last vs torch.compile vs bf16, and
the product's own step (``trainer...`` configs: ``fastnas train``'s Trainer.step with its data drawn
and augmented on the device, cutout 16, eager or ``--cuda-graphs``).

    python benchmarks/train_speed.py [--device cpu|cuda] [--batch 64] [--steps 3] [--configs ...] [--out DIR]

Each configuration runs in its own process; warm-up steps (compilation or the graph's capture
included) are excluded. The plain configs report the median step, synchronised after each; the
trainer configs time ``--steps`` steps back to back (as an epoch runs them) between two
synchronisations. Peak memory: the process's peak allocated CUDA memory, or its peak RSS on a CPU.

With ``--seeds N`` each trainer config trains N seeds and records every step's training loss; the
curves are then compared with eager fp32's (``trainer``) by ``loss_curve.py``: does the faster mode
train the same, within seed-to-seed noise (``loss_curve.{json,md,png}`` next to the table)?

    python benchmarks/train_speed.py --configs trainer,trainer+bf16+channels_last+cuda_graphs --seeds 2 \
        --steps 120 --device cuda --batch 96 --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import harness  # noqa: E402  (first: this checkout on sys.path)
import loss_curve

CONFIGS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16": {"amp": "bf16"},
    "bf16+channels_last+compile": {"amp": "bf16", "channels_last": True, "compile": True},
    # fastnas train's own step (Trainer.step): the batch drawn from the device-resident data, augmented
    # and cut out there, then the step eager or replayed as a CUDA graph
    "trainer": {"trainer": True},
    "trainer+bf16": {"trainer": True, "amp": "bf16"},
    "trainer+channels_last": {"trainer": True, "channels_last": True},
    "trainer+cuda_graphs": {"trainer": True, "cuda_graphs": True},
    "trainer+bf16+cuda_graphs": {"trainer": True, "amp": "bf16", "cuda_graphs": True},
    "trainer+bf16+channels_last+cuda_graphs": {"trainer": True, "amp": "bf16", "channels_last": True,
                                               "cuda_graphs": True},
    # fastnas train --compile --compile-mode reduce-overhead: inductor's fused kernels, replayed as CUDA
    # graphs on a GPU (the CPU compiles it as the default mode)
    "trainer+bf16+channels_last+compile": {"trainer": True, "amp": "bf16", "channels_last": True, "compile": True,
                                           "compile_mode": "reduce-overhead"},
    # the same step with cuDNN's heuristic algorithm choice instead of its autotuner (--no-cudnn-benchmark;
    # every other config times the algorithms, as fastnas train does by default)
    "trainer+bf16+channels_last+cuda_graphs+no_cudnn_benchmark": {
        "trainer": True, "amp": "bf16", "channels_last": True, "cuda_graphs": True, "cudnn_benchmark": False},
}


def _peak_mb(dev) -> float:
    import resource

    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainer_worker(name: str, device: str, batch: int, steps: int, seeds: int = 1, channels: int = 36,
                   layers: int = 20) -> dict:
    """Time ``fastnas train``'s step: DARTS_V2 (C=36, 20 cells unless told), the DARTS recipe (auxiliary
    0.4, cutout 16, drop-path at 0.2), on embedded CIFAR-sized data held on the device. Each seed (its
    own data, initial weights and random draws) trains a fresh network for the warm-up and `steps`
    steps; the per-step training loss of every step is kept on the device (a copy of the metric sums
    after each step) and read once at the end, so recording it adds no host sync to the timed steps."""
    import tempfile

    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.infra.runtime import configure_cudnn
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS, TrainConfig, Trainer

    opts = {k: v for k, v in CONFIGS[name].items() if k != "trainer"}
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rates, curves, warmups, modes, profiled = [], [], [], [], {}
    for seed in range(seeds):
        cli = {"genotype": "DARTS_V2", "device": device, "batch_size": batch, "embedded_size": batch * (steps + 8),
               "plots": False, "export": False, "seed": seed, "channels": channels, "layers": layers, **opts}
        cfg = cfglib.build_config(TrainConfig, PRESETS, cli, "darts")
        configure_cudnn(cfg.cudnn_benchmark, cfg.deterministic)  # as fastnas train sets it up
        with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
            torch.manual_seed(seed)
            t = Trainer(cfg, run, dev, published("DARTS_V2"))
            t.net.train()
            t.net.drop_path_prob = 0.2
            sums = torch.zeros(3, device=dev)
            trace = []  # the running sums after each step, still on the device

            def step():
                t.step(sums)
                trace.append(sums.clone())

            t0 = time.perf_counter()
            for _ in range(4):  # the eager warm-up steps, the capture and a first replay (with --cuda-graphs)
                step()
            sync()
            warmups.append(time.perf_counter() - t0)
            if dev.type == "cuda" and seed == 0:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            rates.append(batch * steps / (time.perf_counter() - t0))
            # kernels per step and how busy the GPU was: after the last seed's timed steps (the profiler
            # may leave launches slower in this process), not recorded in the loss curve
            if dev.type == "cuda" and seed == seeds - 1:
                profiled = harness.gpu_profile(lambda: t.step(sums), 3)
            running = torch.stack(trace).double().cpu().tolist()  # one read, after the timed steps
            prev = [0.0, 0.0, 0.0]
            curve = []
            for row in running:  # loss * n and n per step from consecutive running sums
                curve.append((row[0] - prev[0]) / (row[2] - prev[2]))
                prev = row
            curves.append(curve)
            g = t.graphed
            modes.append(f"compiled ({cfg.compile_mode})" if cfg.compile else "eager" if not cfg.cuda_graphs
                         else "eager (no graphs here)" if g is None
                         else f"graphs failed: {g.failed}" if g.failed else f"cuda graphs ({g.replays} replays)")
    rate = statistics.median(rates)
    return {"config": name, "device": device, "batch": batch, "channels": channels, "layers": layers,
            "step_s": batch / rate, "images_per_s": rate, "images_per_s_per_seed": rates,
            "warmup_s": warmups[0], "threads": torch.get_num_threads(), "peak_mb": _peak_mb(dev),
            "mode": modes[0], "loss_curves": curves, **profiled}


def worker(name: str, device: str, batch: int, steps: int, seeds: int = 1, channels: int = 36,
           layers: int = 20) -> dict:
    if CONFIGS[name].get("trainer"):
        return trainer_worker(name, device, batch, steps, seeds, channels, layers)
    import torch
    import torch.nn.functional as F

    from fastnas.infra.runtime import configure_cudnn
    from fastnas.space.genotype import PUBLISHED
    from fastnas.space.network import EvalNetwork

    opts = CONFIGS[name]
    dev = torch.device(device)
    configure_cudnn(opts.get("cudnn_benchmark", True), False)
    torch.manual_seed(0)
    fmt = torch.channels_last if opts.get("channels_last") else torch.contiguous_format
    net = EvalNetwork(PUBLISHED["DARTS_V2"], channels, layers, 10, auxiliary=True, drop_path=0.2)
    net = net.to(dev, memory_format=fmt)
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
    p.add_argument("--seeds", type=int, default=1, help="trainer configs: train this many seeds (loss curves "
                   "compared by loss_curve.py when >= 2; the rate is their median)")
    p.add_argument("--channels", type=int, default=36, help="the network's initial channels (DARTS: 36)")
    p.add_argument("--layers", type=int, default=20, help="the network's cells (DARTS: 20)")
    p.add_argument("--window", type=int, default=None, help="loss curves: steps averaged at the end (default: "
                   "a third of --steps)")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return harness.worker_reply(worker(args.worker, args.device, args.batch, args.steps, args.seeds,
                                           args.channels, args.layers))
    if min(args.steps, args.seeds, args.channels, args.layers) < 1:
        print("error: --steps, --seeds, --channels and --layers must be >= 1", file=sys.stderr)
        return 2
    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            print(f"error: unknown config {name!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        rows.append(harness.run_worker(__file__, name, ["--device", args.device, "--batch", args.batch,
                                                        "--steps", args.steps, "--seeds", args.seeds,
                                                        "--channels", args.channels, "--layers", args.layers]))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["config"] == "fp32" and "error" not in r), None)
    lines = [f"DARTS_V2 EvalNetwork C={args.channels}, {args.layers} cells, device {args.device}, batch "
             f"{args.batch}", "",
             "| config | s / step | images/s | vs fp32 eager | vs trainer eager | warm-up s (incl. compile or "
             "capture) | peak MB | kernels/step | GPU busy | mode |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    trainer = next((r for r in rows if r["config"] == "trainer" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | | | | | |")
            continue
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        vs_trainer = (f"{r['images_per_s'] / trainer['images_per_s']:.2f}x"
                      if trainer and r["config"].startswith("trainer") else "-")
        lines.append(f"| {r['config']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {ratio} | {vs_trainer} | "
                     f"{r['warmup_s']:.0f} | {r.get('peak_mb', 0):.0f} | {harness.profile_cells(r)} "
                     f"| {r.get('mode', '-')} |")
    table = "\n".join(lines)
    harness.write_results(args.out, f"train_speed_{args.device}", rows, table)
    print(table)
    if args.seeds > 1 or sum(1 for r in rows if r.get("loss_curves")) > 1:
        print()
        loss_curve.report(rows, args.window or max(1, args.steps // 3), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
