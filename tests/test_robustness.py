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


# ------------------------------------------------------------------ runaway sizes: refused at once
@pytest.mark.parametrize("argv, fragment", [
    (["train", *TRAIN, "--layers", "100000000"], "needs at least"),
    (["search", *TINY, "--batch-size", "65536", "--channels", "64", "64", "64"], "needs at least"),
    (["study", "--random", "100000000000000000000"], "outside [0, 10,000]"),
    (["cost", "--random", "-1"], "outside [0, 100,000]"),
    (["study", "--random-seed", "-5"], "--random-seed: -5 is outside"),
    (["study", "--seeds", "0", "-1"], "--seeds: -1 is outside"),
    (["evaluate", "--checkpoint", "x", "--batch-size", "99999999999999999999"], "outside [1, 65,536]"),
    (["search", "--resume", ""], "--resume needs a run directory"),
    (["search", *TINY, "--out", ""], "--out is empty"),
    (["train", *TRAIN, "--out", " "], "--out is empty"),
])
def test_runaway_sizes_and_empty_paths_are_refused_at_once(tmp_path, capsys, argv, fragment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(main, argv, fragment, capsys)
    assert not (tmp_path / "runs").exists()


def test_huge_images_on_a_small_folder_are_refused_before_loading(tmp_path, capsys):
    from helpers import write_image_folder

    root = write_image_folder(tmp_path / "imgs", size=40)
    fails(main, ["search", *TINY, "--dataset", "folder", "--data-dir", str(root), "--image-size", "4096",
                 "--out", str(tmp_path / "r")], "4096x4096 images", capsys)
    fails(main, ["train", *TRAIN, "--dataset", "folder", "--data-dir", str(root), "--image-size", "8",
                 "--out", str(tmp_path / "t")], "auxiliary head needs", capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


# ------------------------------------------------------------------ would-be tracebacks: one line
@pytest.mark.parametrize("argv, fragment", [
    (["--primitives", "skip_connect", "--ops-kept", "1", "1", "1"], "every edge of the derived normal cell"),
    (["--primitives", "none", "skip_connect", "--ops-kept", "2", "2", "2", "--max-skip", "0"], "above --max-skip 0"),
    (["--lr-min", "1", "--lr", "0.1"], "lr_min=1.0 is above lr=0.1"),
])
def test_impossible_search_spaces_are_refused_before_training(tmp_path, capsys, argv, fragment):
    fails(main, ["search", *TINY, *argv, "--out", str(tmp_path / "r")], fragment, capsys)
    assert not (tmp_path / "r").exists()


def test_binary_files_as_genotype_or_study_are_one_line(tmp_path, capsys):
    blob = tmp_path / "blob.json"
    blob.write_bytes(bytes(range(256)) * 4)
    fails(main, ["train", *TRAIN, "--genotype", str(blob), "--out", str(tmp_path / "t")], "not a text file", capsys)
    fails(main, ["study", "--merge", str(blob), "--out", str(tmp_path / "s")], "cannot read", capsys)


def test_unknown_backend_is_one_line():
    import subprocess
    import sys

    from helpers import cli_env

    r = subprocess.run([sys.executable, "-m", "fastnas", "info"], capture_output=True, text=True,
                       env=cli_env(FASTNAS_BACKEND="bogus"), timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: FASTNAS_BACKEND must be one of auto, reference, " \
                                                    "kernel, got 'bogus'", r.stderr


def test_yaml_keys_that_are_not_options_or_given_twice(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("config: other.yaml\n")
    fails(main, ["search", "--config", str(cfg)], "'config' is not an option inside a config file", capsys)
    cfg.write_text("seed: 1\nepochs: [1, 1, 1]\nseed: 2\n")
    fails(main, ["search", "--config", str(cfg)], "option 'seed' is given twice (line 3)", capsys)


def test_all_none_genotype_is_not_retrained(tmp_path, capsys):
    none = ", ".join(f"('none', {j})" for j in (0, 1) * 4)
    g = f"Genotype(normal=[{none}], normal_concat=range(2, 6), reduce=[{none}], reduce_concat=range(2, 6))"
    fails(main, ["train", "--preset", "smoke", "--genotype", g, "--out", str(tmp_path / "t")],
          "every operation is 'none'", capsys)


def test_cpu_allocation_failure_is_one_line(capsys, monkeypatch):
    import fastnas.cli.train as train_cli

    def no_memory(launch):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(train_cli, "run_training", no_memory)
    fails(main, ["train", *TRAIN, "--out", "unused"], "out of memory", capsys)


# ------------------------------------------------------------------ image folders read as they are
def test_image_folder_bit_depths_palettes_and_symlink_loops(tmp_path):
    import numpy as np
    from PIL import Image

    from fastnas.data import load_folder

    for c in ("a", "b"):
        d = tmp_path / "train" / c
        d.mkdir(parents=True)
        # a 16-bit grayscale PNG at a quarter of its range: mid-dark, not near-white
        Image.fromarray(np.full((8, 8), 16384, dtype=np.uint16)).save(d / "gray16.png")
        pal = Image.new("P", (8, 8))
        pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        pal.putdata([1] * 64)
        pal.save(d / "palette.png")
        (d / "loop").symlink_to(d, target_is_directory=True)  # a link back up: each file is read once
    data = load_folder(tmp_path, "train", image_size=8)
    assert len(data.labels) == 4 and data.labels.tolist() == [0, 0, 1, 1]
    gray, red = data.images[0], data.images[1]  # sorted: gray16.png, palette.png
    assert abs(int(gray.float().mean()) - 64) <= 1  # 16384 / 65535 * 255
    assert red[0].float().mean() == 255 and red[1:].float().max() == 0  # the palette's colour, not its index


# ------------------------------------------------------------------ nothing existing changed
def test_result_paths_never_replace_files(tmp_path, capsys):
    run = _train_run(tmp_path)
    capsys.readouterr()
    before = files(run)
    fails(main, ["evaluate", "--checkpoint", str(run), "--out", str(run / "config.yaml")], "exists already", capsys)
    fails(main, ["cost", "--json", str(run / "report.json")], "exists already", capsys)
    assert files(run) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.pt").write_bytes(b"someone's weights")
    fails(main, ["train", *TRAIN, "--out", str(other)], "already holds a run (best.pt)", capsys)
    assert (other / "best.pt").read_bytes() == b"someone's weights"


def test_a_start_that_never_checkpointed_does_not_block_a_retry(tmp_path, capsys):
    out = tmp_path / "r"
    # the budget is refused after the run folder exists (config.yaml and run.log written)
    fails(main, ["search", *TINY, "--target-params", "1K", "--out", str(out)], "unreachable", capsys)
    assert (out / "config.yaml").exists() and not (out / "checkpoint.pt").exists()
    assert main(["search", *TINY, "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out / "checkpoint.pt").exists() and "target_params: null" in (out / "config.yaml").read_text()
    assert "stopped before its first checkpoint" in (out / "run.log").read_text()


def test_a_live_runs_folder_names_the_lock(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "checkpoint.pt").write_bytes(b"")
    (out / ".lock").write_text(f"{os.getppid()} {__import__('socket').gethostname()}\n")
    fails(main, ["search", *TINY, "--out", str(out)], "in use by another run", capsys)


# ------------------------------------------------------------------ small things users met
@pytest.mark.parametrize("command", ["search", "train", "evaluate", "cost", "study", "pipeline"])
def test_help_says_each_default_once_and_never_none(command, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert not __import__("re").search(r"\(default: [^)]*\) \(default:", text)
    description = text.split("options:")[0].split("]")[-1].strip()
    assert description[:1].isupper() and description.endswith(".") and "``" not in description


@pytest.mark.slow  # a pipeline and a study end to end (about 16 s): the default tier stays under 5 minutes on 2 cores
def test_pipeline_and_study_take_the_small_budget_options(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["pipeline", "--preset", "smoke", "--max-steps", "1", "--embedded-size", "96", "--out", str(out)]) == 0
    for stage in ("search", "train"):
        text = (out / stage / "config.yaml").read_text()
        assert "max_steps: 1\n" in text and "embedded_size: 96\n" in text
    from fastnas.cli.study import parse_args

    args = parse_args(["--max-steps", "2", "--embedded-size", "64", "--image-size", "16"])
    assert (args.max_steps, args.embedded_size, args.image_size) == (2, 64, 16)
