"""Host work per step, counted on the CPU (issue 20, target 4, where no GPU is at hand): the aten calls a
steady-state step makes are traced with a TorchDispatchMode, and two kinds must not appear there:

- ``aten.lift_fresh``: a tensor built from Python numbers inside the step. On a GPU that is a
  host-to-device copy per step (and, from pageable memory, a hidden synchronization).
- ``aten._local_scalar_dense``: a number read back to the host (``.item()``, ``int(t)``, ``bool(t)``,
  ``.tolist()``): on a GPU a synchronization.

The architecture optimizer's step is left out of the sync count on CPU only: Adam reads its step
counter there, and on a GPU it runs ``capturable`` (the counter stays on the device), which
tests/test_sync_free.py checks under ``torch.cuda.set_sync_debug_mode("error")``. The hard Gumbel
sampler's weight step reads its sampled indices on purpose (only the sampled op runs); its
architecture step's static form (what ``--cuda-graphs`` replays) reads nothing."""

import collections
from contextlib import contextmanager

import pytest
import torch
from helpers import tiny_searcher
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from fastnas.data import ImageData, augment, cutout, place
from fastnas.infra import config as cfglib
from fastnas.infra.rundir import RunDir
from fastnas.search import Searcher
from fastnas.space.sampler import DirichletSampler, _dirichlet

LIFT, READ = "aten.lift_fresh", "aten._local_scalar_dense"


# Python-level reads: on a CPU tensor `.tolist()` and `.numpy()` never reach the dispatcher, so they
# are counted where they are called; `.item()`, `int(t)` and `bool(t)` show up as READ as well.
HOST_READS = {"tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"}


class _Reads(TorchFunctionMode):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and not self.owner._paused:
            self.owner.counts["host_read." + name] += 1
        return func(*args, **(kwargs or {}))


