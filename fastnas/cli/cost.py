"""``fastnas cost`` (``python -m fastnas.cost``): parameters, FLOPs (multiply-adds) and, with
``--latency-device``, measured latency of genotypes' evaluation networks, and the latency lookup
table's prediction error against whole measured networks."""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

import torch

from fastnas.cli.common import cli_main, description
from fastnas.cost import EvalShape, LatencySetting, LatencyTable, cost_report, default_latency_cache, format_report
from fastnas.infra import config as cfglib
from fastnas.infra.errors import ConfigError
from fastnas.infra.rundir import refuse_existing
from fastnas.search.budget import Budget
from fastnas.space.genotype import random_genotype, resolve_genotype

LATENCY_OPTIONS = ("latency_batch", "latency_dtype", "latency_cache")


def parse_args(argv=None):
    p = cfglib.OneLineErrorParser(prog="fastnas cost", description=description(__doc__),
                                  formatter_class=cfglib.HelpFormatter)
    p.add_argument("--genotype", nargs="+", default=["DARTS_V2"],
                   help="published names, genotype.json files, search run directories or genotype strings")
    p.add_argument("--random", type=cfglib.int_in(0, 100_000), default=0,
                   help="also this many random genotypes (seeded)")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--latency-device", default=None, help="cpu or cuda[:N]: also measure latency there")
    # The latency measurement's options are the budgeted search's own (one declaration, one check).
    cfglib.add_arguments(p, Budget, only=LATENCY_OPTIONS)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None, help="also write the reports to this JSON file")
    return cfglib.typed_or(p.parse_args(argv), Budget, LATENCY_OPTIONS)


def _main(args) -> int:
    for name in ("channels", "layers", "image_size", "num_classes", "latency_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.json:
        refuse_existing(args.json, "--json")
    shape = EvalShape(args.channels, args.layers, args.image_size, args.num_classes)
    genotypes = [(spec, resolve_genotype(spec)) for spec in args.genotype]
    rng = random.Random(0)
    genotypes += [(f"random{i}", random_genotype(rng)) for i in range(args.random)]
    latency = None
    if args.latency_device:
        if args.latency_device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--latency-device {args.latency_device}: no CUDA device here")
        latency = LatencyTable(LatencySetting(args.latency_device, args.latency_batch, args.latency_dtype,
                                              args.channels_last), args.latency_cache or default_latency_cache())
    reports, errors = {}, []
    for name, g in genotypes:
        rep = cost_report(g, shape, latency)
        reports[name] = rep
        print(f"{name[:60]}\n{format_report(rep)}")
        if latency is not None:
            errors.append(rep["latency_ms_predicted"] / rep["latency_ms_measured"] - 1)
    if errors:
        print(f"lookup-table prediction error over {len(errors)} networks: mean {100 * statistics.mean(errors):+.1f}%, "
              f"mean absolute {100 * statistics.mean(abs(e) for e in errors):.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    return 0


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())

