"""The options of a search, in groups that check themselves (``check()``, base groups first), and
:class:`SearchConfig`, the flat config a run saves (``config.yaml``) and a checkpoint carries.

Groups: the stages (:class:`Stages`), the sampler (:class:`SamplerOptions`), the architecture optimizer
(:class:`ArchOptimizer`), the method mechanisms (:data:`MECHANISMS`, each in its own module), the search
run's outputs (:class:`SearchOutputs`), and the weight optimizer and run options every run shares.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.infra.options import RunOptions, SGDOptions
from fastnas.search.anchor import Anchor
from fastnas.search.arch_grad import ArchOrder
from fastnas.search.budget import Budget
from fastnas.search.edge_norm import EdgeNorm
from fastnas.search.fixed_reduction import FixedReduction
from fastnas.search.network_form import NetworkForm
from fastnas.search.partial_channels import PartialChannels
from fastnas.space.network import activation_bytes
from fastnas.space.primitives import PRIMITIVES, is_primitive
from fastnas.space.sampler import SAMPLERS, GumbelHardSampler, sampler_class


@dataclass
class Stages:
    """The progressive stages (P-DARTS): per stage the supernet's depth and width, the candidates kept,
    the skip dropout and the epochs."""

    train_portion: float = opt(0.5, "share of the training set for weight steps; the rest trains the architecture",
                               gt=0, lt=1)
    cells: list[int] = opt([5, 11, 17], "cells (layers) of the supernet, per stage", ge=1)
    channels: list[int] = opt([16, 16, 16], "initial channels of the supernet, per stage", ge=1)
    ops_kept: list[int] = opt([8, 5, 3], "candidate ops per edge, per stage (the first = all primitives)", ge=1)
    skip_dropout: list[float] = opt([0.0, 0.4, 0.7], "dropout on skip connections, per stage", ge=0, lt=1)
    epochs: list[int] = opt([25, 25, 25], "epochs per stage", ge=1)
    warmup_epochs: list[int] = opt([10, 10, 10], "epochs per stage that train weights only", ge=0)
    primitives: list[str] = opt(list(PRIMITIVES), "candidate ops of the first stage")
    max_skip: int = opt(2, "most skip connections in the derived normal cell (-1: no cap)", ge=-1)
    max_param_free: int = opt(-1, "most parameter-free ops (skip_connect, pooling, noise) in the derived normal "
                                  "cell: the skip cap's rule (P-DARTS) for all of them, against the collapse to "
                                  "parameter-free ops (RobustDARTS) that the skip cap alone leaves to pooling "
                                  "(-1: no cap)", ge=-1)
    stage_transition: str = opt("rebuild", "between stages: rebuild (P-DARTS: a new supernet, fresh weights and "
                                "architecture, a cosine per stage) or continue (DrNAS: one network; the kept "
                                "candidates keep their weights, widened by net2wider when partial channels "
                                "widen; the alphas, SGD momentum, Adam and one cosine over all stages go on)",
                                choices=["rebuild", "continue"])

    @property
    def num_stages(self) -> int:
        return len(self.cells)

    def check(self) -> None:
        n = len(self.cells)
        if n < 1:
            raise ConfigError("cells: at least one stage is needed")
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
        if self.ops_kept[0] < len(self.primitives):
            raise ConfigError(
                f"ops_kept[0]={self.ops_kept[0]} must equal the number of primitives ({len(self.primitives)}); "
                "set --primitives to choose the first stage's candidates"
            )

    def max_skip_or_none(self) -> int | None:
        """The skip cap for derivation (None: no cap)."""
        return None if self.max_skip < 0 else self.max_skip


@dataclass
class SamplerOptions:
    """The differentiable sampler and its temperature."""

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

    def check(self) -> None:
        if sampler_class(self.sampler).temperature == "none" and (self.tau_start or self.tau_end):
            raise ConfigError(f"sampler {self.sampler} takes no temperature: leave tau_start and tau_end unset")


@dataclass
class ArchOptimizer:
    """Adam on the architecture parameters (DARTS: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3)."""

    arch_lr: float = opt(3e-4, "Adam learning rate of the architecture parameters (GDAS 3e-4; P-DARTS 6e-4)", ge=0)
    arch_travel: float = opt(0.0, "if > 0, set each stage's arch lr to arch_travel / (its architecture steps): "
                                  "Adam moves each alpha by about lr per step, so this fixes how far the "
                                  "architecture can move in a stage whatever the budget (0: use arch_lr)", ge=0)
    arch_grad_clip: float = opt(5.0, "gradient-norm clip of the architecture step (P-DARTS: 5; 0: off)", ge=0)
    arch_betas: list[float] = opt([0.5, 0.999], "Adam betas of the architecture parameters", ge=0, lt=1)
    arch_weight_decay: float = opt(1e-3, "Adam weight decay of the architecture parameters", ge=0)

    # --batch-size scales the Adam rate by the square root (SGDOptions.resolve; with arch_travel > 0 the
    # rate follows the stage's step count instead and this scaling has no effect).
    LR_BATCH_EXPONENTS: typing.ClassVar[dict[str, float]] = {"arch_lr": 0.5}

    def check(self) -> None:
        if len(self.arch_betas) != 2:
            raise ConfigError(f"arch_betas must be two numbers in [0, 1), got {self.arch_betas}")


@dataclass
class SearchOutputs:
    """What a search measures and writes beyond the genotype, and how its work is split."""

    derived_eval_images: int = opt(10000, "held-out images scoring the derived cell inside the supernet at the end "
                                          "of each stage (0: skip)", ge=0)
    plots: bool = opt(True, "write PNG plots (cells, op probabilities, curves) into the run directory")
    accumulate: int = opt(1, "shards per process, gradients averaged over them: 1 process with --accumulate N "
                             "computes what N processes compute", ge=1)
    cuda_graphs: bool = opt(False, "replay each search iteration as one CUDA graph, captured once per epoch, where "
                                   "the iteration is static (softmax, dirichlet, gumbel-soft samplers; one process; "
                                   "no fp16); gumbel-hard: its architecture step alone (straight_through all), the "
                                   "weight step eager; elsewhere the log says why it runs eagerly")
    op_graphs: bool = opt(False, "gumbel-hard: replay each sampled candidate convolution of the weight step as its "
                                 "own CUDA graphs (forward, backward), every candidate captured when a stage starts: "
                                 "a few launches per edge instead of ~25 (GPU, one process; add --cuda-graphs for "
                                 "the architecture step)")


# The method mechanisms the searcher asks for supernet arguments and architecture-loss terms.
MECHANISMS = (PartialChannels, EdgeNorm, FixedReduction, NetworkForm, ArchOrder, Anchor, Budget)

PRESET_NAMES = ["progressive", "pdarts", "patent", "darts", "darts2", "pcdarts", "gdas", "drnas", "quick", "smoke"]


@dataclass
class SearchConfig(SearchOutputs, Budget, Anchor, ArchOrder, NetworkForm, FixedReduction, EdgeNorm, PartialChannels,
                   ArchOptimizer, SamplerOptions, Stages, SGDOptions, RunOptions):
    """All options of a search (see ``fastnas search --help``); groups check themselves, RunOptions first."""

    preset: str = opt("progressive", "preset: progressive (default: P-DARTS stages + GDAS sampler), pdarts, patent, "
                      "darts, darts2, pcdarts, gdas, drnas (each paper's CIFAR-10 recipe), quick (learns in "
                      "minutes on a CPU) or smoke (seconds, CI)", choices=PRESET_NAMES)

    def check(self) -> None:
        if self.stage_transition == "continue":
            ks = [self.stage_partial_channels(s) for s in range(len(self.cells))]
            if len(set(self.cells)) > 1 or len(set(self.channels)) > 1:
                raise ConfigError(f"stage_transition continue keeps one network: cells {self.cells} and channels "
                                  f"{self.channels} must be the same in every stage")
            if any(b > a for a, b in zip(ks, ks[1:], strict=False)):
                raise ConfigError(f"stage_transition continue widens the ops (net2wider), never narrows them: "
                                  f"partial_channels {ks} must not grow from stage to stage")
        useful = [p for p in self.primitives if p not in ("none", "skip_connect")]
        if not useful and 0 <= self.max_skip < 8:
            raise ConfigError(f"primitives {self.primitives}: every edge of the derived normal cell would be "
                              f"skip_connect (8 skips), above --max-skip {self.max_skip}: add an operation or "
                              "pass --max-skip -1")
        for s in range(len(self.cells)):  # the largest supernet decides; refuse before building any
            ops = -(-self.ops_kept[s] // self.stage_partial_channels(s))
            self.check_fits(activation_bytes(self.channels[s], self.cells[s], self.image_side, self.batch_size,
                                             ops_per_edge=ops, edges=14),
                            f"stage {s + 1}'s supernet ({self.cells[s]} cells, {self.channels[s]} channels, "
                            f"{self.ops_kept[s]} ops per edge) on {self.image_side}x{self.image_side} images in "
                            f"batches of {self.batch_size}")


def upgrade_saved(saved: dict) -> dict:
    """A saved search config brought up to this version: options added since take the value that goes on
    computing what the run computed."""
    saved = dict(saved)
    saved.setdefault("straight_through", "sampled")  # runs before the option computed GDAS' estimator
    return saved
