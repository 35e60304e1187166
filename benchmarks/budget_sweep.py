"""Budgeted search sweep (issue 10): exact cost vs test accuracy of cells searched under parameter
targets, next to the unconstrained search and to random cells, all retrained alike.

    python benchmarks/budget_sweep.py --out benchmarks/results/budget --seed 3 \
        --reference-study /path/to/study   # reuse a fastnas.study run's unconstrained search and random cells

The targets follow from the space, not from a number tuned to the data: fractions of the way from
the cheapest cell of the space to the unconstrained search's cell (``--fractions``), for the network
the retraining preset builds. Without ``--reference-study`` the unconstrained search and ``--random``
random cells are run here too. Every run resumes: finished sub-runs are reused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import harness  # first: this checkout on sys.path

from fastnas.cli import search, train
from fastnas.cost import CostModel, EvalShape, cheapest_cost, human
from fastnas.space.genotype import Genotype, random_genotype
from fastnas.space.primitives import PRIMITIVES


def _search(out: Path, seed: int, preset: str, workers: int, extra: list[str]) -> dict:
    if not (out / "summary.json").is_file():
        args = ["--preset", preset, "--seed", str(seed), "--workers", str(workers), *extra]
        resume = (out / "checkpoint.pt").is_file()
        code = search.main(["--resume", str(out)] if resume else [*args, "--out", str(out)])
        if code != 0:
            sys.exit(f"search failed: {out}")
    return json.loads((out / "summary.json").read_text())


def _train(genotype: str, out: Path, seed: int, preset: str, workers: int) -> dict:
    if not (out / "report.json").is_file():
        args = ["--genotype", genotype, "--preset", preset, "--seed", str(seed), "--workers", str(workers),
                "--no-export", "--no-plots"]
        code = train.main(["--resume", str(out)] if (out / "last.pt").is_file() else [*args, "--out", str(out)])
        if code != 0:
            sys.exit(f"retraining failed: {out}")
    return json.loads((out / "report.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/budget")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--search-preset", default="quick")
    p.add_argument("--train-preset", default="quick")
    p.add_argument("--penalty", default="absolute")
    p.add_argument("--reference-study", default=None, help="a fastnas.study run dir (same presets) to reuse")
    p.add_argument("--random", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tp = {**{"channels": 36, "layers": 20}, **train.PRESETS[a.train_preset]}
    shape = EvalShape(tp["channels"], tp["layers"])
    model = CostModel("params", shape)
    net_opts = ["--eval-channels", str(shape.channels), "--eval-layers", str(shape.layers)]

    ref = Path(a.reference_study) if a.reference_study else None
    free_dir = ref / "search" / f"softmax-seed{a.seed}" if ref else out / "search-free"
    free = _search(free_dir, a.seed, a.search_preset, a.workers, net_opts)
    free_train = _train(str(free_dir), (ref / "train" / f"searched-softmax-seed{a.seed}") if ref
                        else out / "train-free", a.seed, a.train_preset, a.workers)
    free_cost = model.genotype_cost(Genotype.from_dict(free["genotype"]))
    low = cheapest_cost(model, {c: [list(PRIMITIVES)] * 14 for c in ("normal", "reduce")})
    rows = [{"kind": "unconstrained", "target": None, "cost": free_cost, "derived_cost": free_cost,
             "test_acc": free_train["final_test_acc"], "genotype": free["genotype_text"], "exchanges": 0,
             "search_time_s": free["search_time_s"]}]
    for f in a.fractions:
        target = int(low + f * (free_cost - low))
        d = out / f"search-{target}"
        s = _search(d, a.seed, a.search_preset, a.workers,
                    [*net_opts, "--target-params", str(target), "--cost-penalty", a.penalty])
        r = _train(str(d), out / f"train-{target}", a.seed, a.train_preset, a.workers)
        b = s["budget"]
        rows.append({"kind": f"target {f:g}", "target": target, "cost": b["cost"], "derived_cost": b["derived_cost"],
                     "test_acc": r["final_test_acc"], "genotype": s["genotype_text"], "exchanges": len(b["exchanges"]),
                     "meets_budget": b["meets_budget"], "search_time_s": s["search_time_s"]})
    if ref:
        randoms = [Genotype.from_dict(g) for g in json.loads((ref / "random_genotypes.json").read_text())]
        rdirs = [ref / "train" / f"random{i}-seed{a.seed}" for i in range(len(randoms))]
    else:
        rng = random.Random(1234)
        randoms = [random_genotype(rng) for _ in range(a.random)]
        rdirs = [out / f"train-random{i}" for i in range(len(randoms))]
    for g, d in zip(randoms, rdirs, strict=True):
        r = _train(str(g), d, a.seed, a.train_preset, a.workers)
        rows.append({"kind": "random", "target": None, "cost": model.genotype_cost(g), "test_acc": r["final_test_acc"],
                     "genotype": str(g)})
    result = {"seed": a.seed, "search_preset": a.search_preset, "train_preset": a.train_preset, "penalty": a.penalty,
              "eval_network": {"channels": shape.channels, "layers": shape.layers}, "cheapest_cost": low, "rows": rows}
    lines = [f"# Budgeted search sweep (parameters; seed {a.seed}; search {a.search_preset}, "
             f"retraining {a.train_preset}, penalty {a.penalty})", "",
             f"Evaluation network C={shape.channels}, {shape.layers} cells; cheapest cell of the space "
             f"{human(low, 'params')} parameters.", "",
             "| cell | target | derived (before fit) | final exact | exchanges | test acc |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        tgt = human(r["target"], "params") if r["target"] else "-"
        der = human(r["derived_cost"], "params") if r.get("derived_cost") else "-"
        lines.append(f"| {r['kind']} | {tgt} | {der} | {human(r['cost'], 'params')} | {r.get('exchanges', '-')} | "
                     f"{r['test_acc']:.4f} |")
    harness.write_results(out, "budget_sweep", result, "\n".join(lines))
    print("\n".join(lines))
    try:
        from fastnas.plots import _plt, _save

        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rnd = [r for r in rows if r["kind"] == "random"]
        ax.scatter([r["cost"] / 1e3 for r in rnd], [r["test_acc"] for r in rnd], c="#999999", label="random cells")
        for r in rows:
            if r["kind"] == "random":
                continue
            color = "crimson" if r["kind"] == "unconstrained" else "tab:blue"
            ax.scatter([r["cost"] / 1e3], [r["test_acc"]], c=color, marker="*", s=160)
            ax.annotate(r["kind"], (r["cost"] / 1e3, r["test_acc"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
            if r["target"]:
                ax.axvline(r["target"] / 1e3, color="tab:blue", lw=0.8, ls=":")
        ax.set_xlabel(f"parameters of the evaluation network (thousands; C={shape.channels}, {shape.layers} cells)")
        ax.set_ylabel("test accuracy after the same retraining")
        ax.legend(fontsize=8)
        _save(fig, out / "budget_sweep.png", "searched under a parameter budget (stars) vs random cells")
    except Exception as exc:  # the picture is a convenience
        print(f"warning: budget_sweep.png not drawn: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
