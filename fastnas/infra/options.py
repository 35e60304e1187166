"""The option groups every run command shares: the data and where and how the run executes
(:class:`RunOptions`), and the weight optimizer (:class:`SGDOptions`). Search and retraining configs
inherit both; each group checks its own cross-field rules (``check``)."""

from __future__ import annotations

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
    amp: str = opt("off", "mixed precision", choices=["off", "bf16", "fp16"])
    channels_last: bool = opt(False, "channels_last memory format")
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

    def check(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0")
        if self.lr_min > self.lr:
            raise ConfigError(f"lr_min={self.lr_min} is above lr={self.lr}: the cosine schedule anneals from lr "
                              "down to lr_min")
