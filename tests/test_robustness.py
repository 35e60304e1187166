"""Issue 12: nothing lost, nothing silent. Bad values are one `error:` line and exit 2 (most need no
training step), run directories are owned (refused, moved aside, locked), failures reach run.log."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastnas import evaluate, pipeline, search, train
from fastnas.runs import RunDir, RunError, _interrupt_message, default_run_dir

SMOKE = ["--preset", "smoke", "--no-plots", "--derived-eval-images", "0"]
TINY = [*SMOKE, "--epochs", "1", "1", "1", "--warmup-epochs", "0", "0", "0", "--max-steps", "1",
        "--embedded-size", "128"]
TRAIN = ["--genotype", "DARTS_V2", "--preset", "smoke"]


def _files(path: Path) -> dict[str, str]:
    """Every file under `path` with the hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _fails(main, argv, fragment, capsys, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(("error:", "interrupted")), err
    assert fragment in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)


# ------------------------------------------------------------------------ one validation layer
BAD_SEARCH = [
    (["--lr", "nan"], "'lr' must be a finite number"),
    (["--lr", "inf"], "'lr' must be a finite number"),
    (["--lr", "-0.1"], "'lr' must be > 0"),
    (["--weight-decay", "nan"], "'weight_decay' must be a finite number"),
    (["--weight-decay", "-1"], "'weight_decay' must be >= 0"),
    (["--momentum", "inf"], "'momentum' must be a finite number"),
    (["--momentum", "-0.5"], "'momentum' must be >= 0"),
    (["--grad-clip", "nan"], "'grad_clip' must be a finite number"),
    (["--arch-lr=-3e-4"], "'arch_lr' must be >= 0"),
    (["--tau-start", "nan"], "'tau_start' must be a finite number"),
    (["--seed", str(2**70)], "'seed'"),
    (["--seed", "-1"], "'seed' must be >= 0"),
    (["--device", "cudaXYZ"], "device must be auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--max-skip", "-5"], "'max_skip' must be >= -1"),
    (["--dist-timeout", "nan"], "'dist_timeout' must be a finite number"),
    (["--image-size", "0"], "'image_size' must be >= 8"),
    (["--skip-dropout", "0", "1.5", "0"], "'skip_dropout' must be < 1"),
    (["--arch-betas", "0.5", "1.5"], "'arch_betas' must be < 1"),
    (["--primitives", "none", "skip_connect", "--ops-kept", "2", "2", "1"], "with 'none' among the candidates"),
    (["--resume", "/no/such/run"], "no checkpoint"),
]


