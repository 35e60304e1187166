"""The known-answer search ({sep_conv_3x3, noise}, tests/test_known_answer.py) over seeds, samplers and
gumbel-hard's two straight-through estimators, at the test's budget or a longer one: per search epoch,
how many of the 14 normal-cell edges prefer the convolution, and the supernet's accuracies.

    python benchmarks/known_answer.py --seeds 0 1 2 --out benchmarks/results/cpu/known_answer
    python benchmarks/known_answer.py --samplers softmax --extra "--embedded-size 1000 --batch-size 32"
    python benchmarks/known_answer.py --preset quick --seeds 0 1 2 3 4 --out benchmarks/results/cpu/known_answer_quick

``--preset P`` runs the known-answer space as a user runs preset P (``fastnas search --preset P
--primitives sep_conv_3x3 noise --ops-kept 2 2 2 --seed S``, every stage, its derivation) and counts
the edges of the derived genotype (8 normal + 8 reduction) that chose noise; the bar is at most 1.

Each run calls ``fastnas.cli.search.main`` in this process with the test's command line for that sampler
(``fastnas.search.known_answer.search_args``); ``--epochs``, ``--warmup-epochs`` and ``--extra``
override it. Results go to known_answer.json and known_answer.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: this checkout on sys.path

from fastnas.cli.search import main as search
from fastnas.search.known_answer import edges_preferring_convolution, search_args
from fastnas.space.sampler import GumbelHardSampler


def option(argv: list[str], flag: str) -> str:
    """The value a search command line gives `flag` (a single-valued option): the last one wins."""
    return argv[max(i for i, a in enumerate(argv) if a == flag) + 1]


def search_quietly(argv: list[str], what: str) -> tuple[float, list[dict], dict]:
    """One search in a temporary folder, its output swallowed: seconds, the epoch metrics that carry
    op probabilities, and the derived genotype."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = search([*argv, "--out", f"{tmp}/run"])
        seconds = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"{what}: search exited {code}")
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
        genotype = json.loads(Path(f"{tmp}/run/genotype.json").read_text())
    return seconds, [m for m in rows if "op_probabilities" in m], genotype


def run(sampler: str, straight_through: str | None, seed: int, epochs: int | None, warmup: int | None,
        overrides: list[str]) -> dict:
    extra = ["--seed", str(seed), *overrides]
    if epochs is not None:
        extra += ["--epochs", str(epochs)]
    if warmup is not None:
        extra += ["--warmup-epochs", str(warmup)]
    if straight_through:
        extra += ["--straight-through", straight_through]
    argv = [*search_args(sampler), *extra]
    seconds, rows, _ = search_quietly(argv, f"{sampler} seed {seed}")
    epochs_log = [{"epoch": m["epoch"], "train_acc": m["train_acc"], "valid_acc": m["valid_acc"],
                   "prefers_conv": edges_preferring_convolution(m)} for m in rows]
    return {"sampler": sampler, "straight_through": straight_through, "seed": seed, "seconds": seconds,
            "epochs_total": int(option(argv, "--epochs")), "warmup_epochs": int(option(argv, "--warmup-epochs")),
            "search_args": argv,
            "prefers_conv": epochs_log[-1]["prefers_conv"], "epochs": epochs_log}


def run_preset(preset: str, seed: int, overrides: list[str]) -> dict:
    """The known-answer space through a whole preset, as a user runs it: the derived genotype's noise
    edges (of 16), and per stage its normal cell's edges preferring the convolution (of 14)."""
    from fastnas.search.presets import PRESETS

    stages = len(PRESETS[preset].get("cells", [0, 0, 0]))
    argv = ["--preset", preset, "--primitives", "sep_conv_3x3", "noise", "--ops-kept", *["2"] * stages,
            "--seed", str(seed), "--no-plots", *overrides]
    seconds, rows, genotype = search_quietly(argv, f"{preset} seed {seed}")
    per_stage = [{"stage": m["stage"], "epoch": m["epoch"], "valid_acc": m["valid_acc"],
                  "prefers_conv": edges_preferring_convolution(m)} for m in rows]
    noise = {c: sum(op == "noise" for op, _ in genotype[c]) for c in ("normal", "reduce")}
    return {"preset": preset, "seed": seed, "seconds": seconds, "search_args": argv, "noise_normal": noise["normal"],
            "noise_reduce": noise["reduce"], "noise_edges": noise["normal"] + noise["reduce"], "epochs": per_stage}


