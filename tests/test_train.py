"""Retraining, evaluation and the whole pipeline."""

import json
import sys

import pytest
import torch
from helpers import kill_after_rows, run_module

from fastnas.cli.evaluate import main as evaluate_main
from fastnas.cli.train import main as train_main
from fastnas.space.genotype import PUBLISHED

TINY = ["--preset", "smoke", "--channels", "4", "--layers", "3", "--embedded-size", "320", "--epochs", "3",
        "--batch-size", "32", "--no-export"]


@pytest.mark.slow
def test_smoke_retrain_learns_and_exports(tmp_path):
    out = tmp_path / "run"
    r = run_module("fastnas.train", ["--genotype", "DARTS_V2", "--preset", "smoke", "--embedded-size", "1000",
                              "--epochs", "4", "--seed", "0", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["final_test_acc"] > 0.3, report  # chance is 0.1
    assert report["params"] < report["params_with_auxiliary"] and report["flops"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["drop_path"] == 0.0 and rows[-1]["drop_path"] > 0  # ramped
    for name in ("config.yaml", "metrics.csv", "run.log", "best.pt", "last.pt", "genotype.json", "model.pt2",
                 "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "model.safetensors").is_file() or (out / "model_state_dict.pt").is_file()
    assert "final test error" in r.stdout and "best epoch" in r.stdout
    # the exported program computes what the network computes
    program = torch.export.load(str(out / "model.pt2"))
    x = torch.randn(2, 3, 32, 32)
    state = torch.load(out / "last.pt", weights_only=False)
    from fastnas.space.network import EvalNetwork

    net = EvalNetwork(PUBLISHED["DARTS_V2"], 8, 5, 10, True)
    net.load_state_dict(state["model"])
    net.eval()
    torch.testing.assert_close(program.module()(x), net(x), rtol=1e-4, atol=1e-4)
    # evaluate reproduces the best epoch's accuracy from best.pt
    result = tmp_path / "eval.json"
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--out", str(result)]) == 0
    assert abs(json.loads(result.read_text())["test_acc"] - report["best_epoch_test_acc"]) < 1e-9


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_final_metrics(tmp_path):
    args = ["--genotype", "PDARTS", *TINY, "--deterministic"]
    full = tmp_path / "full"
    assert run_module("fastnas.train", [*args, "--out", str(full)]).returncode == 0
    killed = tmp_path / "killed"
    kill_after_rows([sys.executable, "-m", "fastnas.train", *args, "--out", str(killed)],
                    killed / "metrics.jsonl", rows=1)
    r = run_module("fastnas.train", ["--resume", str(killed)])
    assert r.returncode == 0, r.stderr
    a = json.loads((full / "report.json").read_text())
    b = json.loads((killed / "report.json").read_text())
    for key in ("final_test_error", "best_epoch_test_acc", "best_epoch", "epochs"):
        assert a[key] == b[key], key
    ma = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]
    sa, sb = torch.load(full / "last.pt", weights_only=False), torch.load(killed / "last.pt", weights_only=False)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


@pytest.mark.parametrize(
    "genotype, match",
    [
        ("NASNET", "cannot read genotype"),
        ("Genotype(normal=[('sep_conv_3x3', 0)", "not a DARTS genotype string"),
        ('{"normal": [["conv_9x9", 0], ["sep_conv_3x3", 1]], "reduce": [["max_pool_3x3", 0], '
         '["max_pool_3x3", 1]]}', "unknown op 'conv_9x9'"),
    ],
)
def test_bad_genotypes_exit_2(genotype, match, tmp_path, capsys):
    assert train_main(["--genotype", genotype, *TINY, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and match in err, err


def test_missing_genotype_and_foreign_checkpoint(tmp_path, capsys):
    assert train_main(["--preset", "smoke"]) == 2
    assert "--genotype is required" in capsys.readouterr().err
    out = tmp_path / "run"
    assert train_main(["--genotype", "DARTS_V2", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    # a checkpoint from another genotype
    assert evaluate_main(["--checkpoint", str(out), "--genotype", "PDARTS"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another genotype" in err and len(err.splitlines()) == 1
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--genotype", "DARTS_V2"]) == 0
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert evaluate_main(["--checkpoint", str(tmp_path / "bad.pt")]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_smoke(tmp_path):
    search_cfg = tmp_path / "search.yaml"
    search_cfg.write_text("embedded_size: 256\nepochs: [1, 1, 1]\nwarmup_epochs: [0, 0, 0]\n")
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text("channels: 4\nlayers: 3\nembedded_size: 320\nepochs: 1\nexport: false\n")
    out = tmp_path / "pipe"
    r = run_module("fastnas.pipeline", ["--preset", "smoke", "--search-config", str(search_cfg), "--train-config",
                                 str(train_cfg), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    search_genotype = json.loads((out / "search" / "genotype.json").read_text())
    assert report["genotype"] == search_genotype  # handed over, no copy-paste
    assert report["search_time_s"] > 0 and report["retrain_time_s"] > 0 and 0 <= report["final_test_error"] <= 1
    assert "search/normal.dot" in report["diagrams"]
    assert (out / "report.md").read_text().startswith("# fastnas pipeline report")
    # a finished pipeline resumes to the same report without redoing anything
    r = run_module("fastnas.pipeline", ["--resume", str(out)])
    assert r.returncode == 0 and "already finished" in r.stdout
