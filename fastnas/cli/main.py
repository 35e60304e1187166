"""``fastnas <command> [options]``: one entry point for every command (``fastnas --help`` lists them)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "search": "progressive sampled architecture search (S2)",
    "train": "retrain a genotype from scratch and report its test error (S3)",
    "evaluate": "evaluate a trained model on a dataset",
    "pipeline": "search, retrain and report in one run directory",
    "study": "searched vs random cells, retrained alike over several seeds",
    "cost": "parameters, FLOPs and latency of genotypes' evaluation networks",
    "info": "environment and kernel report",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: fastnas <command> [options]   (fastnas <command> --help for its options)", "", "commands:"]
        lines += [f"  {name:<9} {what}" for name, what in COMMANDS.items()]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return 2
    return importlib.import_module(f"fastnas.cli.{name}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
