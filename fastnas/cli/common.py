"""What every command shares: the entry point and its error guard, and the lifecycle of a run
(threads, process group, device, run directory, saved config, resume), so the search and the
retraining commands differ only in what they run inside it."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from fastnas import ops
from fastnas.infra import config as cfglib
from fastnas.infra import distributed
from fastnas.infra.errors import FastnasError
from fastnas.infra.rundir import RunDir, default_run_dir, load_checkpoint, tracking_runs
from fastnas.infra.runtime import choose_threads, configure_cudnn, resolve_device, seed_everything


def description(doc: str) -> str:
    """A command's --help description: its module docstring's first sentence, without the command name."""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    text = re.sub(r"^``fastnas [a-z]+[^`]*``(?: \(``python -m [a-z.]+``\))?:\s*", "", first).replace("``", "")
    return text[:1].upper() + text[1:]


def cli_main(parse_args, body, argv=None) -> int:
    """Entry point of every command: parse (``--help`` -> 0, usage error -> 2), then run `body` guarded."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if ops.backend_error():
        print(f"error: {ops.backend_error()}", file=sys.stderr)
        return 2
    return guarded(body, args)


def _is_cpu_oom(exc: RuntimeError) -> bool:
    """torch reports a failed host allocation as a plain RuntimeError from its CPU allocator."""
    return "can't allocate memory" in str(exc) or "DefaultCPUAllocator" in str(exc)


