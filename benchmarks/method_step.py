"""One search iteration per method preset, side by side: images/s and peak memory (issue 11).

    python benchmarks/method_step.py [--batch 32] [--channels 16] [--cells 8] [--iters 4] [--device cpu]
                                     [--cuda-graphs]

Every preset runs its own first stage's mechanisms (sampler, partial channels, edge normalization, first
or second order) through the real search loop (one warm-up epoch of ``Searcher.train_epoch``, then
``--iters`` timed steady-state iterations of ``Searcher.step``: a weight step and an architecture step
each, after the eager warm-up steps and, with ``--cuda-graphs``, the capture) on one shared shape, C=16
and 8 cells, so the numbers compare the methods rather than their network sizes. A partial-channel K
that does not divide C is replaced by the preset's next one that does (DrNAS: K=6 -> 4 at C=16). Each
preset runs in its own process, so its peak RSS (CPU) or peak allocated memory (CUDA) is its own. The
published search cost of each method (its paper's GPU-days on CIFAR-10) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

import harness  # noqa: E402  (first: this checkout on sys.path)

PRESETS = ("darts", "darts2", "pcdarts", "gdas", "drnas", "pdarts", "progressive")
PUBLISHED = {"darts": "1.5 (1st order)", "darts2": "4 (2nd order, the DARTS paper's Table 1)",
             "pcdarts": "0.1 (1080Ti)", "gdas": "0.21 (V100)", "drnas": "0.6", "pdarts": "0.3 (P100)",
             "progressive": "-"}


def worker(name: str, batch: int, channels: int, cells: int, iters: int, device: str, graphs: bool = False,
           op_graphs: bool = False, cudnn_benchmark: bool = True) -> dict:
    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.infra.runtime import configure_cudnn
    from fastnas.search import PRESETS as P
    from fastnas.search import SearchConfig, Searcher

    preset = P[name]
    stages = len(preset.get("cells", [5, 11, 17]))
    ks = [k for k in preset.get("partial_channels", [1]) if channels % k == 0] or [1]
    cli = {"preset": name, "cells": [cells] * stages, "channels": [channels] * stages, "batch_size": batch,
           "warmup_epochs": [0] * stages, "epochs": [2] * stages, "max_steps": iters, "device": device,
           "embedded_size": 4 * batch * iters, "plots": False, "derived_eval_images": 0,
           "partial_channels": [ks[0]] * stages, "cuda_graphs": graphs, "op_graphs": op_graphs,
           "cudnn_benchmark": cudnn_benchmark}
    cfg = cfglib.build_config(SearchConfig, P, cli, "progressive")
    configure_cudnn(cfg.cudnn_benchmark, cfg.deterministic)  # as fastnas search sets it up
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        searcher = Searcher(cfg, run, dev)
        searcher.build_stage(0)
        searcher.train_epoch(0, 0)  # warm-up pass (allocations, autotuning); not timed
        # steady state, as the steps of a long epoch: after the eager warm-up steps and the capture
        # (with --cuda-graphs) that each epoch starts with
        gens = [torch.Generator(searcher.train_data.images.device).manual_seed(0) for _ in searcher.shards]
        sums = torch.zeros(4, device=dev)
        if searcher.graphed is not None:
            searcher.graphed.reset()
        for _ in range(3):
            searcher.step(gens, sums)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            searcher.step(gens, sums)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        warmup = _warmup_steps(searcher, gens, sums, iters, dev) if searcher.sampler.hard else {}
        # where the time goes on a GPU: kernels per iteration and how much of it the GPU was busy
        profiled = harness.gpu_profile(lambda: searcher.step(gens, sums), 3) if dev.type == "cuda" else {}
        g = searcher.graphed
        mode = ("eager" if not graphs else "eager (no graphs here)" if g is None
                else f"graphs failed: {g.failed}" if g.failed
                else f"cuda graphs: {searcher.graph_scope} ({g.replays} replays)")
        og = searcher.op_graphs
        if op_graphs:  # the weight step's ops: how many were captured and replayed, or why not
            mode += ("; no per-op graphs here" if og is None else f"; per-op graphs failed: {og.failed}"
                     if og.failed else f"; per-op graphs: {og.captures} ops, {og.replays} replays")
        run.close()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"preset": name, "sampler": cfg.sampler, "partial_channels": ks[0], "edge_norm": cfg.edge_norm,
            "arch_order": cfg.arch_order, "s_per_iter": dt, "images_per_s": batch / dt, "peak_mb": peak,
            "mode": mode, **warmup, **profiled}


def _warmup_steps(searcher, gens, sums, iters: int, dev) -> dict:
    """A hard sampler's warm-up step (weights only, the first 10 of each stage's 25 epochs in the default
    preset), timed as the epoch loop runs it, each step drawing the next one's sample a step early so
    that reading its indices waits for no kernel, and with each sample drawn when needed (the read waits
    for the GPU to finish the step before): seconds per step, alternating rounds of 2 x `iters` steps
    each, the fastest round of each kind."""
    import torch

    n, best = 2 * iters, {}
    for ahead in (False, True, False, True):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            searcher.step(gens, sums, arch=False, ahead=ahead and i < n - 1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        key = "warmup_s_per_iter_ahead" if ahead else "warmup_s_per_iter_no_ahead"
        best[key] = min(best.get(key, float("inf")), (time.perf_counter() - t0) / n)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--cuda-graphs", action="store_true", help="search with --cuda-graphs (static presets replay "
                                                                 "each iteration as a CUDA graph on a GPU)")
    p.add_argument("--op-graphs", action="store_true", help="search with --op-graphs (the hard sampler's weight "
                                                               "step replays each sampled convolution's graphs)")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                   help="cuDNN's heuristic algorithm choice instead of its autotuner (fastnas search's default)")
    p.add_argument("--out", default=None, help="write method_step.json and .md into this folder")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return harness.worker_reply(worker(a.worker, a.batch, a.channels, a.cells, a.iters, a.device, a.cuda_graphs,
                                           a.op_graphs, a.cudnn_benchmark))
    rows = []
    for name in a.presets:
        row = harness.run_worker(__file__, name, ["--batch", a.batch, "--channels", a.channels, "--cells", a.cells,
                                                  "--iters", a.iters, "--device", a.device,
                                                  *(["--cuda-graphs"] if a.cuda_graphs else []),
                                                  *(["--op-graphs"] if a.op_graphs else []),
                                                  *([] if a.cudnn_benchmark else ["--no-cudnn-benchmark"])])
        if "error" in row:
            print(f"{name}: failed: {row['error']}", flush=True)
            continue
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)  # each preset as it finishes: a time limit keeps what ran
    base = next((r for r in rows if r["preset"] == "darts"), rows[0] if rows else None)
    lines = [f"One search iteration (weight step + architecture step), C={a.channels}, {a.cells} cells, batch "
             f"{a.batch}, {a.device}, {a.iters} iterations timed per preset"
             + ("" if a.cudnn_benchmark else ", cuDNN's heuristic algorithms (--no-cudnn-benchmark)"), "",
             "| preset | sampler | K | edge norm | order | step | s/iter | images/s | vs darts | peak MB "
             "| kernels/iter | GPU busy | published GPU-days |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        norm = "yes" if r["edge_norm"] else "no"
        lines.append(f"| {r['preset']} | {r['sampler']} | {r['partial_channels']} | {norm} | {r['arch_order']} "
                     f"| {r.get('mode', 'eager')} | {r['s_per_iter']:.3f} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / base['images_per_s']:.2f}x | {r['peak_mb']:.0f} "
                     f"| {harness.profile_cells(r)} | {PUBLISHED[r['preset']]} |")
    hard = [r for r in rows if "warmup_s_per_iter_ahead" in r]
    if hard:  # the hard sampler's warm-up step, its next sample drawn a step early or when needed
        lines += ["", "Warm-up step (weights only) of the hard sampler: the next step's sample drawn a step early "
                  "(the epoch loop's way) against drawn when needed", "",
                  "| preset | step | s/iter, drawn ahead | s/iter, drawn when needed | ratio |",
                  "|---|---|---|---|---|"]
        for r in hard:
            on, off = r["warmup_s_per_iter_ahead"], r["warmup_s_per_iter_no_ahead"]
            lines.append(f"| {r['preset']} | {r.get('mode', 'eager')} | {on:.4f} | {off:.4f} | {off / on:.2f}x |")
    text = "\n".join(lines)
    print(text)
    harness.write_results(a.out, "method_step", rows, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
