"""The known-answer search ({sep_conv_3x3, noise}, tests/test_known_answer.py) over seeds, samplers and
gumbel-hard's two straight-through estimators, at the test's budget or a longer one: per search epoch,
how many of the 14 normal-cell edges prefer the convolution, and the supernet's accuracies.

    python benchmarks/known_answer.py --samplers gumbel-hard --straight-through all sampled \\
        --seeds 0 1 2 --epochs 24 --out benchmarks/results/cpu/known_answer

Each run calls ``fastnas.search.main`` in this process with the test's options (``--epochs`` and
``--warmup-epochs`` override its 8 and 3); results go to known_answer.json and known_answer.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_known_answer import ARGS, edges_preferring_convolution  # noqa: E402  (the test's budget and count)

from fastnas.search import main as search  # noqa: E402


def run(sampler: str, straight_through: str | None, seed: int, epochs: int | None, warmup: int | None) -> dict:
    extra = ["--seed", str(seed)]
    if epochs is not None:
        extra += ["--epochs", str(epochs)]
    if warmup is not None:
        extra += ["--warmup-epochs", str(warmup)]
    if straight_through:
        extra += ["--straight-through", straight_through]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = search([*ARGS, "--sampler", sampler, "--out", f"{tmp}/run", *extra])
        seconds = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"{sampler} seed {seed}: search exited {code}")
        epochs_log = []
        for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            if "op_probabilities" not in m:
                continue
            epochs_log.append({"epoch": m["epoch"], "train_acc": m["train_acc"], "valid_acc": m["valid_acc"],
                               "prefers_conv": edges_preferring_convolution(m)})
    return {"sampler": sampler, "straight_through": straight_through, "seed": seed, "seconds": seconds,
            "prefers_conv": epochs_log[-1]["prefers_conv"], "epochs": epochs_log}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samplers", nargs="+", default=["softmax", "dirichlet", "gumbel-soft", "gumbel-hard"])
    p.add_argument("--straight-through", nargs="+", default=["all"], choices=["all", "sampled"],
                   help="gumbel-hard's estimators to run (the other samplers have none)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs of the search (the test: 8)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="warm-up epochs (the test: 3)")
    p.add_argument("--out", default=None, help="write known_answer.json and .md into this folder")
    a = p.parse_args(argv)
    rows = []
    for sampler in a.samplers:
        for st in a.straight_through if sampler == "gumbel-hard" else [None]:
            for seed in a.seeds:
                rows.append(run(sampler, st, seed, a.epochs, a.warmup_epochs))
                r = rows[-1]
                print(json.dumps({k: v for k, v in r.items() if k != "epochs"}), flush=True)
    epochs = a.epochs or int(ARGS[ARGS.index("--epochs") + 1])
    warmup = a.warmup_epochs if a.warmup_epochs is not None else int(ARGS[ARGS.index("--warmup-epochs") + 1])
    lines = [f"Known-answer search ({{sep_conv_3x3, noise}}, tests/test_known_answer.py options), {epochs} epochs "
             f"({warmup} warm-up): normal-cell edges of 14 preferring sep_conv_3x3 at the end (the bar: 12)", "",
             "| sampler | estimator | per seed | mean | final valid acc (sampled path) | s per run |",
             "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["sampler"], r["straight_through"]), []).append(r)
    for (sampler, st), rs in groups.items():
        per_seed = ", ".join(f"{r['prefers_conv']} (seed {r['seed']})" for r in rs)
        mean = statistics.mean(r["prefers_conv"] for r in rs)
        acc = ", ".join(f"{r['epochs'][-1]['valid_acc']:.2f}" for r in rs)
        secs = statistics.mean(r["seconds"] for r in rs)
        lines.append(f"| {sampler} | {st or '-'} | {per_seed} | {mean:.1f} | {acc} | {secs:.0f} |")
    lines += ["", "Edges preferring the convolution after each epoch (warm-up epochs included):", ""]
    for r in rows:
        trace = " ".join(str(e["prefers_conv"]) for e in r["epochs"])
        lines.append(f"- {r['sampler']}{' ' + r['straight_through'] if r['straight_through'] else ''} seed "
                     f"{r['seed']}: {trace}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "known_answer.json").write_text(json.dumps(rows, indent=1))
        (out / "known_answer.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
