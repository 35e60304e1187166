"""Per-stage learning signals of finished search runs, as a markdown table: valid accuracy of the sampled
network at the stage's last epoch, the derived cell's eval-mode accuracy inside the supernet, mean
per-edge entropy of the normal cell (and its maximum ln K), skips and parameter-free ops of the derived
normal cell, and search time; mean +- std over the runs given (e.g. one per seed).

    python benchmarks/search_stages.py runs/study/search/softmax-seed* --out benchmarks/results/cpu/quick_stages.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def stage_rows(run: Path) -> list[dict]:
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = []
    for st in summary["stages"]:
        last = [r for r in rows if r["stage"] == st["stage"]][-1]
        out.append({"stage": st["stage"], "valid_acc": last["valid_acc"], "train_acc": last["train_acc"],
                    "derived_acc": st.get("derived_acc"), "entropy": last["entropy_normal"],
                    "entropy_max": last["entropy_max"], "skips": st["normal_skips"],
                    "param_free": st["normal_param_free"], "cap_removed": st["skips_removed_by_cap"]})
    return out, summary["search_time_s"]


def fmt(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    per_run, times = [], []
    for run in a.runs:
        rows, t = stage_rows(run)
        per_run.append(rows)
        times.append(t)
    lines = [f"{len(a.runs)} run(s): " + ", ".join(r.name for r in a.runs), "",
             "| stage | train acc | valid acc (sampled) | derived cell acc (eval) | entropy / max | skips | "
             "param-free | removed by cap |", "|---|---|---|---|---|---|---|---|"]
    for s in range(len(per_run[0])):
        col = [run[s] for run in per_run]
        lines.append(f"| {s + 1} | {fmt([c['train_acc'] for c in col])} | {fmt([c['valid_acc'] for c in col])} | "
                     f"{fmt([c['derived_acc'] for c in col])} | {fmt([c['entropy'] for c in col])} / "
                     f"{col[0]['entropy_max']:.3f} | {fmt([c['skips'] for c in col], 1)} | "
                     f"{fmt([c['param_free'] for c in col], 1)} | {fmt([c['cap_removed'] for c in col], 1)} |")
    lines += ["", f"search time: {fmt(times, 0)} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
