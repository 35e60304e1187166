"""S2 progressive sampled search: ``python -m fastnas.search``.

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
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastnas import arch_grad, distributed, plots
from fastnas import config as cfglib
from fastnas.config import ConfigError, RunOptions, SGDOptions, opt
from fastnas.cost import CostPenalty, make_penalty, parse_amount
from fastnas.data import BatchStream, augment, load_dataset, normalize, split_train
from fastnas.genotype import FIXED_REDUCTION_CELLS, Genotype
from fastnas.primitives import PRIMITIVES, is_primitive
from fastnas.runs import (
    AMP_DTYPES,
    RunDir,
    RunError,
    amp_context,
    cli_main,
    default_run_dir,
    load_checkpoint,
    progress_bar,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from fastnas.sampler import SAMPLERS, GumbelHardSampler, Sample, TemperatureSchedule, make_sampler, sampler_class
from fastnas.supernet import SuperNet, cell_stats, derive_genotype, genotypes_by_skip_count, prune_primitives

CHECKPOINT_VERSION = 1


@dataclass
class SearchConfig(SGDOptions, RunOptions):
    """All options of a search (see ``python -m fastnas.search --help``)."""

    preset: str = opt("progressive", "preset: progressive (default: P-DARTS stages + GDAS sampler), pdarts, patent, "
                      "darts, darts2, pcdarts, gdas, drnas (each paper's CIFAR-10 recipe), quick (learns in "
                      "minutes on a CPU) or smoke (seconds, CI)",
                      choices=["progressive", "pdarts", "patent", "darts", "darts2", "pcdarts", "gdas", "drnas",
                               "quick", "smoke"])
    train_portion: float = opt(0.5, "share of the training set for weight steps; the rest trains the architecture",
                               gt=0, lt=1)
    # stages
    cells: list[int] = opt([5, 11, 17], "cells (layers) of the supernet, per stage", ge=1)
    channels: list[int] = opt([16, 16, 16], "initial channels of the supernet, per stage", ge=1)
    ops_kept: list[int] = opt([8, 5, 3], "candidate ops per edge, per stage (the first = all primitives)", ge=1)
    skip_dropout: list[float] = opt([0.0, 0.4, 0.7], "dropout on skip connections, per stage", ge=0, lt=1)
    epochs: list[int] = opt([25, 25, 25], "epochs per stage", ge=1)
    warmup_epochs: list[int] = opt([10, 10, 10], "epochs per stage that train weights only", ge=0)
    primitives: list[str] = opt(list(PRIMITIVES), "candidate ops of the first stage")
    # sampler
    sampler: str = opt("gumbel-hard", "gumbel-hard, gumbel-soft, softmax or dirichlet", choices=list(SAMPLERS))
    tau_start: float | None = opt(None, "temperature at the first search epoch of a stage (default: 10 for the "
                                        "Gumbel samplers; softmax uses 1 unless given; dirichlet takes none)", gt=0)
    tau_end: float | None = opt(None, "temperature at the last epoch of a stage (default: 0.1 for the Gumbel "
                                      "samplers; softmax: tau_start)", gt=0)
    tau_schedule: str = opt("linear", "temperature schedule over the search epochs of a stage (the warm-up "
                            "stays at tau_start)", choices=["linear", "exponential", "constant"])
    arch_resample: bool = opt(True, "draw a fresh architecture for the architecture step (GDAS: a sample per "
                                    "forward pass); off: score the path the weight step just trained")
    straight_through: str = opt("all", "gumbel-hard's architecture gradient: all (every candidate runs in the "
                                "architecture step, weighted by the one-hot sample: each op is scored by its "
                                "own output, Jang et al.'s estimator) or sampled (GDAS' shortcut: only the "
                                "sampled op runs; cheaper, but blind to what the others compute)",
                                choices=list(GumbelHardSampler.STRAIGHT_THROUGH))
    max_skip: int = opt(2, "most skip connections in the derived normal cell (-1: no cap)", ge=-1)
    # method mechanisms (DARTS, PC-DARTS, DrNAS)
    arch_order: int = opt(1, "architecture gradient: 1 first order, 2 DARTS' second order (one-step unrolled "
                             "weights, finite-difference Hessian-vector product)", choices=[1, 2])
    partial_channels: list[int] = opt([1], "PC-DARTS: 1/K of the channels go through the candidate ops, the rest "
                                           "bypass them; one K for every stage or one per stage (1: off)", ge=1)
    edge_norm: bool = opt(False, "PC-DARTS edge normalization: a softmax weight per incoming edge, also "
                                 "multiplied into the derivation's edge scores")
    fixed_reduction: str | None = opt(None, "a hand-designed reduction cell instead of a searched one: gdas_frc "
                                            "(GDAS' FRC, the setting of its best CIFAR-10 result)")
    dirichlet_anchor: float = opt(0.0, "DrNAS: weight of the KL of the Dirichlet to its Dirichlet(1) prior in "
                                       "the architecture loss (dirichlet sampler only; 0: off)", ge=0)
    # weight optimizer: batch_size, lr, lr_min, momentum, weight_decay, grad_clip (config.SGDOptions)
    # architecture optimizer
    arch_lr: float = opt(3e-4, "Adam learning rate of the architecture parameters (GDAS 3e-4; P-DARTS 6e-4)", ge=0)
    arch_travel: float = opt(0.0, "if > 0, set each stage's arch lr to arch_travel / (its architecture steps): "
                                  "Adam moves each alpha by about lr per step, so this fixes how far the "
                                  "architecture can move in a stage whatever the budget (0: use arch_lr)", ge=0)
    arch_grad_clip: float = opt(5.0, "gradient-norm clip of the architecture step (P-DARTS: 5; 0: off)", ge=0)
    arch_betas: list[float] = opt([0.5, 0.999], "Adam betas of the architecture parameters", ge=0, lt=1)
    arch_weight_decay: float = opt(1e-3, "Adam weight decay of the architecture parameters", ge=0)
    derived_eval_images: int = opt(10000, "held-out images scoring the derived cell inside the supernet at the end "
                                          "of each stage (0: skip)", ge=0)
    plots: bool = opt(True, "write PNG plots (cells, op probabilities, curves) into the run directory")
    # budget: a cost of the evaluation network in the architecture loss (one target at a time)
    target_params: str | None = opt(None, "parameter budget of the evaluation network, e.g. 2.5M")
    target_flops: str | None = opt(None, "FLOPs budget (multiply-adds per image) of the evaluation network, e.g. 600M")
    target_latency_ms: float | None = opt(None, "latency budget (ms per batch) of the evaluation network on "
                                                "--latency-device", gt=0)
    cost_penalty: str = opt("absolute", "form of the cost term: linear (ProxylessNAS), absolute (TuNAS) or log "
                            "(FBNet)", choices=list(CostPenalty.FORMS))
    cost_strength: float = opt(1.0, "weight of the cost term (the cost is taken relative to the target)", ge=0)
    budget_fit: str = opt("exchange", "when the derived network is over the target: exchange ops for cheaper "
                          "ones (least probability lost per unit of cost), shrink the evaluation channels, "
                          "or only report", choices=["exchange", "channels", "report"])
    eval_channels: int = opt(36, "initial channels of the evaluation network the costs refer to", ge=1)
    eval_layers: int = opt(20, "cells of the evaluation network the costs refer to", ge=3)
    latency_device: str = opt("cpu", "where latency is measured: cpu or cuda[:N]")
    latency_batch: int = opt(1, "batch size of the latency measurements", ge=1)
    latency_dtype: str = opt("float32", "dtype of the latency measurements",
                             choices=["float32", "float16", "bfloat16"])
    latency_cache: str | None = opt(None, "latency lookup-table file (default ~/.cache/fastnas/latency.json)")
    # runtime
    accumulate: int = opt(1, "shards per process, gradients averaged over them: 1 process with --accumulate N "
                             "computes what N processes compute", ge=1)

    @property
    def num_stages(self) -> int:
        return len(self.cells)

    def stage_partial_channels(self, stage: int) -> int:
        """K of the partial channel connections in `stage` (one value serves every stage)."""
        ks = self.partial_channels
        return ks[0] if len(ks) == 1 else ks[stage]

    _TARGETS = (("params", "target_params"), ("flops", "target_flops"), ("latency", "target_latency_ms"))

    def _given_targets(self) -> list[tuple[str, str]]:
        """(metric, option name) of every budget set."""
        return [(m, name) for m, name in self._TARGETS if getattr(self, name) is not None]

    @property
    def budget(self) -> tuple[str, float] | None:
        """(metric, target) of the cost budget, or None."""
        given = self._given_targets()
        if not given:
            return None
        metric, name = given[0]
        return metric, parse_amount(getattr(self, name), name)

    def validate(self) -> None:
        n = len(self.cells)
        if n < 1:
            raise ConfigError("cells: at least one stage is needed")
        if len(self.partial_channels) not in (1, n):
            raise ConfigError(f"partial_channels has {len(self.partial_channels)} entries: give one K for every "
                              f"stage or one per stage ({n})")
        for name in ("channels", "ops_kept", "skip_dropout", "epochs", "warmup_epochs"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"{name} has {len(getattr(self, name))} entries but cells has {n}: one per stage is needed"
                )
        unknown = [p for p in self.primitives if not is_primitive(p)]
        if unknown:
            raise ConfigError(f"primitives: unknown op(s) {', '.join(unknown)}")
        if len(set(self.primitives)) != len(self.primitives):
            raise ConfigError(f"primitives: duplicates in {self.primitives}")
        if all(p == "none" for p in self.primitives):
            raise ConfigError("primitives: the derived cell needs at least one op other than 'none'")
        if "none" in self.primitives and min(self.ops_kept) < 2:
            raise ConfigError(f"ops_kept {self.ops_kept}: with 'none' among the candidates every stage must keep "
                              ">= 2 ops (pruning may keep 'none', which the derived cell cannot use)")
        if self.ops_kept[0] > len(self.primitives):
            raise ConfigError(
                f"ops_kept[0]={self.ops_kept[0]} is larger than the {len(self.primitives)} candidate primitives"
            )
        for s in range(n):
            if s and self.ops_kept[s] > self.ops_kept[s - 1]:
                raise ConfigError(
                    f"ops_kept: stage {s + 1} keeps {self.ops_kept[s]} ops, more than the "
                    f"{self.ops_kept[s - 1]} candidates left by stage {s}"
                )
            if self.warmup_epochs[s] > self.epochs[s]:
                raise ConfigError(f"warmup_epochs: stage {s + 1} has {self.warmup_epochs[s]} warm-up epochs of "
                                  f"{self.epochs[s]}")
            k = self.stage_partial_channels(s)
            if self.channels[s] % k:
                raise ConfigError(f"partial_channels: stage {s + 1} K={k} must divide its "
                                  f"{self.channels[s]} channels")
        if self.ops_kept[0] < len(self.primitives):
            raise ConfigError(
                f"ops_kept[0]={self.ops_kept[0]} must equal the number of primitives ({len(self.primitives)}); "
                "set --primitives to choose the first stage's candidates"
            )
        if sampler_class(self.sampler).temperature == "none" and (self.tau_start or self.tau_end):
            raise ConfigError(f"sampler {self.sampler} takes no temperature: leave tau_start and tau_end unset")
        targets = [name for _, name in self._given_targets()]
        if len(targets) > 1:
            raise ConfigError(f"one budget at a time: {' and '.join(targets)} are both set")
        _ = self.budget  # parses the target: a one-line error for 0, negatives or text
        if self.fixed_reduction is not None:
            if self.fixed_reduction not in FIXED_REDUCTION_CELLS:
                raise ConfigError(f"fixed_reduction must be one of {', '.join(FIXED_REDUCTION_CELLS)}, "
                                  f"got {self.fixed_reduction!r}")
            bad = [c for c in self.channels if (2 * c) % 8]
            if bad:
                raise ConfigError(f"fixed_reduction {self.fixed_reduction}: channels {bad} give reduction cells "
                                  "whose width is not a multiple of 8 (its grouped convolutions need it)")
        if self.dirichlet_anchor > 0 and self.sampler != "dirichlet":
            raise ConfigError(f"dirichlet_anchor is DrNAS' regulariser of the dirichlet sampler, not {self.sampler}")
        if self.arch_order == 2 and self.amp == "fp16":
            raise ConfigError("arch_order 2 does not run under --amp fp16 (no loss scaling through the "
                              "unrolled step); use bf16 or off")
        if not (self.latency_device == "cpu" or self.latency_device.startswith("cuda")):
            raise ConfigError(f"latency_device must be cpu or cuda[:N], got {self.latency_device!r}")
        if len(self.arch_betas) != 2:
            raise ConfigError(f"arch_betas must be two numbers in [0, 1), got {self.arch_betas}")
        self.validate_run_options()


_ONE_STAGE = {"cells": [8], "channels": [16], "ops_kept": [8], "skip_dropout": [0.0], "partial_channels": [1],
              "max_skip": -1}

PRESETS: dict[str, dict] = {
    # The default, the source's method: P-DARTS' stages (cells 5/11/17, C=16, ops 8/5/3, skip dropout
    # 0/0.4/0.7, 25 epochs of which 10 warm-up) with GDAS' sampler: hard Gumbel, arch lr 3e-4, tau 10 -> 0.1.
    "progressive": {},
    # P-DARTS itself (chenxin061/pdarts train_search.py): softmax mixture (no temperature), arch lr 6e-4.
    "pdarts": {"sampler": "softmax", "arch_lr": 6e-4},
    # The source's literal reading of "[9, 13, 19]" as per-stage widths.
    "patent": {"channels": [9, 13, 19]},
    # The single-stage methods: one supernet of 8 cells, C=16, all 8 ops, no skip cap, no stage dropout.
    # DARTS (quark0/darts cnn/train_search.py): 50 epochs, batch 64, SGD 0.025 -> 0.001, Adam 3e-4
    # (betas 0.5/0.999, wd 1e-3), softmax, arch step from the first epoch, no arch-gradient clip.
    "darts": {**_ONE_STAGE, "epochs": [50], "warmup_epochs": [0], "batch_size": 64, "lr": 0.025, "lr_min": 0.001,
              "sampler": "softmax", "arch_lr": 3e-4, "arch_grad_clip": 0.0},
    # DARTS second order: the same, with the unrolled architecture gradient (--unrolled).
    "darts2": {**_ONE_STAGE, "epochs": [50], "warmup_epochs": [0], "batch_size": 64, "lr": 0.025,
               "lr_min": 0.001, "sampler": "softmax", "arch_lr": 3e-4, "arch_grad_clip": 0.0, "arch_order": 2},
    # PC-DARTS (yuhuixu1993/PC-DARTS train_search.py): K=4, edge normalization, batch 256, SGD 0.1 -> 0,
    # Adam 6e-4, architecture from epoch 15 of 50.
    "pcdarts": {**_ONE_STAGE, "epochs": [50], "warmup_epochs": [15], "batch_size": 256, "lr": 0.1,
                "lr_min": 0.0, "sampler": "softmax", "arch_lr": 6e-4, "arch_grad_clip": 0.0,
                "partial_channels": [4], "edge_norm": True},
    # GDAS (D-X-Y/AutoDL-Projects, GDAS on the DARTS space): hard Gumbel, tau 10 -> 0.1 over 240 epochs,
    # SGD 0.025 -> 0.001, batch 64, Adam 3e-4. Add --fixed-reduction gdas_frc for its FRC setting.
    # GDAS runs only the sampled op in the architecture step too (straight_through "sampled").
    "gdas": {**_ONE_STAGE, "epochs": [240], "warmup_epochs": [0], "batch_size": 64, "lr": 0.025, "lr_min": 0.001,
             "sampler": "gumbel-hard", "arch_lr": 3e-4, "arch_grad_clip": 0.0, "straight_through": "sampled"},
    # DrNAS (xiangning-chen/DrNAS DARTS-space/train_search.py, progressive): 20 cells, C=36, two stages of 25
    # epochs (10 warm-up), partial channels K 6 -> 4, ops 8 -> 4, batch 64, SGD 0.1, Adam 6e-4, the
    # Dirichlet sampler with the KL anchor (reg_scale 1e-3).
    "drnas": {"cells": [20, 20], "channels": [36, 36], "ops_kept": [8, 4], "skip_dropout": [0.0, 0.0],
              "epochs": [25, 25], "warmup_epochs": [10, 10], "partial_channels": [6, 4], "batch_size": 64,
              "lr": 0.1, "lr_min": 0.0, "sampler": "dirichlet", "arch_lr": 6e-4, "arch_grad_clip": 0.0,
              "dirichlet_anchor": 1e-3, "max_skip": -1},
    # About 6 minutes on a 2-core CPU, on the embedded data, and the supernet learns. Measured (see
    # benchmarks/README.md): a single-path (gumbel-hard) supernet does not train in the few hundred steps
    # such a budget holds, while softmax trains every candidate each step and learns like a fixed
    # network, so the CPU preset uses softmax. Step costs on a CPU are per op call, not per channel, so
    # width is cheap and depth/ops are not: 3/4/5 cells against 8/5/3 ops keep each stage about as costly.
    # The arch lr follows from the budget (arch_travel / architecture steps).
    "quick": {
        "cells": [3, 4, 5], "channels": [8, 8, 8], "epochs": [3, 3, 3], "warmup_epochs": [2, 2, 2],
        "batch_size": 32, "embedded_size": 1000, "lr": 0.05, "sampler": "softmax", "arch_travel": 2.0,
        "derived_eval_images": 500, "eval_channels": 8, "eval_layers": 5,  # the quick retraining's network
    },
    # Seconds on a laptop CPU on the embedded data; still all three stages, pruning and derivation.
    "smoke": {
        "cells": [3, 4, 5], "channels": [4, 4, 6], "epochs": [2, 2, 2], "warmup_epochs": [1, 1, 1],
        "batch_size": 32, "embedded_size": 768, "arch_lr": 3e-3,
        "derived_eval_images": 256, "eval_channels": 8, "eval_layers": 5,  # the smoke retraining's network
    },
}


def mean_op_probabilities(probs: dict[str, torch.Tensor], edge_primitives: dict[str, list[list[str]]]) -> dict:
    """p_<cell>_<op>: each op's probability averaged over the cell's edges that still offer it. Scalar
    columns for metrics.csv and TensorBoard (the per-edge probabilities are in metrics.jsonl)."""
    out = {}
    for cell, p in probs.items():
        sums: dict[str, list[float]] = {}
        for e, names in enumerate(edge_primitives[cell]):
            for k, name in enumerate(names):
                sums.setdefault(name, []).append(float(p[e, k]))
        out.update({f"p_{cell}_{name}": sum(v) / len(v) for name, v in sums.items()})
    return out


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
        self.elapsed = 0.0
        self.net = None
        self.fault_step = distributed.fault_step(rank)
        self.budget_report = None
        self.global_step = 0
        # The architecture loss's cost term (a no-op without a budget); refuses unreachable targets.
        image_size = cfg.image_size if cfg.dataset == "folder" else 32
        self.penalty = make_penalty(cfg, image_size, self.num_classes, cfg.primitives)
        # everything added to the architecture's cross-entropy: the budget, DrNAS' anchor
        self.arch_terms = [self.penalty, *arch_grad.arch_terms(cfg)]
        self.arch_gradient = arch_grad.make_arch_gradient(cfg.arch_order)

    # ----------------------------------------------------------------- building
    def build_stage(self, stage: int) -> None:
        cfg = self.cfg
        self.net = SuperNet(
            channels=cfg.channels[stage], layers=cfg.cells[stage], num_classes=self.num_classes,
            primitives=cfg.primitives, edge_primitives=self.edge_primitives,
            partial_channels=cfg.stage_partial_channels(stage), edge_norm=cfg.edge_norm,
            fixed_reduction=cfg.fixed_reduction,
        ).to(self.device, memory_format=self.memory_format)
        if self.edge_primitives is None:
            self.edge_primitives = self.net.edge_primitives
        self.penalty.bind(self.net.edge_primitives)
        self.model = self.net
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # The architecture parameters are all-reduced by hand (arch step); DDP handles the weights.
            # Unsampled ops get no gradient under gumbel-hard: find_unused_parameters.
            DDP._set_params_and_buffers_to_ignore_for_model(self.net, list(SuperNet.ARCH_NAMES))
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.net, device_ids=ids, find_unused_parameters=True)
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay)
        if cfg.arch_travel > 0:
            arch_steps = max(1, (cfg.epochs[stage] - cfg.warmup_epochs[stage]) * self.steps_per_epoch())
            for group in self.a_opt.param_groups:
                group["lr"] = cfg.arch_travel / arch_steps
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs[stage], eta_min=cfg.lr_min)
        fp16 = self.amp_dtype is torch.float16
        self.w_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.a_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def autocast(self):
        return amp_context(self.device, self.amp_dtype)

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
        self.w_opt.zero_grad(set_to_none=True)
        loss_sum = correct = 0
        for v, (x, y) in enumerate(batches):
            sync = nullcontext() if v == A - 1 or self.model is net else self.model.no_sync()
            with sync:
                with self.autocast():
                    logits = self.model(x, detached)
                    loss = F.cross_entropy(logits.float(), y)
                self.w_scaler.scale(loss / A).backward()
            loss_sum = loss_sum + loss.detach() * y.shape[0]
            correct = correct + (logits.argmax(1) == y).sum()
        params = net.weight_parameters()
        self.w_scaler.unscale_(self.w_opt)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.w_scaler.step(self.w_opt)
        self.w_scaler.update()
        return loss_sum, correct

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
            train_batch = None if train_batches is None else train_batches[v]  # the second order's
            grads, ce, logits = self.arch_gradient.grads(self, samples, (x, y), train_batch, A)
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
            torch.nn.utils.clip_grad_norm_(params, self.cfg.arch_grad_clip)
        self.a_scaler.step(self.a_opt)
        self.a_scaler.update()
        return loss_sum, correct

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
        n_train = n_valid = 0
        # Augmentation draws from per-shard generators seeded by (seed, stage, epoch, shard): the same
        # whatever the process layout, and nothing to carry in the checkpoint.
        gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + stage * 10_007 + epoch * 101 + r)
                for r in self.shards]
        t0 = time.perf_counter()
        bar = progress_bar(steps, f"stage {stage + 1} epoch {epoch + 1}", enabled=self.rank == 0)
        for _ in range(steps):
            self.global_step += 1
            if self.fault_step is not None and self.global_step >= self.fault_step:
                os._exit(3)  # test hook (FASTNAS_FAULT): this process dies without a word
            samples = self.net.sample(self.sampler)
            batches = train_batches = [self.batch(st, g) for st, g in zip(self.train_streams, gens, strict=True)]
            loss, correct = self.weight_step(samples, batches)
            sums[0] += loss
            sums[1] += correct
            n_train += sum(y.shape[0] for _, y in batches)
            if not warm:
                if cfg.arch_resample:  # GDAS: a fresh architecture for every forward pass
                    samples = self.net.sample(self.sampler)
                samples = {cell: self.sampler.for_arch_step(s) for cell, s in samples.items()}
                batches = [self.batch(st, g) for st, g in zip(self.valid_streams, gens, strict=True)]
                loss, correct = self.arch_step(samples, batches, train_batches)
                sums[2] += loss
                sums[3] += correct
                n_valid += sum(y.shape[0] for _, y in batches)
            bar.update(1)
        bar.close()
        self.w_sched.step()
        s = distributed.all_reduce_(sums).tolist()
        n_train *= self.world_size
        n_valid *= self.world_size
        probs = self.net.probabilities(self.sampler)
        with torch.no_grad():
            expected = self.penalty.expected(self.net, self.sampler)
        entropy = {cell: float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()) for cell, p in probs.items()}
        return {
            "stage": stage + 1, "epoch": epoch + 1, "warmup": warm,
            "train_loss": s[0] / n_train, "train_acc": s[1] / n_train,
            "valid_loss": s[2] / n_valid if n_valid else None, "valid_acc": s[3] / n_valid if n_valid else None,
            "tau": tau, "skip_dropout": p_skip, "lr": lr, "arch_lr": self.a_opt.param_groups[0]["lr"],
            "entropy_normal": entropy["normal"], "entropy_reduce": entropy["reduce"],
            "entropy_max": math.log(probs["normal"].shape[-1]),
            "epoch_time_s": time.perf_counter() - t0, "steps": steps,
            "expected_cost": None if expected is None else float(expected), "cost_target": self.penalty.target,
            "genotype": str(derive_genotype(self.net, self.max_skip(), self.sampler)),
            "op_probabilities": {cell: {"primitives": self.net.edge_primitives[cell], "p": p.tolist()}
                                 for cell, p in probs.items()},
            **mean_op_probabilities(probs, self.net.edge_primitives),
        }

    def max_skip(self):
        return None if self.cfg.max_skip < 0 else self.cfg.max_skip

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
        final = derive_genotype(self.net, self.max_skip(), self.sampler)
        # Over the budget: the best genotype within it (or smaller evaluation channels), as configured.
        final, self.budget_report = self.penalty.fit(final, self.net.probabilities(self.sampler),
                                                     self.net.edge_primitives, self.max_skip(), cfg.budget_fit)
        for line in self.penalty.report_lines(self.budget_report):
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
                row["elapsed_s"] = self.elapsed
                # Checkpoint first: metrics past the checkpoint are dropped on resume.
                self.checkpoint()
                step = sum(cfg.epochs[:stage]) + self.epoch
                self.run_dir.log_metrics(row, step=step)
                valid = (f"valid loss {row['valid_loss']:.3f} acc {row['valid_acc']:.3f}"
                         if row["valid_loss"] is not None else "warm-up")
                log(f"stage {stage + 1} epoch {self.epoch}/{cfg.epochs[stage]}: train loss {row['train_loss']:.3f} "
                    f"acc {row['train_acc']:.3f}, {valid}, tau {row['tau']:.2f}, skip dropout "
                    f"{row['skip_dropout']:.3f}, entropy {row['entropy_normal']:.3f}/{row['entropy_max']:.3f}, "
                    f"{self.penalty.describe(row['expected_cost'])}{row['epoch_time_s']:.1f}s")
                run_bar.update(1)
            self.finish_stage(stage)

    def finish_stage(self, stage: int) -> None:
        cfg = self.cfg
        geno = derive_genotype(self.net, self.max_skip(), self.sampler)
        stats = cell_stats(geno, derive_genotype(self.net, None, self.sampler))
        derived = evaluate_derived(self.net, geno, self.train_data, self.valid_data, cfg.derived_eval_images,
                                   cfg.batch_size, self.device, self.memory_format, self.autocast)
        entry = {"stage": stage + 1, "genotype": geno.to_dict(), "text": str(geno), **stats, **derived}
        self.stage_genotypes.append(entry)
        self.run_dir.write_json(f"genotype_stage{stage + 1}.json", geno.to_dict())
        self.run_dir.log(f"stage {stage + 1} genotype: {geno}")
        acc = f"derived cell accuracy {derived['derived_acc']:.3f} (eval mode, held-out half); " \
            if derived.get("derived_acc") is not None else ""
        self.run_dir.log(f"stage {stage + 1}: {acc}normal cell has {stats['normal_skips']} skip(s), "
                         f"{stats['normal_param_free']} parameter-free op(s); the skip cap removed "
                         f"{stats['skips_removed_by_cap']}")
        if cfg.plots and self.run_dir.enabled:
            try:
                plots.search_plots(self.run_dir.path, self.stage_genotypes)
            except Exception as exc:  # a picture is a convenience: report, don't fail the search
                self.run_dir.log(f"warning: plots not drawn: {type(exc).__name__}: {exc}")
        if stage + 1 < cfg.num_stages:
            # P-DARTS keeps 'none' through the stages by its probability; only derivation excludes it.
            self.edge_primitives = prune_primitives(self.net, cfg.ops_kept[stage + 1], sampler=self.sampler)
            self.stage, self.epoch = stage + 1, 0
            self.build_stage(self.stage)
            self.checkpoint()
        else:
            self.stage = cfg.num_stages


def temperature_schedule(cfg: SearchConfig) -> TemperatureSchedule | None:
    """The stage temperature schedule the sampler asks for: Gumbel samplers anneal (GDAS: 10 -> 0.1 unless
    set); softmax uses none (tau 1, DARTS / P-DARTS) unless tau_start is set; Dirichlet never has one."""
    kind = sampler_class(cfg.sampler).temperature
    if kind == "none" or (kind == "optional" and cfg.tau_start is None and cfg.tau_end is None):
        return None
    start = cfg.tau_start if cfg.tau_start is not None else (10.0 if kind == "annealed" else cfg.tau_end)
    end = cfg.tau_end if cfg.tau_end is not None else (0.1 if kind == "annealed" else start)
    return TemperatureSchedule(start, end, cfg.tau_schedule)


@torch.no_grad()
def evaluate_derived(net: SuperNet, genotype: Genotype, train_data, valid_data, images: int, batch_size: int,
                     device, memory_format=torch.contiguous_format, autocast=nullcontext) -> dict:
    """Eval-mode accuracy of the derived cell inside the supernet (its chosen op per kept edge, the rest
    dropped) on the first `images` held-out images. The supernet's BN statistics were gathered over
    sampled paths, so they are first re-estimated for the derived network on as many (un-augmented)
    training images, as one-shot NAS evaluations do; every buffer is restored afterwards."""
    if images <= 0 or len(valid_data) == 0:
        return {"derived_acc": None, "derived_loss": None}
    samples = net.derived_samples(genotype)
    samples = {k: Sample(v.weights.to(device), v.index, True, v.index_list) for k, v in samples.items()}
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    momenta = [m.momentum for m in bns]
    was_training, skip_p = net.training, net.skip_dropout
    try:
        net.set_skip_dropout(0.0)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        n_cal = min(images, len(train_data))
        for i in range(0, n_cal, batch_size):
            x = normalize(train_data.images[i:i + batch_size].to(device), train_data.mean, train_data.std,
                          memory_format=memory_format)
            with autocast():
                net(x, samples, edge_weights=False)
        net.eval()
        n = min(images, len(valid_data))
        loss = correct = 0.0
        for i in range(0, n, batch_size):
            x = normalize(valid_data.images[i:min(n, i + batch_size)].to(device), train_data.mean, train_data.std,
                          memory_format=memory_format)
            y = valid_data.labels[i:min(n, i + batch_size)].to(device)
            with autocast():
                logits = net(x, samples, edge_weights=False).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
        return {"derived_acc": correct / n, "derived_loss": loss / n, "derived_images": n}
    finally:
        net.load_state_dict(saved, strict=False)
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        net.set_skip_dropout(skip_p)
        net.train(was_training)


def write_results(run: RunDir, searcher: Searcher, genotype: Genotype) -> None:
    run.write_text("genotype.json", genotype.to_json() + "\n")
    run.write_text("genotype.txt", str(genotype) + "\n")
    if run.enabled:
        genotype.render(run.path)
        if searcher.budget_report and searcher.cfg.plots:  # the budget may have changed the cells: redraw
            try:
                plots.draw_genotype(genotype, run.path / "cells.png", "final (within the budget)")
            except Exception as exc:  # a picture is a convenience
                run.log(f"warning: cells.png not drawn: {type(exc).__name__}: {exc}")
    # P-DARTS logs the genotype for every skip count 8..0 at the end: the same, as a file to pick from
    by_skips = genotypes_by_skip_count(searcher.net, searcher.sampler)
    run.write_json("genotypes_by_skip_count.json", by_skips)
    for entry in by_skips:
        run.log(f"skip cap {entry['max_skip']} ({entry['skips']} skips): {entry['text']}", echo=False)
    run.write_json("summary.json", {
        "genotype": genotype.to_dict(), "genotype_text": str(genotype), "stages": searcher.stage_genotypes,
        "search_time_s": searcher.elapsed, "config": cfglib.to_dict(searcher.cfg),
        "budget": searcher.budget_report,
    })


def parse_args(argv=None):
    parser = cfglib.make_parser("python -m fastnas.search", "Progressive sampled architecture search (three "
                                "stages by default).", SearchConfig)
    return vars(parser.parse_args(argv))


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


def resume_config(saved: dict, cli: dict) -> SearchConfig:
    """The config of a search being resumed: its saved options, of which the command line may change
    only where and how wide it runs. Options added since the run was saved take the value that goes on
    computing what the run computed."""
    saved = dict(saved)
    saved.setdefault("straight_through", "sampled")  # runs before the option computed GDAS' estimator
    return cfglib.config_for_resume(SearchConfig, saved, cli, ("device", "workers", "dist_timeout", "accumulate"))


def _main(args: dict) -> int:
    resume = args.pop("resume", None)
    overwrite = bool(args.get("overwrite")) if resume else bool(args.pop("overwrite", False))
    if resume:
        run_path = Path(resume)
        state = load_checkpoint(run_path / "checkpoint.pt")
        if state.get("kind") != "search":
            raise RunError(f"{run_path}: checkpoint is not from a search run")
        cfg = resume_config(state["config"], args)
    else:
        cfg = cfglib.build_config(SearchConfig, PRESETS, args, "progressive")
        run_path = Path(cfg.out) if cfg.out else default_run_dir("search")
        state = None
    if cfg.workers:
        torch.set_num_threads(cfg.workers)
    ctx, device_name = distributed.init(cfg.device, cfg.dist_timeout)
    run_path = Path(distributed.broadcast_object(str(run_path)))  # one run directory for all ranks
    try:
        code = _run(cfg, run_path, state, ctx, resolve_device(device_name), overwrite)
        # Leave together: a process tearing its group down while rank 0 still writes can abort gloo.
        distributed.barrier()
        return code
    finally:
        distributed.shutdown(ctx)


def _run(cfg: SearchConfig, run_path: Path, state: dict | None, ctx, device, overwrite: bool = False) -> int:
    seed_everything(cfg.seed, cfg.deterministic)
    # Only rank 0 writes; it owns the directory (a lock) for the run's lifetime.
    run = RunDir(run_path, enabled=ctx.is_main, resume=state is not None, overwrite=overwrite)
    if run.moved_aside:
        run.log(f"--overwrite: the run that was in {run_path} is now in {run.moved_aside}")
    cfg.out = str(run_path)
    if run.enabled:
        cfglib.save_yaml(cfg, run.path / "config.yaml")
    searcher = Searcher(cfg, run, device, rank=ctx.rank, world_size=ctx.world_size)
    if state is not None:
        searcher.load_state_dict(state)
        done = (searcher.stage, searcher.epoch)
        run.truncate_metrics(lambda r: (r["stage"] - 1, r["epoch"]) <= done)
        run.log(f"resumed {run_path} at stage {searcher.stage + 1}, epoch {searcher.epoch}"
                + (f" on {ctx.world_size} processes" if ctx.enabled else "")
                + (f"; changed: {', '.join(cfg._resume_changes)}" if getattr(cfg, "_resume_changes", None) else ""))
    else:
        run.log(f"search: preset {cfg.preset}, sampler {cfg.sampler}, dataset {cfg.dataset}, device {device}, "
                f"run dir {run_path}" + (f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""))
    genotype = searcher.run(resumed=state is not None)
    write_results(run, searcher, genotype)
    if ctx.enabled:  # every rank derives the genotype itself: show that they agree
        print(f"rank {ctx.rank} genotype: {genotype}", flush=True)
    run.log(f"genotype: {genotype}")
    run.log(f"search time {searcher.elapsed:.1f}s; results in {run_path}")
    run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
