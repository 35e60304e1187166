"""fastnas evaluate: every file a training run writes can be evaluated; bad arguments are refused
before any evaluation."""

import json
import time

import pytest
from helpers import fails

from fastnas.cli import evaluate, train


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
    (["--batch-size", "-5"], "--batch-size: -5 is outside [1, 65,536]"),
    (["--out", "/missing/dir/x.json"], "does not exist"),
    (["--device", "cuda:9"], "cuda:9"),
])
def test_evaluate_rejects_bad_arguments_before_evaluating(trained, argv, fragment, capsys):
    start = time.perf_counter()
    fails(evaluate.main, ["--checkpoint", str(trained / "best.pt"), *argv], fragment, capsys)
    assert time.perf_counter() - start < 30
