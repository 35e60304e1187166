"""``fastnas study`` (``python -m fastnas.study``): searched vs random cells, honestly.

For each seed: a search with each requested sampler, and N random genotypes freshly drawn for that seed
from the same space under the same rules (two distinct inputs per node, no 'none', the normal cell's skip
cap); every cell is retrained with the same recipe, budget and seed, and scored by its final-epoch test
accuracy. Reported per seed and overall: the searched cell's accuracy, the random cells' mean and spread,
the searched cell's rank among them (a tie counts as not better), the relative improvement over the
random mean, every cell's parameters and FLOPs, the searched cell's residual from the random cells' line
of accuracy on log(parameters) (size-aware: a win by picking bigger cells shows as none), one-sided sign
and Wilcoxon signed-rank p-values over seeds, and search and retraining time.

Everything lives in one study directory (sub-runs under ``search/`` and ``train/``); ``--resume DIR``
continues a killed study where it stopped (finished runs are reused, a cut run resumes from its
checkpoint), and under torchrun every sub-run uses all processes. Writes ``study.json``, ``study.md``,
``study.png`` and ``study_size.png`` (accuracy against parameters).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from pathlib import Path

import yaml

from fastnas import plots
from fastnas.cli import search as search_cli
from fastnas.cli import train as train_cli
from fastnas.cli.common import SIZE_OPTIONS, add_size_arguments, cli_main, description
from fastnas.infra import config as cfglib
from fastnas.infra import distributed
from fastnas.infra.errors import ConfigError, RunError
from fastnas.infra.options import DATASETS
from fastnas.infra.rundir import RunDir, default_run_dir
from fastnas.search import PRESETS as SEARCH_PRESETS
from fastnas.search import SearchConfig
from fastnas.space.genotype import random_genotype
from fastnas.space.primitives import PRIMITIVES, is_primitive
from fastnas.space.sampler import SAMPLERS
from fastnas.train import PRESETS as TRAIN_PRESETS


def parse_args(argv=None):
    p = cfglib.OneLineErrorParser(prog="fastnas study", description=description(__doc__),
                                  formatter_class=cfglib.HelpFormatter)
    p.add_argument("--samplers", nargs="+", default=None, choices=list(SAMPLERS),
                   help="one search per sampler and seed (default: the search preset's sampler)")
    p.add_argument("--seeds", nargs="+", type=cfglib.int_in(0, cfglib.INT64_MAX), default=[0, 1, 2, 3, 4],
                   help="search and retraining seeds")
    p.add_argument("--random", type=cfglib.int_in(0, 10_000, "each random cell is retrained once per seed"),
                   default=8,
                   help="random genotypes per seed (fresh cells for every seed), each retrained with that seed")
    p.add_argument("--random-seed", type=cfglib.int_in(0, cfglib.INT64_MAX), default=1234,
                   help="seed of the random genotypes")
    p.add_argument("--search-preset", default="quick", choices=list(SEARCH_PRESETS))
    p.add_argument("--train-preset", default="quick", choices=list(TRAIN_PRESETS))
    p.add_argument("--search-config", default=None, metavar="FILE.yaml", help="search options (fastnas.search)")
    p.add_argument("--train-config", default=None, metavar="FILE.yaml", help="retraining options (fastnas.train)")
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help="default: the presets' (embedded)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None, help="default: auto")
    p.add_argument("--workers", type=cfglib.int_in(0, 4096), default=None, help="CPU threads")
    add_size_arguments(p)
    p.add_argument("--out", default=None, help="study directory (default runs/study-<time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the study in DIR with its saved options")
    p.add_argument("--merge", nargs="+", default=None, metavar="STUDY.json",
                   help="combine the seeds of finished studies run alike (e.g. on several machines) into --out")
    return p.parse_args(argv)


_SAVED = ("samplers", "seeds", "random", "random_seed", "search_preset", "train_preset", "search_config",
          "train_config", "dataset", "data_dir", *SIZE_OPTIONS)
# Saved with a study, not options: new studies draw fresh random cells for every seed (so the random
# cells' spread is the space's, not retraining noise); a study started before kept one set for all seeds.
_SAVED_FLAGS = {"fresh_random": True}


def _load_options(args) -> dict:
    if args.resume:
        path = Path(args.resume) / "study_config.yaml"
        if not path.is_file():
            raise RunError(f"{args.resume} is not a study directory (no study_config.yaml)")
        saved = yaml.safe_load(path.read_text())
        defaults = vars(parse_args([]))
        given = {k: getattr(args, k) for k in _SAVED if getattr(args, k) != defaults[k]}
        cfglib.refuse_changes(saved, given, (), "a study")  # what a study compares may not change halfway
        for key in SIZE_OPTIONS:  # a study from before these options used the presets' sizes
            saved.setdefault(key, None)
        saved.setdefault("fresh_random", False)  # a study from before fresh cells per seed goes on as it began
        return {**saved, "device": args.device, "workers": args.workers, "out": args.resume, "resume": True}
    opts = {k: getattr(args, k) for k in _SAVED}
    opts.update(_SAVED_FLAGS, device=args.device, workers=args.workers, out=args.out)
    if not opts["samplers"]:
        opts["samplers"] = [_search_values(opts).get("sampler", SearchConfig.sampler)]
    if opts["random"] < 1 or not opts["seeds"]:
        raise ConfigError("--random must be >= 1 and --seeds non-empty")
    if len(set(opts["seeds"])) != len(opts["seeds"]) or len(set(opts["samplers"])) != len(opts["samplers"]):
        raise ConfigError("--seeds and --samplers must not repeat")
    for key in ("search_config", "train_config"):
        if opts[key]:
            cfglib.load_yaml(opts[key])  # fail now, not after hours of searching
    return opts


def _search_values(opts) -> dict:
    """The search options the study fixes: the search preset, then the search YAML."""
    values = dict(SEARCH_PRESETS[opts["search_preset"]])
    if opts["search_config"]:
        values.update(cfglib.load_yaml(opts["search_config"]))
    return values


def _search_space(opts) -> tuple[list[str], int | None, str | None]:
    """The primitives, skip cap and fixed reduction cell the searches use (preset, then the search YAML)."""
    values = _search_values(opts)
    prims = list(values.get("primitives", PRIMITIVES))
    if not all(isinstance(p, str) and is_primitive(p) for p in prims):
        raise ConfigError(f"search primitives: unknown op in {prims}")
    max_skip = int(values.get("max_skip", 2))
    return prims, None if max_skip < 0 else max_skip, values.get("fixed_reduction")


_SAME = ("samplers", "random", "dataset", "search_preset", "train_preset")


def merge_studies(studies: list[dict]) -> dict:
    """One study from several run with the same samplers, random cells, dataset and presets over
    disjoint seeds; the overall numbers are recomputed."""
    first = studies[0]
    for other in studies[1:]:
        for key in _SAME:
            if other.get(key) != first.get(key):
                raise ConfigError(f"--merge: the studies differ in {key} ({first.get(key)!r} vs {other.get(key)!r})")
    per, seeds = {}, []
    for st in studies:
        for seed, entry in st["per_seed"].items():
            if seed in per:
                raise ConfigError(f"--merge: seed {seed} appears in more than one study")
            per[seed] = entry
            seeds.append(int(seed))
    merged = {k: first.get(k) for k in _SAME}
    merged.update(seeds=sorted(seeds), per_seed={str(s): per[str(s)] for s in sorted(seeds)})
    merged["overall"] = _overall(merged)
    return merged


def _merge(args) -> int:
    studies = []
    for path in args.merge:
        try:
            studies.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--merge: cannot read {path}: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:160]}") from None
        if not isinstance(studies[-1], dict) or "per_seed" not in studies[-1]:
            raise ConfigError(f"--merge: {path} is not a study.json")
    merged = merge_studies(studies)
    out = Path(args.out or default_run_dir("study"))
    run = RunDir(out)
    run.write_json("study.json", merged)
    md = study_markdown(merged)
    run.write_text("study.md", md)
    plots.study_chart(merged, out / "study.png")
    run.log(md)
    run.log(f"merged {len(studies)} studies ({len(merged['seeds'])} seeds) into {out}")
    run.close()
    return 0


def _main(args) -> int:
    if args.merge:
        return _merge(args)
    opts = _load_options(args)
    # Under torchrun one process group serves every search and retraining of the study.
    return distributed.run_in_group(opts["device"] or "auto", _study, opts)


def _only(opts, names) -> dict:
    """The options among `names` the study was given (the others keep the presets' values)."""
    return {name: opts[name] for name in names if opts.get(name) is not None}


def _run_search(opts, sampler: str, seed: int, run_dir: Path, log) -> dict:
    if (run_dir / "summary.json").is_file():
        log(f"search {sampler} seed {seed}: done ({run_dir})")
    elif (run_dir / "checkpoint.pt").is_file():
        log(f"search {sampler} seed {seed}: resuming {run_dir}")
        search_cli.run_search(search_cli.launch({"resume": str(run_dir), **_only(opts, ("device", "workers"))}))
    else:
        log(f"search {sampler} seed {seed} -> {run_dir}")
        args = {"preset": opts["search_preset"], "sampler": sampler, "seed": seed,
                **_only(opts, ("dataset", "data_dir", "device", "workers", *SIZE_OPTIONS)), "out": str(run_dir),
                "overwrite": run_dir.exists()}  # a search cut before its first checkpoint starts again
        if opts["search_config"]:
            args["config"] = opts["search_config"]
        search_cli.run_search(search_cli.launch(args))
    return json.loads((run_dir / "summary.json").read_text())


def _run_train(opts, genotype: str, seed: int, run_dir: Path, log) -> dict:
    if (run_dir / "report.json").is_file():
        return json.loads((run_dir / "report.json").read_text())
    if (run_dir / "last.pt").is_file():
        train_cli.run_training(train_cli.launch({"resume": str(run_dir), **_only(opts, ("device", "workers"))}))
    else:
        args = {"genotype": genotype, "preset": opts["train_preset"], "seed": seed, "export": False,
                **_only(opts, ("dataset", "data_dir", "device", "workers", *SIZE_OPTIONS)), "out": str(run_dir),
                "overwrite": run_dir.exists()}  # a retraining cut before its first checkpoint starts again
        if opts["train_config"]:
            args["config"] = opts["train_config"]
        train_cli.run_training(train_cli.launch(args))
    report = json.loads((run_dir / "report.json").read_text())
    log(f"  retrained {run_dir.name}: test accuracy {report['final_test_acc']:.4f}")
    return report


def _study(opts, ctx) -> int:
    out = Path(distributed.broadcast_object(str(opts["out"] or default_run_dir("study"))))
    run = RunDir(out, enabled=ctx.is_main, resume=bool(opts.get("resume")))
    log = run.log
    if ctx.is_main and not (out / "study_config.yaml").is_file():
        saved = {k: opts[k] for k in (*_SAVED, *_SAVED_FLAGS)}
        (out / "study_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    prims, max_skip, fixed = _search_space(opts)

    def draw(rng):
        return [random_genotype(rng, prims, max_skip=max_skip, reduce_cell=fixed) for _ in range(opts["random"])]

    if opts["fresh_random"]:  # every seed its own random cells, drawn from (random seed, seed)
        randoms = {seed: draw(random.Random(opts["random_seed"] * 1_000_003 + seed)) for seed in opts["seeds"]}
        run.write_json("random_genotypes.json", {str(k): [g.to_dict() for g in v] for k, v in randoms.items()})
    else:
        shared = draw(random.Random(opts["random_seed"]))
        randoms = {seed: shared for seed in opts["seeds"]}
        run.write_json("random_genotypes.json", [g.to_dict() for g in shared])
    results = {"samplers": opts["samplers"], "seeds": opts["seeds"], "random": opts["random"],
               "dataset": opts["dataset"] or "embedded", "search_preset": opts["search_preset"],
               "train_preset": opts["train_preset"], "per_seed": {}}
    for seed in opts["seeds"]:
        per = {"searched": {}, "searched_genotype": {}, "random": [], "search_time_s": {}, "train_time_s": {},
               "random_train_time_s": [], "searched_params": {}, "searched_flops": {}, "random_params": [],
               "random_flops": [], "random_genotypes": [str(g) for g in randoms[seed]]}
        for sampler in opts["samplers"]:
            summary = _run_search(opts, sampler, seed, out / "search" / f"{sampler}-seed{seed}", log)
            rep = _run_train(opts, str(out / "search" / f"{sampler}-seed{seed}"), seed,
                             out / "train" / f"searched-{sampler}-seed{seed}", log)
            per["searched"][sampler] = rep["final_test_acc"]
            per["searched_genotype"][sampler] = summary["genotype_text"]
            per["search_time_s"][sampler] = summary["search_time_s"]
            per["train_time_s"][sampler] = rep["train_time_s"]
            per["searched_params"][sampler], per["searched_flops"][sampler] = rep["params"], rep["flops"]
        for i, g in enumerate(randoms[seed]):
            rep = _run_train(opts, str(g), seed, out / "train" / f"random{i}-seed{seed}", log)
            per["random"].append(rep["final_test_acc"])
            per["random_train_time_s"].append(rep["train_time_s"])
            per["random_params"].append(rep["params"])
            per["random_flops"].append(rep["flops"])
        per.update(_compare(per))
        results["per_seed"][str(seed)] = per
        run.write_json("study.json", {**results, "overall": _overall(results)})
    results["overall"] = _overall(results)
    run.write_json("study.json", results)
    md = study_markdown(results)
    run.write_text("study.md", md)
    if run.enabled:
        try:
            plots.study_chart(results, out / "study.png")
            plots.study_size_chart(results, out / "study_size.png")
        except Exception as exc:  # a picture is a convenience: say so, keep the numbers
            log(f"warning: study pictures not drawn: {type(exc).__name__}: {exc}")
    log(md)
    log(f"study written to {out}")
    run.close()
    return 0


SIMILAR_SIZE = 0.15  # random cells within +-15% of the searched cell's parameters count as its size


def _compare(per: dict) -> dict:
    """One seed's comparison. A tie counts as not better: the rank puts the searched cell behind every
    random cell at least as good, and it beats the random mean only when strictly above it. With the
    cells' parameter counts, also the size-aware view: the searched cell's residual from the random
    cells' least-squares line of accuracy on log(parameters) (a search that wins only by choosing
    bigger cells has a residual near zero), and the random cells within +-15% of its size."""
    rand = per["random"]
    mean = statistics.fmean(rand)
    out = {"random_mean": mean, "random_std": statistics.stdev(rand) if len(rand) > 1 else 0.0,
           "random_best": max(rand), "rank": {}, "improvement": {}, "beats_random_mean": {}}
    for name, acc in per["searched"].items():
        out["rank"][name] = 1 + sum(r >= acc for r in rand)  # 1: strictly better than every random cell
        out["improvement"][name] = (acc - mean) / mean if mean > 0 else 0.0
        out["beats_random_mean"][name] = acc > mean
    sizes = per.get("random_params") or []
    if len(sizes) == len(rand) and per.get("searched_params"):
        line = _fit_line([math.log(p) for p in sizes], rand)
        out["size_line"] = None if line is None else list(line)  # intercept, slope over log(parameters)
        out["size_residual"], out["similar_size"] = {}, {}
        for name, acc in per["searched"].items():
            params = per["searched_params"][name]
            out["size_residual"][name] = None if line is None else acc - (line[0] + line[1] * math.log(params))
            near = [r for r, p in zip(rand, sizes, strict=True) if abs(p / params - 1) <= SIMILAR_SIZE]
            out["similar_size"][name] = {"count": len(near), "mean": statistics.fmean(near) if near else None,
                                         "beats_mean": bool(near) and acc > statistics.fmean(near)}
    return out


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares intercept and slope of ys on xs (None with fewer than 2 distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def sign_test(wins: int, n: int) -> float:
    """One-sided sign test: P(at least `wins` of `n` fair coin flips), the chance a search no better
    than random cells wins as often (ties were counted as losses)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def wilcoxon_signed_rank(diffs: list[float]) -> float:
    """One-sided exact Wilcoxon signed-rank p-value that the differences are centred above zero:
    average ranks for tied magnitudes, a zero difference counted as not better (it never adds to W+)."""
    n = len(diffs)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: abs(diffs[i]))
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(diffs[order[j + 1]]) == abs(diffs[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    observed = sum(r for r, d in zip(ranks, diffs, strict=True) if d > 0)
    free = [r for r, d in zip(ranks, diffs, strict=True) if d != 0]  # zeros never count positive
    hits = 0
    for signs in range(2 ** len(free)):
        w = sum(r for b, r in enumerate(free) if signs >> b & 1)
        hits += w >= observed - 1e-12
    return hits / 2 ** len(free)


def _overall(results: dict) -> dict:
    per = [results["per_seed"][k] for k in results["per_seed"]]
    if not per:
        return {}
    out = {"seeds_done": len(per), "random_mean": statistics.fmean(p["random_mean"] for p in per),
           "random_mean_std_over_seeds": statistics.stdev([p["random_mean"] for p in per]) if len(per) > 1 else 0.0}
    for name in results["samplers"]:
        accs = [p["searched"][name] for p in per]
        wins = sum(p["beats_random_mean"][name] for p in per)
        out[name] = {
            "searched_mean": statistics.fmean(accs),
            "searched_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds_above_random_mean": wins,
            "sign_test_p": sign_test(wins, len(per)),
            "wilcoxon_p": wilcoxon_signed_rank([p["searched"][name] - p["random_mean"] for p in per]),
            "mean_rank": statistics.fmean(p["rank"][name] for p in per),
            "mean_improvement": statistics.fmean(p["improvement"][name] for p in per),
            "search_time_s": statistics.fmean(p["search_time_s"][name] for p in per),
        }
        residuals = [p["size_residual"][name] for p in per if p.get("size_residual", {}).get(name) is not None]
        if residuals:
            above = sum(r > 0 for r in residuals)
            out[name].update(mean_size_residual=statistics.fmean(residuals), seeds_above_size_line=above,
                             size_sign_test_p=sign_test(above, len(residuals)),
                             size_wilcoxon_p=wilcoxon_signed_rank(residuals))
    out["retrain_time_s"] = statistics.fmean(t for p in per for t in p["random_train_time_s"])
    return out


def study_markdown(results: dict) -> str:
    """study.md: the per-seed table and the overall line per sampler."""
    n = results["random"]
    lines = [f"# fastnas study: searched vs {n} random cells ({results['dataset']}, search preset "
             f"{results['search_preset']}, retraining preset {results['train_preset']})", "",
             "Test accuracy after the same retraining; rank 1 = better than every random cell (a tie counts as "
             "not better). Size: the searched cell's parameters, and its residual from the random cells' line of "
             "accuracy on log(parameters).", ""]
    head = "| seed | " + " | ".join(f"searched {s} (rank)" for s in results["samplers"]) + \
           " | random mean +- std | random best |"
    lines += [head, "|" + "---|" * (3 + len(results["samplers"]))]
    for seed in results["seeds"]:
        p = results["per_seed"].get(str(seed))
        if p is None:
            continue
        cells = " | ".join(f"{p['searched'][s]:.4f} ({p['rank'][s]}/{n + 1}){_size_cell(p, s)}"
                           for s in results["samplers"])
        lines.append(f"| {seed} | {cells} | {p['random_mean']:.4f} +- {p['random_std']:.4f} | "
                     f"{p['random_best']:.4f} |")
    o = results.get("overall", {})
    lines.append("")
    for s in results["samplers"]:
        if s in o:
            r = o[s]
            lines.append(f"- **{s}**: searched {r['searched_mean']:.4f} +- {r['searched_std']:.4f} vs random mean "
                         f"{o['random_mean']:.4f} +- {o['random_mean_std_over_seeds']:.4f}; above the random mean in "
                         f"{r['seeds_above_random_mean']}/{o['seeds_done']} seeds; mean rank {r['mean_rank']:.1f}/"
                         f"{n + 1}; relative improvement {r['mean_improvement'] * 100:+.2f}%; search "
                         f"{r['search_time_s']:.0f} s, retraining {o['retrain_time_s']:.0f} s per cell")
            lines.append(f"  - over seeds: sign test p = {r['sign_test_p']:.3f}, Wilcoxon signed-rank p = "
                         f"{r['wilcoxon_p']:.3f} (one-sided; ties count as not better)")
            if "mean_size_residual" in r:
                lines.append(f"  - size-aware: mean residual from the random cells' accuracy-vs-log(parameters) "
                             f"line {r['mean_size_residual']:+.4f}; above the line in {r['seeds_above_size_line']}/"
                             f"{o['seeds_done']} seeds (sign test p = {r['size_sign_test_p']:.3f}, Wilcoxon p = "
                             f"{r['size_wilcoxon_p']:.3f})")
    return "\n".join(lines) + "\n"


def _size_cell(p: dict, sampler: str) -> str:
    """`, 1.23M params, residual +0.010` for a seed that recorded sizes."""
    params = p.get("searched_params", {}).get(sampler)
    if params is None:
        return ""
    resid = p.get("size_residual", {}).get(sampler)
    return f", {params / 1e6:.3f}M params" + ("" if resid is None else f", residual {resid:+.4f}")


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