def preset_table(rows: list[dict], extra: str) -> str:
    lines = [f"Known-answer space through the `{rows[0]['preset']}` preset{extra}: edges of the derived genotype "
             "(8 normal + 8 reduction) that chose noise (the bar: at most 1 per seed)", "",
             "| seed | noise edges (normal + reduce) | normal edges preferring the convolution, per epoch | "
             "final valid acc | s |", "|---|---|---|---|---|"]
    for r in rows:
        trace = " ".join(str(e["prefers_conv"]) for e in r["epochs"])
        acc = r["epochs"][-1]["valid_acc"] if r["epochs"] else None
        lines.append(f"| {r['seed']} | {r['noise_edges']} ({r['noise_normal']} + {r['noise_reduce']}) | {trace} | "
                     f"{acc if acc is None else f'{acc:.2f}'} | {r['seconds']:.0f} |")
    met = sum(r["noise_edges"] <= 1 for r in rows)
    lines += ["", f"{met} of {len(rows)} seeds within the bar; noise edges mean "
              f"{statistics.mean(r['noise_edges'] for r in rows):.1f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=None, help="run the space through this search preset, as a user would")
    p.add_argument("--samplers", nargs="+", default=["softmax", "dirichlet", "gumbel-soft", "gumbel-hard"])
    p.add_argument("--straight-through", nargs="+", default=["all"], choices=GumbelHardSampler.STRAIGHT_THROUGH,
                   help="gumbel-hard's estimators to run (the other samplers have none)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs of the search (default: the test's)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="warm-up epochs (default: the test's)")
    p.add_argument("--extra", default="", help="more search options, e.g. \"--embedded-size 1000\"")
    p.add_argument("--out", default=None, help="write known_answer.json and .md into this folder")
    a = p.parse_args(argv)
    rows = []
    if a.preset:
        for seed in a.seeds:
            rows.append(run_preset(a.preset, seed, shlex.split(a.extra)))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("epochs", "search_args")}), flush=True)
        text = preset_table(rows, f", plus `{a.extra}`" if a.extra else "")
        print(text)
        harness.write_results(a.out, "known_answer", rows, text)
        return 0
    for sampler in a.samplers:
        for st in a.straight_through if sampler == "gumbel-hard" else [None]:
            for seed in a.seeds:
                rows.append(run(sampler, st, seed, a.epochs, a.warmup_epochs, shlex.split(a.extra)))
                r = rows[-1]
                print(json.dumps({k: v for k, v in r.items() if k not in ("epochs", "search_args")}), flush=True)
    extra = f", plus `{a.extra}`" if a.extra else ""
    lines = [f"Known-answer search ({{sep_conv_3x3, noise}}, tests/test_known_answer.py options{extra}): "
             "normal-cell edges of 14 preferring sep_conv_3x3 at the end (the bar: 12)", "",
             "| sampler | estimator | epochs (warm-up) | per seed | mean | final valid acc (sampled) | s per run |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["sampler"], r["straight_through"]), []).append(r)
    for (sampler, st), rs in groups.items():
        per_seed = ", ".join(f"{r['prefers_conv']} (seed {r['seed']})" for r in rs)
        mean = statistics.mean(r["prefers_conv"] for r in rs)
        acc = ", ".join(f"{r['epochs'][-1]['valid_acc']:.2f}" for r in rs)
        secs = statistics.mean(r["seconds"] for r in rs)
        budget = f"{rs[0]['epochs_total']} ({rs[0]['warmup_epochs']})"
        lines.append(f"| {sampler} | {st or '-'} | {budget} | {per_seed} | {mean:.1f} | {acc} | {secs:.0f} |")
    lines += ["", "Edges preferring the convolution after each epoch (warm-up epochs included):", ""]
    for r in rows:
        trace = " ".join(str(e["prefers_conv"]) for e in r["epochs"])
        lines.append(f"- {r['sampler']}{' ' + r['straight_through'] if r['straight_through'] else ''} seed "
                     f"{r['seed']}: {trace}")
    text = "\n".join(lines)
    print(text)
    harness.write_results(a.out, "known_answer", rows, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
