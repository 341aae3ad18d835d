"""Typed dataclass configs: defaults < YAML file < command-line options.

Every field of a config dataclass becomes a command-line option (``ngf`` -> ``--ngf``,
``lr_g`` -> ``--lr-g``; booleans take ``true``/``false``).  ``--config FILE`` reads a YAML
mapping of the same names.  Each run directory records the resolved config
(``config.yaml``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .io import atomic_write_text

__all__ = ["add_config_args", "format_default", "config_from_args", "run_config", "config_from_dict", "load_config",
           "save_config", "to_dict", "check_numbers", "check_number", "yaml_error_line"]

T = TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], name) if len(non_none) == 1 else value
    if origin is tuple:
        if isinstance(value, str):
            numeric = bool(args) and args[0] in (int, float)
            value = [v.strip() for v in (value.replace("x", ",") if numeric else value).split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value, value]  # a single number for a square size
        inner = args[0] if args else Any
        fixed = len(args) > 1 and args[-1] is not Ellipsis
        if fixed and len(value) == 1:
            value = list(value) * len(args)  # "128" means 128x128
        if fixed and len(value) != len(args):
            raise ConfigError(f"config '{name}': expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, inner, name) for v in value)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config '{name}': cannot use {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def _nested(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are themselves config dataclasses (e.g. ``data_options``)."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}


def config_from_dict(cls: type[T], data: "dict[str, Any]", source: str = "config") -> T:
    """Build ``cls`` from a mapping, checking names and converting types.

    A field that is itself a config dataclass (such as ``data_options``) takes a mapping under
    its own name, and its options may also be given flat, by their own names (as on the command
    line, and in configs written before it was grouped); flat names win."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option names to values")
    hints = _hints(cls)
    nested = _nested(cls)
    inner_names = {n: name for name, sub in nested.items() for n in (f.name for f in dataclasses.fields(sub))}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - set(inner_names))
    if unknown:
        known = sorted((names - set(nested)) | set(inner_names))
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    kw: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {name: {} for name in nested}
    for k, v in data.items():
        if k in nested:
            if v is None:
                continue
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: '{k}' must be a mapping of {', '.join(sorted(inner_names))}")
            groups[k] = {**v, **groups[k]}
        elif k in inner_names and k not in names:
            groups[inner_names[k]][k] = v
        else:
            kw[k] = _coerce(v, hints[k], k)
    for name, sub in nested.items():
        if groups[name]:
            kw[name] = config_from_dict(sub, groups[name], f"{source}: {name}")
    return cls(**kw)


def read_config_file(path: "str | Path") -> dict[str, Any]:
    """A config YAML's mapping of option names to values; a :class:`ConfigError` naming the
    file when it cannot be read, is not YAML or is not a mapping."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(p, e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of option names to values")
    return data


def load_config(cls: type[T], path: "str | Path | None" = None, overrides: "dict[str, Any] | None" = None) -> T:
    data = read_config_file(path) if path else {}
    data.update(overrides or {})
    return config_from_dict(cls, data, str(path or "config"))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def yaml_error_line(path: "str | Path", err: Exception) -> str:
    """One line for a YAML parse error, starting with the file:
    ``cfg.yaml: malformed YAML at line 2, column 5: mapping values are not allowed here``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}: malformed YAML{where}: {problem}" + (f" ({context})" if context else "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON values (tuples as lists; nested configs as mappings)."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: "str | Path") -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def format_default(value: Any) -> "str | None":
    """A default as a user types it: ``384,384`` for a tuple, ``true``/``false``, ``0.0002``;
    None for an empty one (``""``, ``None``, ``()``), whose help says what happens when unset."""
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_default(v) or "" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: "set[str] | None" = None,
                    title: "str | None" = None) -> None:
    """One ``--option`` per dataclass field (default None: only given options override).  A
    field that is a config dataclass itself (``data_options``) gets its own group of options,
    named by its fields.

    Each option's help is the field's ``metadata["help"]`` followed by its default, once and as
    it is typed (``(default: 384,384)``); a help that already names its default, or an empty
    default, gets none appended.
    """
    hints = _hints(cls)
    nested = _nested(cls)
    grp = parser.add_argument_group(title or f"{cls.__name__} options (also settable in --config YAML)")
    for f in dataclasses.fields(cls):
        if skip and f.name in skip:
            continue
        if f.name in nested:
            add_config_args(parser, nested[f.name], skip, title=f"{f.name.replace('_', ' ')} (in --config YAML: "
                                                                 f"under {f.name}, or flat)")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        tp = hints[f.name]
        meta = "{true,false}" if tp is bool else f.name.upper()
        help_text = f.metadata.get("help", "").strip()
        shown = format_default(default)
        if shown is not None and "default" not in help_text.lower():
            help_text = f"{help_text} (default: {shown})".strip()
        grp.add_argument("--" + f.name.replace("_", "-"), dest="cfg_" + f.name, default=None, metavar=meta,
                         help=help_text.replace("%", "%%"))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config options given on the command line (``--steps 10`` -> ``{"steps": 10}``)."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return load_config(cls, getattr(args, "config", None), _overrides(args))


