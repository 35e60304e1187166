"""Datasets for search and retraining: CIFAR-10/100, a user's image folder, and an embedded offline
CIFAR-shaped default.

Every dataset is held in memory as uint8 images (N, 3, H, W) plus int64 labels; batches are drawn by
:class:`BatchStream` (seeded per epoch, so an epoch's order is reproducible and a resumed run sees
the same batches) and augmented on the device by :func:`augment` (random crop with padding,
horizontal flip) before normalization, and cutout after it (as DARTS).

CIFAR is read from the python pickle batches (``cifar-10-batches-py/``, ``cifar-100-python/``) by
our own reader, so files are checked for their format, not their checksum. The reader's unpickler
admits only what a CIFAR batch holds (dicts, bytes, strings, numbers, lists and numpy arrays), so a
crafted batch in a shared data folder cannot run code.
"""

from __future__ import annotations

import functools
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastnas.infra.errors import DataError
from fastnas.infra.options import DATASETS
from fastnas.infra.runtime import physical_memory

__all__ = ["DATASETS", "DataError", "ImageData", "BatchStream", "load_dataset", "split_train", "augment", "cutout",
           "normalize", "make_embedded", "load_cifar", "load_folder", "place"]

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
                "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "cifar-100-python.tar.gz"),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass
class ImageData:
    """In-memory images (uint8, N x 3 x H x W) and labels, with normalization constants."""

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: Tensor) -> ImageData:
        return ImageData(self.images[indices], self.labels[indices], self.num_classes, self.mean, self.std,
                         self.name)

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def to(self, device: torch.device | str) -> ImageData:
        """The same data held on `device` (images stay uint8: CIFAR-10's training set is 150 MB)."""
        return ImageData(self.images.to(device), self.labels.to(device), self.num_classes, self.mean, self.std,
                         self.name)


def place(data: ImageData, device: torch.device, enabled: bool = True) -> ImageData:
    """`data` moved to an accelerator `device` when `enabled` and it takes at most a tenth of the device's
    memory, so that a step indexes, augments and normalizes its batch there: no per-step host copy (on a
    GPU each one is a transfer and, from pageable memory, a hidden synchronization). Unchanged on CPU."""
    if not enabled or device.type == "cpu" or data.images.device == device:
        return data
    from fastnas.infra.runtime import device_memory

    total = device_memory(str(device))
    if total and data.nbytes > total // 10:
        return data
    return data.to(device)


# --------------------------------------------------------------------------------- embedded data
EMBEDDED_CLASSES = (
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "antidiagonal_stripes", "checkerboard",
    "rings", "square", "cross", "two_dots", "circle",
)


