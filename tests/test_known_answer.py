"""Known-answer search test (the space and budget: :mod:`fastnas.search.known_answer`): over
{sep_conv_3x3, noise} every sampler's search must prefer the convolution on at least 12 of the 14
normal edges. About 2.7 minutes per soft sampler on 2 cores, 4 for gumbel-hard."""

import json

import pytest

from fastnas.cli.search import main
from fastnas.search.known_answer import BAR, edges_preferring_convolution, search_args

# Measured at this budget (normal-cell edges of 14 preferring the convolution, 2 threads, seeds 0 / 1 / 2;
# benchmarks/known_answer.py, benchmarks/README.md): softmax 13 / 12 / 13, dirichlet 12 / 13 / 14,
# gumbel-soft 12 / 12 / 11, gumbel-hard 14 / 14 / 12 (24 epochs). With 500 + 500 images in batches of
# 32 (the same steps, half the data per architecture step) they were 11 / 13 / 7, 12 / 7 / 8,
# 11 / 12 / 9 and 9 / 7 / 6 (12 epochs): one edge's preference is a small mean under a large
# per-batch spread (the noise op's gradient is <dL/dy, fresh noise>), and half the data left several
# edges at coin flips. CI runs softmax (a search choosing by coin flip reaches 12 of 14 0.6% of the
# time, in the slow tier); the others are `long` (about 10 minutes together, beyond CI's time):
# `python -m pytest -m long tests/test_known_answer.py` runs them. Each asserts the bar at seed
# 0; robustness over seeds is the benchmark's job (seeds 3 and 4: softmax 11 / 13, gumbel-soft 12 / 14).
SAMPLERS = [
    pytest.param("softmax", id="softmax", marks=pytest.mark.slow),
    pytest.param("dirichlet", id="dirichlet", marks=pytest.mark.long),
    pytest.param("gumbel-soft", id="gumbel-soft", marks=pytest.mark.long),
    pytest.param("gumbel-hard", id="gumbel-hard", marks=pytest.mark.long),
]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_search_prefers_convolution_over_noise(tmp_path, sampler):
    out = tmp_path / sampler
    assert main([*search_args(sampler), "--out", str(out)]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    prefers = edges_preferring_convolution(last)
    assert prefers >= BAR, f"{sampler}: sep_conv_3x3 preferred on only {prefers} of 14 normal edges"


@pytest.mark.slow
def test_the_quick_preset_as_a_user_runs_it_rejects_noise(tmp_path):
    """`fastnas search --preset quick --primitives sep_conv_3x3 noise --ops-kept 2 2 2`: every stage, the
    one-network transitions and the derivation, as a CPU user runs them. The derived genotype may pick
    noise on at most 1 of its 16 edges (measured over seeds 0-4: 0 each, about 90 s per run; the previous
    quick preset: 5-9), and the last epoch's normal alphas prefer the convolution on most of the 14 edges
    (the derivation's two strongest edges per node leave out the rest)."""
    out = tmp_path / "quick"
    assert main(["--preset", "quick", "--primitives", "sep_conv_3x3", "noise", "--ops-kept", "2", "2", "2",
                 "--seed", "0", "--no-plots", "--out", str(out)]) == 0
    genotype = json.loads((out / "genotype.json").read_text())
    noise = [op for cell in ("normal", "reduce") for op, _ in genotype[cell] if op == "noise"]
    assert len(noise) <= 1, genotype
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert edges_preferring_convolution(last) >= 9  # measured 11-14 of 14 over seeds 0-4 (11 at seed 0)
