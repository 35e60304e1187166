"""Pictures of a run, drawn with matplotlib alone (no Graphviz binary needed): cell diagrams, per-edge
op-probability heatmaps, how the probabilities moved, loss/accuracy/entropy curves, retraining curves
and the study's searched-vs-random chart. Every function writes PNG files and returns their paths; a
failure to draw is reported by the caller, never fatal to a run."""

from __future__ import annotations

import json
from pathlib import Path

from fastnas.space.genotype import Genotype
from fastnas.space.primitives import PARAMETER_FREE, PRIMITIVES

# One colour per op family, so a collapsed cell (many grey/blue parameter-free ops) shows at a glance.
OP_COLORS = {
    "sep_conv_3x3": "#1b7837", "sep_conv_5x5": "#5aae61", "sep_conv_7x7": "#a6dba0",
    "dil_conv_3x3": "#762a83", "dil_conv_5x5": "#9970ab", "conv_7x1_1x7": "#c2a5cf",
    "skip_connect": "#2166ac", "max_pool_3x3": "#878787", "avg_pool_3x3": "#bababa",
    "none": "#000000", "noise": "#d6604d",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _read_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _draw_cell(ax, genotype: Genotype, cell: str, title: str) -> None:
    pairs = getattr(genotype, cell)
    concat = getattr(genotype, f"{cell}_concat")
    steps = len(pairs) // 2
    pos = {0: (0.0, 0.75), 1: (0.0, 0.25)}
    for i in range(steps):
        pos[i + 2] = (1.0 + i, 0.85 - 0.7 * i / max(1, steps - 1))
    out = (steps + 1.0, 0.5)
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{i + 2: str(i) for i in range(steps)}}
    for e, (op, j) in enumerate(pairs):
        (x0, y0), (x1, y1) = pos[j], pos[e // 2 + 2]
        color = OP_COLORS.get(op, "#444444")
        # A quadratic Bezier in data coordinates, bent to one side per edge of a node, so the two inputs
        # of a node never overlap; the label sits on the curve's midpoint.
        bend = 0.18 if e % 2 else -0.18
        cx, cy = (x0 + x1) / 2 - bend * (y1 - y0) * 2.5, (y0 + y1) / 2 + bend * (x1 - x0) / 2.5

        def at(t, x0=x0, y0=y0, x1=x1, y1=y1, cx=cx, cy=cy):
            return ((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t * t * x1,
                    (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t * t * y1)

        pts = [at(t / 40) for t in range(41)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=2, zorder=1)
        ax.annotate("", xy=at(0.9), xytext=at(0.84),
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=2, mutation_scale=14), zorder=1)
        ax.text(*at(0.5), op, fontsize=7, color=color, ha="center", va="center", zorder=2,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for c in concat:
        x0, y0 = pos[c]
        ax.annotate("", xy=out, xytext=(x0, y0), arrowprops=dict(arrowstyle="-|>", color="#999999", lw=1,
                                                                 shrinkA=14, shrinkB=14, linestyle="--"))
    for k, (x, y) in pos.items():
        fc = "#c7e9c0" if k < 2 else "#c6dbef"
        ax.text(x, y, names[k], ha="center", va="center", fontsize=9, zorder=3,
                bbox=dict(boxstyle="round,pad=0.4", fc=fc, ec="#333333"))
    ax.text(*out, "c_{k}", ha="center", va="center", fontsize=9, zorder=3,
            bbox=dict(boxstyle="round,pad=0.4", fc="#fee391", ec="#333333"))
    ax.set_xlim(-0.5, steps + 1.5)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def draw_genotype(genotype: Genotype, path: str | Path, title: str = "") -> Path:
    """The normal and the reduction cell of `genotype`, side by side, as one PNG."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ops = [op for op, _ in genotype.normal]
    skips = ops.count("skip_connect")
    free = sum(op in PARAMETER_FREE for op in ops)
    _draw_cell(axes[0], genotype, "normal", f"normal cell ({skips} skip, {free} parameter-free of {len(ops)})")
    if genotype.reduce_cell:  # a fixed, hand-designed reduction cell: say which
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, f"reduction cell: fixed ({genotype.reduce_cell})\n2 x (1x3, 3x1 grouped conv, 1x1) "
                     "+ 2 x max pool, stride 2", ha="center", va="center", fontsize=10,
                     bbox=dict(boxstyle="round,pad=0.6", fc="#fee391", ec="#333333"))
    else:
        _draw_cell(axes[1], genotype, "reduce", "reduction cell")
    return _save(fig, path, title)


def _columns(rows_or_names) -> list[str]:
    names = set()
    for edge in rows_or_names:
        names.update(edge)
    order = [p for p in PRIMITIVES if p in names]
    return order + sorted(names - set(order))


def probability_heatmap(op_probabilities: dict, path: str | Path, title: str = "") -> Path:
    """Per-edge op probabilities of both cell types (rows: edges; columns: candidates; blank: pruned)."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, cell in zip(axes, ("normal", "reduce"), strict=True):
        entry = op_probabilities[cell]
        cols = _columns(entry["primitives"])
        grid = np.full((len(entry["p"]), len(cols)), np.nan)
        for e, (names, probs) in enumerate(zip(entry["primitives"], entry["p"], strict=True)):
            for name, p in zip(names, probs, strict=True):
                grid[e, cols.index(name)] = p
        im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(0.3, float(np.nanmax(grid))), aspect="auto")
        for (e, k), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(k, e, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 * im.norm.vmax else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [f"edge {e}" for e in range(grid.shape[0])], fontsize=7)
        ax.set_title(f"{cell} cell", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path, title)


def search_curves(rows: list[dict], stages: list[dict], path: str | Path) -> Path:
    """Losses and accuracies (sampled path; the derived cell at each stage's end), mean per-edge
    entropy, and the mean probability of each op over the normal cell's edges, across all epochs."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    x = list(range(1, len(rows) + 1))
    boundaries = [i + 0.5 for i in range(1, len(rows)) if rows[i]["stage"] != rows[i - 1]["stage"]]

    def series(key):
        return [r.get(key) if r.get(key) is not None else float("nan") for r in rows]

    ax = axes[0, 0]
    # valid values exist only in search epochs: markers, so a lone epoch between warm-ups still shows
    ax.plot(x, series("train_loss"), ".-", label="train (weights half)")
    ax.plot(x, series("valid_loss"), "o-", label="valid (architecture half)")
    ax.set_title("loss of the sampled network")
    ax.set_xlabel("epoch (all stages)")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.plot(x, series("train_acc"), ".-", label="train, sampled path")
    ax.plot(x, series("valid_acc"), "o-", label="valid, sampled path")
    ends = [max(i for i, r in enumerate(rows, 1) if r["stage"] == s["stage"]) for s in stages
            if any(r["stage"] == s["stage"] for r in rows)]
    derived = [s.get("derived_acc") for s in stages][: len(ends)]
    pts = [(e, d) for e, d in zip(ends, derived, strict=True) if d is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), "o", color="crimson", label="derived cell, eval mode (stage end)")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy")
    ax.set_xlabel("epoch (all stages)")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    ax.plot(x, series("entropy_normal"), label="normal cell")
    ax.plot(x, series("entropy_reduce"), label="reduction cell")
    ax.plot(x, series("entropy_max"), "k:", label="uniform (ln K)")
    ax.set_title("mean per-edge entropy of the op distribution (nats)")
    ax.set_xlabel("epoch (all stages)")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    names = _columns([n for r in rows for n in r["op_probabilities"]["normal"]["primitives"]]) if rows else []
    for name in names:
        ys = []
        for r in rows:
            entry = r["op_probabilities"]["normal"]
            tot = sum(p for ops, ps in zip(entry["primitives"], entry["p"], strict=True)
                      for op, p in zip(ops, ps, strict=True) if op == name)
            ys.append(tot / len(entry["p"]))
        ax.plot(x, ys, label=name, color=OP_COLORS.get(name))
    ax.set_title("mean probability per op, normal cell (0 once pruned)")
    ax.set_xlabel("epoch (all stages)")
    ax.legend(fontsize=7, ncol=2)
    for a in axes.flat:
        for b in boundaries:
            a.axvline(b, color="#cccccc", lw=1, ls="--")
    collapse = "; ".join(f"stage {s['stage']}: {s.get('normal_skips', '?')} skip, "
                         f"{s.get('normal_param_free', '?')} param-free (uncapped "
                         f"{s.get('uncapped_normal_param_free', '?')})" for s in stages)
    if collapse:
        fig.suptitle(f"normal cell per stage - {collapse}", fontsize=9)
    return _save(fig, path)


def cost_curve(rows: list[dict], path: str | Path) -> Path | None:
    """The expected cost of the evaluation network per epoch against the budget (budgeted searches)."""
    pts = [(i, r["expected_cost"]) for i, r in enumerate(rows, 1) if r.get("expected_cost") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*pts, strict=True), ".-", label="expected cost (sampler's distribution)")
    target = rows[-1].get("cost_target")
    if target:
        ax.axhline(target, color="crimson", ls="--", label="target")
    for i in range(1, len(rows)):
        if rows[i]["stage"] != rows[i - 1]["stage"]:
            ax.axvline(i + 0.5, color="#cccccc", lw=1, ls="--")
    ax.set_xlabel("epoch (all stages)")
    ax.set_title("cost of the evaluation network")
    ax.legend(fontsize=8)
    return _save(fig, path)


def search_plots(run_dir: str | Path, stages: list[dict]) -> list[Path]:
    """All search pictures for the stages finished so far: cells.png (the latest stage's cells),
    op_probabilities_stage{N}.png (each finished stage's last epoch), search_curves.png, and budget.png
    for a budgeted search."""
    run_dir = Path(run_dir)
    rows = _read_rows(run_dir)
    written = []
    if stages:
        last = stages[-1]
        written.append(draw_genotype(Genotype.from_dict(last["genotype"]), run_dir / "cells.png",
                                     f"derived after stage {last['stage']}"))
    for s in stages:
        stage_rows = [r for r in rows if r.get("stage") == s["stage"]]
        if stage_rows:
            written.append(probability_heatmap(stage_rows[-1]["op_probabilities"],
                                               run_dir / f"op_probabilities_stage{s['stage']}.png",
                                               f"stage {s['stage']}: op probabilities at its last epoch"))
    if rows:
        written.append(search_curves(rows, stages, run_dir / "search_curves.png"))
        budget = cost_curve(rows, run_dir / "budget.png")
        if budget is not None:
            written.append(budget)
    return written


def train_curves(run_dir: str | Path) -> Path | None:
    """Retraining curves (loss, train/test accuracy, learning rate) as curves.png."""
    run_dir = Path(run_dir)
    rows = _read_rows(run_dir)
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    x = [r["epoch"] for r in rows]
    axes[0].plot(x, [r["train_loss"] for r in rows], label="train")
    axes[0].plot(x, [r["test_loss"] for r in rows], label="test")
    axes[0].set_title("loss")
    axes[1].plot(x, [r["train_acc"] for r in rows], label="train")
    axes[1].plot(x, [r["test_acc"] for r in rows], label="test")
    axes[1].set_title(f"accuracy (final test error {rows[-1]['test_error'] * 100:.2f}%)")
    axes[2].plot(x, [r["lr"] for r in rows])
    axes[2].set_title("learning rate")
    for a in axes:
        a.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    return _save(fig, run_dir / "curves.png")


def study_chart(results: dict, path: str | Path) -> Path:
    """Per seed: every random cell's test accuracy (grey), their mean (black bar) and each searched
    cell's (coloured), from a study.json-shaped dict."""
    plt = _plt()
    seeds = results["seeds"]
    samplers = results["samplers"]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(seeds) + 3), 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, seed in enumerate(seeds):
        per = results["per_seed"][str(seed)]
        rand = [v for v in per["random"] if v is not None]
        ax.scatter([i + (j - len(rand) / 2) * 0.03 for j in range(len(rand))], rand, color="#999999", s=14,
                   label="random cells" if i == 0 else None, zorder=2)
        if rand:
            m = sum(rand) / len(rand)
            ax.plot([i - 0.3, i + 0.3], [m, m], color="black", lw=2, label="random mean" if i == 0 else None)
        for k, name in enumerate(samplers):
            v = per["searched"].get(name)
            if v is not None:
                ax.scatter([i + 0.15 + 0.08 * k], [v], marker="*", s=160, color=colors[k % len(colors)],
                           label=f"searched ({name})" if i == 0 else None, zorder=3, edgecolor="black")
    ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    ax.set_ylabel("test accuracy after retraining")
    ax.set_title(f"searched vs random cells, {results.get('dataset', '')}\n"
                 "(same retraining recipe and seed per column)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def study_size_chart(results: dict, path: str | Path) -> Path | None:
    """Test accuracy against parameters (log scale) of every cell of a study: random cells grey, searched
    cells coloured by sampler, per seed the study's least-squares line through its random cells (dashed). A searched
    cell above its seed's line wins by more than its size; on the line, by size alone. None for a study
    that recorded no sizes."""
    import math

    per_seed = results["per_seed"]
    if not any(p.get("random_params") for p in per_seed.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, per in enumerate(per_seed.values()):
        xs, ys = per.get("random_params") or [], per["random"]
        if not xs:
            continue
        ax.scatter(xs, ys, color="#999999", s=14, label="random cells" if i == 0 else None, zorder=2)
        if per.get("size_line"):  # the study's least-squares line through this seed's random cells
            a, b = per["size_line"]
            span = [*xs, *(v for v in per.get("searched_params", {}).values() if v)]  # reach the searched cells
            lo, hi = min(span), max(span)
            ax.plot([lo, hi], [a + b * math.log(lo), a + b * math.log(hi)], color="#bbbbbb", lw=1, ls="--",
                    label="random line per seed" if i == 0 else None, zorder=1)
        for k, name in enumerate(results["samplers"]):
            params = per.get("searched_params", {}).get(name)
            if params is not None:
                ax.scatter([params], [per["searched"][name]], marker="*", s=160, color=colors[k % len(colors)],
                           edgecolor="black", zorder=3, label=f"searched ({name})" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("parameters of the retrained network (log scale)")
    ax.set_ylabel("test accuracy after retraining")
    ax.set_title(f"accuracy against size, {results.get('dataset', '')}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
