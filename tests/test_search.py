"""End-to-end search: the smoke preset through all stages, kill-and-resume equivalence, bad input."""

import json
import sys

import pytest
import torch
from helpers import kill_after_rows, run_module, write_cifar10

from fastnas.cli.search import main
from fastnas.space.genotype import Genotype

# The smoke preset, smaller still: 4 steps per epoch, 5 epochs over the 3 stages.
TINY = ["--preset", "smoke", "--embedded-size", "256", "--epochs", "1", "2", "2", "--warmup-epochs", "0", "1", "1"]


def run_search(args, **kw):
    return run_module("fastnas.search", args, **kw)


@pytest.mark.slow  # a whole smoke search (about 25 s): the default tier stays under 5 minutes on 2 cores
def test_smoke_search_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run_search([*TINY, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "run.log", "checkpoint.pt", "genotype.json",
                 "genotype.txt", "normal.dot", "reduce.dot", "summary.json",
                 "genotype_stage1.json", "genotype_stage2.json", "genotype_stage3.json",
                 "cells.png", "search_curves.png", "op_probabilities_stage1.png", "op_probabilities_stage3.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]
    # pruning 8 -> 5 -> 3
    assert [len(r["op_probabilities"]["normal"]["primitives"][0]) for r in rows] == [8, 5, 5, 3, 3]
    # stage 1 has no warm-up; stages 2 and 3 start with one weights-only epoch
    assert [r["valid_loss"] is None for r in rows] == [False, True, False, True, False]
    # gumbel-hard: tau_start (10) through the warm-up; a single search epoch runs at tau_start too
    assert rows[1]["tau"] == 10.0 and rows[2]["tau"] == 10.0
    assert all(0 < r["entropy_normal"] <= r["entropy_max"] + 1e-6 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    for stage in summary["stages"]:
        assert 0 <= stage["derived_acc"] <= 1
        assert {"normal_skips", "normal_param_free", "skips_removed_by_cap"} <= set(stage)
    # the search time: every epoch with its checkpoint, and every stage's end (derived cell, plots, pruning)
    assert all(r["epoch_wall_s"] >= r["epoch_time_s"] > 0 for r in rows)
    assert all(stage["finish_s"] > 0 for stage in summary["stages"])
    parts = sum(r["epoch_wall_s"] for r in rows) + sum(stage["finish_s"] for stage in summary["stages"])
    assert parts - 0.5 <= summary["search_time_s"] <= parts
    g = Genotype.from_json(out / "genotype.json")
    assert sum(op == "skip_connect" for op, _ in g.normal) <= 2
    assert Genotype.parse((out / "genotype.txt").read_text()) == g
    csv_header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss" in csv_header and "op_probabilities" not in csv_header
    assert "genotype:" in r.stdout


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_genotype(tmp_path):
    args = [*TINY, "--deterministic"]
    full = tmp_path / "full"
    assert run_search([*args, "--out", str(full)]).returncode == 0

    killed = tmp_path / "killed"
    kill_after_rows([sys.executable, "-m", "fastnas.search", *args, "--out", str(killed)],
                    killed / "metrics.jsonl", rows=2)
    assert not (killed / "genotype.json").exists()

    r = run_search(["--resume", str(killed)])
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout
    assert (killed / "genotype.json").read_text() == (full / "genotype.json").read_text()
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(killed / "checkpoint.pt", weights_only=False)
    for key in ("alpha_normal", "alpha_reduce"):
        assert torch.equal(a["model"][key], b["model"][key])
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]


@pytest.mark.slow
def test_search_on_cifar_files_with_yaml_config(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=40)
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        "preset: smoke\ndataset: cifar10\ndata_dir: " + str(tmp_path / "data") + "\n"
        "epochs: [1, 1, 1]\nwarmup_epochs: [0, 0, 0]\nbatch_size: 16\nsampler: gumbel-soft\n"
    )
    out = tmp_path / "run"
    r = run_search(["--config", str(cfg), "--batch-size", "20", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == "cifar10" and saved["sampler"] == "gumbel-soft"
    assert saved["batch_size"] == 20  # the command line wins over the file
    assert saved["epochs"] == [1, 1, 1] and saved["cells"] == [3, 4, 5]  # file, then preset
    assert (out / "genotype.json").is_file()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--sampler", "uniform"], "invalid choice: 'uniform'"),
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["--epochs", "1", "1"], "epochs has 2 entries but cells has 3"),
        (["--ops-kept", "8", "9", "3"], "stage 2 keeps 9 ops, more than the 8"),
        (["--ops-kept", "9", "5", "3"], "larger than the 8 candidate primitives"),
        (["--primitives", "sep_conv_3x3", "conv_9x9"], "unknown op"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "cifar10 not found"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
        (["--tau-start", "0"], "tau_start"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, match, tmp_path, capsys):
    code = main([*TINY, "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert match in err


def test_unwritable_output_and_corrupt_checkpoint(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([*TINY, "--out", str(blocker / "run")]) == 2
    assert "not writable" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main(["--resume", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_yaml_with_bad_values(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: one\n")
    assert main(["--config", str(cfg)]) == 2
    assert "option 'epochs': expected int" in capsys.readouterr().err
    cfg.write_text("learning_rate: 0.1\n")
    assert main(["--config", str(cfg)]) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err
    cfg.write_text("epochs: [1, 2\n")
    assert main(["--config", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_help_explains_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--sampler", "--seed", "--deterministic", "--amp", "--channels-last", "--batch-size",
                   "--workers", "--device", "--out", "--config", "--resume", "--skip-dropout", "--ops-kept"):
        assert option in out
