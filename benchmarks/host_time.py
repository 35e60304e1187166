"""Host time per iteration of the default method at each stage's shape (issue 20): what the host spends
issuing a step, measured where the arithmetic is negligible (batch 2, 8x8 images, C=4), so the wall time
is Python, dispatch and the operator calls themselves.

    python benchmarks/host_time.py [--stages 1 2 3] [--rounds 7] [--iters 10] [--profile STAGE] [--out DIR]

Per stage: its cells and candidate ops (5/11/17 cells, 8/5/3 ops; stage 2 and 3 keep the ops a pruned
supernet typically keeps), a warm-up iteration (the weight step alone: 10 of every stage's 25 epochs)
and a search iteration (weight step and architecture step), each eager and with both graph flags
(``--cuda-graphs --op-graphs``) against stand-ins for torch.cuda's graphs (op_count.py's: a replay
costs its Python and its input copies, not the op). A GPU's host does the same Python and dispatch per
call plus a launch, so on a launch-bound GPU these milliseconds are a floor under the step: issue 20's
20-minute search is about 19,600 iterations, 61 ms each on average. The minimum over rounds of the
mean over `--iters` iterations, one thread, each stage in its own process. ``--profile STAGE`` measures
that stage alone, in this process, and prints cProfile's top entries for its graphed warm-up iteration.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import harness  # noqa: E402  (first: this checkout on sys.path)

CELLS = {1: 5, 2: 11, 3: 17}
STAGE_OPS = {  # stage 1: all 8; later stages: what pruning typically leaves (the cost is in which ops run)
    1: None,
    2: ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3"],
    3: ["skip_connect", "sep_conv_3x3", "dil_conv_3x3"],
}
MODES = ("eager", "graphs")


def measure(stage: int, rounds: int, iters: int, profile: bool) -> dict:
    import torch
    from op_count import _CountingGraphs, _CountingOpGraphs

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.search import PRESETS as P
    from fastnas.search import SearchConfig, Searcher

    torch.set_num_threads(1)
    cli = {"preset": "progressive", "cells": [CELLS[stage]], "channels": [4], "batch_size": 2,
           "warmup_epochs": [0], "epochs": [2], "skip_dropout": [0.0 if stage == 1 else 0.4],
           "embedded_size": 64, "image_size": 8, "plots": False, "derived_eval_images": 0, "device": "cpu"}
    if STAGE_OPS[stage]:
        cli["primitives"] = STAGE_OPS[stage]
    cli["ops_kept"] = [len(cli.get("primitives", P["progressive"].get("primitives", [0] * 8)))]
    cfg = cfglib.build_config(SearchConfig, P, cli, "progressive")
    row = {"stage": stage, "cells": CELLS[stage], "ops": cfg.ops_kept[0]}
    with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
        s = Searcher(cfg, run, torch.device("cpu"))
        s.build_stage(0)
        s.net.train()
        s.net.set_skip_dropout(cfg.skip_dropout[0])
        gens = [torch.Generator().manual_seed(0)]
        sums = torch.zeros(4)
        for mode in MODES:
            if mode == "graphs":
                s.use_graphs(backend=_CountingGraphs())
                s.use_op_graphs(backend=_CountingOpGraphs())
            for phase, arch in (("warmup", False), ("search", True)):
                s.sampler_generator.manual_seed(1)
                ahead = not arch  # as the epoch loop runs a warm-up: each step draws the next one's sample
                for _ in range(4):  # first calls, captures, the graphs' warm-up steps
                    s.step(gens, sums, arch=arch, ahead=ahead)
                best = float("inf")
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        s.step(gens, sums, arch=arch, ahead=ahead)
                    best = min(best, (time.perf_counter() - t0) / iters)
                row[f"{mode}_{phase}_ms"] = best * 1e3
        if profile:
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            for _ in range(iters):
                s.step(gens, sums, arch=False, ahead=True)
            pr.disable()
            pstats.Stats(pr, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| stage | cells | ops | warm-up iteration, eager (ms) | search iteration, eager (ms) | "
             "warm-up iteration, both graph flags (ms) | search iteration, both graph flags (ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['stage']} | {r['cells']} | {r['ops']} | {r['eager_warmup_ms']:.1f} | "
                     f"{r['eager_search_ms']:.1f} | {r['graphs_warmup_ms']:.1f} | {r['graphs_search_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=int, nargs="*", default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--profile", type=int, choices=[1, 2, 3], help="print cProfile's top entries for this stage")
    p.add_argument("--out", help="write host_time.json / host_time.md here")
    p.add_argument(harness.WORKER_FLAG, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return harness.worker_reply(measure(int(args.worker), args.rounds, args.iters, False))
    if args.profile:
        print(table([measure(args.profile, args.rounds, args.iters, True)]))
        return 0
    rows = []
    for stage in args.stages:
        row = harness.run_worker(__file__, str(stage), ["--rounds", args.rounds, "--iters", args.iters])
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    md = table(rows)
    print(md)
    harness.write_results(args.out, "host_time", rows, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