#: the checkpoint ``kind`` each training command writes (``RUN/checkpoints/latest.json``)
RUN_KINDS = {"posesynth-posenet": "train-posenet", "posesynth-gan": "train-gan", "posesynth-nearest": "train-gan",
             "posesynth-motion": "train-motion"}


def run_command_of(run_dir: "str | Path") -> "str | None":
    """The command that made the run in ``run_dir``, from its checkpoint's ``kind`` (latest, else
    previous); None when there is no readable checkpoint JSON."""
    import json

    for name in ("latest.json", "previous.json"):
        try:
            kind = json.loads((Path(run_dir) / "checkpoints" / name).read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            continue
        if kind in RUN_KINDS:
            return RUN_KINDS[kind]
    return None


def run_config(cls: type[T], args: argparse.Namespace, run_dir: "str | Path", resume: bool,
               command: "str | None" = None) -> T:
    """The config of a training run: from ``--config`` and options, or, with ``resume``, the
    run's saved ``config.yaml`` with the options given now on top (e.g. more ``--steps``).

    ``command`` (e.g. ``"train-posenet"``; default ``args.command``) is checked against the
    command that made the run, so resuming a ``train-gan`` run with ``train-posenet`` says so
    instead of listing the other config's options as unknown."""
    if not resume:
        return config_from_args(cls, args)
    command = command or getattr(args, "command", None)
    made_by = run_command_of(run_dir)
    if command and made_by and made_by != command:
        raise ConfigError(f"{run_dir} is a {made_by} run; resume it with posesynth {made_by} --out {run_dir} "
                          "--resume")
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no config.yaml)")
    return load_config(cls, saved, _overrides(args))


def given_options(args: argparse.Namespace, resume: bool) -> set[str]:
    """The config options this command was given: those on the command line and, for a new
    run, those in its ``--config`` YAML (``data_options``' own keys among them); a resumed
    run's saved ``config.yaml`` gives none (its options were given when the run began)."""
    given = set(_overrides(args))
    path = getattr(args, "config", None)
    if path and not resume:
        data = read_config_file(path)
        given |= set(data) | set(data.get("data_options", None) or {})
    return given - {"data_options"}


# ---- numeric checks ---------------------------------------------------------------------------
_BOUND = re.compile(r"^(>=|>|<=|<)(-?[0-9.]+(?:e-?[0-9]+)?)$")
_RANGE = re.compile(r"^([\[(])(-?[0-9.]+),(-?[0-9.]+)([\])])$")


def _rule(rule: str) -> "tuple[typing.Callable[[float], bool], str]":
    """``">=1"``, ``">0"``, ``"[0,1]"``, ``"(0,1)"``... -> (test, words)."""
    m = _BOUND.match(rule.replace(" ", ""))
    if m:
        op, v = m.group(1), float(m.group(2))
        shown = f"{v:g}"
        return {">=": (lambda x: x >= v, f"at least {shown}"), ">": (lambda x: x > v, f"more than {shown}"),
                "<=": (lambda x: x <= v, f"at most {shown}"), "<": (lambda x: x < v, f"less than {shown}")}[op]
    m = _RANGE.match(rule.replace(" ", ""))
    if not m:
        raise ValueError(f"bad rule {rule!r}")
    lo_c, lo, hi, hi_c = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)

    def test(x: float) -> bool:
        return (x >= lo if lo_c == "[" else x > lo) and (x <= hi if hi_c == "]" else x < hi)

    return test, f"in {lo_c}{lo:g}, {hi:g}{hi_c}"


def check_number(name: str, value: Any, rule: str) -> None:
    """Refuse ``value`` (a number, or a tuple of numbers) unless it is finite and meets ``rule``
    (``">=1"``, ``">0"``, ``">=0"``, ``"[0,1]"``, ``"(0,1)"``, ...): one :class:`ConfigError` line
    naming the option as on the command line (``--batch-size``)."""
    test, words = _rule(rule)
    vals = value if isinstance(value, (tuple, list)) else (value,)
    for v in vals:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not test(v):
            shown = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in vals) \
                if all(isinstance(x, (int, float)) for x in vals) else repr(value)
            raise ConfigError(f"--{name.replace('_', '-')} must be {words}, not {shown}")


def check_numbers(cfg: Any, rules: "dict[str, str]") -> None:
    """:func:`check_number` for each ``option: rule`` of ``rules`` on the config ``cfg``, and
    every other float option (or tuple of floats) must be finite (no NaN or infinity)."""
    for name, rule in rules.items():
        check_number(name, getattr(cfg, name), rule)
    for f in dataclasses.fields(cfg):
        if f.name in rules:
            continue
        v = getattr(cfg, f.name)
        vals = v if isinstance(v, tuple) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in vals):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, not {v}")
