"""Scaling of search throughput with the number of processes (torchrun; gloo on CPU, NCCL on GPUs).

    python benchmarks/dist_scaling.py [--nprocs 1,2] [--steps 8] [--batch 32] [--device cpu|cuda] [--out DIR]

Each run is one search stage (5 cells, C=16, 8 ops, gumbel-hard) with a fixed number of steps per
process and a fixed per-process batch (weak scaling: N processes see N times the images). CPU runs
split the machine's cores evenly between the processes. images/s = steps * batch * N / epoch time;
efficiency = images/s(N) / (N * images/s(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import harness  # first: this checkout on sys.path

ROOT = str(harness.ROOT)


def run(nproc: int, steps: int, batch: int, device: str, tmp: str) -> dict:
    out = os.path.join(tmp, f"n{nproc}")
    args = ["--preset", "progressive", "--cells", "5", "--channels", "16", "--ops-kept", "8", "--skip-dropout", "0",
            "--epochs", "2", "--warmup-epochs", "1", "--batch-size", str(batch), "--max-steps", str(steps),
            "--embedded-size", str(max(2 * batch * nproc * steps, 512)), "--device", device, "--out", out]
    threads = max(1, (os.cpu_count() or 1) // nproc) if device == "cpu" else 4
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads))
    if nproc == 1:
        cmd = [sys.executable, "-m", "fastnas.search", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
               "fastnas.search", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"run with {nproc} processes failed:\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    search = rows[-1]  # the epoch with architecture steps (the first is the weights-only warm-up)
    return {"nproc": nproc, "threads_per_proc": threads, "batch_per_proc": batch, "steps": search["steps"],
            "epoch_s": search["epoch_time_s"],
            "images_per_s": search["steps"] * batch * nproc / search["epoch_time_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.nprocs.split(",")):
            rows.append(run(n, args.steps, args.batch, args.device, tmp))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["images_per_s"] / rows[0]["nproc"]
    lines = [f"search stage 1 (5 cells, C=16, gumbel-hard), device {args.device}, batch {args.batch} per process",
             "",
             f"| processes | threads each | s / epoch ({args.steps} steps) | images/s | speed-up | efficiency |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['nproc']} | {r['threads_per_proc']} | {r['epoch_s']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / rows[0]['images_per_s']:.2f}x | "
                     f"{r['images_per_s'] / (base * r['nproc']):.0%} |")
    table = "\n".join(lines)
    harness.write_results(args.out, f"dist_scaling_{args.device}", rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
