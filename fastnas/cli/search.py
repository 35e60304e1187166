"""``fastnas search`` (``python -m fastnas.search``): a progressive sampled architecture search.

Three stages by default; every epoch is checkpointed atomically and ``--resume DIR`` continues a
killed run (with ``--deterministic`` it ends with the genotype an uninterrupted run gives).
"""

from __future__ import annotations

import sys

from fastnas.cli.common import Launch, cli_main, execute, prepare, resumed_line
from fastnas.infra import config as cfglib
from fastnas.search import PRESETS, SearchConfig, Searcher, upgrade_saved, write_results
from fastnas.space.genotype import Genotype

# What --resume may change: where and how wide the run executes, never what it computes.
MAY_CHANGE = ("device", "workers", "dist_timeout", "cudnn_benchmark", "accumulate")


def parse_args(argv=None) -> dict:
    parser = cfglib.make_parser("fastnas search", "Progressive sampled architecture search (three stages by "
                                "default).", SearchConfig)
    return vars(parser.parse_args(argv))


def launch(args: dict) -> Launch:
    """A new search from options (preset < YAML < command line), or the run in ``args['resume']``."""
    return prepare(SearchConfig, PRESETS, "progressive", args, kind="search", checkpoint="checkpoint.pt",
                   may_change=MAY_CHANGE, upgrade=upgrade_saved)


def run_search(launch: Launch) -> Genotype:
    """Run (or resume) a search to its genotype, writing its run directory. Under torchrun every
    process runs this; only rank 0 writes."""
    return execute(launch, _search)


def _search(launch: Launch, run, ctx, device) -> Genotype:
    cfg = launch.cfg
    searcher = Searcher(cfg, run, device, rank=ctx.rank, world_size=ctx.world_size)
    if launch.resumed:
        searcher.load_state_dict(launch.state)
        done = (searcher.stage, searcher.epoch)
        run.truncate_metrics(lambda r: (r["stage"] - 1, r["epoch"]) <= done)
        where = f"stage {searcher.stage + 1}, epoch {searcher.epoch}"
        run.log(resumed_line(launch, where + (f" on {ctx.world_size} processes" if ctx.enabled else "")))
    else:
        run.log(f"search: preset {cfg.preset}, sampler {cfg.sampler}, dataset {cfg.dataset}, device {device}, "
                f"run dir {launch.path}" + (f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""))
    genotype = searcher.run(resumed=launch.resumed)
    write_results(run, searcher, genotype)
    if ctx.enabled:  # every rank derives the genotype itself: show that they agree
        print(f"rank {ctx.rank} genotype: {genotype}", flush=True)
    run.log(f"genotype: {genotype}")
    over = searcher.budget_report and not searcher.budget_report["meets_budget"]
    run.log(f"search time {searcher.elapsed:.1f}s; results in {launch.path}"
            + ("; the genotype is OVER its budget (see the budget lines above)" if over else ""))
    return genotype


def _main(args: dict) -> int:
    run_search(launch(args))
    return 0


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parse_args", "launch", "run_search", "MAY_CHANGE"]
