"""Evaluate a trained model: ``python -m fastnas.evaluate --checkpoint RUN/best.pt``.

The checkpoint (best.pt or last.pt of a training run) carries its genotype, network size and
normalization; the dataset defaults to the one it was trained on and can be changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fastnas import config as cfglib
from fastnas.data import DATASETS, load_dataset
from fastnas.genotype import Genotype
from fastnas.network import EvalNetwork
from fastnas.runs import AMP_DTYPES, RunError, cli_main, load_checkpoint, resolve_device
from fastnas.train import TrainConfig, evaluate_model, resolve_genotype


def parse_args(argv=None):
    p = cfglib.OneLineErrorParser(prog="python -m fastnas.evaluate", description=__doc__.split("\n")[0],
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run (or its directory)")
    p.add_argument("--genotype", default=None, help="expected genotype: an error if the checkpoint's differs")
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help="default: the training dataset")
    p.add_argument("--data-dir", default=None, help="default: the training data dir")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p.parse_args(argv)


WEIGHT_FILES = ("model.safetensors", "model_state_dict.pt")


def _check_args(args) -> None:
    """Everything that can be checked before loading data and weights."""
    if args.batch_size < 1:
        raise cfglib.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfglib.check_device(args.device)
    if args.out:
        parent = Path(args.out).resolve().parent
        if not parent.is_dir():
            raise cfglib.ConfigError(f"--out {args.out}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise cfglib.ConfigError(f"--out {args.out}: folder {parent} is not writable")


def _load_run_files(path: Path, device):
    """A training run's exported model (model.pt2) or final weights (model.safetensors or
    model_state_dict.pt): (genotype, config, module or state dict). The run's config.yaml and
    genotype.json beside the file say what network it is."""
    import torch

    run = path.parent
    for need in ("config.yaml", "genotype.json"):
        if not (run / need).is_file():
            raise RunError(f"{path}: no {need} beside it (evaluate the files of a training run directory)")
    cfg = cfglib.from_dict(TrainConfig, cfglib.load_yaml(run / "config.yaml"))
    genotype = Genotype.from_json(run / "genotype.json")
    try:
        if path.suffix == ".pt2":
            model = torch.export.load(str(path)).module().to(device)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            model = load_file(str(path))
        else:
            model = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunError(f"cannot read {path}: {type(exc).__name__}: "
                       f"{(str(exc).splitlines() or [''])[0][:200]}") from None
    return genotype, cfg, model


def evaluate_checkpoint(args) -> dict:
    _check_args(args)
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    device = resolve_device(args.device)
    if path.suffix in (".pt2", ".safetensors") or path.name in WEIGHT_FILES:
        genotype, cfg, model = _load_run_files(path, device)
        num_classes, normalization, epoch = None, None, cfg.epochs  # the final weights of the run
    else:
        state = load_checkpoint(path)
        if state.get("kind") not in ("train", "weights"):
            raise RunError(f"{path} is not a training checkpoint (best.pt or last.pt)")
        genotype = Genotype.from_dict(state["genotype"])
        cfg = cfglib.from_dict(TrainConfig, state["config"])
        model, num_classes = state["model"], state["num_classes"]
        normalization, epoch = state.get("normalization"), state.get("epoch")
    if args.genotype is not None and resolve_genotype(args.genotype) != genotype:
        raise RunError(f"{path} was trained with another genotype than {args.genotype[:60]!r}")
    dataset = args.dataset or cfg.dataset
    kw = dict(embedded_size=cfg.embedded_size, image_size=cfg.image_size, seed=cfg.seed)
    data = load_dataset(dataset, args.data_dir or cfg.data_dir, train=args.split == "train", **kw)
    _check_classes(data, dataset)
    if num_classes is not None and data.num_classes != num_classes:
        raise RunError(f"{dataset} has {data.num_classes} classes, the checkpoint's model {num_classes}")
    if isinstance(model, dict):  # weights: build the genotype's network for them
        net = EvalNetwork(genotype, cfg.channels, cfg.layers, data.num_classes, cfg.auxiliary).to(device)
        try:
            net.load_state_dict(model)
        except RuntimeError as exc:
            raise RunError(f"weights {path} do not fit the genotype's network: {str(exc).splitlines()[0]}") from None
    else:
        net = model
    if normalization is None:  # the network was trained with the train split's statistics
        stats = data
        if dataset == "folder" and args.split == "test":
            stats = load_dataset(dataset, args.data_dir or cfg.data_dir, train=True, **kw)
        normalization = (stats.mean, stats.std)
    mean, std = normalization
    result = evaluate_model(net, data, mean, std, device, args.batch_size, AMP_DTYPES[args.amp])
    result.update(checkpoint=str(path), epoch=epoch, dataset=dataset, split=args.split, images=len(data),
                  genotype=str(genotype))
    return result


def _check_classes(data, dataset: str) -> None:
    """An accuracy over one class (or no images) says nothing: refuse it rather than print 0% error."""
    if len(data) == 0:
        raise RunError(f"{dataset}: no images to evaluate")
    present = int(data.labels.unique().numel())
    if present < 2:
        raise RunError(f"{dataset}: every image to evaluate has the same label ({present} class present); "
                       "an accuracy over it is meaningless")


def _main(args) -> int:
    result = evaluate_checkpoint(args)
    print(f"{result['dataset']} {result['split']}: accuracy {result['test_acc'] * 100:.2f}% "
          f"(error {result['test_error'] * 100:.2f}%) on {result['images']} images, checkpoint epoch {result['epoch']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