@pytest.mark.parametrize("argv, fragment", BAD_SEARCH, ids=[" ".join(a)[:40] for a, _ in BAD_SEARCH])
def test_search_rejects_bad_values(argv, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(search.main, [*SMOKE, *argv, "--out", str(out)], fragment, capsys)
    assert not out.exists(), "a refused config must not create its run directory"


BAD_TRAIN = [
    (["--lr", "1e400"], "'lr' must be a finite number"),
    (["--auxiliary-weight", "-1"], "'auxiliary_weight' must be >= 0"),
    (["--cutout", "1000"], "cutout=1000 is larger than the 32x32 images"),
    (["--layers", "1"], "no cell for the auxiliary head"),
    (["--batch-size", "0"], "'batch_size' must be >= 1"),
    (["--drop-path", "1.0"], "'drop_path' must be < 1"),
    (["--epochs", str(2**64)], "'epochs'"),
]


@pytest.mark.parametrize("argv, fragment", BAD_TRAIN, ids=[" ".join(a)[:40] for a, _ in BAD_TRAIN])
def test_train_rejects_bad_values(argv, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(train.main, [*TRAIN, *argv, "--out", str(out)], fragment, capsys)
    assert not out.exists()


BAD_YAML = [
    ("sampler: foo\n", "'sampler': 'foo' is not one of"),
    ("amp: fp8\n", "'amp': 'fp8' is not one of"),
    ("straight_through: nonsense\n", "'straight_through': 'nonsense' is not one of all, sampled"),
    # a YAML number for a string option with choices is checked against them too (it once slipped through)
    ("straight_through: 3.5\n", "'straight_through': '3.5' is not one of all, sampled"),
    ("lr: .nan\n", "'lr' must be a finite number"),
    ("momentum: -1\n", "'momentum' must be >= 0"),
    ("- a\n- b\n", "must hold a mapping"),
]


@pytest.mark.parametrize("text, fragment", BAD_YAML, ids=[t.split(":")[0].strip() for t, _ in BAD_YAML])
def test_yaml_values_pass_the_same_checks(text, fragment, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    _fails(search.main, [*SMOKE, "--config", str(cfg), "--out", str(tmp_path / "run")], fragment, capsys)


def test_binary_yaml_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(bytes(range(256)) * 4)
    _fails(search.main, [*SMOKE, "--config", str(cfg)], "config file", capsys)


BAD_GENOTYPES = [
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[0, 2])", "nodes 0 and 1 are the cell's inputs"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=range(0, 100000000), "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "normal_concat range(0, 100000000)"),
    ('{"normal": [["sep_conv_3x3", "0"], ["sep_conv_3x3", 1]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "input must be an integer"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2, 2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "names a node twice"),
]  # (the genotype is valid in every other way: one node per cell)


@pytest.mark.parametrize("spec, fragment", BAD_GENOTYPES, ids=["input-in-concat", "huge-concat", "str-input",
                                                                 "repeated-concat"])
def test_genotype_validated_before_any_network(spec, fragment, tmp_path, capsys):
    path = tmp_path / "g.json"
    if spec.startswith("{"):
        path.write_text(spec)
        spec = str(path)
    _fails(train.main, ["--genotype", spec, "--preset", "smoke", "--out", str(tmp_path / "run")], fragment, capsys)


def test_genotype_txt_written_by_search_is_accepted(tmp_path):
    from fastnas.genotype import PUBLISHED, Genotype

    (tmp_path / "genotype.txt").write_text(str(PUBLISHED["PDARTS"]) + "\n")
    assert train.resolve_genotype(str(tmp_path / "genotype.txt")) == PUBLISHED["PDARTS"]
    assert Genotype.load(str(tmp_path / "genotype.txt")) == PUBLISHED["PDARTS"]


def test_names_and_no_cap_in_the_python_api():
    from fastnas.network import EvalNetwork
    from fastnas.supernet import SuperNet, derive_genotype

    net = SuperNet(channels=4, layers=3)
    assert derive_genotype(net, -1) == derive_genotype(net, None)
    with pytest.raises(ValueError, match="max_skip_normal"):
        derive_genotype(net, -3)
    assert sum(p.numel() for p in EvalNetwork("PDARTS", 8, 5).parameters()) > 0


# ------------------------------------------------------------------------ run directories
@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("owned") / "run"
    assert search.main([*TINY, "--out", str(out)]) == 0
    return out


def test_out_holding_a_run_is_refused_and_left_untouched(finished_search, capsys):
    before = _files(finished_search)
    _fails(search.main, [*TINY, "--seed", "4", "--out", str(finished_search)], "already holds a run", capsys)
    _fails(train.main, [*TRAIN, "--out", str(finished_search)], "already holds a run", capsys)
    assert _files(finished_search) == before


def test_resume_refuses_options_that_change_the_run(finished_search, capsys):
    before = _files(finished_search)
    _fails(search.main, ["--resume", str(finished_search), "--epochs", "9", "9", "9"], "--epochs cannot change",
           capsys)
    _fails(search.main, ["--resume", str(finished_search), "--dataset", "cifar10"], "--dataset cannot change", capsys)
    assert _files(finished_search) == before


def test_saved_config_does_not_carry_out(finished_search, tmp_path):
    saved = (finished_search / "config.yaml").read_text()
    assert "\nout:" not in saved and not saved.startswith("out:")
    before = _files(finished_search)
    monkey_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # the old run's config, a new seed: a new run directory, the old one untouched
        assert search.main(["--config", str(finished_search / "config.yaml"), "--seed", "9", "--max-steps", "1"]) == 0
    finally:
        os.chdir(monkey_cwd)
    assert _files(finished_search) == before
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
        _fails(search.main, [*TINY, "--out", str(out)], f"in use by another run (pid {holder.pid})", capsys)
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
    _fails(search.main, [*TINY, "--dataset", "folder", "--data-dir", str(tmp_path / "nothing"), "--out", str(out)],
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


# ------------------------------------------------------------------------ pipeline and evaluate
def test_pipeline_checks_the_train_config_before_searching(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("lr: -1\n")
    out = tmp_path / "p"
    _fails(pipeline.main, ["--train-config", str(cfg), "--out", str(out)], "retraining config: option 'lr'", capsys)
    assert not (out / "search").exists()


def test_pipeline_resume_of_a_missing_dir(tmp_path, capsys):
    _fails(pipeline.main, ["--resume", str(tmp_path / "nope")], "not a pipeline run directory", capsys)
    assert not (tmp_path / "nope").exists()


def test_pipeline_refuses_a_finished_pipeline_and_a_changed_resume(tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"options": {**vars(pipeline.parse_args([])), "seed": 1}}) + "\n")
    (out / "report.json").write_text("{}\n")
    before = _files(out)
    _fails(pipeline.main, ["--out", str(out), "--seed", "4"], "already holds a run", capsys)
    _fails(pipeline.main, ["--resume", str(out), "--seed", "4"], "--seed (1 saved, 4 given)", capsys)
    assert _files(out) == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train.main(["--genotype", "DARTS_V2", "--preset", "smoke", "--epochs", "1", "--max-steps", "2",
                       "--embedded-size", "128", "--no-plots", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["best.pt", "model.pt2", "model.safetensors"])
def test_evaluate_reads_every_file_a_training_run_writes(trained, name, tmp_path, capsys):
    path = trained / name
    if not path.exists():
        if name == "model.safetensors":
            path = trained / "model_state_dict.pt"
        assert path.exists(), sorted(p.name for p in trained.iterdir())
    out = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 <= result["test_acc"] <= 1 and result["images"] > 0


def test_exported_program_takes_any_batch(trained):
    import torch

    module = torch.export.load(str(trained / "model.pt2")).module()
    for n in (1, 5):
        assert module(torch.randn(n, 3, 32, 32)).shape == (n, 10)


@pytest.mark.parametrize("argv, fragment", [
    (["--batch-size", "-5"], "--batch-size must be >= 1"),
    (["--out", "/missing/dir/x.json"], "does not exist"),
    (["--device", "cuda:9"], "cuda:9"),
])
def test_evaluate_rejects_bad_arguments_before_evaluating(trained, argv, fragment, capsys):
    start = time.perf_counter()
    _fails(evaluate.main, ["--checkpoint", str(trained / "best.pt"), *argv], fragment, capsys)
    assert time.perf_counter() - start < 30


def test_unreadable_image_is_named(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    bad = tmp_path / "data" / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    _fails(train.main, [*TRAIN, "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out",
                        str(tmp_path / "run")], f"unreadable image {bad}", capsys)


def test_metrics_csv_has_op_probability_columns(finished_search):
    import csv

    rows = list(csv.DictReader((finished_search / "metrics.csv").open()))
    first = rows[0]  # stage 1: every edge offers all 8 primitives, so the means sum to 1
    cols = [c for c in first if c.startswith("p_normal_")]
    assert "p_normal_sep_conv_3x3" in cols and len(cols) == 8
    assert abs(sum(float(first[c]) for c in cols) - 1) < 1e-5


def test_one_class_folder_is_refused(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        d = tmp_path / "data" / split / "only"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    _fails(train.main, [*TRAIN, "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out",
                        str(tmp_path / "run")], "needs at least 2", capsys)


def test_study_resume_refuses_changed_options(tmp_path, capsys):
    from fastnas import study

    out = tmp_path / "s"
    out.mkdir()
    (out / "study_config.yaml").write_text("seeds: [0]\n")
    _fails(study.main, ["--resume", str(out), "--seeds", "5", "6"], "--seeds cannot change", capsys)


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
    """A sub-run's Ctrl-C goes up: the message names the pipeline's directory (the one to resume)."""
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "_main", lambda args: interrupted(args))
    out = tmp_path / "p"
    assert pipeline.main(["--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: continue with --resume {out}"], err
