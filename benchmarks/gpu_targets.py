"""Issue 20's targets from the result files of one gpu_check.sh output folder.

    python benchmarks/gpu_targets.py OUTDIR [--sync-free true|false]

writes OUTDIR/targets.json (one flat object the next check reads; what was not measured is null),
OUTDIR/targets.md (each target, its goal, the measured value and whether it is met) and
OUTDIR/targets.png (the same as bars: measured / goal). Reads what train_speed.py, loss_curve.py,
method_step.py, fastnas search and the sync-free tests wrote there, by one call or several.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

# Search iterations of issue 20's table (H200, 2026-11-29, C=16, 8 cells, batch 32, eager, cuDNN's
# heuristics): images/s.
BEFORE = {"darts": 51.1, "pcdarts": 33.8, "drnas": 42.6, "pdarts": 44.4, "darts2": 14.4}
SOFTMAX_FAMILY = ("darts", "pcdarts", "drnas", "pdarts")
GOALS = {"retrain_img_s": 4000.0, "retrain_600_epochs_h": 2.1, "search_total_min": 20.0, "softmax_family": 3.0,
         "darts2": 2.0}


def _rows(out: Path, name: str) -> list:
    try:
        rows = json.loads((out / name).read_text())
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def _curves(out: Path, folder: str) -> dict:
    """loss_curve.py's comparison of each trainer mode with eager fp32 in that folder."""
    try:
        return json.loads((out / folder / "loss_curve.json").read_text())["configs"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _stage_epochs_s(out: Path, key: str) -> list[float | None]:
    """The search's epoch of each of the three stages (metrics.jsonl: one row per epoch, kept across a
    resume; None where missing): its steps (``epoch_time_s``), or with the derivation, metrics and
    checkpoint after them (``epoch_wall_s``)."""
    try:
        rows = [json.loads(line) for line in (out / "search" / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        rows = []
    last = {r.get("stage"): round(r[key], 2) for r in rows if key in r}  # each stage's last row
    return [last.get(stage) for stage in (1, 2, 3)]


def _stage_ends_s(out: Path) -> float:
    """Seconds the search's stage ends took (scoring the derived cell, plots, pruning, building the next
    supernet: summary.json's ``finish_s`` per stage; 0 where not recorded)."""
    try:
        stages = json.loads((out / "search" / "summary.json").read_text()).get("stages", [])
    except (OSError, ValueError, AttributeError):
        return 0.0
    return sum(st.get("finish_s", 0.0) for st in stages if isinstance(st, dict))


def _sync_free(out: Path, verdict: str | None) -> bool | None:
    """This call's sync-free test, or an earlier call's log in the same folder."""
    if verdict in ("true", "false"):
        return verdict == "true"
    try:
        last = (out / "sync_free.log").read_text().strip().splitlines()[-1]
    except (OSError, IndexError):
        return None
    return "passed" in last and "failed" not in last and "error" not in last


def _search_graphs(out: Path) -> str | None:
    """The search's "CUDA graphs: ..." lines (once each, a capture failure among them), or None when it
    did not finish."""
    try:
        text = (out / "search.log").read_text()
    except OSError:
        return None
    if "search time" not in text:  # skipped, or ended before its last epoch did
        return None
    lines = [ln.split(": ", 1)[-1] for ln in text.splitlines() if "CUDA graph" in ln]
    return "; ".join(dict.fromkeys(lines)) or "eager"


def _search_rates(out: Path) -> tuple[dict, dict, dict]:
    """Search iterations per preset (images/s): eager, replayed as CUDA graphs (rows whose capture
    worked), and with per-op graphs of the hard sampler's weight step (likewise)."""
    eager = {r["preset"]: r["images_per_s"] for r in _rows(out, "method_step.json") if "images_per_s" in r}
    graphed = {r["preset"]: r["images_per_s"] for r in _rows(out, "graphs/method_step.json")
               if "images_per_s" in r and r.get("mode", "").startswith("cuda graphs")}
    per_op = {r["preset"]: r["images_per_s"] for r in _rows(out, "op_graphs/method_step.json")
              if "images_per_s" in r and "per-op graphs:" in r.get("mode", "")}
    return eager, graphed, per_op


def _op_graphs_paid(graphed: dict, per_op: dict) -> bool:
    return per_op.get("progressive", 0) > graphed.get("progressive", 0) > 0


def op_graphs_pay(out: str | Path) -> bool:
    """Whether the default method's iteration was faster with per-op graphs than with --cuda-graphs alone
    in this folder (gpu_check then runs the search's stage epochs with them)."""
    _, graphed, per_op = _search_rates(Path(out))
    return _op_graphs_paid(graphed, per_op)


def _warmup_share(out: Path, op_graphs_paid: bool) -> float | None:
    """A warm-up step of the default method (weights only, its sample drawn a step early) over a search
    iteration, in the mode gpu_check ran the stage epochs in (per-op graphs where they paid, else
    --cuda-graphs), at method_step's shape (None: not measured)."""
    folder = "op_graphs/" if op_graphs_paid else "graphs/"
    for r in _rows(out, folder + "method_step.json"):
        if r.get("preset") == "progressive" and r.get("warmup_s_per_iter_ahead") and r.get("s_per_iter"):
            return r["warmup_s_per_iter_ahead"] / r["s_per_iter"]
    return None


def _torch_and_device(measured: bool) -> tuple[str | None, str | None]:
    """torch's version and the GPU's name. torch itself (seconds to import) only where something was
    measured: a folder with no results (a dry run's) takes the version from the installed metadata."""
    if not measured:
        from importlib import metadata

        try:
            return metadata.version("torch"), None
        except metadata.PackageNotFoundError:
            pass
    import torch

    return torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else None


def collect(out: str | Path, sync_free: str | None = None) -> dict:
    """The targets object from the result files under `out`."""
    out = Path(out)
    # retraining: the graphed modes (out/) and the compiled one (out/compile/, beside its own eager run)
    train = [r for r in _rows(out, "train_speed_cuda.json") if "images_per_s" in r]
    curve = _curves(out, ".")
    compiled = [r for r in _rows(out, "compile/train_speed_cuda.json")
                if "images_per_s" in r and "compile" in r["config"]]
    train += compiled
    curve.update({c: v for c, v in _curves(out, "compile").items() if "compile" in c})
    # fastnas train's own step (the trainer configs) where measured: the mode a user runs. The mode to
    # recommend is the fastest that trains as eager fp32 does (target 1): a mode whose loss curve left the
    # seed-to-seed noise is reported, not chosen.
    own = [r for r in train if r["config"].startswith("trainer")] or train
    departs = sorted({r["config"] for r in own if curve.get(r["config"], {}).get("within_noise") is False})
    best = max((r for r in own if r["config"] not in departs), key=lambda r: r["images_per_s"], default=None)

    eager, graphed, per_op = _search_rates(out)
    method = {p: max(eager.get(p, 0), graphed.get(p, 0)) for p in {*eager, *graphed}}  # the faster mode
    # progressive's rate with --cuda-graphs alone; gdas' eager one (its steps are not otherwise graphed)
    without = {"progressive": graphed.get("progressive"), "gdas": eager.get("gdas")}
    speedup = {p: round(method[p] / BEFORE[p], 2) for p in SOFTMAX_FAMILY if p in method}

    # cuDNN's autotuner against its heuristics: (rate with, rate without) per measured pair
    cudnn = {}
    heur = {r["preset"]: r["images_per_s"] for r in _rows(out, "no_cudnn_benchmark/method_step.json")
            if "images_per_s" in r}
    cudnn.update({p: (eager[p], heur[p]) for p in heur if p in eager})
    b128 = {r["config"]: r["images_per_s"] for r in _rows(out, "b128/train_speed_cuda.json") if "images_per_s" in r}
    fast = "trainer+bf16+channels_last+cuda_graphs"
    if fast in b128 and fast + "+no_cudnn_benchmark" in b128:
        cudnn[f"retrain (batch 128, {fast})"] = (b128[fast], b128[fast + "+no_cudnn_benchmark"])

    # how much of each measured step the GPU was busy (well under 1: the host bounds it), and its kernels
    busy, ahead = {}, {}
    for folder, label in (("graphs/", " (cuda graphs)"), ("op_graphs/", " (op graphs)"), ("", " (eager)")):
        for r in _rows(out, folder + "method_step.json"):
            if "gpu_busy" in r:
                busy[r["preset"] + label] = {"busy": r["gpu_busy"], "kernels": r.get("kernels_per_step")}
            # the hard sampler's warm-up step: drawn when needed over drawn a step early (> 1: ahead pays)
            if r.get("warmup_s_per_iter_ahead"):
                ahead[r["preset"] + label] = round(r["warmup_s_per_iter_no_ahead"] / r["warmup_s_per_iter_ahead"], 2)
    for r in train:
        if "gpu_busy" in r:
            busy["retrain " + r["config"]] = {"busy": r["gpu_busy"], "kernels": r.get("kernels_per_step")}

    # the conditional-node probe: does one graph run the op sampled on the device, and at what gain
    conditional = None
    try:
        pr = json.loads((out / "probe_conditional.json").read_text())
    except (OSError, ValueError):
        pr = None
    if isinstance(pr, dict) and "available" in pr:
        conditional = {"captured": pr.get("captured", False), "why": pr.get("why"),
                       "matches_eager": pr.get("matches_eager"),
                       "eager_over_replay": {r["op"]: round(r["eager_ms"] / r["replay_ms"], 2)
                                             for r in pr.get("ops", []) if r.get("replay_ms")} or None}

    epochs = _stage_epochs_s(out, "epoch_time_s")
    total = total_est = None
    if all(e is not None for e in epochs):
        from fastnas.search import PRESETS, SearchConfig

        # every epoch of the preset at its stage's measured epoch with what follows it (derivation,
        # metrics, checkpoint; warm-up epochs, weights only, cost less: an upper bound), plus the three
        # stage ends as measured
        walls = [w or e for w, e in zip(_stage_epochs_s(out, "epoch_wall_s"), epochs, strict=True)]
        ends = _stage_ends_s(out)
        stage_epochs = PRESETS["progressive"].get("epochs", SearchConfig().epochs)
        total = round((sum(n * e for n, e in zip(stage_epochs, walls, strict=True)) + ends) / 60, 1)
        # the same with the warm-up epochs at their own cost, estimated from the iteration benchmark
        share = _warmup_share(out, _op_graphs_paid(graphed, per_op))
        if share is not None:
            warm = PRESETS["progressive"].get("warmup_epochs", SearchConfig().warmup_epochs)
            total_est = round((sum((n - w + w * share) * e for n, w, e in zip(stage_epochs, warm, walls, strict=True))
                               + ends) / 60, 1)

    measured = bool(train or eager or graphed or per_op or cudnn or busy or ahead or conditional
                    or any(e is not None for e in epochs))
    version, device = _torch_and_device(measured)
    return {
        "device": device, "torch": version, "date": datetime.date.today().isoformat(),
        "retrain_img_s": round(best["images_per_s"], 1) if best else None,
        "retrain_mode": best["config"] if best else None,
        "retrain_peak_mb": round(best["peak_mb"]) if best and "peak_mb" in best else None,
        "retrain_600_epochs_h": round(600 * 50000 / best["images_per_s"] / 3600, 2) if best else None,
        # does the recommended mode train as eager fp32 does (within seed-to-seed noise), every mode's loss
        "retrain_loss_within_noise": curve.get(best["config"], {}).get("within_noise") if best else None,
        "retrain_final_loss": {c: round(r["final_loss"], 4) for c, r in curve.items()} or None,
        "retrain_not_within_noise": departs or None,
        # the compiled step's warm-up (compile and graph recording) beside its rate
        "retrain_compile": {r["config"]: {"img_s": round(r["images_per_s"], 1), "warmup_s": round(r["warmup_s"], 1),
                                          "within_noise": curve.get(r["config"], {}).get("within_noise")}
                            for r in compiled} or None,
        "search_stage_epoch_s": epochs, "search_total_min": total,
        # search_total_min counts every epoch as a search epoch (an upper bound); this one counts each
        # stage's warm-up epochs at a warm-up step's share of an iteration (method_step, same mode)
        "search_total_min_warmup_estimated": total_est,
        "softmax_family_speedup": speedup or None,
        "darts2_speedup": round(method["darts2"] / BEFORE["darts2"], 2) if "darts2" in method else None,
        "sync_free": _sync_free(out, sync_free),
        "search_graphs": _search_graphs(out),
        # the hard sampler with per-op graphs of its weight step, against its rate without them
        "op_graphs_vs_without": {p: round(per_op[p] / without[p], 2) for p in per_op if without.get(p)} or None,
        # which mode gave each search rate above, and the graphs' gain over eager in this run
        "search_mode": {p: "cuda_graphs" if graphed.get(p, 0) > eager.get(p, 0) else "eager" for p in method},
        "cuda_graphs_vs_eager": {p: round(graphed[p] / eager[p], 2) for p in graphed if p in eager} or None,
        "cudnn_benchmark_vs_heuristics": {k: round(on / off, 2) for k, (on, off) in cudnn.items()} or None,
        "gpu_busy": busy or None,
        "warmup_draw_ahead": ahead or None,
        "conditional_nodes": conditional,
    }


def verdicts(t: dict) -> list[dict]:
    """Issue 20's targets one by one: what, the goal, the measured value (None: not measured), whether
    it is met (None: not measured), and measured / goal for the picture (higher is better)."""
    def row(what, goal, measured, met, ratio, short=None):
        return {"target": what, "goal": goal, "measured": measured, "met": met, "ratio": ratio, "short": short}

    rows = []
    img_s, mode = t.get("retrain_img_s"), t.get("retrain_mode")
    rows.append(row(f"1. retraining images/s, batch 96 ({mode or 'no mode measured'})", ">= 4,000",
                    img_s, None if img_s is None else img_s >= GOALS["retrain_img_s"],
                    None if img_s is None else img_s / GOALS["retrain_img_s"], "retraining, images/s"))
    within = t.get("retrain_loss_within_noise")
    rows.append(row("1. the same loss curve as eager fp32 (final loss within seed noise)", "within noise",
                    within, within, None))
    hours = t.get("retrain_600_epochs_h")
    rows.append(row("1. 600 epochs of CIFAR-10", "<= 2.1 h", hours, None if hours is None else hours <= 2.1,
                    None if not hours else GOALS["retrain_600_epochs_h"] / hours, "600 epochs, hours"))
    total = t.get("search_total_min")
    rows.append(row("2. the default search, three stages, preset epochs", "<= 20 min", total,
                    None if total is None else total <= GOALS["search_total_min"],
                    None if not total else GOALS["search_total_min"] / total, "default search, minutes"))
    speedup = t.get("softmax_family_speedup") or {}
    for p in SOFTMAX_FAMILY:
        x = speedup.get(p)
        rows.append(row(f"3. {p} iteration vs 2026-11-29", ">= 3x", x, None if x is None else x >= 3.0,
                        None if x is None else x / GOALS["softmax_family"], f"{p}, speed-up"))
    x = t.get("darts2_speedup")
    rows.append(row("3. darts2 iteration vs 2026-11-29", ">= 2x", x, None if x is None else x >= 2.0,
                    None if x is None else x / GOALS["darts2"], "darts2, speed-up"))
    sync = t.get("sync_free")
    rows.append(row("4. no host sync in a steady search or training step", "true", sync, sync, None))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return str(v)


def render(t: dict) -> str:
    lines = [f"Issue 20's targets on {t.get('device') or 'no GPU'} (torch {t.get('torch')}, {t.get('date')})", "",
             "| target | goal | measured | met |", "|---|---|---|---|"]
    for r in verdicts(t):
        met = "not measured" if r["met"] is None else "yes" if r["met"] else "**no**"
        lines.append(f"| {r['target']} | {r['goal']} | {_fmt(r['measured'])} | {met} |")
    epochs = t.get("search_stage_epoch_s") or []
    if any(e is not None for e in epochs):
        lines += ["", "Search stage epochs (s): " + ", ".join(_fmt(e) for e in epochs)]
    if t.get("search_total_min_warmup_estimated") is not None:
        lines += ["", f"The default search with its warm-up epochs (weights only) at their own cost, estimated: "
                      f"{_fmt(t['search_total_min_warmup_estimated'])} min (target 2 above counts every epoch "
                      "as a search epoch)"]
    return "\n".join(lines)


def plot(t: dict, path: Path) -> Path | None:
    """Measured / goal per measured target (1 = the goal; right of it is met)."""
    rows = [r for r in verdicts(t) if r["ratio"] is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    ys = range(len(rows))[::-1]
    colors = ["tab:green" if r["met"] else "tab:red" for r in rows]
    ax.barh(list(ys), [r["ratio"] for r in rows], color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(list(ys), [f"{r['short']}: {_fmt(r['measured'])}" for r in rows], fontsize=8)
    ax.set_xlabel("measured / goal (higher is better; 1 = the goal)")
    ax.set_title(f"Issue 20 on {t.get('device') or 'no GPU'}, {t.get('date')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="gpu_check.sh's output folder")
    p.add_argument("--sync-free", choices=["true", "false", "null"], default="null",
                   help="this call's sync-free verdict (null: read the folder's sync_free.log)")
    p.add_argument("--op-graphs-pay", action="store_true",
                   help="only print 1 if per-op graphs made the default method's iteration faster, else 0")
    a = p.parse_args(argv)
    out = Path(a.out)
    if not out.is_dir():
        print(f"error: {out} is not a folder", file=sys.stderr)
        return 2
    if a.op_graphs_pay:
        print(int(op_graphs_pay(out)))
        return 0
    t = collect(out, a.sync_free)
    (out / "targets.json").write_text(json.dumps(t, indent=1) + "\n")
    text = render(t)
    (out / "targets.md").write_text(text + "\n")
    plot(t, out / "targets.png")
    print("targets.json:", json.dumps(t))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
