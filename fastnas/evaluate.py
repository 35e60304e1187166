"""Evaluate a trained model: ``python -m fastnas.evaluate --checkpoint RUN/best.pt``.

The checkpoint (best.pt or last.pt of a training run) carries its genotype, network size and
normalization; the dataset defaults to the one it was trained on and can be changed.
"""

from __future__ import annotations

import argparse
import json
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


def evaluate_checkpoint(args) -> dict:
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    state = load_checkpoint(path)
    if state.get("kind") not in ("train", "weights"):
        raise RunError(f"{path} is not a training checkpoint (best.pt or last.pt)")
    genotype = Genotype.from_dict(state["genotype"])
    if args.genotype is not None and resolve_genotype(args.genotype) != genotype:
        raise RunError(f"checkpoint {path} was trained with another genotype than {args.genotype[:60]!r}")
    cfg = cfglib.from_dict(TrainConfig, state["config"])
    dataset = args.dataset or cfg.dataset
    data = load_dataset(dataset, args.data_dir or cfg.data_dir, train=args.split == "train",
                        embedded_size=cfg.embedded_size, image_size=cfg.image_size, seed=cfg.seed)
    if data.num_classes != state["num_classes"]:
        raise RunError(f"{dataset} has {data.num_classes} classes, the checkpoint's model {state['num_classes']}")
    device = resolve_device(args.device)
    net = EvalNetwork(genotype, cfg.channels, cfg.layers, state["num_classes"], cfg.auxiliary).to(device)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunError(f"checkpoint weights do not fit the genotype's network: {str(exc).splitlines()[0]}") from None
    mean, std = state.get("normalization", (data.mean, data.std))
    result = evaluate_model(net, data, mean, std, device, args.batch_size, AMP_DTYPES[args.amp])
    result.update(checkpoint=str(path), epoch=state.get("epoch"), dataset=dataset, split=args.split,
                  images=len(data), genotype=str(genotype))
    return result


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
