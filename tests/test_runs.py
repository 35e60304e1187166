"""Run directories (fastnas.infra.rundir, .lock) and the run lifecycle (fastnas.cli.common): owned
directories (refused, moved aside, locked), failures in run.log, Ctrl-C naming what to resume, atomic
checkpoints, checkpoint versions, and runs checkpointed by an earlier release resuming."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, TRAIN, fails, files, kill_after_rows

from fastnas.cli import pipeline, search, train
from fastnas.cli.common import _interrupt_message, guarded
from fastnas.infra.errors import RunError
from fastnas.infra.rundir import CHECKPOINT_VERSION, RunDir, default_run_dir
from fastnas.search import Searcher


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("owned") / "run"
    assert search.main([*TINY, "--out", str(out)]) == 0
    return out


def test_out_holding_a_run_is_refused_and_left_untouched(finished_search, capsys):
    before = files(finished_search)
    fails(search.main, [*TINY, "--seed", "4", "--out", str(finished_search)], "already holds a run", capsys)
    fails(train.main, [*TRAIN, "--out", str(finished_search)], "already holds a run", capsys)
    assert files(finished_search) == before


def test_resume_refuses_options_that_change_the_run(finished_search, capsys):
    before = files(finished_search)
    fails(search.main, ["--resume", str(finished_search), "--epochs", "9", "9", "9"],
          "--epochs ([1, 1, 1] saved, [9, 9, 9] given)", capsys)
    fails(search.main, ["--resume", str(finished_search), "--dataset", "cifar10"],
          "--dataset ('embedded' saved, 'cifar10' given)", capsys)
    assert files(finished_search) == before


def test_saved_config_does_not_carry_out(finished_search, tmp_path):
    saved = (finished_search / "config.yaml").read_text()
    assert "\nout:" not in saved and not saved.startswith("out:")
    before = files(finished_search)
    monkey_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # the old run's config, a new seed: a new run directory, the old one untouched
        assert search.main(["--config", str(finished_search / "config.yaml"), "--seed", "9", "--max-steps", "1"]) == 0
    finally:
        os.chdir(monkey_cwd)
    assert files(finished_search) == before
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_overwrite_moves_the_old_run_aside(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("old: true\n")
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert search.main([*TINY, "--out", str(out), "--overwrite"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "config.yaml").read_text() == "old: true\n"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("stage" in r for r in rows), "old and new metrics must never mix"


def test_live_lock_refuses_a_second_process(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{holder.pid} {os.uname().nodename}\n")
        fails(search.main, [*TINY, "--out", str(out)], f"in use by another run (pid {holder.pid})", capsys)
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and the run takes it over.
    assert search.main([*TINY, "--out", str(out)]) == 0
    assert not (out / ".lock").exists(), "a finished run releases its lock"


@pytest.mark.slow  # two whole search processes (8 s on 2 cores); the stale-lock takeover above stays default
def test_two_processes_one_out(tmp_path):
    """Started together on one --out: one run completes, the other stops with one line, nothing mixed."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastnas.search", *TINY, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(search.__file__).resolve().parents[1])}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2).strip().splitlines()[-1]
    assert "in use by another run" in err or "already holds a run" in err, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len({(r["stage"], r["epoch"]) for r in rows}) == len(rows), "metrics of two runs mixed"


def test_default_names_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = default_run_dir("search")
    a.mkdir(parents=True)
    b = default_run_dir("search")
    assert a != b and str(os.getpid()) in a.name


def test_failure_is_logged_into_run_log(tmp_path, capsys):
    out = tmp_path / "run"
    fails(search.main, [*TINY, "--dataset", "folder", "--data-dir", str(tmp_path / "nothing"), "--out", str(out)],
           "image folder not found", capsys)
    assert "error: image folder not found" in (out / "run.log").read_text()
    assert not (out / ".lock").exists()


def test_interrupt_names_the_run_directory(tmp_path):
    run = RunDir(tmp_path / "r")
    try:
        assert "nothing to resume yet" in _interrupt_message([run]) and str(run.path) in _interrupt_message([run])
        (run.path / "checkpoint.pt").write_bytes(b"x")
        assert _interrupt_message([run]) == f"interrupted: continue with --resume {run.path}"
    finally:
        run.close()


def test_resume_of_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        RunDir(tmp_path / "missing", resume=True)


def test_metrics_csv_has_op_probability_columns(finished_search):
    import csv

    rows = list(csv.DictReader((finished_search / "metrics.csv").open()))
    first = rows[0]  # stage 1: every edge offers all 8 primitives, so the means sum to 1
    cols = [c for c in first if c.startswith("p_normal_")]
    assert "p_normal_sep_conv_3x3" in cols and len(cols) == 8
    assert abs(sum(float(first[c]) for c in cols) - 1) < 1e-5


def test_full_disk_keeps_the_last_checkpoint_and_no_tmp(tmp_path, monkeypatch):
    import torch

    run = RunDir(tmp_path / "r")
    try:
        run.save_checkpoint({"version": 1, "epoch": 1})
        good = (run.path / "checkpoint.pt").read_bytes()

        def full(obj, f, *a, **k):  # what torch.save raises when the disk fills mid-write
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 4000")

        monkeypatch.setattr(torch, "save", full)
        kept = r"could not write checkpoint .*checkpoint.pt.*the previous checkpoint is kept"
        with pytest.raises(RunError, match=kept):
            run.save_checkpoint({"version": 1, "epoch": 2})
        assert (run.path / "checkpoint.pt").read_bytes() == good
        assert not list(run.path.glob("*.tmp"))
    finally:
        run.close()


