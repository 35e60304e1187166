"""Eager CPU step times of two checkouts side by side: ``fastnas train``'s step and a progressive
search iteration, each checkout in its own process, the order alternating from round to round (on a
small shared machine the first of two back-to-back runs is often the faster, so a fixed order biases).

    python benchmarks/ab_steps.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 4] [--steps 6] [--out DIR]

A checkout is a directory holding the ``fastnas`` package with its built ``fastnas/_C*.so`` (``git
worktree add DIR REV``, then copy the extension in or build it in place). Steps: Trainer.step of DARTS_V2
(C=16, 8 cells, batch 32, drop-path 0.2, the DARTS recipe's cutout and auxiliary head, embedded data)
and Searcher.step of the progressive preset (5 cells, C=16, batch 32, weight and architecture step):
the median of ``--steps`` steps after one warm-up step, per run; and a warm-up epoch of the progressive
preset (weight steps only) of ``--steps`` steps as ``Searcher.train_epoch`` runs it, after one untimed
epoch: its time per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import harness  # noqa: F401  (this checkout's benchmarks on sys.path)

WORKER = r'''
import statistics, sys, tempfile, time
import torch
from fastnas.infra import config as cfglib
from fastnas.infra.rundir import RunDir

what, steps = sys.argv[1], int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
    if what == "train":
        from fastnas.space.genotype import published
        from fastnas.train import PRESETS, TrainConfig, Trainer
        cfg = cfglib.build_config(TrainConfig, PRESETS, {"genotype": "DARTS_V2", "device": "cpu", "batch_size": 32,
                                  "channels": 16, "layers": 8, "embedded_size": 512, "plots": False,
                                  "export": False}, "darts")
        torch.manual_seed(0)
        t = Trainer(cfg, run, torch.device("cpu"), published("DARTS_V2"))
        t.net.train()
        t.net.drop_path_prob = 0.2
        sums = torch.zeros(3)
        step = lambda: t.step(sums)
    else:
        from fastnas.search import PRESETS, SearchConfig, Searcher
        warmup = what == "warmup"
        cli = {"preset": "progressive", "cells": [5] * 3, "channels": [16] * 3, "batch_size": 32,
               "warmup_epochs": [int(warmup)] * 3, "epochs": [2] * 3, "embedded_size": 512, "plots": False,
               "derived_eval_images": 0, "device": "cpu", "max_steps": steps}
        cfg = cfglib.build_config(SearchConfig, PRESETS, cli, "progressive")
        s = Searcher(cfg, run, torch.device("cpu"))
        torch.manual_seed(0)
        s.build_stage(0)
        s.net.train()
        gens, sums = [torch.Generator().manual_seed(0)], torch.zeros(4)
        step = lambda: s.step(gens, sums)
    if what == "warmup":  # a warm-up epoch of `steps` steps as the epoch loop runs it, per step
        s.train_epoch(0, 0)
        t0 = time.perf_counter()
        s.train_epoch(0, 0)
        print((time.perf_counter() - t0) / steps)
        sys.exit(0)
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
print(statistics.median(times))
'''


def run(checkout: str, what: str, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    r = subprocess.run([sys.executable, "-c", WORKER, what, str(steps)], capture_output=True, text=True, env=env,
                       cwd=os.path.abspath(checkout), timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"error: {checkout} {what}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    for d in (a.old, a.new):
        if not os.path.isdir(os.path.join(d, "fastnas")):
            print(f"error: {d} holds no fastnas package", file=sys.stderr)
            return 2
    kinds = ("train", "search", "warmup")
    times = {(c, w): [] for c in ("old", "new") for w in kinds}
    for r in range(a.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for what in kinds:
            for c in order:
                times[(c, what)].append(run(a.old if c == "old" else a.new, what, a.steps))
                print(f"round {r + 1}: {c} {what} {times[(c, what)][-1]:.3f} s", flush=True)
    lines = ["| step | old, each run (s) | new, each run (s) | median old / new |", "|---|---|---|---|"]
    rows = []
    for what, label in (("train", "Trainer.step DARTS_V2 C=16, 8 cells, batch 32"),
                        ("search", "progressive iteration, 5 cells, C=16, batch 32"),
                        ("warmup", "progressive warm-up epoch per step, 5 cells, C=16, batch 32")):
        old, new = times[("old", what)], times[("new", what)]
        rows.append({"step": what, "old": old, "new": new})
        lines.append(f"| {label} | {', '.join(f'{x:.3f}' for x in old)} | {', '.join(f'{x:.3f}' for x in new)} | "
                     f"{statistics.median(old):.3f} / {statistics.median(new):.3f} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "ab_steps.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(a.out, "ab_steps.md"), "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
