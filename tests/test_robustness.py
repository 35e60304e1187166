"""What a user is handed or mistypes: files that would run code, sizes that would hang, inputs that
would end in a traceback. The rule: one `error:` line, exit 2, nothing existing changed, nothing run."""

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import TINY, TRAIN, fails, files, write_cifar10

from fastnas.cli.main import main


class _Planted:
    """Unpickling this creates `marker`: what a crafted file would do instead (rm -rf, a reverse shell)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ files that would run code
def test_crafted_cifar_batch_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    root = write_cifar10(tmp_path / "data")
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    entry = pickle.loads(batch.read_bytes())
    entry[b"labels"] = _Planted(marker)
    batch.write_bytes(pickle.dumps(entry))
    fails(main, ["search", *TINY, "--dataset", "cifar10", "--data-dir", str(root), "--out", str(tmp_path / "r")],
          "refused posix.system", capsys)
    assert not marker.exists()


def test_cifar_reader_still_reads_the_published_format(tmp_path):
    # the published batches were pickled by Python 2 with numpy.core names, protocol 2
    from fastnas.data import load_cifar

    root = write_cifar10(tmp_path, per_batch=7)
    for f in (root / "cifar-10-batches-py").iterdir():
        f.write_bytes(pickle.dumps(pickle.loads(f.read_bytes()), protocol=2))
    data = load_cifar("cifar10", root, train=True)
    assert data.images.shape == (35, 3, 32, 32) and data.labels.shape == (35,)


def _train_run(tmp_path) -> Path:
    out = tmp_path / "t"
    assert main(["train", *TRAIN, "--epochs", "1", "--max-steps", "1", "--embedded-size", "64", "--out", str(out)]) == 0
    return out


def test_crafted_checkpoint_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"version": 1, "kind": "search", "payload": _Planted(marker)}, evil)
    shutil.copy(evil, tmp_path / "last.pt")
    fails(main, ["search", "--resume", str(tmp_path)], "loading it could run code", capsys)
    fails(main, ["train", "--resume", str(tmp_path)], "loading it could run code", capsys)
    fails(main, ["evaluate", "--checkpoint", str(evil)], "loading it could run code", capsys)
    assert not marker.exists()


def test_crafted_exported_program_and_weights_are_refused(tmp_path, capsys):
    run = _train_run(tmp_path)
    capsys.readouterr()
    marker = tmp_path / "MARKER"
    planted = tmp_path / "planted.pt"
    torch.save(_Planted(marker), planted)
    # torch.export.load retries a failed weights-only load of the sample inputs with a full unpickle
    src, pt2 = run / "model.pt2", run / "crafted" / "model.pt2"
    pt2.parent.mkdir()
    for need in ("config.yaml", "genotype.json"):
        shutil.copy(run / need, pt2.parent / need)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(pt2, "w") as zout:
        for item in zin.infolist():
            data = planted.read_bytes() if item.filename.endswith("sample_inputs/model.pt") else zin.read(item)
            zout.writestr(item, data)
    assert main(["evaluate", "--checkpoint", str(pt2)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    # a pickled object among the constants is refused before torch.export.load sees it
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(pt2, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("_constants_config.json"):
                data = b'{"config": {"c": {"path_name": "opaque_obj_0", "use_pickle": true}}}'
            zout.writestr(item, data)
        zout.writestr("model/data/constants/opaque_obj_0", planted.read_bytes())
    fails(main, ["evaluate", "--checkpoint", str(pt2)], "pickled Python object", capsys)
    weights = run / "crafted" / "model_state_dict.pt"
    shutil.copy(planted, weights)
    fails(main, ["evaluate", "--checkpoint", str(weights)], "cannot read", capsys)
    assert not marker.exists()


def test_checkpoints_load_weights_only_and_old_ones_still_resume(tmp_path):
    # a checkpoint written before the RNG state was stored as a tensor holds a numpy array; it loads
    import numpy as np

    from fastnas.infra.rundir import load_checkpoint
    from fastnas.infra.runtime import rng_state, set_rng_state

    state = rng_state()
    assert torch.serialization.get_unsafe_globals_in_checkpoint(_saved(tmp_path / "new.pt", state)) == []
    old = dict(state, numpy=np.random.get_state())
    loaded = load_checkpoint(_saved(tmp_path / "old.pt", {"version": 1, "rng": old}))
    set_rng_state(loaded["rng"])
    a = np.random.rand(3)
    set_rng_state(load_checkpoint(_saved(tmp_path / "n.pt", {"version": 1, "rng": state}))["rng"])
    np.testing.assert_array_equal(a, np.random.rand(3))


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_run_files_unchanged_by_refusals(tmp_path, capsys):
    run = _train_run(tmp_path)
    before = files(run)
    evil = tmp_path / "evil.pt"
    torch.save({"version": 1, "x": _Planted(tmp_path / "M")}, evil)
    shutil.copy(evil, run / "last.pt")
    before = files(run)
    fails(main, ["train", "--resume", str(run)], "could run code", capsys)
    assert files(run) == before


@pytest.mark.parametrize("content", [b"\x80\x04K\x01.", b"", b"PK\x03\x04junk"])
def test_garbage_checkpoints_are_one_line(tmp_path, capsys, content):
    p = tmp_path / "c.pt"
    p.write_bytes(content)
    fails(main, ["evaluate", "--checkpoint", str(p)], str(p), capsys)
