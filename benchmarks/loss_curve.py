"""Does a faster retraining mode train the same? Issue 20's target 1 asks the recommended mode (CUDA
graphs, bf16, channels_last) for "the same final loss curve as eager fp32 within noise over a short
run": this compares the per-step training-loss curves that ``train_speed.py --seeds N`` records for its
``trainer...`` configs (``fastnas train``'s own step: DARTS recipe, auxiliary head, drop-path, cutout)
against the eager fp32 one (``trainer``).

    python benchmarks/train_speed.py --configs trainer,trainer+bf16 --steps 120 --seeds 2 --out DIR
    python benchmarks/loss_curve.py DIR/train_speed_cpu.json [--window 40] [--out DIR]

``train_speed.py`` runs this analysis itself when its rows carry curves; this script re-reads stored
rows. What it reports per config: the final loss, the mean of the last ``window`` steps' training loss
(main head) per seed and over the seeds, and its difference from eager fp32's. Noise is the
seed-to-seed spread (each seed draws its own data, initial weights, augmentation and drop-path masks):
the pooled standard deviation ``s`` of the per-seed final losses around their config's mean, over every
config with two or more seeds. A config trains the same "within noise" when its difference from eager
fp32 is at most ``3 * s * sqrt(1/n + 1/n_fp32)`` (three standard errors of a difference of means; with
two seeds per config and four configs that bound flags an equal mode about 4% of the time). One seed
per config gives no verdict. A second, stricter look needs no noise model: seed by seed, each config
starts from eager fp32's weights and batches, so its first ten losses must match eager fp32's up to
rounding (the mean absolute difference is reported; a changed learning rate or loss shows there first).
The picture (``loss_curve.png``) shows every config's curve, the mean over
seeds smoothed over ``window / 4`` steps, with the seeds' range shaded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REFERENCE = "trainer"  # fastnas train's eager fp32 step
SIGMAS = 3.0
EARLY = 10  # steps compared seed by seed at the start of the curves


def final_loss(curve: list[float], window: int) -> float:
    """Mean training loss of the last `window` steps of one curve."""
    if not curve:
        raise ValueError("an empty loss curve")
    tail = curve[-window:]
    return sum(tail) / len(tail)


def early_paired_diff(curves: list[list[float]], reference: list[list[float]], steps: int = EARLY) -> float:
    """Mean |loss - reference loss| over the first `steps` steps, seed by seed: a mode that computes the
    same step starts from the same weights on the same batches, so its first losses are the reference's
    up to rounding (bf16: about 1e-3), before the runs drift apart as any two runs do; a mode that
    computes something else (a learning rate, a dropout, a loss term) departs from the first steps."""
    pairs = list(zip(curves, reference, strict=False))
    diffs = [abs(a - b) for cur, ref in pairs for a, b in zip(cur[:steps], ref[:steps], strict=False)]
    return sum(diffs) / len(diffs)


def pooled_sd(finals: dict[str, list[float]]) -> float | None:
    """Pooled standard deviation of per-seed final losses around each config's mean (None: no config
    has two seeds)."""
    ss, df = 0.0, 0
    for values in finals.values():
        if len(values) < 2:
            continue
        mean = sum(values) / len(values)
        ss += sum((v - mean) ** 2 for v in values)
        df += len(values) - 1
    return math.sqrt(ss / df) if df else None


def compare(rows: list[dict], window: int, reference: str = REFERENCE) -> dict:
    """Per config: final loss per seed and mean, difference from `reference`, its noise bound and the
    verdict. `rows` are train_speed rows; those without ``loss_curves`` (or with an error) are skipped."""
    curves = {r["config"]: r["loss_curves"] for r in rows if r.get("loss_curves") and "error" not in r}
    finals = {c: [final_loss(curve, window) for curve in cs] for c, cs in curves.items()}
    sd = pooled_sd(finals)
    ref = finals.get(reference)
    out = {"reference": reference, "window": window, "pooled_sd": sd, "sigmas": SIGMAS, "configs": {}}
    for c, values in finals.items():
        mean = sum(values) / len(values)
        row = {"seeds": len(values), "final_loss": mean, "final_loss_per_seed": values,
               "first_loss": sum(cs[0] for cs in curves[c]) / len(curves[c]), "steps": len(curves[c][0])}
        if ref is not None and c != reference:
            diff = mean - sum(ref) / len(ref)
            bound = None if sd is None else SIGMAS * sd * math.sqrt(1 / len(values) + 1 / len(ref))
            row.update(diff=diff, bound=bound, within_noise=None if bound is None else abs(diff) <= bound,
                       early_paired_diff=early_paired_diff(curves[c], curves[reference]))
        out["configs"][c] = row
    return out


def table(result: dict) -> str:
    sd = result["pooled_sd"]
    lines = [f"Training loss over the last {result['window']} steps (main head), against `{result['reference']}` "
             f"(eager fp32); seed-to-seed sd {'-' if sd is None else f'{sd:.4f}'}, bound "
             f"{result['sigmas']:g} x sd x sqrt(1/n + 1/n_ref)", "",
             "| config | seeds | steps | first loss | final loss (per seed) | difference | bound | within noise | "
             f"mean abs difference, first {EARLY} steps, seed by seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c, r in result["configs"].items():
        per = ", ".join(f"{v:.4f}" for v in r["final_loss_per_seed"])
        diff = "-" if "diff" not in r else f"{r['diff']:+.4f}"
        bound = "-" if r.get("bound") is None else f"{r['bound']:.4f}"
        verdict = {None: "-", True: "yes", False: "**no**"}[r.get("within_noise")]
        if c == result["reference"]:
            verdict = "(reference)"
        early = "-" if "early_paired_diff" not in r else f"{r['early_paired_diff']:.4f}"
        lines.append(f"| {c} | {r['seeds']} | {r['steps']} | {r['first_loss']:.3f} | {r['final_loss']:.4f} ({per}) | "
                     f"{diff} | {bound} | {verdict} | {early} |")
    return "\n".join(lines)


def plot(rows: list[dict], result: dict, path: Path) -> Path | None:
    """Loss curves per config (mean over seeds, smoothed; the seeds' range shaded)."""
    curves = {r["config"]: r["loss_curves"] for r in rows if r.get("loss_curves") and "error" not in r}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, result["window"] // 4)

    def smooth(xs):
        return [sum(xs[max(0, i - k + 1): i + 1]) / len(xs[max(0, i - k + 1): i + 1]) for i in range(len(xs))]

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c, cs in curves.items():
        sm = [smooth(cv) for cv in cs]
        n = min(len(s) for s in sm)
        mean = [sum(s[i] for s in sm) / len(sm) for i in range(n)]
        lo = [min(s[i] for s in sm) for i in range(n)]
        hi = [max(s[i] for s in sm) for i in range(n)]
        r = result["configs"].get(c, {})
        verdict = {True: " (within noise)", False: " (NOT within noise)"}.get(r.get("within_noise"), "")
        (line,) = ax.plot(range(1, n + 1), mean, lw=1.6 if c == result["reference"] else 1.1,
                          label=f"{c}{verdict}")
        if len(sm) > 1:
            ax.fill_between(range(1, n + 1), lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.axvspan(n - result["window"] + 0.5, n + 0.5, color="0.9", zorder=0, label=f"last {result['window']} steps")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean over seeds, {k}-step average)")
    ax.set_title("Retraining loss per mode (DARTS recipe)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(rows: list[dict], window: int, out: str | Path | None) -> dict | None:
    """Compare, print the table and write ``loss_curve.{json,md,png}`` under `out` (None: nothing to
    compare)."""
    result = compare(rows, window)
    if not result["configs"]:
        return None
    text = table(result)
    print(text)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "loss_curve.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "loss_curve.md").write_text(text + "\n")
        plot(rows, result, out / "loss_curve.png")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="a train_speed_<device>.json whose trainer rows carry loss_curves")
    p.add_argument("--window", type=int, default=40, help="steps averaged at the end of each curve")
    p.add_argument("--out", default=None, help="write loss_curve.{json,md,png} here")
    args = p.parse_args(argv)
    try:
        rows = json.loads(Path(args.results).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if args.window < 1:
        print("error: --window must be >= 1", file=sys.stderr)
        return 2
    if report(rows, args.window, args.out) is None:
        print(f"error: no row of {args.results} carries loss curves (train_speed.py trainer configs record them)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
