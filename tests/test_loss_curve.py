"""benchmarks/loss_curve.py: the check behind issue 20's "the same final loss curve as eager fp32 within
noise" (a faster retraining mode must train the same), and the per-step loss that train_speed.py's
trainer configs record for it."""

from __future__ import annotations

import math
import random
import tempfile

import pytest
import torch
from helpers import load_benchmark

loss_curve = load_benchmark("loss_curve")


def _curves(seeds, steps=60, start=2.3, end=1.4, shift=0.0, seed_sd=0.03, step_sd=0.15, rng=None):
    """Decaying loss curves: each seed its own level offset (seed_sd) and per-step batch noise."""
    rng = rng or random.Random(0)
    out = []
    for _ in range(seeds):
        offset = rng.gauss(0, seed_sd)
        out.append([start + (end - start) * (1 - math.exp(-i / 20)) + offset + shift + rng.gauss(0, step_sd)
                    for i in range(steps)])
    return out


def _rows(**configs):
    return [{"config": name, "loss_curves": curves} for name, curves in configs.items()]


def test_final_loss_and_pooled_sd():
    assert loss_curve.final_loss([3.0, 2.0, 1.0, 1.0], 2) == 1.0
    assert loss_curve.final_loss([2.0], 5) == 2.0
    with pytest.raises(ValueError, match="empty"):
        loss_curve.final_loss([], 3)
    # two configs, deviations +-1 and +-2 around their means: ss = 2 + 8 over 2 degrees of freedom
    assert loss_curve.pooled_sd({"a": [1.0, 3.0], "b": [0.0, 4.0], "c": [9.0]}) == pytest.approx(math.sqrt(5))
    assert loss_curve.pooled_sd({"a": [1.0], "b": [2.0]}) is None


def test_early_paired_difference_compares_seed_by_seed():
    ref = [[2.3, 2.2, 2.1], [2.4, 2.3, 2.2]]
    assert loss_curve.early_paired_diff(ref, ref) == 0.0
    # the same curves with the seeds swapped are not the same run
    assert loss_curve.early_paired_diff(ref[::-1], ref) == pytest.approx(0.1)
    # only the first `steps` steps count, and a curve departing after them does not show
    assert loss_curve.early_paired_diff([[2.3, 2.2, 9.0]], ref, steps=2) == 0.0
    result = loss_curve.compare(_rows(trainer=_curves(2), fast=_curves(2)), window=10)
    assert result["configs"]["fast"]["early_paired_diff"] == 0.0  # _curves(2) is the same draw twice


def test_same_training_is_within_noise_a_shifted_one_is_not():
    rng = random.Random(1)
    same = loss_curve.compare(_rows(trainer=_curves(3, rng=rng), fast=_curves(3, rng=rng)), window=20)
    fast = same["configs"]["fast"]
    assert fast["within_noise"] is True and abs(fast["diff"]) <= fast["bound"]
    assert same["configs"]["trainer"]["final_loss"] == pytest.approx(1.4 + 0.9 * math.exp(-2.5), abs=0.1)
    # a mode that trains to a loss 0.3 higher (ten seed standard deviations) is flagged
    worse = loss_curve.compare(_rows(trainer=_curves(3, rng=rng), fast=_curves(3, shift=0.3, rng=rng)), window=20)
    assert worse["configs"]["fast"]["within_noise"] is False
    assert worse["configs"]["fast"]["diff"] == pytest.approx(0.3, abs=0.1)
    text = loss_curve.table(worse)
    assert "**no**" in text and "(reference)" in text


def test_one_seed_gives_no_verdict_and_rows_without_curves_are_skipped():
    rows = _rows(trainer=_curves(1), fast=_curves(1)) + [{"config": "fp32", "images_per_s": 10.0},
                                                         {"config": "broken", "error": "timed out"}]
    result = loss_curve.compare(rows, window=10)
    assert set(result["configs"]) == {"trainer", "fast"}
    assert result["pooled_sd"] is None and result["configs"]["fast"]["within_noise"] is None
    assert "| - |" in loss_curve.table(result)


def test_report_writes_table_json_and_picture(tmp_path):
    rows = _rows(trainer=_curves(2), fast=_curves(2, rng=random.Random(5)))
    result = loss_curve.report(rows, 20, tmp_path)
    assert result["configs"]["fast"]["within_noise"] is not None
    assert (tmp_path / "loss_curve.md").read_text().startswith("Training loss over the last 20 steps")
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert loss_curve.report([{"config": "fp32", "images_per_s": 1.0}], 20, tmp_path / "none") is None


def test_cli_refuses_a_file_without_curves(tmp_path, capsys):
    bad = tmp_path / "rows.json"
    bad.write_text('[{"config": "fp32", "images_per_s": 1.0}]')
    assert loss_curve.main([str(bad)]) == 2
    assert loss_curve.main([str(tmp_path / "missing.json")]) == 2
    assert "error:" in capsys.readouterr().err


def test_trainer_rows_record_each_steps_loss():
    """The curve train_speed.py records (running sums copied after each step, differenced after the
    run) is each step's own training loss: its first point is a fresh trainer's first step, and a
    second seed trains another network on other data."""
    train_speed = load_benchmark("train_speed")
    row = train_speed.trainer_worker("trainer", "cpu", 8, 2, seeds=2, channels=4, layers=3)
    curves = row["loss_curves"]
    assert len(curves) == 2 and all(len(c) == 2 + 4 for c in curves)  # the warm-up steps are recorded too
    assert curves[0] != curves[1]

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS, TrainConfig, Trainer

    cli = {"genotype": "DARTS_V2", "device": "cpu", "batch_size": 8, "embedded_size": 8 * 10, "plots": False,
           "export": False, "seed": 0, "channels": 4, "layers": 3}
    cfg = cfglib.build_config(TrainConfig, PRESETS, cli, "darts")
    with tempfile.TemporaryDirectory() as tmp, RunDir(tmp) as run:
        torch.manual_seed(0)
        t = Trainer(cfg, run, torch.device("cpu"), published("DARTS_V2"))
        t.net.train()
        t.net.drop_path_prob = 0.2
        sums = torch.zeros(3)
        t.step(sums)
        first = (sums[0] / sums[2]).item()
    assert curves[0][0] == pytest.approx(first, rel=1e-6)