def guarded(body, *args) -> int:
    """Run a command body: bad input (a :class:`FastnasError`: config, data, genotype, run directory,
    checkpoint) becomes one `error:` line on stderr and exit code 2, never a traceback; Ctrl-C exits 130
    naming the run directory to resume. Either way the line also goes into the run.log of every run the
    body opened, and their locks are released."""
    with tracking_runs() as opened:
        try:
            return body(*args)
        except FastnasError as exc:
            _fail(f"error: {exc}", opened)
            return 2
        except (torch.OutOfMemoryError, MemoryError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            _fail(f"error: out of memory ({first or type(exc).__name__}): lower --batch-size, --channels or the "
                  "dataset size", opened)
            return 2
        except OSError as exc:  # disk full, permission denied, ...: name the path, no traceback
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            _fail(f"error: {exc.strerror or exc}{where}", opened)
            return 2
        except KeyboardInterrupt:
            _fail(_interrupt_message(opened), opened)
            return 130
        except RuntimeError as exc:
            if _is_cpu_oom(exc):
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                _fail(f"error: out of memory ({first}): lower --batch-size, --channels or the dataset size", opened)
                return 2
            if distributed.is_peer_failure(exc):  # a peer died or a collective timed out: one line, no hang
                _fail(f"error: {distributed.describe_failure(exc)}", opened)
                return 1
            _close(opened, "error: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
            raise
        finally:
            _close(opened, None)


def _interrupt_message(runs: list[RunDir]) -> str:
    """Where to resume from (the outermost run the command opened), or that there is nothing yet."""
    run = runs[0] if runs else None
    if run is None:
        return "interrupted"
    if any((run.path / n).is_file() for n in ("checkpoint.pt", "last.pt", "pipeline.json", "study_config.yaml")):
        return f"interrupted: continue with --resume {run.path}"
    return (f"interrupted before the first checkpoint of {run.path}: nothing to resume yet; start again "
            "(the same --out is reused)")


def _fail(line: str, opened: list[RunDir]) -> None:
    print(line, file=sys.stderr, flush=True)
    _close(opened, line)


def _close(opened: list[RunDir], line: str | None) -> None:
    """Log `line` into the run.log of every run still open, then close them (innermost first)."""
    for run in reversed(opened):
        if line and run.enabled and run.is_open:
            try:
                run.logger.info(line)
            except Exception:  # logging must not mask the failure being reported
                pass
        try:
            run.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- the run lifecycle
@dataclass
class Launch:
    """A run about to start or resume: its config, directory and (when resuming) checkpoint."""

    cfg: object
    path: Path
    state: dict | None = None
    overwrite: bool = False
    changes: tuple[str, ...] = ()  # options --resume changed (device, workers, ...), for the log

    @property
    def resumed(self) -> bool:
        return self.state is not None


def prepare(cls, presets: dict, default_preset: str, args: dict, *, kind: str, checkpoint: str,
            may_change: tuple[str, ...], upgrade=None) -> Launch:
    """The config of a new run (preset < YAML < command line), or of a run being resumed (its saved
    config, of which only `may_change` may differ; `upgrade(saved) -> saved` fills options added since
    the checkpoint was written with the value that goes on computing what the run computed)."""
    args = dict(args)
    resume = args.pop("resume", None)
    if resume is not None:
        path = Path(resume)
        if not str(resume).strip():
            raise cfglib.ConfigError("--resume needs a run directory")
        state = load_checkpoint(path / checkpoint, kind=kind)
        saved = dict(state["config"])
        if upgrade is not None:
            saved = upgrade(saved)
        cfg, changes = cfglib.config_for_resume(cls, saved, args, may_change)
        return Launch(cfg, path, state, False, tuple(changes))
    overwrite = bool(args.pop("overwrite", False))
    cfg = cfglib.build_config(cls, presets, args, default_preset)
    return Launch(cfg, Path(cfg.out) if cfg.out else default_run_dir(kind), None, overwrite)


def execute(launch: Launch, body):
    """Run ``body(launch, run, ctx, device)`` as one run: threads, the process group under torchrun (one
    run directory for all ranks, written by rank 0 alone, owned for the run's lifetime), seeds, the
    resolved config saved as config.yaml; the processes leave together."""
    cfg = launch.cfg
    threads, why = choose_threads(cfg.workers, cfg.deterministic)
    torch.set_num_threads(threads)
    ctx, device_name = distributed.init(cfg.device, cfg.dist_timeout)
    launch.path = Path(distributed.broadcast_object(str(launch.path)))
    try:
        seed_everything(cfg.seed, cfg.deterministic)
        configure_cudnn(cfg.cudnn_benchmark, cfg.deterministic)
        with RunDir(launch.path, enabled=ctx.is_main, resume=launch.resumed, overwrite=launch.overwrite) as run:
            if run.moved_aside:
                run.log(f"--overwrite: the run that was in {launch.path} is now in {run.moved_aside}")
            run.log(f"threads: {threads} ({why})", echo=False)
            for note in getattr(cfg, "resolved_notes", ()):  # options derived from others (build_config)
                run.log(note)
            cfg.out = str(launch.path)
            if run.enabled:
                cfglib.save_yaml(cfg, run.path / "config.yaml")
            result = body(launch, run, ctx, resolve_device(device_name))
        # Leave together: a process tearing its group down while rank 0 still writes can abort gloo.
        distributed.barrier()
        return result
    finally:
        distributed.shutdown(ctx)


def resumed_line(launch: Launch, where: str) -> str:
    """The log line of a resumed run."""
    changed = f"; changed: {', '.join(launch.changes)}" if launch.changes else ""
    return f"resumed {launch.path} at {where}{changed}"


# A quick trial's size, for the search and the retraining alike (no YAML files needed).
SIZE_OPTIONS = ("max_steps", "embedded_size", "image_size")


def add_size_arguments(p) -> None:
    """--max-steps, --embedded-size, --image-size for a command that runs a search and retrainings."""
    p.add_argument("--max-steps", type=cfglib.int_in(0, cfglib.INT64_MAX), default=None,
                   help="cap on steps per epoch in the search and the retraining (0: full passes)")
    p.add_argument("--embedded-size", type=cfglib.int_in(4, cfglib.INT64_MAX), default=None,
                   help="training images of the embedded dataset (default: the presets')")
    p.add_argument("--image-size", type=cfglib.int_in(8, 4096), default=None,
                   help="image side for the folder dataset (default: 32)")


__all__ = ["SIZE_OPTIONS", "add_size_arguments", "cli_main", "guarded", "Launch", "prepare", "execute", "resumed_line"]
