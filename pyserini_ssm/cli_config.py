"""A CLI's flags built from its config dataclass: one default and one help text per setting, in the dataclass.

A field becomes a flag when its metadata holds `option(...)` (the others are API-only settings):

    hits: int = field(default=1000, metadata=option("BM25 hits per query"))
    bm25_k1: float = field(default=K1, metadata=option("BM25 k1", flag="--k1", hidden_aliases=("--bm25-k1",)))

`add_options(group, Config, ["hits", "bm25_k1"])` adds `--hits` and `--k1` with the field's type, default, choices
and help (the default appended, as litgpt's CLIs show it); `config_values(args, Config)` reads them back by field
name (each flag's `dest` is its field's name). The CLI keeps only the presentation: which flags, in which groups.

Stdlib only: every CLI's `--help` imports this (and the config modules) and must stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Sequence

_KEY = "cli"
_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def option(help: str, *, flag: str | None = None, aliases: Sequence[str] = (), hidden_aliases: Sequence[str] = (),
           choices: Sequence[str] | None = None, metavar: str | None = None, nargs: str | None = None,
           parse: Callable[[Any], Any] | None = None, default_help: str | None = None) -> dict[str, Any]:
    """The metadata that makes a dataclass field a CLI flag.

    `flag`: the flag's name (default `--field-name`); a bool field defaulting to True must name its negative flag
    (`--no-progress`), one defaulting to False is a switch, one defaulting to None (decided later) has `--flag` and
    `--no-flag`. `hidden_aliases`: older names that still parse but are
    not shown. `nargs` + `parse`: a list on the command line turned into the field's value (`parse(list)`).
    `default_help`: how `--help` states the default when the value alone would not say it (None: the value).
    """
    return {_KEY: {"help": help, "flag": flag, "aliases": tuple(aliases), "hidden_aliases": tuple(hidden_aliases),
                   "choices": tuple(choices) if choices is not None else None, "metavar": metavar, "nargs": nargs,
                   "parse": parse, "default_help": default_help}}


def _spec(field: dataclasses.Field) -> dict[str, Any]:
    spec = field.metadata.get(_KEY)
    if spec is None:
        raise TypeError(f"field {field.name!r} has no option(...) metadata: it is not a CLI flag")
    return spec


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _value_type(field: dataclasses.Field) -> str:
    """`int | None` -> int, `float` -> float; of a union the first type (`str | DocumentIndex`: what a command line
    gives). Annotations are strings under `from __future__ import annotations`."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    kinds = [part.strip() for part in annotation.split("|") if part.strip() != "None"]
    return kinds[0] if kinds else annotation


def flag_of(config_class: type, name: str) -> str:
    """The flag of field `name` (for messages that name the flag the user typed)."""
    field = {f.name: f for f in dataclasses.fields(config_class)}[name]
    return _spec(field)["flag"] or "--" + name.replace("_", "-")


def add_options(container: Any, config_class: type, names: Sequence[str], *, required: bool | None = None) -> None:
    """Add the flags of `config_class`'s fields `names` to a parser, argument group or mutually exclusive group.

    A field without a default is a required flag unless `required=False` (a CLI that checks it later itself).
    """
    by_name = {f.name: f for f in dataclasses.fields(config_class)}
    for name in names:
        field = by_name[name]
        spec = _spec(field)
        flag = flag_of(config_class, name)
        default = _default(field)
        kind = _value_type(field)
        arguments: dict[str, Any] = {"dest": name}
        help_text = spec["help"]
        if kind == "bool" and default is None:  # unset, on or off: --flag / --no-flag
            arguments["action"] = argparse.BooleanOptionalAction
            arguments["default"] = None
        elif kind == "bool":
            if default is True and not flag.startswith("--no-"):
                raise TypeError(f"{config_class.__name__}.{name} defaults to True: name its flag --no-...")
            arguments["action"] = "store_false" if default is True else "store_true"
            arguments["default"] = bool(default)
        else:
            if spec["nargs"] is None:
                if kind not in _TYPES:
                    raise TypeError(f"{config_class.__name__}.{name}: type {kind!r} needs nargs and parse")
                arguments["type"] = _TYPES[kind]
            else:
                arguments["nargs"] = spec["nargs"]
            if spec["choices"] is not None:
                arguments["choices"] = spec["choices"]
            # Named after the flag, not the field (`--k1 K1`, not `--k1 BM25_K1`); choices show themselves.
            if spec["metavar"] is not None or spec["choices"] is None:
                arguments["metavar"] = spec["metavar"] or flag.lstrip("-").upper().replace("-", "_")
            if default is dataclasses.MISSING:
                arguments["required"] = required is not False
                arguments["default"] = None
            else:
                arguments["default"] = default
                shown = spec["default_help"] if spec["default_help"] is not None else default
                if shown is not None:
                    help_text = f"{help_text} (default: {shown})"
        container.add_argument(flag, *spec["aliases"], help=help_text.replace("%", "%%"), **arguments)
        for alias in spec["hidden_aliases"]:
            # Same destination, hidden from --help, and no default of its own (it would overwrite the flag's).
            container.add_argument(alias, **{**arguments, "help": argparse.SUPPRESS,
                                             "default": argparse.SUPPRESS, "required": False})


def config_values(args: argparse.Namespace, config_class: type, **overrides: Any) -> dict[str, Any]:
    """The parsed values of `config_class`'s flags, by field name (`parse` applied), with `overrides` on top:
    `Config(**config_values(args, Config))`."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(config_class):
        if _KEY not in field.metadata or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        parse = field.metadata[_KEY]["parse"]
        values[field.name] = parse(value) if parse is not None and value is not None else value
    values.update(overrides)
    return values


def option_names(config_class: type) -> list[str]:
    """The fields of `config_class` that are CLI flags, in declaration order."""
    return [f.name for f in dataclasses.fields(config_class) if _KEY in f.metadata]

