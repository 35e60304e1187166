"""``fastnas train --genotype X`` (``python -m fastnas.train``): retrain a genotype from scratch.

X is a published name (DARTS_V2, PDARTS, ...), a genotype.json, a search run directory, or a pasted
DARTS ``Genotype(...)`` string. ``--resume DIR`` continues a killed run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fastnas import cost, plots
from fastnas.cli.common import Launch, cli_main, execute, prepare, resumed_line
from fastnas.infra import config as cfglib
from fastnas.infra.errors import ConfigError
from fastnas.space.genotype import Genotype, resolve_genotype
from fastnas.train import PRESETS, TrainConfig, Trainer, export_model, model_report

# What --resume may change: where and how wide the run executes, never what it computes.
MAY_CHANGE = ("device", "workers", "dist_timeout", "cudnn_benchmark")


def parse_args(argv=None) -> dict:
    parser = cfglib.make_parser("fastnas train", "Retrain a genotype from scratch and report its test error.",
                                TrainConfig)
    return vars(parser.parse_args(argv))


def launch(args: dict) -> Launch:
    """A new retraining from options (preset < YAML < command line), or the run in ``args['resume']``."""
    return prepare(TrainConfig, PRESETS, "darts", args, kind="train", checkpoint="last.pt", may_change=MAY_CHANGE)


def run_training(launch: Launch) -> dict:
    """Run (or resume) a retraining and write its report; returns the report. Under torchrun every
    process runs this; only rank 0 writes."""
    cfg = launch.cfg
    if launch.state is None:
        genotype = resolve_genotype(cfg.genotype).check_trainable()
    else:
        genotype = Genotype.from_dict(launch.state["genotype"])
    return execute(launch, lambda la, run, ctx, device: _train(la, run, ctx, device, genotype))


def _train(launch: Launch, run, ctx, device, genotype: Genotype) -> dict:
    cfg = launch.cfg
    trainer = Trainer(cfg, run, device, genotype, rank=ctx.rank, world_size=ctx.world_size)
    image_size = cfg.image_size if cfg.dataset == "folder" else 32
    report = model_report(trainer.net, image_size, device)
    if launch.resumed:
        trainer.load_state_dict(launch.state)
        run.truncate_metrics(lambda r: r["epoch"] <= trainer.epoch)
        run.log(resumed_line(launch, f"epoch {trainer.epoch}"))
    else:
        run.write_text("genotype.json", genotype.to_json() + "\n")
        run.log(f"train: {genotype}")
        run.log(f"{cfg.dataset}, {cfg.layers} cells, C={cfg.channels}: {report['params']:,} parameters "
                f"({report['params_with_auxiliary']:,} with the auxiliary head), {report['macs'] / 1e6:.1f}M MACs; "
                f"device {device}, run dir {launch.path}")
    last = trainer.run()
    if not last:  # resumed a finished run
        last = {**trainer.evaluate(), "epoch": trainer.epoch}
    exported = export_model(run, trainer.net, image_size, device) if cfg.export and run.enabled else []
    result = {
        "genotype": genotype.to_dict(), "genotype_text": str(genotype), **report,
        "epochs": trainer.epoch, "final_test_error": last["test_error"], "final_test_acc": last["test_acc"],
        "best_epoch_test_acc": trainer.best["test_acc"], "best_epoch": trainer.best["epoch"],
        "train_time_s": trainer.elapsed, "seed": cfg.seed, "dataset": cfg.dataset, "exported": exported,
    }
    run.write_json("report.json", result)
    if cfg.plots and run.enabled:
        try:
            plots.train_curves(run.path)
        except Exception as exc:  # a picture is a convenience: report, don't fail the run
            run.log(f"warning: curves.png not drawn: {type(exc).__name__}: {exc}")
    run.log(f"final test error {result['final_test_error'] * 100:.2f}% after {trainer.epoch} epochs (seed {cfg.seed}; "
            f"best epoch {trainer.best['epoch']}: {(1 - trainer.best['test_acc']) * 100:.2f}%, shown for reference)")
    run.log(f"results in {launch.path}")
    return result


def report_cost(cfg: TrainConfig) -> dict:
    """The cost report of the network this config would train (see :mod:`fastnas.cost`), printed."""
    if cfg.dataset == "cifar100":
        num_classes = 100
    elif cfg.dataset == "folder":
        train_dir = Path(cfg.data_dir).expanduser() / "train"
        if not train_dir.is_dir():
            raise ConfigError(f"folder dataset: {train_dir} is not a directory")
        num_classes = sum(p.is_dir() for p in train_dir.iterdir())
    else:
        num_classes = 10
    shape = cost.EvalShape(cfg.channels, cfg.layers, cfg.image_size if cfg.dataset == "folder" else 32, num_classes)
    latency = None
    if cfg.latency_device:
        if cfg.latency_device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"latency_device {cfg.latency_device}: no CUDA device here")
        latency = cost.LatencyTable(cost.LatencySetting(cfg.latency_device, cfg.latency_batch, "float32",
                                                        cfg.channels_last), cost.default_latency_cache())
    genotype = resolve_genotype(cfg.genotype)
    rep = cost.cost_report(genotype, shape, latency)
    print(f"{genotype}\n{cost.format_report(rep)}")
    return rep


def _main(args: dict) -> int:
    la = launch(args)
    if la.cfg.report_cost:
        report_cost(la.cfg)
        return 0
    run_training(la)
    return 0


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
