"""Configuration as dataclasses, filled from presets, a YAML file and the command line (in that order
of precedence, the command line last), validated with one-line errors, saved with every run.

A leaf: it knows dataclass fields and their metadata (help, choices, bounds), nothing of what the
options mean. Option groups (:mod:`fastnas.infra.options`, each layer's own) are dataclasses whose
fields are made with :func:`opt`; a config class combines groups by inheritance and its ``validate()``
runs every group's cross-field rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from fastnas.infra.errors import ConfigError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, once: not for options without one (None) or whose help text
    already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not the whole usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def opt(default, help: str, **kw):
    """A config field with its --help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


INT64_MAX = 2**63 - 1
_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def int_in(lo: int, hi: int, why: str = ""):
    """An argparse `type` for an integer in [lo, hi]; out of range is a one-line usage error saying the
    bound (and why it is there)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside [{lo}, {hi:,}]" + (f" ({why})" if why else ""))
        return v

    parse.__name__ = "integer"
    return parse


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


def add_arguments(parser: argparse.ArgumentParser, cls, only: tuple[str, ...] | None = None) -> None:
    """One --option per dataclass field (or per field named in `only`), with the field's help, choices
    and type; defaults suppressed, so only what the user typed is seen (see :func:`typed_or`)."""
    for f in fields(cls):
        if f.metadata.get("cli") is False or (only is not None and f.name not in only):
            continue
        tp = _field_type(cls, f)
        name = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if "default" not in help_text and default is not None:  # said once, and only when there is one
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


def typed_or(args: argparse.Namespace, cls, names: tuple[str, ...], default="field") -> argparse.Namespace:
    """Fill the options among `names` the user did not type: with the field's default, or `default`."""
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in fields(cls)}
    for name in names:
        if not hasattr(args, name):
            setattr(args, name, defaults[name] if default == "field" else default)
    return args


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
                                formatter_class=HelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
                        help="YAML file of options (any option below, by its name)")
    parser.add_argument("--resume", default=argparse.SUPPRESS, metavar="DIR",
                        help="continue the killed run in DIR (its saved config is used)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="--out names a directory holding another run: move that run aside to "
                             "<out>.old-<time> (never mixed, never deleted) and start afresh there")
    add_arguments(parser, cls)
    return parser


def refuse_changes(saved: dict, given: dict, may_change: tuple[str, ...], what: str = "a run") -> list[str]:
    """The one rule of every ``--resume``: a run goes on computing what it computed, so of the options
    typed now (`given`) only those in `may_change` (where and how wide it runs) may differ from the
    `saved` ones. Any other that differs is a ConfigError naming it; returns ``"name old -> new"`` for
    each allowed change, for the log."""
    refused = sorted(k for k, v in given.items() if k not in may_change and saved.get(k, _MISSING) != v)
    if refused:
        names = ", ".join(f"--{k.replace('_', '-')} ({saved.get(k)!r} saved, {given[k]!r} given)" for k in refused)
        allowed = f" (only {', '.join('--' + k.replace('_', '-') for k in may_change)} can)" if may_change else ""
        raise ConfigError(f"--resume continues {what} with its saved options: {names} cannot change{allowed}; "
                          "start a new run to change them")
    return [f"{k} {saved.get(k)} -> {v}" for k, v in given.items() if k in may_change and saved.get(k) != v]


_MISSING = object()


def config_for_resume(cls, saved: dict, cli: dict, keys: tuple[str, ...]):
    """The saved config of a run being resumed, with the command line's changes to `keys` applied
    (see :func:`refuse_changes`). Returns ``(config, changes)``."""
    cli = dict(cli)
    if cli.pop("overwrite", False):
        raise ConfigError("--overwrite and --resume exclude each other")
    changes = refuse_changes(saved, cli, keys)
    cfg = from_dict(cls, saved)
    for key in keys:
        if key in cli:
            setattr(cfg, key, _coerce(cls, key, cli[key]))
    validate(cfg)
    return cfg, changes


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice is an error (YAML itself lets the last one win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"option {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    """Options from a YAML mapping file: each key once, no `config` key (files do not include files)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as exc:
        raise ConfigError(f"config file {p}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "config" in data:
        raise ConfigError(f"config file {p}: 'config' is not an option inside a config file (one file per run)")
    return data


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
    # Option groups may derive options the user left to the preset from ones the user set (a group's
    # classmethod ``resolve(values, preset_values, typed) -> notes``), base groups first.
    typed = (set(file_opts) | set(cli)) - {"config", "preset"}
    notes = []
    for klass in reversed(cls.__mro__):
        resolve = klass.__dict__.get("resolve")
        if resolve is not None:
            notes += resolve.__get__(None, cls)(kwargs, presets[preset], typed)
    cfg = cls(**kwargs)
    validate(cfg)
    cfg.resolved_notes = notes  # not a field: said in the run's log, never saved as an option
    return cfg


def validate(cfg) -> None:
    """Every field's own bounds first (check_fields), then the cross-field rules, which count on the
    bounds holding: each option group's ``check()``, base groups first, the config class's own last.
    The one way a config is checked."""
    check_fields(cfg)
    for cls in reversed(type(cfg).__mro__):
        check = cls.__dict__.get("check")
        if check is not None:
            check(cfg)



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
    "ConfigError", "OneLineErrorParser", "HelpFormatter", "int_in", "make_parser", "config_for_resume",
    "refuse_changes", "opt",
    "add_arguments", "build_config", "load_yaml", "save_yaml", "to_dict", "from_dict", "dataclass", "check_fields",
]
