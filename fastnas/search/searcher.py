"""S2 progressive sampled search: the :class:`Searcher` (``fastnas search`` runs it).

Three stages (presets ``pdarts``, ``patent``, ``smoke``; every per-stage list overridable). Each stage
builds a supernet (its cells and channels), trains it for its epochs: per step the sampler draws an
architecture, one weight step (SGD, cosine, grad clip) runs on a training batch, and after the
warm-up one architecture step (Adam, first order) on a batch of the held-out half. Between stages
the candidates are pruned to the next stage's count (zero first in the last stage), the supernet is
rebuilt and re-initialized. The last stage's architecture gives the genotype (skip cap M).

Every epoch is checkpointed atomically; ``--resume DIR`` continues a killed run, and with
``--deterministic`` ends with the genotype an uninterrupted run gives.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from fastnas import plots
from fastnas.cost import budget_report_lines
from fastnas.data import BatchStream, augment, load_dataset, normalize, place, split_train
from fastnas.infra import config as cfglib
from fastnas.infra import distributed
from fastnas.infra.console import progress_bar
from fastnas.infra.errors import RunError
from fastnas.infra.graphs import kept_buffers
from fastnas.infra.rundir import CHECKPOINT_VERSION, RunDir
from fastnas.infra.runtime import AMP_DTYPES, amp_context, rng_state, set_rng_state
from fastnas.search.arch_grad import ArchStep
from fastnas.search.budget import make_budget_term
from fastnas.search.graphed import (
    ARCH_STEP,
    ITERATION,
    OpGraphs,
    StepGraph,
    graph_blocker,
    graph_scope,
    op_graph_blocker,
)
from fastnas.search.options import MECHANISMS, SearchConfig
from fastnas.search.results import evaluate_derived, mean_op_probabilities
from fastnas.space.derive import cell_stats, derive_genotype, edge_scores, prune_primitives
from fastnas.space.genotype import Genotype
from fastnas.space.sampler import Sample, TemperatureSchedule, make_sampler, sampler_class
from fastnas.space.supernet import SuperNet
from fastnas.space.widen import carry_optimizer, carry_over


def skip_dropout_rate(p: float, epoch: int, epochs: int, warmup: int) -> float:
    """P-DARTS: p * (E - e - 1) / E during the warm-up, then p * exp(-0.2 * (e - warm-up))."""
    if epoch < warmup:
        return p * (epochs - epoch - 1) / epochs
    return p * math.exp(-0.2 * (epoch - warmup))


class Searcher:
    """The state of one search run; :meth:`run` goes through the remaining stages and epochs."""

    def __init__(self, cfg: SearchConfig, run: RunDir, device: torch.device, *, rank: int = 0, world_size: int = 1):
        self.cfg, self.run_dir, self.device = cfg, run, device
        self.rank, self.world_size = rank, world_size
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        full = load_dataset(cfg.dataset, cfg.data_dir, train=True, download=cfg.download,
                            embedded_size=cfg.embedded_size, image_size=cfg.image_size, seed=cfg.seed)
        self.train_data, self.valid_data = split_train(full, cfg.train_portion, cfg.seed)
        self.train_data = place(self.train_data, device, cfg.data_on_device)
        self.valid_data = place(self.valid_data, device, cfg.data_on_device)
        self.num_classes = full.num_classes
        # Shards: `accumulate` per process, so W processes x A shards see what W*A processes see.
        A = cfg.accumulate
        self.shards = [rank * A + v for v in range(A)]
        self.train_streams = [BatchStream(self.train_data, cfg.batch_size, cfg.seed * 2 + 1, rank=r,
                                          world_size=world_size * A) for r in self.shards]
        self.valid_streams = [BatchStream(self.valid_data, cfg.batch_size, cfg.seed * 2 + 2, rank=r,
                                          world_size=world_size * A) for r in self.shards]
        # One architecture per step for every process: the sampler draws from its own generator, seeded
        # alike everywhere (the architecture parameters are kept identical).
        self.sampler_generator = torch.Generator(device).manual_seed(cfg.seed + 12345)
        self.schedule = temperature_schedule(cfg)
        options = {name: getattr(cfg, name) for name in sampler_class(cfg.sampler).options}
        self.sampler = make_sampler(cfg.sampler, tau=self.schedule.start if self.schedule else 1.0,
                                    generator=self.sampler_generator, **options)
        self.stage, self.epoch = 0, 0  # next epoch to run
        self.edge_primitives = None
        self.stage_genotypes: list[dict] = []
        self.elapsed = 0.0  # search time: epochs, their checkpoints and stage ends (carried across a resume)
        self.net = None
        self.fault_step = distributed.fault_step(rank)
        self.budget_report = None
        self.global_step = 0
        # the next warm-up step's hard sample, drawn one step early (see _weight_sample)
        self._ahead = None
        self._draw_ahead = False
        # The architecture loss's cost term (None without a budget); refuses unreachable targets.
        image_size = cfg.image_size if cfg.dataset == "folder" else 32
        self.budget = make_budget_term(cfg, image_size, self.num_classes, cfg.primitives)
        # everything added to the architecture's cross-entropy: the budget, the mechanisms' terms (DrNAS' anchor)
        self.arch_terms = [t for t in [self.budget] if t is not None]
        for mechanism in MECHANISMS:
            self.arch_terms += mechanism.arch_terms(cfg)
        self.arch_gradient = cfg.arch_gradient()
        # --cuda-graphs: each static iteration (or the hard sampler's architecture step) replayed as one
        # CUDA graph, captured once per epoch
        self.graphed, self.graph_scope = None, None
        if cfg.cuda_graphs:
            blocker = graph_blocker(cfg, device, world_size)
            if blocker is None:
                self.use_graphs()
            run.log(f"CUDA graphs: on for the {self.graph_scope} (one capture per epoch)" if blocker is None
                    else f"CUDA graphs: off: {blocker}")
        # --op-graphs: the hard sampler's weight step runs each sampled convolution as its own replayed graphs
        self.op_graphs = None
        if cfg.op_graphs:
            blocker = op_graph_blocker(cfg, device, world_size)
            if blocker is None:
                self.use_op_graphs()
            run.log("CUDA graphs: on for each candidate op of the weight step (all captured when a stage starts)"
                    if blocker is None else f"CUDA graphs per op: off: {blocker}")

    def use_graphs(self, backend=None) -> None:
        """Replay the iteration, or the hard sampler's architecture step, as a CUDA graph (`backend`: a
        stand-in for torch.cuda's graphs, in tests)."""
        self.graph_scope = graph_scope(self.cfg)
        fn = self.iterate if self.graph_scope == ITERATION else self._static_arch_update
        self.graphed = StepGraph(fn, [self.sampler_generator], log=self.run_dir.log, backend=backend)

    def use_op_graphs(self, backend=None) -> None:
        """Run the weight step's candidate ops through per-op CUDA graphs (:class:`OpGraphs`; `backend`: a
        stand-in for torch.cuda's graphs, in tests)."""
        self.op_graphs = OpGraphs(log=self.run_dir.log, backend=backend)
        if self.net is not None:
            self.net.set_op_runner(self.op_graphs)

    # ----------------------------------------------------------------- building
    def build_stage(self, stage: int) -> None:
        cfg = self.cfg
        options = {}
        for mechanism in MECHANISMS:  # partial channels, edge normalization, a fixed reduction cell
            options.update(mechanism.supernet_kwargs(cfg, stage))
        self.net = SuperNet(
            channels=cfg.channels[stage], layers=cfg.cells[stage], num_classes=self.num_classes,
            primitives=cfg.primitives, edge_primitives=self.edge_primitives, **options,
        ).to(self.device, memory_format=self.memory_format)
        if self.edge_primitives is None:
            self.edge_primitives = self.net.edge_primitives
        if self.op_graphs is not None:  # a new supernet: new ops to capture
            self.op_graphs.reset()
            self.net.set_op_runner(self.op_graphs)
        if self.budget is not None:
            self.budget.bind(self.net.edge_primitives)
        self.model = self.net
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # The architecture parameters are all-reduced by hand (arch step); DDP handles the weights.
            # Unsampled ops get no gradient under gumbel-hard: find_unused_parameters.
            DDP._set_params_and_buffers_to_ignore_for_model(self.net, list(SuperNet.ARCH_NAMES))
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.net, device_ids=ids, find_unused_parameters=True)
        # foreach: one call per update for all parameters (what a GPU picks by default; on a CPU torch
        # would loop over them in Python, three calls each); the same arithmetic, bit for bit. (Adam has
        # 2-4 tensors: nothing to gain, and on a CPU its foreach form wraps a host number every step.)
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, foreach=True)
        # capturable on a GPU: Adam keeps its step count on the device instead of reading it back every
        # step (a host sync); the same arithmetic. CPU tensors do not support it.
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay, capturable=self.device.type == "cuda")
        if cfg.arch_travel > 0:
            arch_steps = max(1, (cfg.epochs[stage] - cfg.warmup_epochs[stage]) * self.steps_per_epoch())
            for group in self.a_opt.param_groups:
                group["lr"] = cfg.arch_travel / arch_steps
        # DrNAS' one network: one cosine over every stage's epochs (train_search.py sum(train_epochs))
        T = sum(cfg.epochs) if cfg.stage_transition == "continue" else cfg.epochs[stage]
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T, eta_min=cfg.lr_min)
        fp16 = self.amp_dtype is torch.float16
        self.w_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.a_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def autocast(self):
        # autocast's cast cache must be off where a CUDA graph captures the step (PyTorch's graph notes)
        return amp_context(self.device, self.amp_dtype, cache_enabled=self.graphed is None and self.op_graphs is None)

    def steps_per_epoch(self) -> int:
        steps = self.train_streams[0].batches_per_pass()
        return min(steps, self.cfg.max_steps) if self.cfg.max_steps else steps

    def temperature(self, stage: int, epoch: int) -> float:
        """The warm-up stays at tau_start; the schedule runs over the search epochs of the stage, so the
        architecture steps see all of it."""
        if self.schedule is None:
            return 1.0
        warmup = self.cfg.warmup_epochs[stage]
        return self.schedule(max(0, epoch - warmup), self.cfg.epochs[stage] - warmup)

    def batch(self, stream: BatchStream, generator: torch.Generator):
        images, labels = stream.next()
        images = images.to(self.device, non_blocking=True)
        images = augment(images, generator)
        x = normalize(images, self.train_data.mean, self.train_data.std, memory_format=self.memory_format)
        return x, labels.to(self.device, non_blocking=True)

    # ----------------------------------------------------------------- one step
    def weight_step(self, samples, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """SGD on the weights, gradients averaged over this process's shards (and, through DDP, over
        all processes)."""
        net, A = self.net, len(batches)
        detached = {k: Sample(s.weights.detach(), s.index, s.hard, s.index_list) for k, s in samples.items()}
        if self.op_graphs is not None and not self.op_graphs.graphs and self.op_graphs.failed is None:
            self._capture_op_graphs(batches[0][0])  # a new supernet: its ops captured before its first step
        self.w_opt.zero_grad(set_to_none=True)
        loss_sum = correct = 0
        with self._op_graphs_on():
            for v, (x, y) in enumerate(batches):
                sync = nullcontext() if v == A - 1 or self.model is net else self.model.no_sync()
                with sync:
                    with self.autocast():
                        logits = self.model(x, detached)
                        loss = F.cross_entropy(logits.float(), y)
                    self.w_scaler.scale(loss / A).backward()
                loss_sum = loss_sum + loss.detach() * y.shape[0]
                correct = correct + (logits.argmax(1) == y).sum()
        # the optimizer's own list (net.weight_parameters()): walking the module tree for it took 5-25 ms
        # of host time per step on 5-17 cells (about 900-2,900 parameters), more than the step's launches
        params = self.w_opt.param_groups[0]["params"]
        self.w_scaler.unscale_(self.w_opt)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
        self.w_scaler.step(self.w_opt)
        self.w_scaler.update()
        return loss_sum, correct

    def _capture_op_graphs(self, x: torch.Tensor) -> None:
        """Capture every candidate op of the supernet at once (``--op-graphs``), instead of each the first
        time it is sampled (which would stall steps all through the first epoch): one forward pass of a
        uniform soft sample, where every candidate runs, on a batch of zeros of the real batch's layout,
        under the step's autocast. It leaves nothing behind: the BatchNorm statistics it updated and the
        random draws of skip dropout are restored, and no gradient is taken."""
        net, graphs = self.net, self.op_graphs
        rng = rng_state()
        uniform = {cell: Sample(torch.full_like(a.detach(), 1.0 / a.shape[-1]))
                   for cell, a in net.named_arch_parameters().items()}
        t0, before = time.perf_counter(), graphs.captures
        with kept_buffers(net), self._op_graphs_on(), torch.enable_grad(), self.autocast():
            net(torch.zeros_like(x), uniform)
        set_rng_state(rng)
        if graphs.failed is None:
            self.run_dir.log(f"CUDA graphs: captured {graphs.captures - before} candidate ops in "
                             f"{time.perf_counter() - t0:.1f} s")

    @contextmanager
    def _op_graphs_on(self, on: bool = True):
        """The sampled ops run through their per-op graphs (``--op-graphs``) inside this block: the eager
        weight step, and the eager first-order architecture step (DARTS' second order swaps the weights
        for unrolled ones, which a captured op would not see; a replayed architecture step is captured
        around the modules themselves)."""
        graphs = self.op_graphs
        if graphs is None or not on:
            yield
            return
        graphs.active = True
        try:
            yield
        finally:
            graphs.active = False

    def arch_loss(self, ce: torch.Tensor) -> torch.Tensor:
        """The architecture objective: the validation cross-entropy plus each configured term."""
        loss = ce
        for term in self.arch_terms:
            loss = term(loss, self.net, self.sampler)
        return loss

    def arch_step(self, samples, batches, train_batches=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam on the architecture parameters, gradients (first order, or DARTS' second order on the
        shard's training batch: ``self.arch_gradient``) averaged over shards and processes."""
        net, A = self.net, len(batches)
        params = net.arch_parameters()
        total = [torch.zeros_like(p) for p in params]
        loss_sum = correct = 0
        for v, (x, y) in enumerate(batches):
            step = ArchStep(net, samples, (x, y), None if train_batches is None else train_batches[v], A,
                            self.autocast, self.a_scaler.scale, self.arch_loss, self.w_opt)
            grads, ce, logits = self.arch_gradient.grads(step)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t += g
            loss_sum = loss_sum + ce.detach() * y.shape[0]
            correct = correct + (logits.argmax(1) == y).sum()
        self.a_opt.zero_grad(set_to_none=True)
        for p, g in zip(params, total, strict=True):
            p.grad = distributed.all_reduce_(g, average=True)
        if self.cfg.arch_grad_clip > 0:  # P-DARTS clips the architecture gradient too
            self.a_scaler.unscale_(self.a_opt)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.arch_grad_clip, foreach=True)
        self.a_scaler.step(self.a_opt)
        self.a_scaler.update()
        return loss_sum, correct

    def step(self, gens: list[torch.Generator], sums: torch.Tensor, arch: bool = True,
             ahead: bool = False) -> tuple[int, int]:
        """One search iteration: a sampled architecture's weight step on a training batch per shard, then
        (unless `arch` is off: the warm-up) the architecture step on a held-out batch per shard; with
        ``arch_first`` the architecture step comes first and the weight step samples the moved
        architecture (DARTS' order; its second order unrolls from this step's weights). Adds
        loss * n and correct counts to `sums` on the device (train loss, train correct, valid loss, valid
        correct); returns the images each step saw. The batches are drawn first (training, then held-out:
        the augmentation generators' order either way), then :meth:`iterate` runs, replayed as a CUDA
        graph with ``--cuda-graphs`` where the iteration is static (:mod:`fastnas.search.graphed`).
        `ahead`: a warm-up step that another warm-up step of the same epoch follows draws that step's hard
        sample too (:meth:`_weight_sample`)."""
        self._draw_ahead = ahead and not arch and self.sampler.hard
        train_batches = [self.batch(st, g) for st, g in zip(self.train_streams, gens, strict=True)]
        valid_batches = [self.batch(st, g) for st, g in zip(self.valid_streams, gens, strict=True)] if arch else None
        (self.graphed if self.graph_scope == ITERATION else self.iterate)(train_batches, valid_batches, sums, arch)
        n_valid = sum(y.shape[0] for _, y in valid_batches) if arch else 0
        return sum(y.shape[0] for _, y in train_batches), n_valid

    def iterate(self, train_batches, valid_batches, sums: torch.Tensor, arch: bool) -> None:
        """The iteration on batches already drawn (see :meth:`step`): samples, updates, metric sums; no
        host reads on the softmax family (what lets a CUDA graph capture it)."""
        if arch and self.cfg.arch_first:  # DARTS' order: the architecture moves, then the weights under it
            self._arch_phase(None, train_batches, valid_batches, sums)
            self._weight_update(self.net.sample(self.sampler), train_batches, sums)
            return
        samples = self._weight_sample()
        self._weight_update(samples, train_batches, sums)
        if arch:  # GDAS' arch_resample: a fresh architecture for every forward pass
            self._arch_phase(None if self.cfg.arch_resample else samples, train_batches, valid_batches, sums)

    def _weight_sample(self) -> dict:
        """The weight step's sample. A hard sample's indices reach the host before its ops can be issued,
        and on a GPU that read waits for every kernel queued before it: the host stops and the GPU runs
        dry once per step. In the warm-up the architecture does not move, so the next step's sample is
        drawn here, before this step's kernels are queued, and its indices are copied to the host while
        they run (:meth:`SuperNet.sample_ahead`); the next step finds them there, and the host keeps a
        step ahead. The same draws from the sampler's generator in the same order (nothing else draws
        from it in a warm-up step): the same samples, to the bit."""
        pending, self._ahead = self._ahead, None
        samples = pending() if pending is not None else self.net.sample(self.sampler)
        if self._draw_ahead:
            self._ahead = self.net.sample_ahead(self.sampler)
        return samples

    def _arch_phase(self, samples, train_batches, valid_batches, sums) -> None:
        """The architecture step on `samples` (None: a fresh draw). Under ``--cuda-graphs`` with the hard
        sampler it is the replayed part (scope ``architecture step``) and draws its own sample, which
        :func:`fastnas.search.graphed.graph_blocker` makes sure is what the eager step would draw; the
        weight step around it stays eager (its ops depend on the draw)."""
        if self.graph_scope == ARCH_STEP:
            self.graphed(train_batches, valid_batches, sums, True)
            return
        samples = self.net.sample(self.sampler) if samples is None else samples
        self._arch_update(samples, valid_batches, train_batches, sums)

    def _static_arch_update(self, train_batches, valid_batches, sums, arch: bool) -> None:
        """The hard sampler's architecture step in its static form: a fresh sample drawn on the device
        (no index read back), every candidate run (``for_arch_step(static=True)``): what a graph replays."""
        samples = self.net.sample(self.sampler, host_index=False)
        samples = {cell: self.sampler.for_arch_step(s, static=True) for cell, s in samples.items()}
        loss, correct = self.arch_step(samples, valid_batches, train_batches)
        sums[2] += loss
        sums[3] += correct

    def _weight_update(self, samples, train_batches, sums) -> None:
        loss, correct = self.weight_step(samples, train_batches)
        sums[0] += loss
        sums[1] += correct

    def _arch_update(self, samples, batches, train_batches, sums) -> None:
        samples = {cell: self.sampler.for_arch_step(s) for cell, s in samples.items()}
        with self._op_graphs_on(self.cfg.arch_order == 1):
            loss, correct = self.arch_step(samples, batches, train_batches)
        sums[2] += loss
        sums[3] += correct

    # ----------------------------------------------------------------- epochs
    def train_epoch(self, stage: int, epoch: int) -> dict:
        cfg = self.cfg
        warm = epoch < cfg.warmup_epochs[stage]
        tau = self.temperature(stage, epoch)
        self.sampler.set_temperature(tau)
        p_skip = skip_dropout_rate(cfg.skip_dropout[stage], epoch, cfg.epochs[stage], cfg.warmup_epochs[stage])
        self.net.set_skip_dropout(p_skip)
        self.net.train()
        steps = self.steps_per_epoch()
        lr = self.w_opt.param_groups[0]["lr"]  # this epoch's (the scheduler steps at its end)
        sums = torch.zeros(4, device=self.device)  # train loss*n, train correct, valid loss*n, valid correct
        if self.graphed is not None:  # this epoch's lr, temperature, skip dropout and sums: a new graph
            self.graphed.reset()
        n_train = n_valid = 0
        # Augmentation draws from per-shard generators seeded by (seed, stage, epoch, shard): the same
        # whatever the process layout, and nothing to carry in the checkpoint.
        # They live where the images do, so a GPU draws crops and flips without a host round trip.
        gens = [torch.Generator(self.train_data.images.device).manual_seed(
                cfg.seed * 1_000_003 + stage * 10_007 + epoch * 101 + r) for r in self.shards]
        t0 = time.perf_counter()
        bar = progress_bar(steps, f"stage {stage + 1} epoch {epoch + 1}", enabled=self.rank == 0)
        for i in range(steps):
            self.global_step += 1
            if self.fault_step is not None and self.global_step >= self.fault_step:
                os._exit(3)  # test hook (FASTNAS_FAULT): this process dies without a word
            n_t, n_v = self.step(gens, sums, arch=not warm, ahead=warm and i < steps - 1)
            n_train, n_valid = n_train + n_t, n_valid + n_v
            bar.update(1)
        bar.close()
        self.w_sched.step()
        s = distributed.all_reduce_(sums).tolist()
        n_train *= self.world_size
        n_valid *= self.world_size
        probs = self.net.probabilities(self.sampler)
        expected = None
        if self.budget is not None:
            with torch.no_grad():
                expected = self.budget.expected(self.net, self.sampler)
        entropy = {cell: float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()) for cell, p in probs.items()}
        return {
            "stage": stage + 1, "epoch": epoch + 1, "warmup": warm,
            "train_loss": s[0] / n_train, "train_acc": s[1] / n_train,
            "valid_loss": s[2] / n_valid if n_valid else None, "valid_acc": s[3] / n_valid if n_valid else None,
            "tau": tau, "skip_dropout": p_skip, "lr": lr, "arch_lr": self.a_opt.param_groups[0]["lr"],
            "entropy_normal": entropy["normal"], "entropy_reduce": entropy["reduce"],
            "entropy_max": math.log(probs["normal"].shape[-1]),
            "epoch_time_s": time.perf_counter() - t0, "steps": steps,
            "expected_cost": None if expected is None else float(expected),
            "cost_target": None if self.budget is None else self.budget.target,
            "genotype": str(self.derive()),
            "op_probabilities": {cell: {"primitives": self.net.edge_primitives[cell], "p": p.tolist()}
                                 for cell, p in probs.items()},
            **mean_op_probabilities(probs, self.net.edge_primitives),
        }

    def derive(self) -> Genotype:
        """The genotype the architecture gives now, under the skip and parameter-free caps."""
        return derive_genotype(self.net, self.max_skip(), self.sampler, max_param_free=self.cfg.max_param_free)

    def max_skip(self):
        return self.cfg.max_skip_or_none()

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION, "kind": "search", "config": cfglib.to_dict(self.cfg),
            "stage": self.stage, "epoch": self.epoch, "edge_primitives": self.edge_primitives,
            "model": self.net.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
            "w_sched": self.w_sched.state_dict(), "w_scaler": self.w_scaler.state_dict(),
            "a_scaler": self.a_scaler.state_dict(), "sampler": self.sampler.state_dict(),
            "train_streams": [st.state_dict() for st in self.train_streams],
            "valid_streams": [st.state_dict() for st in self.valid_streams],
            "sampler_generator": self.sampler_generator.get_state(), "global_step": self.global_step,
            "rng": rng_state(), "stage_genotypes": self.stage_genotypes, "elapsed": self.elapsed,
            "world_size": self.world_size * self.cfg.accumulate,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.stage, self.epoch = state["stage"], state["epoch"]
            self.edge_primitives = state["edge_primitives"]
            self.stage_genotypes = state["stage_genotypes"]
            self.elapsed = state["elapsed"]
            self.build_stage(self.stage)
            self.net.load_state_dict(state["model"])
            self.w_opt.load_state_dict(state["w_opt"])
            self.a_opt.load_state_dict(state["a_opt"])
            self.w_sched.load_state_dict(state["w_sched"])
            self.w_scaler.load_state_dict(state["w_scaler"])
            self.a_scaler.load_state_dict(state["a_scaler"])
            self.sampler.load_state_dict(state["sampler"])
            saved_shards = len(state["train_streams"])
            for streams, key in ((self.train_streams, "train_streams"), (self.valid_streams, "valid_streams")):
                for i, st in enumerate(streams):
                    # Another process layout: every shard restarts the pass it was in.
                    st.load_state_dict(state[key][i % saved_shards])
            self.sampler_generator.set_state(state["sampler_generator"].to(self.sampler_generator.get_state().device))
            self.global_step = state["global_step"]
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RunError(f"checkpoint does not fit this run: {type(exc).__name__}: {str(exc)[:200]}") from None

    def checkpoint(self) -> None:
        self.run_dir.save_checkpoint(self.state_dict())

    # ----------------------------------------------------------------- the run
    def run(self, resumed: bool = False) -> Genotype:
        cfg = self.cfg
        if self.net is None:
            self.build_stage(self.stage)
        # The whole run's bar (epochs, ETA) above each epoch's bar (steps); plain log lines off a terminal.
        run_bar = progress_bar(sum(cfg.epochs), "search", enabled=self.rank == 0, whole_run=True,
                               initial=sum(cfg.epochs[:self.stage]) + self.epoch)
        try:
            self._run_stages(resumed, run_bar)
        finally:
            run_bar.close()
        final = self.derive()
        if self.budget is not None:  # over the budget: the best genotype within it, or smaller channels
            # the fit trades the derivation's own edge scores (with PC-DARTS' betas, when on)
            scores = edge_scores(self.net, self.net.probabilities(self.sampler))
            final, self.budget_report = self.budget.fit(final, scores, self.net.edge_primitives, self.max_skip(),
                                                        cfg.budget_fit, cfg.max_param_free)
        for line in budget_report_lines(self.budget_report):
            self.run_dir.log(line)
        return final

    def _run_stages(self, resumed: bool, run_bar) -> None:
        """Train the remaining epochs of every stage, pruning between stages."""
        cfg, log = self.cfg, self.run_dir.log
        while self.stage < cfg.num_stages:
            stage = self.stage
            if self.epoch == 0 and not resumed:
                log(f"stage {stage + 1}/{cfg.num_stages}: {cfg.cells[stage]} cells, {cfg.channels[stage]} channels, "
                    f"{len(self.edge_primitives['normal'][0])} ops per edge, skip dropout {cfg.skip_dropout[stage]}, "
                    f"{sum(p.numel() for p in self.net.weight_parameters()):,} weights")
            resumed = False
            while self.epoch < cfg.epochs[stage]:
                t0 = time.perf_counter()
                row = self.train_epoch(stage, self.epoch)
                self.epoch += 1
                self.elapsed += time.perf_counter() - t0
                # Checkpoint first: metrics past the checkpoint are dropped on resume.
                t1 = time.perf_counter()
                self.checkpoint()
                # the search time counts the checkpoint too (the one just written holds the time before it)
                self.elapsed += time.perf_counter() - t1
                row["elapsed_s"] = self.elapsed
                # the whole epoch: its steps, the derivation and metrics after them, its checkpoint
                row["epoch_wall_s"] = time.perf_counter() - t0
                step = sum(cfg.epochs[:stage]) + self.epoch
                self.run_dir.log_metrics(row, step=step)
                valid = (f"valid loss {row['valid_loss']:.3f} acc {row['valid_acc']:.3f}"
                         if row["valid_loss"] is not None else "warm-up")
                log(f"stage {stage + 1} epoch {self.epoch}/{cfg.epochs[stage]}: train loss {row['train_loss']:.3f} "
                    f"acc {row['train_acc']:.3f}, {valid}, tau {row['tau']:.2f}, skip dropout "
                    f"{row['skip_dropout']:.3f}, entropy {row['entropy_normal']:.3f}/{row['entropy_max']:.3f}, "
                    f"{self._describe_cost(row)}{row['epoch_time_s']:.1f}s")
                run_bar.update(1)
            self.finish_stage(stage)

    def _describe_cost(self, row: dict) -> str:
        return "" if self.budget is None else self.budget.describe(row["expected_cost"])

    def _continue_from(self, net, w_opt, a_opt, w_sched) -> None:
        """DrNAS' progressive learning: the new stage's supernet takes the old one's weights (widened by
        net2wider), alphas and optimizer state, and the learning rate goes on along one cosine."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.stage)  # resumes redo it alike
        maps = carry_over(net, self.net, generator)
        carry_optimizer(w_opt, self.w_opt, net, self.net, maps)
        carry_optimizer(a_opt, self.a_opt, net, self.net, maps)
        self.w_sched.load_state_dict(w_sched.state_dict())
        for new, old in zip(self.w_opt.param_groups, w_opt.param_groups, strict=True):
            new["lr"], new["initial_lr"] = old["lr"], old["initial_lr"]
        self.run_dir.log(f"stage {self.stage + 1}: the same network goes on: {len(maps)} parameters carried over "
                         f"(partial channels K={self.cfg.stage_partial_channels(self.stage)})", echo=False)

    def finish_stage(self, stage: int) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        geno = self.derive()
        stats = cell_stats(geno, derive_genotype(self.net, None, self.sampler))  # both caps off
        derived = evaluate_derived(self.net, geno, self.train_data, self.valid_data, cfg.derived_eval_images,
                                   cfg.batch_size, self.device, self.memory_format, self.autocast)
        entry = {"stage": stage + 1, "genotype": geno.to_dict(), "text": str(geno), **stats, **derived}
        self.stage_genotypes.append(entry)
        self.run_dir.write_json(f"genotype_stage{stage + 1}.json", geno.to_dict())
        self.run_dir.log(f"stage {stage + 1} genotype: {geno}")
        acc = f"derived cell accuracy {derived['derived_acc']:.3f} (eval mode, held-out half); " \
            if derived.get("derived_acc") is not None else ""
        free_cap = (f", the parameter-free cap {stats['param_free_removed_by_cap']} (the architecture itself "
                    f"prefers {stats['uncapped_normal_param_free']})" if cfg.max_param_free >= 0 else "")
        self.run_dir.log(f"stage {stage + 1}: {acc}normal cell has {stats['normal_skips']} skip(s), "
                         f"{stats['normal_param_free']} parameter-free op(s) of 8; the skip cap removed "
                         f"{stats['skips_removed_by_cap']}{free_cap}")
        if cfg.plots and self.run_dir.enabled:
            try:
                plots.search_plots(self.run_dir.path, self.stage_genotypes)
            except Exception as exc:  # a picture is a convenience: report, don't fail the search
                self.run_dir.log(f"warning: plots not drawn: {type(exc).__name__}: {exc}")
        if stage + 1 < cfg.num_stages:
            # P-DARTS keeps 'none' through the stages by its probability; only derivation excludes it.
            self.edge_primitives = prune_primitives(self.net, cfg.ops_kept[stage + 1], sampler=self.sampler)
            self.stage, self.epoch = stage + 1, 0
            old = (self.net, self.w_opt, self.a_opt, self.w_sched)
            self.build_stage(self.stage)
            if cfg.stage_transition == "continue":
                self._continue_from(*old)
            self._count_stage_end(entry, t0)
            self.checkpoint()
        else:
            self.stage = cfg.num_stages
            self._count_stage_end(entry, t0)

    def _count_stage_end(self, entry: dict, t0: float) -> None:
        """A stage's end (its derived cell scored, plots, pruning, the next supernet built) counts in the
        search time; its seconds go with the stage's genotype (``finish_s`` in summary.json)."""
        entry["finish_s"] = time.perf_counter() - t0
        self.elapsed += entry["finish_s"]


def temperature_schedule(cfg: SearchConfig) -> TemperatureSchedule | None:
    """The stage temperature schedule the sampler asks for: Gumbel samplers anneal (GDAS: 10 -> 0.1 unless
    set); softmax uses none (tau 1, DARTS / P-DARTS) unless tau_start is set; Dirichlet never has one."""
    kind = sampler_class(cfg.sampler).temperature
    if kind == "none" or (kind == "optional" and cfg.tau_start is None and cfg.tau_end is None):
        return None
    start = cfg.tau_start if cfg.tau_start is not None else (10.0 if kind == "annealed" else cfg.tau_end)
    end = cfg.tau_end if cfg.tau_end is not None else (0.1 if kind == "annealed" else start)
    return TemperatureSchedule(start, end, cfg.tau_schedule)
