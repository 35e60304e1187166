"""The options of a retraining run (:class:`TrainConfig`) and its presets: the DARTS recipe, the study's
CPU budget and a seconds-long smoke run."""

from __future__ import annotations

from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.infra.options import RunOptions, SGDOptions
from fastnas.space.network import activation_bytes


@dataclass
class TrainConfig(SGDOptions, RunOptions):
    """All options of a retraining run (see ``fastnas train --help``)."""

    genotype: str | None = opt(None, "published name, genotype.json, search run dir or DARTS Genotype(...) string")
    preset: str = opt("darts", "darts (the published recipe), quick (the study's CPU budget) or smoke (seconds)",
                      choices=["darts", "quick", "smoke"])
    channels: int = opt(36, "initial channels C", ge=1)
    layers: int = opt(20, "cells", ge=1)
    auxiliary: bool = opt(True, "auxiliary head after 2/3 of the depth")
    auxiliary_weight: float = opt(0.4, "weight of the auxiliary loss", ge=0)
    drop_path: float = opt(0.3, "final drop-path rate (ramped linearly from 0 over training)", ge=0, lt=1)
    cutout: int = opt(16, "cutout square side (0: off)", ge=0)
    epochs: int = opt(600, "training epochs", ge=1)
    # batch_size, lr, lr_min, momentum, weight_decay, grad_clip: config.SGDOptions
    compile: bool = opt(False, "torch.compile the network")
    compile_mode: str = opt("default", "torch.compile mode with --compile: reduce-overhead replays the step's "
                                       "kernels as CUDA graphs (on a GPU; the CPU compiles it as default), "
                                       "max-autotune also tunes the kernels", choices=["default", "reduce-overhead",
                                                                                     "max-autotune"])
    cuda_graphs: bool = opt(False, "replay each training step as one CUDA graph, captured once per epoch (on a "
                                   "GPU, one process, no fp16; elsewhere the log says why it runs eagerly); "
                                   "instead of --compile-mode reduce-overhead, without compiling")
    pin_memory: bool = opt(True, "pinned host memory for batches copied to a GPU")
    export: bool = opt(True, "export the final model (safetensors or state dict, and torch.export)")
    sync_bn: bool = opt(False, "SyncBatchNorm across processes (GPU runs under torchrun)")
    plots: bool = opt(True, "write curves.png (loss, accuracy, learning rate per epoch)")
    report_cost: bool = opt(False, "print the genotype's cost report (parameters, FLOPs; latency with "
                                   "--latency-device) for this network and exit without training")
    latency_device: str | None = opt(None, "with --report-cost: also measure latency on cpu or cuda[:N]")
    latency_batch: int = opt(1, "with --report-cost: batch size of the latency measurement", ge=1)

    def check(self) -> None:
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"--compile-mode {self.compile_mode} needs --compile")
        if self.cuda_graphs and self.compile:
            raise ConfigError("--cuda-graphs captures the eager step; with --compile use --compile-mode "
                              "reduce-overhead (the compiled step's own CUDA graphs) instead")
        if not self.genotype:
            raise ConfigError("--genotype is required (a published name, genotype.json, run dir or DARTS string)")
        if self.auxiliary and self.layers < 2:
            raise ConfigError(f"layers={self.layers} leaves no cell for the auxiliary head (after 2/3 of the "
                              "depth): use --layers >= 2 or --no-auxiliary")
        side = self.image_side
        if self.auxiliary and -(-side // 4) < 8:  # DARTS' head pools 5x5 with stride 3, then a 2x2 conv
            raise ConfigError(f"the auxiliary head needs the 8x8 feature map of images of at least 29 pixels; "
                              f"{side}x{side} images leave {-(-side // 4)}x{-(-side // 4)}: use --no-auxiliary")
        self.check_fits(activation_bytes(self.channels, self.layers, side, self.batch_size),
                        f"a {self.layers}-cell network of {self.channels} channels on {side}x{side} images "
                        f"in batches of {self.batch_size}")
        if self.cutout > side:
            raise ConfigError(f"cutout={self.cutout} is larger than the {side}x{side} images")
        if self.latency_device is not None and not (self.latency_device == "cpu"
                                                    or self.latency_device.startswith("cuda")):
            raise ConfigError(f"latency_device must be cpu or cuda[:N], got {self.latency_device!r}")


PRESETS: dict[str, dict] = {
    "darts": {},
    # The CPU retraining budget of `fastnas.study` on the embedded data: ~100 steps of a small network,
    # the same for every cell compared; 500 test images.
    "quick": {"channels": 8, "layers": 5, "epochs": 3, "batch_size": 64, "embedded_size": 2000, "lr": 0.05,
              "drop_path": 0.1, "cutout": 0},
    "smoke": {"channels": 8, "layers": 5, "epochs": 5, "batch_size": 64, "embedded_size": 1500, "lr": 0.05,
              "drop_path": 0.1, "cutout": 0},
}