def make_embedded(n: int, seed: int = 0, size: int = 32, noise: float = 0.25) -> ImageData:
    """A deterministic CIFAR-shaped problem: 10 classes of spatial patterns (stripes in four
    orientations, checkerboard, rings, square, cross, two dots, circle outline) with random
    frequency, phase, position, scale and colours, plus pixel noise. Foreground and background
    colours are drawn independently of the class, so only spatial structure tells classes apart."""
    if n < 1:
        raise DataError(f"embedded dataset size must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    coords = torch.arange(size, dtype=torch.float32) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    yy, xx = yy[None], xx[None]

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, 1, 1, generator=g))

    freq, phase = u(2.0, 5.0), u(0.0, 2 * math.pi)
    cy, cx = u(0.3, 0.7), u(0.3, 0.7)
    scale = u(0.12, 0.25)
    r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    two_pi = 2 * math.pi
    masks = torch.stack([
        (torch.sin(two_pi * freq * yy + phase) > 0),
        (torch.sin(two_pi * freq * xx + phase) > 0),
        (torch.sin(two_pi * freq * (xx + yy) / math.sqrt(2) + phase) > 0),
        (torch.sin(two_pi * freq * (xx - yy) / math.sqrt(2) + phase) > 0),
        ((torch.sin(two_pi * freq * xx + phase) > 0) ^ (torch.sin(two_pi * freq * yy + phase) > 0)),
        (torch.sin(two_pi * freq * 1.5 * r + phase) > 0),
        ((yy - cy).abs() < scale) & ((xx - cx).abs() < scale),
        (((yy - cy).abs() < scale / 3) & ((xx - cx).abs() < scale * 1.5))
        | (((xx - cx).abs() < scale / 3) & ((yy - cy).abs() < scale * 1.5)),
        (torch.sqrt((yy - cy) ** 2 + (xx - cx + scale) ** 2) < scale / 1.5)
        | (torch.sqrt((yy - cy) ** 2 + (xx - cx - scale) ** 2) < scale / 1.5),
        ((r - scale * 1.3).abs() < 0.05),
    ], dim=1)  # (n, 10, H, W)
    mask = masks[torch.arange(n), labels].float()[:, None]  # (n, 1, H, W)
    fg = torch.rand(n, 3, 1, 1, generator=g)
    bg = torch.rand(n, 3, 1, 1, generator=g)
    # keep foreground and background apart in brightness so the pattern is visible
    bg = torch.where((fg - bg).abs().mean(1, keepdim=True) < 0.25, 1 - fg, bg)
    img = mask * fg + (1 - mask) * bg + noise * torch.randn(n, 3, size, size, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(images, labels.long(), 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "embedded")


# --------------------------------------------------------------------------------- CIFAR
# The only globals a CIFAR batch refers to: numpy's array reconstruction (numpy >= 2 pickles name
# numpy._core, the published files numpy.core) and, in protocol 2 pickles written by Python 3,
# _codecs.encode for bytes (a pure function). Anything else (os.system, builtins.eval,
# subprocess...) is a crafted file.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles data only: no global outside numpy's array reconstruction is ever imported."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR batch holds only arrays, lists, "
                                         "bytes and numbers (a crafted file?)")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes):
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
        if not isinstance(entry, dict):
            raise ValueError(f"holds a {type(entry).__name__}, not a dict")
        data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, AttributeError,
            IndexError) as exc:
        raise DataError(f"unreadable CIFAR batch {path}: {type(exc).__name__}: {exc}") from None
    if len(labels) != len(data):
        raise DataError(f"CIFAR batch {path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar(name: str, root: str | Path, train: bool, download: bool = False) -> ImageData:
    """CIFAR-10/100 from `root` (the folder holding cifar-10-batches-py/ or cifar-100-python/)."""
    folder, train_files, test_files, label_key, archive = _CIFAR[name]
    root = Path(root).expanduser()
    base = root / folder
    files = [base / f for f in (train_files if train else test_files)]
    if not all(f.is_file() for f in files) and download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive
        except ImportError:
            raise DataError("--download needs torchvision installed") from None
        try:
            download_and_extract_archive(_CIFAR_URL + archive, str(root), filename=archive)
        except Exception as exc:  # no network, bad archive: say so in one line
            raise DataError(f"downloading {name} into {root} failed: {type(exc).__name__}: {exc}") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{name} not found: expected {base}/ with {', '.join(missing)} (extract {archive} into "
            f"{root}, or pass --download where the network allows it)"
        )
    parts = [_read_cifar_batch(f, label_key) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    num_classes = 10 if name == "cifar10" else 100
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels outside 0..{num_classes - 1} in {base}")
    return ImageData(images, labels, num_classes, CIFAR_MEAN[name], CIFAR_STD[name], name)


# --------------------------------------------------------------------------------- image folder
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _folder_files(class_dir: Path) -> list[Path]:
    """The image files under `class_dir`, following symbolic links but each real folder and file once
    (a link loop or a link back to a parent would otherwise list the same images again and again)."""
    seen_dirs, seen_files, found = set(), set(), []
    stack = [class_dir]
    while stack:
        d = stack.pop()
        real = d.resolve()
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for e in entries:
            if e.is_dir():
                stack.append(e)
            elif e.is_file() and e.suffix.lower() in _IMAGE_SUFFIXES and e.resolve() not in seen_files:
                seen_files.add(e.resolve())
                found.append(e)
    return sorted(found)


def _read_image(path: Path, image_size: int) -> Tensor:
    """One image as uint8 RGB (3, S, S): 16- and 32-bit grayscale scaled by their bit depth (not cut to
    their low byte or clipped to white), palette, gray+alpha and CMYK images converted to RGB."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode.startswith("I") or img.mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
            if img.mode == "F":
                top = max(1.0, float(arr.max(initial=0)))
            img = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
        img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_folder(root: str | Path, split: str, image_size: int = 32,
                classes: list[str] | None = None) -> ImageData:
    """A torchvision ImageFolder layout: ``root/<split>/<class>/<image>``, resized to image_size."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("the folder dataset needs Pillow installed") from None
    path = Path(root).expanduser() / split
    if not path.is_dir():
        raise DataError(f"image folder not found: {path} (expected {Path(root) / 'train'} and {Path(root) / 'test'}, "
                        "one subfolder per class)")
    found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(found) < 2:  # one class: every accuracy would be 100%, every error 0%
        raise DataError(f"image folder {path}: {len(found)} class folder(s); classification needs at least 2")
    if classes is not None and found != classes:
        raise DataError(f"image folder {path}: classes {found} differ from the training split's {classes}")
    samples = [(f, label) for label, c in enumerate(found) for f in _folder_files(path / c)]
    if not samples:
        raise DataError(f"image folder {path}: no images (looked for {', '.join(_IMAGE_SUFFIXES)})")
    need, ram = len(samples) * 3 * image_size * image_size, physical_memory()
    if ram and need > ram // 2:  # held in memory as uint8; half the machine leaves room for the network
        raise DataError(f"image folder {path}: {len(samples):,} images of {image_size}x{image_size} need "
                        f"{need / 2**30:.1f} GiB in memory, more than half of this machine's {ram / 2**30:.1f} GiB: "
                        "use a smaller --image-size")
    images = torch.empty(len(samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (f, _) in enumerate(samples):
        try:
            images[i] = _read_image(f, image_size)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise DataError(f"unreadable image {f}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else 'cannot decode'}") from None
    labels = torch.tensor([label for _, label in samples])
    mean = tuple((images.float() / 255).mean((0, 2, 3)).tolist())
    std = tuple((images.float() / 255).std((0, 2, 3)).clamp_min(1e-3).tolist())
    return ImageData(images, labels, len(found), mean, std, f"folder:{path.parent.name}")


def load_dataset(name: str, data_dir: str | Path = "data", *, train: bool = True, download: bool = False,
                 embedded_size: int = 2000, image_size: int = 32, seed: int = 0) -> ImageData:
    """Load the training (or test) split of a dataset by name (see DATASETS)."""
    if name == "embedded":
        # train and test come from different seeds of the same generator
        n = embedded_size if train else max(1, embedded_size // 4)
        return make_embedded(n, seed=seed * 2 + (0 if train else 1))
    if name in _CIFAR:
        return load_cifar(name, data_dir, train, download)
    if name == "folder":
        classes = None
        if not train:
            classes = sorted(p.name for p in (Path(data_dir).expanduser() / "train").iterdir() if p.is_dir())
        return load_folder(data_dir, "train" if train else "test", image_size, classes)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def split_train(data: ImageData, portion: float, seed: int) -> tuple[ImageData, ImageData]:
    """The search split: a seeded `portion` of the training set for weights, the rest held out for the
    architecture. The test set is never used by the search."""
    if not 0 < portion < 1:
        raise DataError(f"train_portion must be in (0, 1), got {portion}")
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * portion))
    if k < 1 or k >= n:
        raise DataError(f"train_portion {portion} of {n} images leaves an empty split")
    return data.subset(perm[:k]), data.subset(perm[k:])


class BatchStream:
    """Endless batches of an in-memory dataset, one shard per process.

    The order comes from torch's own :class:`~torch.utils.data.DistributedSampler` (one replica when not
    distributed) with ``set_epoch(pass)``, so it is a function of (seed, pass, rank, world size) alone
    and a resumed stream repeats an uninterrupted one. ``state_dict()``/``load_state_dict()`` capture
    the position, so a held-out stream continues across steps and epochs instead of restarting; a
    state saved under another world size restarts the current pass (the shards differ).
    """

    def __init__(self, data: ImageData, batch_size: int, seed: int, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.sampler = torch.utils.data.DistributedSampler(
            range(len(data)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.epoch, self.pos = 0, 0
        self._order = None
        n = self.sampler.num_samples
        if n < batch_size and drop_last:
            raise DataError(
                f"{data.name or 'dataset'} split has {n} images per process, fewer than one batch of {batch_size}"
            )

    def _perm(self) -> Tensor:
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            device = self.data.images.device
            if device.type != "cpu":  # one copy per pass, not one per batch; pinned, so it does not block
                order = order.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else order.to(device)
            self._order = order
        return self._order

    def batches_per_pass(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def next(self) -> tuple[Tensor, Tensor]:
        order = self._perm()
        if self.pos >= self.batches_per_pass():
            self.epoch, self.pos, self._order = self.epoch + 1, 0, None
            order = self._perm()
        idx = order[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]
        self.pos += 1
        return self.data.images[idx], self.data.labels[idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = state["epoch"], state["seed"]
        self.sampler.seed = self.seed
        same_shards = state.get("world_size", 1) == self.world_size
        self.pos = state["pos"] if same_shards else 0
        self._order = None


def augment(images: Tensor, generator: torch.Generator | None = None, crop_padding: int = 4,
            flip: bool = True) -> Tensor:
    """DARTS/CIFAR augmentation on a uint8 or float batch (N, C, H, W): random crop after zero
    padding and random horizontal flip (torchvision's RandomCrop(32, padding=4) +
    RandomHorizontalFlip). Cutout comes after normalization: :func:`cutout`."""
    n, _, h, w = images.shape
    device = images.device
    # Drawn where the generator lives (the images' device without one): on a GPU with a GPU generator
    # nothing crosses to the host; on CPU the draws are the same as ever.
    draw_on = generator.device if generator is not None else device

    def rand_int(high, size):
        return torch.randint(0, high, size, generator=generator, device=draw_on).to(device)

    if crop_padding > 0:
        p = crop_padding
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        oy, ox = rand_int(2 * p + 1, (n,)), rand_int(2 * p + 1, (n,))
        rows = (oy[:, None] + torch.arange(h, device=device)[None])  # (n, h)
        cols = (ox[:, None] + torch.arange(w, device=device)[None])  # (n, w)
        b = torch.arange(n, device=device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        do_flip = (torch.rand(n, generator=generator, device=draw_on) < 0.5).to(device)
        images = torch.where(do_flip[:, None, None, None], images.flip(3), images)
    return images.contiguous()


def cutout(x: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """DARTS' Cutout on a *normalized* batch: per image a `size` x `size` square centred on a uniform
    random pixel (clipped at the border) is set to 0, i.e. to the dataset's mean colour."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    device = x.device
    draw_on = generator.device if generator is not None else device
    cy = torch.randint(0, h, (n,), generator=generator, device=draw_on).to(device)
    cx = torch.randint(0, w, (n,), generator=generator, device=draw_on).to(device)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    lo_y, lo_x = (cy - size // 2)[:, None, None], (cx - size // 2)[:, None, None]
    inside = (ys >= lo_y) & (ys < lo_y + size) & (xs >= lo_x) & (xs < lo_x + size)
    return x.masked_fill(inside[:, None], 0.0)


def normalize(images: Tensor, mean, std, dtype=torch.float32, memory_format=torch.contiguous_format) -> Tensor:
    """uint8 (or [0, 255] float) images -> normalized float tensor."""
    m, s = _normalization_constants(tuple(mean), tuple(std), images.device, dtype)
    return ((images.to(dtype) - m) / s).contiguous(memory_format=memory_format)


@functools.lru_cache(maxsize=32)
def _normalization_constants(mean: tuple, std: tuple, device: torch.device, dtype: torch.dtype):
    # Made once per (constants, device, dtype): a tensor built from Python numbers in every step would be
    # a host-to-device copy per step on a GPU.
    m = torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1).mul(255).to(device)
    s = torch.tensor(std, dtype=dtype).view(1, -1, 1, 1).mul(255).to(device)
    return m, s
