"""The pipeline (search -> retraining -> report in one directory): its checks before the search, and
its resume rules."""

import json

from helpers import fails, files

from fastnas.cli import pipeline


def test_pipeline_checks_the_train_config_before_searching(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("lr: -1\n")
    out = tmp_path / "p"
    fails(pipeline.main, ["--train-config", str(cfg), "--out", str(out)], "retraining config: option 'lr'", capsys)
    assert not (out / "search").exists()


def test_pipeline_resume_of_a_missing_dir(tmp_path, capsys):
    fails(pipeline.main, ["--resume", str(tmp_path / "nope")], "not a pipeline run directory", capsys)
    assert not (tmp_path / "nope").exists()


def test_pipeline_refuses_a_finished_pipeline_and_a_changed_resume(tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"options": {**vars(pipeline.parse_args([])), "seed": 1}}) + "\n")
    (out / "report.json").write_text("{}\n")
    before = files(out)
    fails(pipeline.main, ["--out", str(out), "--seed", "4"], "already holds a run", capsys)
    fails(pipeline.main, ["--resume", str(out), "--seed", "4"], "--seed (1 saved, 4 given)", capsys)
    assert files(out) == before
