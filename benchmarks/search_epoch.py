"""Seconds per search epoch on this machine, for the smoke preset and P-DARTS' stage 1.

    python benchmarks/search_epoch.py [--steps 3] [--out DIR]

smoke: the whole preset runs (embedded data) and its per-epoch times are reported. pdarts stage 1
(5 cells, C=16, 8 ops, batch 96): a few warm-up steps (weights only) and search steps (weights +
architecture) are timed, and the epoch time on CIFAR-10 (25,000 training images in the weight half:
260 steps) is projected from the median step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import harness  # noqa: E402  (first: this checkout on sys.path)
import torch  # noqa: E402

from fastnas.cli.search import main as search_main
from fastnas.infra import config as cfglib  # noqa: E402
from fastnas.infra.rundir import RunDir  # noqa: E402
from fastnas.search import PRESETS, SearchConfig, Searcher  # noqa: E402

CIFAR_STEPS = 25000 // 96


def time_steps(searcher: Searcher, warm: bool, steps: int) -> float:
    stage = 0
    cfg = searcher.cfg
    cfg.warmup_epochs[stage] = 1 if warm else 0
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        searcher.train_epoch(stage, 0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first includes one-off allocation


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        assert search_main(["--preset", "smoke", "--out", os.path.join(tmp, "smoke")]) == 0
        total = time.perf_counter() - t0
        metrics = [json.loads(line) for line in open(os.path.join(tmp, "smoke", "metrics.jsonl"))]
        for m in metrics:
            rows.append({"config": "smoke", "stage": m["stage"], "epoch": m["epoch"], "warmup": m["warmup"],
                         "steps": m["steps"], "epoch_s": m["epoch_time_s"]})
        rows.append({"config": "smoke", "stage": "all", "wall_s": total})

        cfg = cfglib.build_config(SearchConfig, PRESETS, {"preset": "progressive", "max_steps": 1}, "progressive")
        searcher = Searcher(cfg, RunDir(os.path.join(tmp, "progressive")), torch.device("cpu"))
        searcher.build_stage(0)
        for warm in (True, False):
            step = time_steps(searcher, warm, args.steps)
            rows.append({"config": "progressive stage 1", "warmup": warm, "batch": cfg.batch_size, "step_s": step,
                         "projected_cifar10_epoch_s": step * CIFAR_STEPS})
    lines = [f"threads {torch.get_num_threads()}", "", "| config | epoch | steps | seconds |", "|---|---|---|---|"]
    for r in rows:
        if r["config"] == "smoke" and r["stage"] != "all":
            kind = "warm-up" if r["warmup"] else "search"
            lines.append(f"| smoke | stage {r['stage']} epoch {r['epoch']} ({kind}) | {r['steps']} | "
                         f"{r['epoch_s']:.1f} |")
        elif r["config"] == "smoke":
            lines.append(f"| smoke | whole run, wall clock (incl. start-up) | - | {r['wall_s']:.1f} |")
        else:
            kind = "warm-up (weights only)" if r["warmup"] else "search (weights + architecture)"
            lines.append(f"| progressive stage 1, batch {r['batch']} | {kind}: one step {r['step_s']:.2f} s, "
                         f"projected CIFAR-10 epoch | {CIFAR_STEPS} | {r['projected_cifar10_epoch_s']:.0f} |")
    table = "\n".join(lines)
    harness.write_results(args.out, "search_epoch", rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
