"""Datasets: CIFAR files read by the real loader, image folders, the embedded data, splits, batches."""

import pytest
import torch
from helpers import TRAIN, fails, write_cifar10, write_cifar100, write_image_folder

from fastnas.cli import train
from fastnas.data import (
    BatchStream,
    DataError,
    augment,
    load_cifar,
    load_dataset,
    make_embedded,
    normalize,
    split_train,
)


def test_cifar10_files_read_by_the_loader(tmp_path):
    write_cifar10(tmp_path, per_batch=20)
    train = load_cifar("cifar10", tmp_path, train=True)
    test = load_cifar("cifar10", tmp_path, train=False)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 32, 32) and train.num_classes == 10
    assert 0 <= int(train.labels.min()) and int(train.labels.max()) < 10


def test_cifar100_files(tmp_path):
    write_cifar100(tmp_path)
    train = load_dataset("cifar100", tmp_path, train=True)
    assert train.images.shape == (60, 3, 32, 32) and train.num_classes == 100


def test_missing_cifar_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 not found: expected .*cifar-10-batches-py.*--download"):
        load_dataset("cifar10", tmp_path / "nowhere")
    (tmp_path / "cifar-10-batches-py").mkdir()
    for i in range(1, 6):
        (tmp_path / "cifar-10-batches-py" / f"data_batch_{i}").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="unreadable CIFAR batch"):
        load_dataset("cifar10", tmp_path)


def test_image_folder(tmp_path):
    write_image_folder(tmp_path)
    train = load_dataset("folder", tmp_path, train=True, image_size=16)
    test = load_dataset("folder", tmp_path, train=False, image_size=16)
    assert train.images.shape == (12, 3, 16, 16) and train.num_classes == 3
    assert test.images.shape == (12, 3, 16, 16)
    with pytest.raises(DataError, match="image folder not found"):
        load_dataset("folder", tmp_path / "none")


def test_embedded_is_deterministic_balanced_and_spatial():
    a, b = make_embedded(200, seed=3), make_embedded(200, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_embedded(200, seed=4).images)
    assert a.images.shape == (200, 3, 32, 32) and torch.bincount(a.labels).tolist() == [20] * 10
    # colour statistics alone don't separate classes: per-class mean colours are close
    means = torch.stack([a.images[a.labels == c].float().mean((0, 2, 3)) for c in range(10)])
    assert (means.max(0).values - means.min(0).values).max() < 40
    with pytest.raises(DataError):
        make_embedded(0)


def test_split_and_batch_stream():
    data = make_embedded(100, seed=0)
    tr, va = split_train(data, 0.5, seed=1)
    assert len(tr) == 50 and len(va) == 50
    s1 = BatchStream(tr, 8, seed=5)
    batches = [s1.next()[1] for _ in range(9)]  # crosses a pass boundary (6 batches per pass)
    s2 = BatchStream(tr, 8, seed=5)
    for _ in range(4):
        s2.next()
    state = s2.state_dict()
    s3 = BatchStream(tr, 8, seed=5)
    s3.load_state_dict(state)
    assert all(torch.equal(s3.next()[1], b) for b in batches[4:])
    with pytest.raises(DataError):
        split_train(data, 1.0, 0)
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchStream(tr, 64, seed=0)


def test_augment_and_normalize():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=False)
    assert torch.equal(x, y)
    y = augment(x, torch.Generator().manual_seed(0), crop_padding=2, flip=True)
    assert y.shape == x.shape
    z = augment(x.to(torch.uint8), torch.Generator().manual_seed(0))
    assert z.dtype == torch.uint8 and z.shape == x.shape
    n = normalize(torch.full((1, 3, 2, 2), 127.5), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(n, torch.zeros_like(n))


def test_unreadable_image_is_named(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    bad = tmp_path / "data" / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    fails(train.main, [*TRAIN, "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out",
                        str(tmp_path / "run")], f"unreadable image {bad}", capsys)


def test_one_class_folder_is_refused(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        d = tmp_path / "data" / split / "only"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    fails(train.main, [*TRAIN, "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out",
                        str(tmp_path / "run")], "needs at least 2", capsys)
