"""What every benchmark script shares: this checkout first on ``sys.path`` (the one place that does it),
one configuration per worker subprocess (a fresh process, so peak memory and thread settings are that
configuration's alone), and writing results as JSON and a Markdown table.

    import harness  # first among the local imports: the checkout's fastnas is the one benchmarked

    if args.worker:                       # inside the subprocess
        return harness.worker_reply(measure(args.worker, ...))
    row = harness.run_worker(__file__, name, ["--batch", "32"])   # in the parent, one per config
    harness.write_results(args.out, "search_step", rows, table)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the checkout's fastnas, whatever else is installed
    sys.path.insert(0, str(ROOT))

WORKER_FLAG = "--worker"


def worker_reply(row: dict) -> int:
    """Inside a worker: hand one result row to the parent (the last line of stdout)."""
    print(json.dumps(row), flush=True)
    return 0


def run_worker(script: str, name: str, args: list[str], *, env: dict | None = None,
               timeout: float | None = None) -> dict:
    """Run `script --worker name args...` in a fresh interpreter; its row, or ``{"error": last line}``
    (a failed configuration is reported, the others still run)."""
    cmd = [sys.executable, os.path.abspath(script), WORKER_FLAG, name, *map(str, args)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": name, "error": f"timed out after {timeout} s"}
    if r.returncode != 0:
        return {"config": name, "error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_results(out: str | os.PathLike | None, stem: str, rows, markdown: str) -> None:
    """``<out>/<stem>.json`` (the rows) and ``<out>/<stem>.md`` (the table); nothing without `out`."""
    if not out:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown.rstrip() + "\n")


def busy_fraction(intervals: list[tuple[float, float]], span: float) -> float:
    """The fraction of `span` covered by the union of `intervals` (start, end): how much of the wall
    time some kernel was running (overlapping kernels on several streams count once)."""
    covered, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        covered += b - max(a, end)
        end = b
    return covered / span if span > 0 else 0.0


def gpu_profile(step, n: int) -> dict:
    """Run `step()` `n` times under the CUDA profiler: the kernels launched per step (inside replayed
    CUDA graphs too), their summed time per step, and the fraction of the wall time the GPU was busy
    (the union of kernel intervals over the profiled span, on the profiler's one clock). Well under 1
    means the host (Python, dispatch, launches, a sync waiting on the host) bounds the step; near 1 that
    the kernels do. Empty on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {}
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("fastnas::profiled_steps"):
            for _ in range(n):
                step()
            torch.cuda.synchronize()
    events = prof.events()
    whole = next(e for e in events if e.name == "fastnas::profiled_steps")
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]
    intervals = [(e.time_range.start, e.time_range.end) for e in kernels]
    return {"kernels_per_step": round(len(kernels) / n, 1),
            "gpu_busy": round(busy_fraction(intervals, whole.time_range.end - whole.time_range.start), 3),
            "gpu_kernel_ms_per_step": round(sum(b - a for a, b in intervals) / n / 1e3, 3)}


def profile_cells(row: dict) -> str:
    """The kernels/step and GPU busy cells of a results table from a row :func:`gpu_profile` filled ("-"
    where nothing was profiled, e.g. on a CPU)."""
    kernels = f"{row['kernels_per_step']:,.0f}" if "kernels_per_step" in row else "-"
    busy = f"{100 * row['gpu_busy']:.0f}%" if "gpu_busy" in row else "-"
    return f"{kernels} | {busy}"
