"""No host-device synchronization in a steady-state step (issue 20, target 4): a search iteration of the
softmax family (darts, pcdarts, drnas, pdarts: their whole iteration is static) and a retraining step run
under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing call (``.item()``,
``.tolist()``, a device-to-host copy). CUDA only: skipped without a GPU, run by benchmarks/gpu_check.sh.

The hard Gumbel sampler's weight step after an architecture step is not here on purpose: it runs only
the sampled op of each edge, so the host reads the sampled indices, which depend on the architecture
step just queued (benchmarks/op_count.py counts the reads). Its architecture step's static form, what
``--cuda-graphs`` replays, is here, and so is its warm-up step: the architecture does not move there, so
each step's sample was drawn a step early and its indices copied to pinned host memory while that step
ran."""

import pytest
import torch
from conftest import requires_cuda
from helpers import tiny_searcher

from fastnas.infra import config as cfglib
from fastnas.infra.rundir import RunDir

pytestmark = [requires_cuda, pytest.mark.cuda]


@pytest.mark.parametrize("preset", ["darts", "pcdarts", "drnas", "pdarts"])
def test_search_iteration_is_sync_free(tmp_path, preset):
    s = tiny_searcher(tmp_path / "run", preset, device="cuda", cells=5, channels=16, batch_size=16,
                      partial_channels=4)
    with s.run_dir:
        gens = [torch.Generator(s.train_data.images.device).manual_seed(0) for _ in s.shards]
        sums = torch.zeros(4, device="cuda")
        for _ in range(2):  # warm-up: allocator, cuDNN choices, optimizer state
            s.step(gens, sums)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            s.step(gens, sums)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_hard_sampler_static_architecture_step_is_sync_free(tmp_path):
    s = tiny_searcher(tmp_path / "run", "progressive", device="cuda", cells=5, channels=16, batch_size=16)
    with s.run_dir:
        gens = [torch.Generator(s.train_data.images.device).manual_seed(0) for _ in s.shards]
        sums = torch.zeros(4, device="cuda")
        for i in range(3):  # two warm-up steps, then one under the sync check
            valid = [s.batch(st, g) for st, g in zip(s.valid_streams, gens, strict=True)]
            torch.cuda.synchronize()
            if i == 2:
                torch.cuda.set_sync_debug_mode("error")
            try:
                s._static_arch_update(None, valid, sums, True)
            finally:
                torch.cuda.set_sync_debug_mode("default")


def test_hard_sampler_warmup_step_is_sync_free(tmp_path):
    s = tiny_searcher(tmp_path / "run", "progressive", device="cuda", cells=5, channels=16, batch_size=16)
    with s.run_dir:
        gens = [torch.Generator(s.train_data.images.device).manual_seed(0) for _ in s.shards]
        sums = torch.zeros(4, device="cuda")
        for _ in range(2):  # warm-up: allocator, cuDNN choices, momentum buffers, a sample drawn ahead
            s.step(gens, sums, arch=False, ahead=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            s.step(gens, sums, arch=False, ahead=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert s._ahead is not None


def test_retraining_step_is_sync_free(tmp_path):
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS as TRAIN_PRESETS
    from fastnas.train import TrainConfig, Trainer

    cfg = cfglib.build_config(TrainConfig, TRAIN_PRESETS, {"genotype": "DARTS_V2", "preset": "smoke",
                                                           "device": "cuda", "epochs": 2, "max_steps": 3,
                                                           "plots": False, "export": False}, "darts")
    with RunDir(tmp_path / "run") as run:
        t = Trainer(cfg, run, torch.device("cuda"), published("DARTS_V2"))
        sums = torch.zeros(3, device="cuda")
        t.net.train()
        for _ in range(2):  # warm-up
            t.step(sums)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            t.step(sums)
        finally:
            torch.cuda.set_sync_debug_mode("default")
