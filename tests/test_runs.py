"""Run directories (fastnas.infra.rundir, .lock) and the run lifecycle (fastnas.cli.common): owned
directories (refused, moved aside, locked), failures in run.log, Ctrl-C naming what to resume, atomic
checkpoints, checkpoint versions, and runs checkpointed by an earlier release resuming."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, TRAIN, fails, files

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
DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.slow
def test_a_search_checkpointed_by_the_previous_release_resumes_to_its_genotype(tmp_path):
    """tests/data/search_v0_1_0: a smoke search (seed 3, --deterministic) killed in stage 2 by the release
    before the layered package; resumed now, it ends with the genotype that release's uninterrupted run
    gave (expected_genotype.txt): the checkpoint format and what the search computes are unchanged."""
    run = tmp_path / "run"
    shutil.copytree(DATA / "search_v0_1_0", run)
    assert search.main(["--resume", str(run)]) == 0
    assert (run / "genotype.txt").read_text() == (DATA / "search_v0_1_0" / "expected_genotype.txt").read_text()
    assert "resumed" in (run / "run.log").read_text()


@pytest.mark.slow
def test_a_retraining_checkpointed_by_the_previous_release_resumes_to_its_result(tmp_path):
    """tests/data/train_v0_1_0: a smoke retraining (seed 5, --deterministic) killed after epoch 1 by the
    previous release; resumed now, it ends with that release's uninterrupted result."""
    run = tmp_path / "run"
    shutil.copytree(DATA / "train_v0_1_0", run)
    assert train.main(["--resume", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    expected = json.loads((DATA / "train_v0_1_0" / "expected_report.json").read_text())
    assert {k: report[k] for k in expected} == expected


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
