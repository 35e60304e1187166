"""Evaluating a trained run's files: a checkpoint (best.pt, last.pt), the exported program (model.pt2)
or the final weights (model.safetensors, model_state_dict.pt), with the genotype, network size and
normalization they were trained with."""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path

import torch

from fastnas.data import load_dataset
from fastnas.infra import config as cfglib
from fastnas.infra.errors import RunError
from fastnas.infra.rundir import load_checkpoint
from fastnas.infra.runtime import AMP_DTYPES, resolve_device
from fastnas.space.genotype import Genotype, resolve_genotype
from fastnas.space.network import EvalNetwork
from fastnas.train.options import TrainConfig
from fastnas.train.trainer import evaluate_model

WEIGHT_FILES = ("model.safetensors", "model_state_dict.pt")


@contextlib.contextmanager
def _weights_only_everywhere():
    """torch.load with weights_only=True even where a library asks for False (torch.export.load
    falls back to a full unpickle when a restricted load fails)."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _load_exported(path: Path, device):
    """An exported program that holds only tensors: an archive whose constants include pickled
    Python objects (which torch.export.load unpickles in full, so they could run code) is refused;
    fastnas never writes one."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("_constants_config.json"):
                    for fqn, meta in json.loads(z.read(name)).get("config", {}).items():
                        if not str(meta.get("path_name", "")).startswith("tensor_"):
                            raise RunError(f"refused {path}: constant {fqn!r} is a pickled Python object, not a "
                                           "tensor; loading it could run code (a crafted or foreign file?)")
    except (zipfile.BadZipFile, json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read {path}: not an exported program ({type(exc).__name__})") from None
    with _weights_only_everywhere():
        return torch.export.load(str(path)).module().to(device)


def _load_run_files(path: Path, device):
    """A training run's exported model (model.pt2) or final weights (model.safetensors or
    model_state_dict.pt): (genotype, config, module or state dict). The run's config.yaml and
    genotype.json beside the file say what network it is."""
    run = path.parent
    for need in ("config.yaml", "genotype.json"):
        if not (run / need).is_file():
            raise RunError(f"{path}: no {need} beside it (evaluate the files of a training run directory)")
    cfg = cfglib.from_dict(TrainConfig, cfglib.load_yaml(run / "config.yaml"))
    genotype = Genotype.from_json(run / "genotype.json")
    try:
        if path.suffix == ".pt2":
            model = _load_exported(path, device)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            model = load_file(str(path))
        else:
            model = torch.load(path, map_location="cpu", weights_only=True)
    except RunError:
        raise
    except Exception as exc:
        raise RunError(f"cannot read {path}: {type(exc).__name__}: "
                       f"{(str(exc).splitlines() or [''])[0][:200]}") from None
    return genotype, cfg, model


def evaluate_checkpoint(checkpoint: str | Path, *, genotype_spec: str | None = None, dataset: str | None = None,
                        data_dir: str | None = None, split: str = "test", batch_size: int = 256,
                        device: str = "auto", amp: str = "off") -> dict:
    """Test loss, accuracy and error of a trained run's checkpoint (best.pt, last.pt, or its directory),
    exported program (model.pt2) or final weights, on `dataset` (default: the one it was trained on).
    `genotype_spec`: an error if the checkpoint's genotype differs."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    device = resolve_device(device)
    if path.suffix in (".pt2", ".safetensors") or path.name in WEIGHT_FILES:
        genotype, cfg, model = _load_run_files(path, device)
        num_classes, normalization, epoch = None, None, cfg.epochs  # the final weights of the run
    else:
        state = load_checkpoint(path)
        if state.get("kind") not in ("train", "weights"):
            raise RunError(f"{path} is not a training checkpoint (best.pt or last.pt)")
        genotype = Genotype.from_dict(state["genotype"])
        cfg = cfglib.from_dict(TrainConfig, state["config"])
        model, num_classes = state["model"], state["num_classes"]
        normalization, epoch = state.get("normalization"), state.get("epoch")
    if genotype_spec is not None and resolve_genotype(genotype_spec) != genotype:
        raise RunError(f"{path} was trained with another genotype than {genotype_spec[:60]!r}")
    dataset = dataset or cfg.dataset
    kw = dict(embedded_size=cfg.embedded_size, image_size=cfg.image_size, seed=cfg.seed)
    data = load_dataset(dataset, data_dir or cfg.data_dir, train=split == "train", **kw)
    _check_classes(data, dataset)
    if num_classes is not None and data.num_classes != num_classes:
        raise RunError(f"{dataset} has {data.num_classes} classes, the checkpoint's model {num_classes}")
    if isinstance(model, dict):  # weights: build the genotype's network for them
        net = EvalNetwork(genotype, cfg.channels, cfg.layers, data.num_classes, cfg.auxiliary).to(device)
        try:
            net.load_state_dict(model)
        except RuntimeError as exc:
            raise RunError(f"weights {path} do not fit the genotype's network: {str(exc).splitlines()[0]}") from None
    else:
        net = model
    if normalization is None:  # the network was trained with the train split's statistics
        stats = data
        if dataset == "folder" and split == "test":
            stats = load_dataset(dataset, data_dir or cfg.data_dir, train=True, **kw)
        normalization = (stats.mean, stats.std)
    mean, std = normalization
    result = evaluate_model(net, data, mean, std, device, batch_size, AMP_DTYPES[amp])
    result.update(checkpoint=str(path), epoch=epoch, dataset=dataset, split=split, images=len(data),
                  genotype=str(genotype))
    return result


def _check_classes(data, dataset: str) -> None:
    """An accuracy over one class (or no images) says nothing: refuse it rather than print 0% error."""
    if len(data) == 0:
        raise RunError(f"{dataset}: no images to evaluate")
    present = int(data.labels.unique().numel())
    if present < 2:
        raise RunError(f"{dataset}: every image to evaluate has the same label ({present} class present); "
                       "an accuracy over it is meaningless")


