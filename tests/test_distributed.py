"""torchrun / torch.distributed (gloo, CPU): 2-process search and retraining, equivalence with a
1-process run that accumulates the same two shards, resume on another process count, a dying rank."""

import json
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import cli_env, kill_after_rows, run_module

SEARCH = ["--preset", "smoke", "--embedded-size", "256", "--cells", "3", "--channels", "4", "--ops-kept", "8",
          "--skip-dropout", "0", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "16"]
TRAIN = ["--genotype", "DARTS_V2", "--preset", "smoke", "--channels", "4", "--layers", "3", "--embedded-size", "320",
         "--epochs", "2", "--batch-size", "32", "--no-export"]

# Every case starts torchrun process groups (tens of seconds each on 2 cores): the slow tier.
pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable"),
              pytest.mark.slow]


def torchrun(nproc, module, args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module,
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600, **kw)


def params(path):
    model = torch.load(path, weights_only=False)["model"]
    return {k: v for k, v in model.items() if "running" not in k and "num_batches" not in k}


def test_two_process_search_equals_one_process_accumulating_both_shards(tmp_path):
    r2 = torchrun(2, "fastnas.search", [*SEARCH, "--out", str(tmp_path / "two")])
    assert r2.returncode == 0, r2.stderr[-2000:]
    genotypes = {line.split(" genotype: ")[1] for line in r2.stdout.splitlines() if line.startswith("rank ")}
    assert len([line for line in r2.stdout.splitlines() if line.startswith("rank ")]) == 2
    assert len(genotypes) == 1  # every rank derived the same genotype
    r1 = run_module("fastnas.search", [*SEARCH, "--accumulate", "2", "--out", str(tmp_path / "one")])
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert (tmp_path / "two" / "genotype.json").read_text() == (tmp_path / "one" / "genotype.json").read_text()
    a, b = params(tmp_path / "two" / "checkpoint.pt"), params(tmp_path / "one" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # rank 0 alone writes (two writers would give 4 rows)


def test_killed_two_process_search_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "fastnas.search", *SEARCH, "--epochs", "3", "--out", str(out)]
    metrics = out / "metrics.jsonl"
    kill_after_rows(cmd, metrics, rows=1)  # SIGKILL to the launcher and both workers
    r = run_module("fastnas.search", ["--resume", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert (out / "genotype.json").is_file()


def test_two_process_retrain_and_resume_on_two(tmp_path):
    out = tmp_path / "train"
    r = torchrun(2, "fastnas.train", [*TRAIN, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] == 2 and 0 <= report["final_test_error"] <= 1
    # resume a finished distributed run on 2 processes: nothing left to train, the report is rewritten
    r = torchrun(2, "fastnas.train", ["--resume", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "report.json").read_text())["final_test_error"] == report["final_test_error"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dying_rank_stops_the_other_with_an_error(tmp_path):
    port = _free_port()
    procs = []
    for rank in (0, 1):
        e = cli_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port), FASTNAS_FAULT="1:3")
        procs.append(subprocess.Popen([sys.executable, "-m", "fastnas.search", *SEARCH, "--dist-timeout", "60",
                                       "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=e))
    t0 = time.time()
    outs = [p.communicate(timeout=180) for p in procs]
    assert time.time() - t0 < 170
    assert procs[1].returncode == 3  # the injected death
    assert procs[0].returncode == 1, outs[0][1][-2000:]
    err = outs[0][1].strip().splitlines()
    assert err and err[-1].startswith("error: distributed run failed on rank 0"), err[-3:]


def test_two_process_pipeline_shares_one_process_group(tmp_path):
    search_cfg = tmp_path / "search.yaml"
    search_cfg.write_text("embedded_size: 256\nepochs: [1, 1, 1]\nwarmup_epochs: [0, 0, 0]\n")
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text("channels: 4\nlayers: 3\nembedded_size: 320\nepochs: 1\nexport: false\n")
    out = tmp_path / "pipe"
    r = torchrun(2, "fastnas.pipeline", ["--preset", "smoke", "--search-config", str(search_cfg),
                                         "--train-config", str(train_cfg), "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["genotype"] == json.loads((out / "search" / "genotype.json").read_text())
    assert r.stdout.count("# fastnas pipeline report") == 1  # rank 0 alone reports


def test_two_process_study(tmp_path):
    """fastnas.study under torchrun: one process group serves every search and retraining, rank 0 alone
    writes the study, and the numbers are those of a complete study."""
    (tmp_path / "s.yaml").write_text("embedded_size: 256\nepochs: [1, 1, 1]\nwarmup_epochs: [0, 0, 0]\nmax_steps: 2\n")
    (tmp_path / "t.yaml").write_text("channels: 4\nlayers: 3\nembedded_size: 320\nepochs: 1\nmax_steps: 2\n")
    out = tmp_path / "study"
    r = torchrun(2, "fastnas.study", ["--samplers", "softmax", "--seeds", "0", "--random", "1", "--search-preset",
                                      "smoke", "--train-preset", "smoke", "--search-config", str(tmp_path / "s.yaml"),
                                      "--train-config", str(tmp_path / "t.yaml"), "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    study = json.loads((out / "study.json").read_text())
    assert set(study["per_seed"]) == {"0"} and study["overall"]["seeds_done"] == 1
    per = study["per_seed"]["0"]
    assert set(per["searched"]) == {"softmax"} and len(per["random"]) == 1
    assert r.stdout.count("study written to") == 1  # rank 0 alone reports
