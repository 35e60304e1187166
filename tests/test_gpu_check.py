"""benchmarks/gpu_check.sh keeps to its time budget: a device call is cut at 10 minutes, and what the
check measures takes longer than that, so the script plans its steps against GPU_CHECK_BUDGET_S, skips
what no longer fits, marks finished steps done in its output folder so that a second call runs only
the rest, and always writes targets.json. Its dry run (GPU_CHECK_DRY=1: the plan, every command assumed
to use its whole time limit, nothing built or run) checks that here without a GPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RESERVE = 25  # the script's seconds kept for its tables and targets.json


def dry_run(out: Path, budget: int, steps: str | None = None) -> list[tuple[int, int, str]]:
    """Runs the dry plan into `out`; returns its lines as (start s, limit s, command)."""
    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BUDGET_S": str(budget), "PYTHON": sys.executable}
    env.pop("GPU_CHECK_STEPS", None)
    if steps is not None:
        env["GPU_CHECK_STEPS"] = steps
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = (out / "plan.txt").read_text().splitlines() if (out / "plan.txt").exists() else []
    rows = []
    for line in plan:
        m = re.match(r"(\d+) s \+(\d+) s: (.*)$", line)
        assert m, line
        rows.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return rows


def kind(command: str) -> str:
    """The step a planned command belongs to."""
    for key, name in [(" -m pytest", "tests"), ("train_speed.py", "train"), ("--op-graphs", "graphs"),
                      ("--cuda-graphs --presets", "graphs"), ("method_step.py", "method"),
                      ("fastnas.search", "search"), ("compare_ops.py", "ops")]:
        if key in command:
            return name
    raise AssertionError(f"unknown command in the plan: {command}")


def test_unlimited_plan_runs_every_step_most_important_first(tmp_path):
    rows = dry_run(tmp_path, budget=100_000)
    kinds = [kind(c) for _, _, c in rows]
    order = ["tests", "train", "method", "graphs", "search", "ops"]
    assert sorted(set(kinds), key=order.index) == order
    assert kinds == sorted(kinds, key=order.index), kinds  # tests, then target 1, 3, 2, the op benchmark
    assert sum(c.count("fastnas.search") for _, _, c in rows) == 3  # the three stages, each measured
    assert not (tmp_path / "skipped.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "plan.txt", "targets.json"]  # no logs
    assert not any((tmp_path / "done").iterdir())  # a dry run marks nothing done


def test_budget_cuts_limits_and_skips_what_does_not_fit(tmp_path):
    budget = 500
    rows = dry_run(tmp_path, budget=budget)
    assert rows, "nothing planned"
    start, limit, _ = rows[-1]
    assert start + limit <= budget - RESERVE  # every command ends before the reserve for targets.json
    for (s0, l0, _), (s1, _, _) in zip(rows[:-1], rows[1:], strict=True):
        assert s1 == s0 + l0
    skipped = (tmp_path / "skipped.txt").read_text().splitlines()
    assert skipped and all(line.startswith("skipped, out of time") for line in skipped)
    assert any("fastnas.search" in line for line in skipped)  # the stage epochs did not fit this budget
    targets = json.loads((tmp_path / "targets.json").read_text())  # written all the same, unmeasured = null
    for key in ("retrain_img_s", "search_total_min", "softmax_family_speedup", "darts2_speedup", "sync_free"):
        assert targets[key] is None, key
    assert targets["search_stage_epoch_s"] == [None, None, None]
    assert targets["search_stage_graphs"] == [None, None, None]


def test_second_call_runs_only_what_the_first_left(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    for step in ("tests", "train", "method", "graphs", "search_stage1"):
        (done / step).write_text("2026-12-03T00:00:00\n")
    rows = dry_run(tmp_path, budget=100_000)
    commands = [c for _, _, c in rows]
    assert [kind(c) for c in commands] == ["search", "search", "ops"]
    assert "--cells 11" in commands[0] and "--cells 17" in commands[1]  # stage 1 was measured already
    # selecting steps by name still leaves out what is done
    rows = dry_run(tmp_path, budget=100_000, steps="train search")
    assert [kind(c) for _, _, c in rows] == ["search", "search"]
