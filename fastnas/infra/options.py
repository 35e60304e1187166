"""The option groups every run command shares: the data and where and how the run executes
(:class:`RunOptions`), and the weight optimizer (:class:`SGDOptions`). Search and retraining configs
inherit both; each group checks its own cross-field rules (``check``)."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.infra.runtime import check_device, device_memory, physical_memory

# The datasets fastnas reads (fastnas.data has a loader for each).
DATASETS = ("embedded", "cifar10", "cifar100", "folder")


@dataclass
class RunOptions:
    """Options every run CLI shares: the data, and where and how the run executes."""

    dataset: str = opt("embedded", "embedded (offline default), cifar10, cifar100 or folder", choices=list(DATASETS))
    data_dir: str = opt("data", "folder holding the dataset (CIFAR batches or train/ and test/ image folders)")
    download: bool = opt(False, "download CIFAR into --data-dir when missing (needs network)")
    embedded_size: int = opt(2000, "training images of the embedded dataset", ge=4)
    image_size: int = opt(32, "image side for the folder dataset", ge=8, le=4096)
    seed: int = opt(0, "random seed (data split, initialization, sampling)", ge=0, le=2**63 - 1)
    deterministic: bool = opt(False, "deterministic algorithms: a resumed run ends like an uninterrupted one")
    cudnn_benchmark: bool = opt(True, "let cuDNN time its convolution algorithms on each new shape and keep the "
                                      "fastest (as DARTS' train.py and train_search.py do); off under --deterministic, "
                                      "no effect on a CPU")
    amp: str = opt("off", "mixed precision", choices=["off", "bf16", "fp16"])
    channels_last: bool = opt(False, "channels_last memory format")
    data_on_device: bool = opt(True, "hold the dataset in the GPU's memory when it takes at most a tenth of it, "
                                     "so steps make no host copies (no effect on CPU)")
    workers: int = opt(0, "CPU threads for intra-op parallelism (0: torch's default)", ge=0, le=4096)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    out: str | None = opt(None, "run directory (default runs/<search|train>-<time>)")
    max_steps: int = opt(0, "cap on steps per epoch (0: a full pass over the training data)", ge=0)
    dist_timeout: float = opt(300.0, "seconds a collective may wait for the other processes (torchrun)", gt=0)

    def check(self) -> None:
        """The cross-field rules of these options (each one's own bounds are in check_fields)."""
        if self.dataset == "embedded":  # generated in memory as uint8: refuse what cannot fit before allocating
            need = 2 * self.embedded_size * 3 * 32 * 32  # training images and a test set as large
            ram = physical_memory()
            if ram and need > ram:
                raise ConfigError(f"embedded_size={self.embedded_size} needs {need / 2**30:.1f} GiB of images, more "
                                  f"than this machine's {ram / 2**30:.1f} GiB of memory")
        check_device(self.device)
        if self.out is not None and not self.out.strip():
            raise ConfigError("--out is empty: give a run directory, or leave --out out for runs/<command>-<time>")

    @property
    def image_side(self) -> int:
        """The side of the images the network sees (CIFAR and the embedded data: 32)."""
        return self.image_size if self.dataset == "folder" else 32

    def check_fits(self, need: int, what: str) -> None:
        """Refuse a run whose tensors (`need` bytes, a lower bound) cannot fit the device's memory."""
        have = device_memory(self.device)
        if have and need > have:
            raise ConfigError(f"{what} needs at least {need / 2**30:,.1f} GiB for one training step, more than the "
                              f"{have / 2**30:.1f} GiB of {'the GPU' if self.device.startswith('cuda') else 'memory'}"
                              " here: use fewer layers or channels, smaller images or a smaller batch")




@dataclass
class SGDOptions:
    """The weight optimizer's options, shared by the search and the retraining: SGD with momentum and
    a cosine learning-rate schedule (per stage in a search), as DARTS and its successors use."""

    batch_size: int = opt(96, "batch size (a search uses it for both the weight and the architecture step)", ge=1,
                          le=65536)
    lr: float = opt(0.025, "SGD learning rate (cosine-annealed; per stage in a search)", gt=0)
    lr_min: float = opt(0.0, "final learning rate of the cosine schedule", ge=0)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = opt(False, "Nesterov momentum (GDAS' search)")
    weight_decay: float = opt(3e-4, "SGD weight decay", ge=0)
    grad_clip: float = opt(5.0, "gradient-norm clip of the weight step (0: off)", ge=0)
    scale_lr: bool = opt(True, "when --batch-size differs from the preset's, scale the learning rates left to the "
                               "preset: SGD's lr and lr_min in proportion to the batch, a search's Adam arch_lr by "
                               "its square root")

    # How each learning rate follows the batch size: lr * (batch / preset batch) ** exponent. SGD linearly
    # (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), Adam by the square root (Malladi et al. 2022,
    # "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"). The field's own precedent:
    # PC-DARTS (train_search.py lines 24, 25, 43) searches at batch 256 with lr 0.1 and arch lr 6e-4,
    # DARTS (cnn/train_search.py lines 23, 24, 42) at 64 with 0.025 and 3e-4: 4x the batch, 4x the SGD
    # rate, 2x the Adam rate. Groups with more learning rates add theirs (``LR_BATCH_EXPONENTS``).
    LR_BATCH_EXPONENTS: typing.ClassVar[dict[str, float]] = {"lr": 1.0, "lr_min": 1.0}

    @classmethod
    def resolve(cls, values: dict, preset: dict, typed: set[str]) -> list[str]:
        """Scale the learning rates the user did not set when the user set a batch size other than the
        preset's (``--batch-size``, or batch_size in --config); a learning rate typed or in the file stays
        as given. Returns a note for the log, or none."""
        if not values.get("scale_lr", True) or "batch_size" not in typed:
            return []
        base = preset.get("batch_size", cls.__dataclass_fields__["batch_size"].default)
        batch = values["batch_size"]
        if batch == base:
            return []
        exponents = {}
        for klass in reversed(cls.__mro__):
            exponents.update(klass.__dict__.get("LR_BATCH_EXPONENTS", {}))
        scaled = []
        for name, exponent in exponents.items():
            # lr_min goes with lr: a typed lr keeps the preset's lr_min (scaling it alone could pass lr)
            if name in typed or name not in cls.__dataclass_fields__ or (name == "lr_min" and "lr" in typed):
                continue
            old = values.get(name, preset.get(name, cls.__dataclass_fields__[name].default))
            values[name] = old * (batch / base) ** exponent
            if old:
                scaled.append(f"{name} {old:g} -> {values[name]:g}")
        if not scaled:
            return []
        return [f"batch size {batch} against the preset's {base}: {', '.join(scaled)} (--no-scale-lr keeps them)"]

    def check(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0")
        if self.lr_min > self.lr:
            raise ConfigError(f"lr_min={self.lr_min} is above lr={self.lr}: the cosine schedule anneals from lr "
                              "down to lr_min")