class CountOps(TorchDispatchMode):
    """Counts aten calls by name, and Python-level reads of tensor values back to the host;
    `paused()` leaves a region out."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self._paused = 0
        self._reads = _Reads(self)

    def __enter__(self):
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._paused:
            self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @contextmanager
    def paused(self):
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @property
    def reads(self) -> int:
        """Values read back to the host: a GPU synchronization each."""
        return self.counts[READ] + sum(v for k, v in self.counts.items() if k.startswith("host_read."))

    def summary(self) -> dict:
        return {k: v for k, v in self.counts.items() if k == LIFT or k == READ or k.startswith("host_read.")}


def _searcher(tmp_path, preset: str, **extra) -> Searcher:
    return tiny_searcher(tmp_path / "run", preset, **extra)


def _count_search_step(s: Searcher, step=None) -> collections.Counter:
    """Counts of one steady-state `step(gens, sums)` (default: the searcher's whole iteration)."""
    step = step or s.step
    gens = [torch.Generator(s.train_data.images.device).manual_seed(0) for _ in s.shards]
    sums = torch.zeros(4)
    step(gens, sums)  # warm-up: optimizer state, caches
    mode = CountOps()
    a_step = s.a_opt.step

    def arch_opt_step(*args, **kwargs):
        with mode.paused():
            return a_step(*args, **kwargs)

    s.a_opt.step = arch_opt_step
    try:
        with mode:
            step(gens, sums)
    finally:
        del s.a_opt.step
        s.run_dir.__exit__(None, None, None)
    return mode.counts, mode.reads, mode.summary()


@pytest.mark.parametrize("preset,extra", [
    ("darts", {}), ("darts2", {}), ("pcdarts", {}), ("drnas", {}), ("pdarts", {}),
    ("darts", {"target_params": "2.5M", "cost_penalty": "log"}),  # the budget term in the architecture loss
    ("pcdarts", {"target_flops": "400M"}),  # ... with PC-DARTS' edge betas in the expected cost
])
def test_softmax_family_search_step_has_no_host_copy_or_read(tmp_path, preset, extra):
    counts, reads, summary = _count_search_step(_searcher(tmp_path, preset, **extra))
    assert counts[LIFT] == 0, f"{preset}: {counts[LIFT]} tensor(s) built from host numbers in one step"
    assert reads == 0, f"{preset}: values read back to the host in one step: {summary}"
    assert sum(counts.values()) > 100  # the step really ran under the counter


def test_hard_sampler_step_reads_only_its_sampled_indices(tmp_path):
    s = _searcher(tmp_path, "progressive")
    assert s.sampler.name == "gumbel-hard"
    counts, reads, summary = _count_search_step(s)
    assert counts[LIFT] == 0, summary
    # the sampled indices of the weight step's sample, read once (normal and reduce cells together or
    # apart); the architecture step runs every candidate and reads none
    assert 1 <= reads <= 2, summary


def test_hard_sampler_warmup_draws_each_sample_a_step_early_to_the_same_bits(tmp_path):
    """A warm-up step that another follows draws the next step's hard sample before its own work (on a
    GPU the indices then reach the host while the step runs, and the next step does not wait for the
    GPU to read them): the same draws in the same order, so the same steps to the bit."""
    results = {}
    for ahead in (False, True):
        s = _searcher(tmp_path / str(ahead), "progressive")
        drawn = collections.Counter()
        for name in ("sample", "sample_ahead"):
            method = getattr(s.net, name)
            setattr(s.net, name, lambda *a, _m=method, _n=name, _d=drawn, **k: (_d.update([_n]), _m(*a, **k))[1])
        gens = [torch.Generator().manual_seed(0) for _ in s.shards]
        sums = torch.zeros(4)
        with s.run_dir:
            for i in range(4):
                s.step(gens, sums, arch=False, ahead=ahead and i < 3)
        assert s._ahead is None  # nothing left drawn for a step that is not coming
        results[ahead] = ([p.detach().clone() for p in s.net.parameters()], sums,
                          s.sampler_generator.get_state(), drawn)
    (p0, sums0, gen0, drawn0), (p1, sums1, gen1, drawn1) = results[False], results[True]
    assert drawn0 == {"sample": 4} and drawn1 == {"sample": 1, "sample_ahead": 3}
    torch.testing.assert_close(sums1, sums0, rtol=0, atol=0)
    assert torch.equal(gen1, gen0)
    for a, b in zip(p1, p0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_search_epoch_draws_ahead_in_its_warmup_but_not_past_its_last_step(tmp_path):
    s = _searcher(tmp_path, "progressive", warmup_epochs=[1, 1, 1], max_steps=3)
    calls = []
    step = s.step
    s.step = lambda gens, sums, arch=True, ahead=False: (calls.append((arch, ahead)), step(gens, sums, arch, ahead))[1]
    with s.run_dir:
        s.train_epoch(0, 0)  # warm-up: each step but the last draws the next one's sample
        s.train_epoch(0, 1)  # search: the next sample depends on this step's architecture update
    assert calls == [(False, True), (False, True), (False, False), (True, False), (True, False), (True, False)]
    assert s._ahead is None


def test_hard_sampler_static_architecture_step_reads_nothing(tmp_path):
    """What --cuda-graphs replays for the hard sampler: its architecture step drawing a fresh sample on
    the device and running every candidate, with no index read back (the weight step keeps its read)."""
    s = _searcher(tmp_path, "progressive")

    def arch_step(gens, sums):
        valid = [s.batch(st, g) for st, g in zip(s.valid_streams, gens, strict=True)]
        s._static_arch_update(None, valid, sums, True)

    counts, reads, summary = _count_search_step(s, arch_step)
    assert counts[LIFT] == 0 and reads == 0, summary
    assert counts["aten.convolution"] > 50  # every candidate ran


def test_retraining_step_has_no_host_copy_or_read(tmp_path):
    from fastnas.space.genotype import published
    from fastnas.train import PRESETS as TRAIN_PRESETS
    from fastnas.train import TrainConfig, Trainer

    cfg = cfglib.build_config(TrainConfig, TRAIN_PRESETS, {
        "genotype": "DARTS_V2", "preset": "smoke", "device": "cpu", "epochs": 2, "max_steps": 3, "plots": False,
        "export": False, "cutout": 8, "layers": 3, "channels": 4, "workers": 1}, "darts")
    with RunDir(tmp_path / "run") as run:
        t = Trainer(cfg, run, torch.device("cpu"), published("DARTS_V2"))
        t.net.train()
        t.net.drop_path_prob = 0.2  # drop-path draws its masks on the device
        sums = torch.zeros(3)
        t.step(sums)
        with CountOps() as mode:
            t.step(sums)
    assert mode.counts[LIFT] == 0 and mode.reads == 0, mode.summary()
    assert mode.counts["aten.convolution"] > 10


def test_dirichlet_sample_matches_torch_rsample_gradient():
    """The generator-driven sample is torch's Dirichlet.rsample draw for the same seed, with the same
    gradient (torch's `_Dirichlet` autograd function, the implicit reparameterisation)."""
    from torch.distributions.dirichlet import _Dirichlet

    c = torch.tensor([[0.7, 1.3, 2.5, 0.4], [3.0, 1.0, 1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.0, 0.0, -0.5, 0.25]], dtype=torch.float64)
    x = _dirichlet(c, torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad((x * w).sum(), c)
    c_ref = c.detach().clone().requires_grad_()
    torch.manual_seed(3)  # the default generator seeded alike draws the same stream
    x_ref = _Dirichlet.apply(c_ref)
    (g_ref,) = torch.autograd.grad((x_ref * w).sum(), c_ref)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(x.sum(-1), torch.ones(2, dtype=torch.float64))


def test_dirichlet_sampler_is_deterministic_per_generator_and_reads_nothing():
    alpha = torch.randn(14, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    draws = []
    for _ in range(2):
        sampler = DirichletSampler()
        sampler.generator = torch.Generator().manual_seed(5)
        with CountOps() as mode:
            draws.append(sampler(alpha).weights)
        assert mode.reads == 0 and mode.counts[LIFT] == 0, mode.summary()
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    torch.testing.assert_close(draws[0].sum(-1), torch.ones(14))
    # the global RNG plays no part: a draw after reseeding it differs only through our generator
    torch.manual_seed(123)
    third = DirichletSampler()
    third.generator = torch.Generator().manual_seed(5)
    torch.testing.assert_close(third(alpha).weights, draws[0], rtol=0, atol=0)


def test_dirichlet_sample_mean_is_the_dirichlet_mean():
    c = torch.tensor([0.5, 1.0, 2.0, 4.5]).expand(20000, 4).contiguous()
    x = _dirichlet(c, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), c[0] / c[0].sum(), atol=5e-3, rtol=0)


def test_place_leaves_cpu_data_alone():
    data = ImageData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 10,
                     (0.5,) * 3, (0.25,) * 3, "t")
    assert place(data, torch.device("cpu")) is data
    assert place(data, torch.device("meta"), enabled=False) is data
    assert data.nbytes == 4 * 3 * 64 + 4 * 8


def test_augment_and_cutout_draw_from_the_generator_alike():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a = augment(images, torch.Generator().manual_seed(4))
    b = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.shape == images.shape and a.dtype == images.dtype
    x = images.float()
    torch.testing.assert_close(cutout(x, 4, torch.Generator().manual_seed(2)),
                               cutout(x, 4, torch.Generator().manual_seed(2)), rtol=0, atol=0)
    assert (cutout(x, 4, torch.Generator().manual_seed(2)) == 0).any()
    with CountOps() as mode:
        augment(images, torch.Generator().manual_seed(4))
        cutout(x, 4, torch.Generator().manual_seed(2))
    assert mode.reads == 0 and mode.counts[LIFT] == 0, mode.summary()