def test_ctrl_c_inside_a_pipeline_names_the_pipeline(tmp_path, monkeypatch, capsys):
    """Ctrl-C inside the pipeline's search goes up: the message names the pipeline's directory (the one
    to resume), and reaches both run.logs."""
    def interrupted(self, stage, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Searcher, "train_epoch", interrupted)
    out = tmp_path / "p"
    assert pipeline.main(["--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: continue with --resume {out}"], err
    for run in (out, out / "search"):
        assert err[0] in (run / "run.log").read_text()
        assert not (run / ".lock").exists()


# ------------------------------------------------------------------------ checkpoints across releases
# What `--resume` promises for runs of earlier releases, tested on checkpoints these tests make: the saved
# config may lack options added since, and each takes the value that goes on computing what the run
# computed. (A search and a retraining checkpointed by the release before the layered package were also
# resumed once under this code, to exactly the genotype and test accuracy of that release's
# uninterrupted runs: benchmarks/README.md, "The layered package".)
SEARCH = ["--preset", "smoke", "--max-steps", "3", "--embedded-size", "256", "--derived-eval-images", "32",
          "--primitives", "none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "--ops-kept", "4", "3", "2",
          "--cells", "3", "3", "3", "--channels", "4", "4", "4", "--no-plots", "--seed", "3", "--deterministic",
          "--workers", "1"]  # CPU kernels split sums by thread: the same count in every run compared


@pytest.mark.slow
def test_a_search_checkpointed_before_straight_through_resumes_with_its_estimator(tmp_path):
    """A smoke search killed in stage 2, its checkpoint made to look like one from before
    --straight-through existed (the option missing from the saved config), resumes with the estimator it
    was computing (GDAS' `sampled`) and ends exactly as an uninterrupted `--straight-through sampled` run."""
    full = tmp_path / "full"
    assert search.main([*SEARCH, "--straight-through", "sampled", "--out", str(full)]) == 0
    killed = tmp_path / "killed"
    kill_after_rows([sys.executable, "-m", "fastnas.search", *SEARCH, "--straight-through", "sampled", "--out",
                     str(killed)], killed / "metrics.jsonl", rows=3)
    state = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert state["stage"] == 1  # cut in stage 2
    del state["config"]["straight_through"]
    torch.save(state, killed / "checkpoint.pt")
    assert search.main(["--resume", str(killed)]) == 0
    assert (killed / "genotype.txt").read_text() == (full / "genotype.txt").read_text()
    assert "resumed" in (killed / "run.log").read_text()


def test_a_checkpoint_from_a_newer_release_is_refused_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"version": CHECKPOINT_VERSION + 1, "kind": "search", "config": {}}, run / "checkpoint.pt")
    fails(search.main, ["--resume", str(run)], f"format version {CHECKPOINT_VERSION + 1}", capsys)
    torch.save({"version": CHECKPOINT_VERSION, "kind": "train", "config": {}}, run / "checkpoint.pt")
    fails(search.main, ["--resume", str(run)], "is a 'train' checkpoint, not search", capsys)


def test_resume_needs_a_directory(capsys):
    fails(search.main, ["--resume", ""], "--resume needs a run directory", capsys)


def test_the_guard_closes_and_logs_every_run_the_command_opened(tmp_path, capsys):
    """A command that fails with runs open (a pipeline's search inside the pipeline's directory): the line
    goes into every run.log and every lock is released; Ctrl-C names the outermost run."""
    def body(_):
        outer = RunDir(tmp_path / "outer")
        with RunDir(tmp_path / "outer" / "inner"):
            (outer.path / "pipeline.json").write_text("{}")
            raise KeyboardInterrupt

    assert guarded(body, None) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"interrupted: continue with --resume {tmp_path / 'outer'}"
    for run in (tmp_path / "outer", tmp_path / "outer" / "inner"):
        assert err in (run / "run.log").read_text()
        assert not (run / ".lock").exists()


def test_a_run_dir_outside_a_command_closes_itself(tmp_path):
    with pytest.raises(ValueError), RunDir(tmp_path / "r"):
        raise ValueError("library use: no guard, the context manager releases the lock")
    assert not (tmp_path / "r" / ".lock").exists()


DRNAS = ["--preset", "drnas", "--cells", "3", "3", "--channels", "8", "8", "--partial-channels", "2", "1",
         "--epochs", "2", "2", "--warmup-epochs", "1", "0", "--embedded-size", "256", "--batch-size", "16",
         "--max-steps", "3", "--derived-eval-images", "32", "--no-plots", "--seed", "5", "--deterministic",
         "--workers", "1"]  # CPU kernels split sums by thread: the same count in both runs


@pytest.mark.slow
def test_a_one_network_search_killed_after_its_transition_resumes_to_the_same_genotype(tmp_path):
    """DrNAS' progressive learning carries one network into stage 2 (pruned, widened, momentum and
    cosine kept): a run killed in stage 2 rebuilds that network from its checkpoint and ends exactly as
    the uninterrupted run."""
    full = tmp_path / "full"
    assert search.main([*DRNAS, "--out", str(full)]) == 0
    killed = tmp_path / "killed"
    kill_after_rows([sys.executable, "-m", "fastnas.search", *DRNAS, "--out", str(killed)],
                    killed / "metrics.jsonl", rows=3)
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["stage"] == 1
    assert search.main(["--resume", str(killed)]) == 0
    assert (killed / "genotype.txt").read_text() == (full / "genotype.txt").read_text()
