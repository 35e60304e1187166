"""Operator calls, host synchronizations and host time per step, per method preset and for the
retraining step (issue 20's CPU-side measure): on a GPU every operator call is at least one kernel
launch, and every ``aten::_local_scalar_dense`` (``.item()``, ``.tolist()``, ``float(t)``, ``bool(t)``)
is a host-device synchronization, so these counts are what a GPU step is bound by before any FLOP.

    python benchmarks/op_count.py [--presets darts pcdarts ...] [--retrain] [--out DIR]

One search iteration (a weight step and an architecture step, C=16, 8 cells, batch 32, the preset's
own mechanisms) runs under torch.profiler on the CPU after one unprofiled warm-up iteration; counted:
every ``aten::`` call (nested calls included: a launch-bound GPU pays for each kernel they launch),
the top-level ``aten::`` calls (what Python dispatches), the scalar reads (syncs on a GPU), the
``.tolist()``/``.numpy()`` reads (a CPU tensor's never reach the dispatcher: counted in one more
iteration; syncs on a GPU), the tensors built from Python numbers (``aten::lift_fresh``: host-to-device
copies on a GPU), and the wall time of the iteration against the time spent inside top-level ops (the rest is Python and
dispatch). Each preset runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import harness  # noqa: E402  (first: this checkout on sys.path)

PRESETS = ("darts", "darts2", "pcdarts", "gdas", "drnas", "pdarts", "progressive")
SYNC_OPS = ("aten::_local_scalar_dense",)
# Python-level reads: `.tolist()` and `.numpy()` of a CPU tensor never reach the dispatcher (on a GPU they
# copy device-to-host, a sync), so they are counted where Python calls them, in a separate iteration.
PY_READS = ("tolist", "numpy")


def _python_reads(step) -> int:
    """Calls of `.tolist()` / `.numpy()` on tensors while `step()` runs (one more iteration, unprofiled)."""
    from torch.overrides import TorchFunctionMode

    class Reads(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in PY_READS:
                Reads.count += 1
            return func(*args, **(kwargs or {}))

    with Reads():
        step()
    return Reads.count


def _count(prof) -> dict:
    """Operator calls, top-level calls, scalar reads and top-level op time from a profile."""
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    ids = {e.id for e in events}
    top = [e for e in events if e.cpu_parent is None or e.cpu_parent.id not in ids]
    return {"aten_calls": len(events), "top_level_calls": len(top),
            "syncs": sum(e.name in SYNC_OPS for e in events),
            "host_copies": sum(e.name == "aten::lift_fresh" for e in events),
            "op_time_s": sum(e.cpu_time_total for e in top) / 1e6}


def search_worker(name: str, batch: int, channels: int, cells: int) -> dict:
    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.search import PRESETS as P
    from fastnas.search import SearchConfig, Searcher

    preset = P[name]
    stages = len(preset.get("cells", [5, 11, 17]))
    ks = [k for k in preset.get("partial_channels", [1]) if channels % k == 0] or [1]
    cli = {"preset": name, "cells": [cells] * stages, "channels": [channels] * stages, "batch_size": batch,
           "warmup_epochs": [0] * stages, "epochs": [2] * stages, "embedded_size": 8 * batch,
           "plots": False, "derived_eval_images": 0, "partial_channels": [ks[0]] * stages, "device": "cpu"}
    cfg = cfglib.build_config(SearchConfig, P, cli, "progressive")
    with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
        s = Searcher(cfg, run, torch.device("cpu"))
        s.build_stage(0)
        s.net.train()
        gens = [torch.Generator(s.train_data.images.device).manual_seed(0) for _ in s.shards]
        sums = torch.zeros(4)
        s.step(gens, sums)  # warm-up: allocations, first-call costs
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            s.step(gens, sums)  # exactly one iteration: what the epoch loop repeats
        wall = time.perf_counter() - t0
        reads = _python_reads(lambda: s.step(gens, sums))
    return {"config": name, "sampler": cfg.sampler, **_count(prof), "python_reads": reads, "wall_s": wall}


def retrain_worker(name: str, batch: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fastnas.space.genotype import PUBLISHED
    from fastnas.space.network import EvalNetwork

    torch.manual_seed(0)
    net = EvalNetwork(PUBLISHED["DARTS_V2"], 36, 20, 10, auxiliary=True, drop_path=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    # "bf16": autocast as `--amp bf16` runs it; the casts it adds are counted like any other call
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("bf16"))

    def step():
        with amp:
            logits, aux = net(x)
            loss = F.cross_entropy(logits.float(), y) + 0.4 * F.cross_entropy(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()

    net.train()
    step()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - t0
    casts = sum(e.name == "aten::_to_copy" for e in prof.events())  # dtype casts (autocast's included)
    return {"config": name, "sampler": "-", **_count(prof), "python_reads": _python_reads(step),
            "casts": casts, "wall_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="*", default=list(PRESETS), help="search presets (none: only retraining)")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=True,
                   help="also the DARTS_V2 retraining step (C=36, 20 cells, auxiliary head, batch 32), in fp32 "
                        "and under bf16 autocast")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        if a.worker.startswith("retrain DARTS_V2"):
            return harness.worker_reply(retrain_worker(a.worker, a.batch))
        return harness.worker_reply(search_worker(a.worker, a.batch, a.channels, a.cells))
    rows = []
    names = [*a.presets, *(["retrain DARTS_V2", "retrain DARTS_V2 bf16"] if a.retrain else [])]
    for name in names:
        row = harness.run_worker(__file__, name, ["--batch", a.batch, "--channels", a.channels, "--cells", a.cells])
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"Operator calls per step on the CPU (search: one iteration = weight step + architecture step, C="
             f"{a.channels}, {a.cells} cells, batch {a.batch}; retraining: DARTS_V2, C=36, 20 cells, batch "
             f"{a.batch})", "",
             "| step | sampler | aten calls (nested incl.) | top-level calls | scalar reads (GPU syncs) "
             "| tolist/numpy reads (GPU syncs) | tensors from host numbers (H2D copies) | dtype casts "
             "| wall s | in top-level ops | outside ops (Python, dispatch) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | | | | | | |")
            continue
        outside = max(0.0, r["wall_s"] - r["op_time_s"])
        lines.append(f"| {r['config']} | {r['sampler']} | {r['aten_calls']:,} | {r['top_level_calls']:,} | "
                     f"{r['syncs']} | {r['python_reads']} | {r['host_copies']} | {r.get('casts', '-')} | "
                     f"{r['wall_s']:.2f} | "
                     f"{r['op_time_s']:.2f} | {outside:.2f} |")
    table = "\n".join(lines)
    print(table)
    harness.write_results(a.out, "op_count", rows, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
