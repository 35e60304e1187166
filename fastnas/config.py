"""Configuration as dataclasses, filled from presets, a YAML file and the command line (in that order
of precedence, the command line last), validated with one-line errors, saved with every run."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from fastnas.data import DATASETS


class ConfigError(ValueError):
    """A configuration that cannot run, with the offending option named."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not the whole usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def opt(default, help: str, **kw):
    """A config field with its --help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


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

    def validate_run_options(self) -> None:
        """The cross-field rules of these options (each one's own bounds are in check_fields)."""
        if self.dataset == "embedded":  # generated in memory as uint8: refuse what cannot fit before allocating
            need = 2 * self.embedded_size * 3 * 32 * 32  # training images and a test set as large
            ram = _physical_memory()
            if ram and need > ram:
                raise ConfigError(f"embedded_size={self.embedded_size} needs {need / 2**30:.1f} GiB of images, more "
                                  f"than this machine's {ram / 2**30:.1f} GiB of memory")
        check_device(self.device)


INT64_MAX = 2**63 - 1
_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def check_fields(cfg) -> None:
    """The one validation layer every option passes, from the command line and from YAML alike: each
    float is finite, each integer fits in 64 bits, and the bounds a field declares (``ge``, ``gt``,
    ``le``, ``lt`` in its metadata) hold, for every element of a list option. A violation is a
    ConfigError naming the option and the value."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"option {f.name!r} must be a finite number, got {v}")
            if isinstance(v, int) and abs(v) > INT64_MAX:
                raise ConfigError(f"option {f.name!r}: {v} is out of range (at most {INT64_MAX})")
            for key, (ok, sign) in _BOUNDS.items():
                if key in f.metadata and not ok(v, f.metadata[key]):
                    raise ConfigError(f"option {f.name!r} must be {sign} {f.metadata[key]}, got {v}")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_device(name: str) -> None:
    """auto, cpu, cuda or cuda:N, and a CUDA device that exists on this machine."""
    import re

    import torch

    m = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", name)
    if not m:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: no CUDA device is visible on this machine")
        if m.group(1) is not None and int(m.group(1)) >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")


@dataclass
class SGDOptions:
    """The weight optimizer's options, shared by the search and the retraining: SGD with momentum and
    a cosine learning-rate schedule (per stage in a search), as DARTS and its successors use."""

    batch_size: int = opt(96, "batch size (a search uses it for both the weight and the architecture step)", ge=1)
    lr: float = opt(0.025, "SGD learning rate (cosine-annealed; per stage in a search)", gt=0)
    lr_min: float = opt(0.0, "final learning rate of the cosine schedule", ge=0)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = opt(3e-4, "SGD weight decay", ge=0)
    grad_clip: float = opt(5.0, "gradient-norm clip of the weight step (0: off)", ge=0)


def _field_type(cls, f):
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _scalar_type(tp):
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return _scalar_type(typing.get_args(tp)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0])
    return tp


def _is_list(tp) -> bool:
    if typing.get_origin(tp) in (list, tuple):
        return True
    return any(typing.get_origin(a) in (list, tuple) for a in typing.get_args(tp))


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One --option per dataclass field (defaults suppressed, so only what the user typed is seen)."""
    for f in fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp = _field_type(cls, f)
        name = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f"{help_text} (default: {default})"
        kwargs = {"default": argparse.SUPPRESS, "help": help_text, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        base = _scalar_type(tp)
        if base is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        elif _is_list(tp):
            parser.add_argument(name, nargs="+", type=base, metavar=f.name.upper(), **kwargs)
        else:
            parser.add_argument(name, type=base, metavar=f.name.upper() if "choices" not in kwargs else None,
                                **kwargs)


def _coerce(cls, name: str, value):
    f = {f.name: f for f in fields(cls)}.get(name)
    if f is None:
        known = ", ".join(sorted(x.name for x in fields(cls)))
        raise ConfigError(f"unknown option {name!r} (known: {known})")
    tp = _field_type(cls, f)
    base = _scalar_type(tp)
    optional = type(None) in typing.get_args(tp)
    if value is None and optional:
        return None

    def one(v):
        if base is bool:
            if isinstance(v, bool):
                return v
            raise ConfigError(f"option {name!r}: expected true/false, got {v!r}")
        if base is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if base is str and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # e.g. a budget written as a YAML number; still checked against the choices below
        if not isinstance(v, base) or isinstance(v, bool) and base is not bool:
            raise ConfigError(f"option {name!r}: expected {base.__name__}, got {v!r}")
        # argparse checks choices on the command line; values from a YAML file are checked here
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise ConfigError(f"option {name!r}: {v!r} is not one of {', '.join(map(str, choices))}")
        return v

    if _is_list(tp):
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [one(v) for v in value]
    return one(value)


def make_parser(prog: str, description: str, cls) -> OneLineErrorParser:
    """The parser of a run CLI: --config FILE.yaml, --resume DIR, and one option per field of `cls`."""
    parser = OneLineErrorParser(prog=prog, description=description + " Options come from --preset, then "
                                "--config FILE.yaml, then the command line.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
                        help="YAML file of options (any option below, by its name)")
    parser.add_argument("--resume", default=argparse.SUPPRESS, metavar="DIR",
                        help="continue the killed run in DIR (its saved config is used)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="--out names a directory holding another run: move that run aside to "
                             "<out>.old-<time> (never mixed, never deleted) and start afresh there")
    add_arguments(parser, cls)
    return parser


def config_for_resume(cls, saved: dict, cli: dict, keys: tuple[str, ...]):
    """The saved config of a run being resumed. Of the command line only `keys` (where and how wide it
    runs) may change it, since what it computes may not: any other option is a one-line error rather
    than silently ignored. The options applied are listed in ``cfg._resume_changes`` for the log."""
    refused = sorted(k for k in cli if k not in keys and k != "overwrite")
    if refused:
        names = ", ".join("--" + k.replace("_", "-") for k in refused)
        allowed = ", ".join("--" + k.replace("_", "-") for k in keys)
        raise ConfigError(f"--resume continues a run with its saved options: {names} cannot change "
                          f"(only {allowed} can); start a new run to change them")
    if cli.get("overwrite"):
        raise ConfigError("--overwrite and --resume exclude each other")
    cfg = from_dict(cls, saved)
    changes = []
    for key in keys:
        if key in cli and cli[key] != getattr(cfg, key, None):
            changes.append(f"{key} {getattr(cfg, key, None)} -> {cli[key]}")
            setattr(cfg, key, _coerce(cls, key, cli[key]))
    _validate(cfg)
    cfg._resume_changes = changes
    return cfg


def load_yaml(path: str | Path) -> dict:
    """Options from a YAML mapping file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls, presets: dict[str, dict], cli: dict, default_preset: str):
    """defaults < preset < YAML (--config) < command line; then validate()."""
    cli = dict(cli)
    file_opts = load_yaml(cli.pop("config")) if cli.get("config") else {}
    preset = cli.get("preset", file_opts.get("preset", default_preset))
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    values = {"preset": preset, **presets[preset]}
    values.update(file_opts)
    values.update(cli)
    values.pop("config", None)
    kwargs = {k: _coerce(cls, k, v) for k, v in values.items()}
    cfg = cls(**kwargs)
    _validate(cfg)
    return cfg


def _validate(cfg) -> None:
    """Every field's own bounds first (check_fields), then the config's cross-field rules (validate(),
    which counts on the bounds holding): the one way a config is checked."""
    check_fields(cfg)
    cfg.validate()


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_yaml(cfg, path: str | Path, exclude: tuple[str, ...] = ("out",)) -> None:
    """The resolved config, without `out`: a run's config.yaml given to --config starts a new run in
    a new directory, never writes into the old one."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def from_dict(cls, d: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


__all__ = [
    "ConfigError", "RunOptions", "SGDOptions", "OneLineErrorParser", "make_parser", "config_for_resume", "opt",
    "add_arguments", "build_config", "load_yaml", "save_yaml", "to_dict", "from_dict", "dataclass", "check_fields",
    "check_device",
]
