"""``fastnas evaluate --checkpoint RUN/best.pt`` (``python -m fastnas.evaluate``): evaluate a trained model.

The checkpoint (best.pt or last.pt of a training run) carries its genotype, network size and
normalization; the dataset defaults to the one it was trained on and can be changed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fastnas.cli.common import cli_main, description
from fastnas.infra import config as cfglib
from fastnas.infra.options import DATASETS
from fastnas.infra.rundir import refuse_existing
from fastnas.infra.runtime import check_device
from fastnas.train.evaluate import evaluate_checkpoint


def parse_args(argv=None):
    p = cfglib.OneLineErrorParser(prog="fastnas evaluate", description=description(__doc__),
                                  formatter_class=cfglib.HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run (or its directory)")
    p.add_argument("--genotype", default=None, help="expected genotype: an error if the checkpoint's differs")
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help="default: the training dataset")
    p.add_argument("--data-dir", default=None, help="default: the training data dir")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--batch-size", type=cfglib.int_in(1, 65536), default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def _check_args(args) -> None:
    """Everything that can be checked before loading data and weights."""
    if args.batch_size < 1:
        raise cfglib.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_device(args.device)
    if args.out:
        refuse_existing(args.out, "--out")
        parent = Path(args.out).resolve().parent
        if not parent.is_dir():
            raise cfglib.ConfigError(f"--out {args.out}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise cfglib.ConfigError(f"--out {args.out}: folder {parent} is not writable")


def _main(args) -> int:
    _check_args(args)
    result = evaluate_checkpoint(args.checkpoint, genotype_spec=args.genotype, dataset=args.dataset,
                                 data_dir=args.data_dir, split=args.split, batch_size=args.batch_size,
                                 device=args.device, amp=args.amp)
    print(f"{result['dataset']} {result['split']}: accuracy {result['test_acc'] * 100:.2f}% "
          f"(error {result['test_error'] * 100:.2f}%) on {result['images']} images, checkpoint epoch {result['epoch']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
