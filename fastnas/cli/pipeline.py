"""``fastnas pipeline`` (``python -m fastnas.pipeline``): S1 -> S2 -> S3 in one run directory.

The search writes DIR/search, its genotype goes straight to retraining in DIR/train (no copy-paste),
and DIR/report.json + DIR/report.md give the genotype, its diagrams, parameters, search time,
retraining time and the final test error. ``--resume DIR`` continues whichever part was cut short.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from fastnas.cli import search as search_cli
from fastnas.cli import train as train_cli
from fastnas.cli.common import SIZE_OPTIONS, add_size_arguments, cli_main, description
from fastnas.cost import human
from fastnas.infra import config as cfglib
from fastnas.infra import distributed
from fastnas.infra.errors import ConfigError, RunError
from fastnas.infra.options import DATASETS
from fastnas.infra.rundir import RunDir, default_run_dir
from fastnas.search.budget import Budget
from fastnas.train import PRESETS as TRAIN_PRESETS
from fastnas.train import TrainConfig

PRESETS = {"smoke": ("smoke", "smoke"), "quick": ("quick", "quick"), "full": ("progressive", "darts"),
           "pdarts": ("pdarts", "darts"), "patent": ("patent", "darts")}


def parse_args(argv=None):
    p = cfglib.OneLineErrorParser(prog="fastnas pipeline", description=description(__doc__),
                                  formatter_class=cfglib.HelpFormatter)
    p.add_argument("--preset", default="smoke", choices=list(PRESETS),
                   help="search preset + retraining preset: smoke (smoke + smoke), quick (quick + quick), "
                        "full (progressive + darts), pdarts (pdarts + darts), patent (patent + darts)")
    # Given here, these override both stages' config files; left out, the files (or presets) decide.
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help="default: embedded")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="default: auto")
    add_size_arguments(p)
    p.add_argument("--search-config", default=None, metavar="FILE.yaml", help="search options (fastnas.search)")
    p.add_argument("--train-config", default=None, metavar="FILE.yaml", help="retraining options (fastnas.train)")
    # The budget options are the search's own (fastnas.search.budget.Budget): one declaration, one check.
    cfglib.add_arguments(p, Budget, only=BUDGET_OPTIONS)
    p.add_argument("--out", default=None, help="run directory (default runs/pipeline-<time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the pipeline run in DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds another run: move it aside to <out>.old-<time> and start afresh")
    # Left out, the search's config file (or preset) decides.
    return cfglib.typed_or(p.parse_args(argv), Budget, BUDGET_OPTIONS, default=None)


BUDGET_OPTIONS = ("target_params", "target_flops", "target_latency_ms", "budget_fit")

# The options that decide what a pipeline computes: saved in pipeline.json, compared on --resume.
FINGERPRINT = ("preset", "dataset", "data_dir", "seed", *SIZE_OPTIONS, "search_config", "train_config", "target_params",
               "target_flops", "target_latency_ms", "budget_fit")


def fingerprint(args) -> dict:
    """The resolved options of a pipeline, with the content hash of each config file (an edited file
    changes the fingerprint as a changed option does)."""
    fp = {k: getattr(args, k) for k in FINGERPRINT}
    for key in ("search_config", "train_config"):
        if fp[key]:
            path = Path(fp[key])
            if not path.is_file():
                raise ConfigError(f"--{key.replace('_', '-')}: config file not found: {path}")
            fp[key + "_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return fp


def _resume_args(args) -> argparse.Namespace:
    """The saved options of the pipeline in args.resume; an option given now that differs is refused."""
    path = Path(args.resume) / "pipeline.json"
    if not path.is_file():
        raise RunError(f"{args.resume} is not a pipeline run directory (no pipeline.json)")
    try:
        saved = json.loads(path.read_text())["options"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path} is unreadable: {exc}") from None
    defaults = parse_args([])  # what an option is when not typed
    given = {k: getattr(args, k) for k in FINGERPRINT if getattr(args, k) != getattr(defaults, k)}
    cfglib.refuse_changes(saved, given, (), "a pipeline")
    merged = argparse.Namespace(**{**vars(args), **{k: saved.get(k) for k in FINGERPRINT}})
    now = fingerprint(merged)
    for key in ("search_config", "train_config"):
        if saved.get(key) and now.get(key + "_sha256") != saved.get(key + "_sha256"):
            raise ConfigError(f"--resume: {saved[key]} changed since the pipeline started; restore it "
                                     "or start a new pipeline")
    return merged


def _check_train_config(args, train_preset: str) -> None:
    """Build the retraining config now (with a placeholder genotype): a bad train config or option fails
    before the search spends its time, not after."""
    cli = {"preset": train_preset, "genotype": "DARTS_V2"}
    if args.train_config:
        cli["config"] = args.train_config
    for name in ("dataset", "data_dir", "seed", "device", *SIZE_OPTIONS):
        if getattr(args, name) is not None:
            cli[name] = getattr(args, name)
    try:
        cfglib.build_config(TrainConfig, TRAIN_PRESETS, cli, "darts")
    except ConfigError as exc:
        raise ConfigError(f"retraining config: {exc}") from None


def _main(args) -> int:
    # Under torchrun one process group serves both the search and the retraining.
    return distributed.run_in_group(args.device or "auto", _pipeline, args)


def _pipeline(args, ctx) -> int:
    if args.resume:
        if args.overwrite:
            raise ConfigError("--overwrite and --resume exclude each other")
        args = _resume_args(args)
    search_preset, train_preset = PRESETS[args.preset]
    _check_train_config(args, train_preset)
    out = Path(distributed.broadcast_object(str(args.resume or args.out or default_run_dir("pipeline"))))
    run = RunDir(out, enabled=ctx.is_main, resume=bool(args.resume), overwrite=args.overwrite)
    if run.moved_aside:
        run.log(f"--overwrite: the run that was in {out} is now in {run.moved_aside}")
    if not args.resume:
        run.write_json("pipeline.json", {"options": fingerprint(args)})
    search_dir, train_dir = out / "search", out / "train"
    common = {k: getattr(args, k) for k in ("dataset", "data_dir", "seed", "device", *SIZE_OPTIONS)
              if getattr(args, k) is not None}

    if (search_dir / "genotype.json").is_file():
        run.log(f"search already finished: {search_dir}")
    elif args.resume and (search_dir / "checkpoint.pt").is_file():
        search_cli.run_search(search_cli.launch({"resume": str(search_dir)}))
    else:
        opts = {"preset": search_preset, **common, **_budget_options(args, train_preset), "out": str(search_dir),
                "overwrite": search_dir.exists()}  # a search cut before its first checkpoint starts again
        if args.search_config:
            opts["config"] = args.search_config
        search_cli.run_search(search_cli.launch(opts))

    if (train_dir / "report.json").is_file():
        run.log(f"retraining already finished: {train_dir}")
    elif args.resume and (train_dir / "last.pt").is_file():
        train_cli.run_training(train_cli.launch({"resume": str(train_dir)}))
    else:
        opts = {"genotype": str(search_dir), "preset": train_preset, **common, **_fitted_channels(search_dir),
                "out": str(train_dir), "overwrite": train_dir.exists()}
        if args.train_config:
            opts["config"] = args.train_config
        train_cli.run_training(train_cli.launch(opts))

    try:
        summary = json.loads((search_dir / "summary.json").read_text())
        result = json.loads((train_dir / "report.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"pipeline outputs missing or unreadable in {out}: {exc}") from None
    report = {
        "genotype": result["genotype"], "genotype_text": result["genotype_text"],
        "diagrams": sorted(str(p.relative_to(out)) for p in search_dir.glob("*.dot")),
        "params": result["params"], "params_with_auxiliary": result["params_with_auxiliary"],
        "flops": result["flops"], "search_time_s": summary["search_time_s"],
        "retrain_time_s": result["train_time_s"], "final_test_error": result["final_test_error"],
        "best_epoch_test_acc": result["best_epoch_test_acc"], "epochs": result["epochs"],
        "dataset": result["dataset"], "seed": result["seed"], "budget": summary.get("budget"),
    }
    run.write_json("report.json", report)
    md = "\n".join([
        "# fastnas pipeline report", "",
        f"- genotype: `{report['genotype_text']}`",
        f"- cell diagrams: {', '.join(report['diagrams'])}",
        f"- parameters: {report['params']:,} ({report['params_with_auxiliary']:,} with the auxiliary head), "
        f"{report['flops'] / 2e6:.1f}M MACs per image",
        f"- search time: {report['search_time_s']:.1f} s; retraining time: {report['retrain_time_s']:.1f} s",
        f"- final test error ({report['dataset']}, {report['epochs']} epochs, seed {report['seed']}): "
        f"{report['final_test_error'] * 100:.2f}%",
        *_budget_lines(report["budget"]),
        "",
    ])
    run.write_text("report.md", md)
    run.log(md)
    run.log(f"results in {out}")
    run.close()
    return 0


def _budget_options(args, train_preset: str) -> dict:
    """The budget options of the search, with the evaluation network it prices set to the one the
    retraining will build (its preset, or its config file)."""
    targets = {"target_params": args.target_params, "target_flops": args.target_flops,
               "target_latency_ms": args.target_latency_ms}
    out = {k: v for k, v in targets.items() if v is not None}
    if "target_latency_ms" in out:  # pipeline.json of earlier releases saved it as text
        out["target_latency_ms"] = float(out["target_latency_ms"])
    if not out:
        return {}
    net = {"channels": TrainConfig.channels, "layers": TrainConfig.layers,
           **{k: v for k, v in TRAIN_PRESETS[train_preset].items() if k in ("channels", "layers")}}
    if args.train_config:
        net.update({k: v for k, v in cfglib.load_yaml(args.train_config).items() if k in ("channels", "layers")})
    out.update(eval_channels=net["channels"], eval_layers=net["layers"])
    if args.budget_fit:
        out["budget_fit"] = args.budget_fit
    return out


def _fitted_channels(search_dir: Path) -> dict:
    """channels for the retraining when the search shrank the evaluation channels to fit its budget."""
    try:
        budget = json.loads((search_dir / "summary.json").read_text()).get("budget")
    except (OSError, json.JSONDecodeError):
        return {}
    if budget and budget.get("fit") == "channels":
        return {"channels": budget["eval_channels"]}
    return {}


def _budget_lines(budget: dict | None) -> list[str]:
    if not budget:
        return []
    h = lambda x: human(x, budget["metric"])  # noqa: E731
    final = f"final {h(budget['cost'])}"
    if "measured_latency_ms" in budget:  # judged by the measurement; the table's own error said beside it
        final += (f" by the lookup table, {budget['measured_latency_ms']:.3f} ms measured (table "
                  f"{100 * budget['table_error']:+.0f}%)")
    return [f"- budget: {budget['metric']} <= {h(budget['target'])} (penalty {budget['penalty']}); derived cell "
            f"{h(budget['derived_cost'])}, {final}, {'within' if budget['meets_budget'] else 'OVER'} the budget"]


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
