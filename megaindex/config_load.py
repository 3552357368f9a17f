"""Reading a run's configuration: YAML recipes plus dotted command-line overrides.

Owns the YAML dialect of recipes (one loader: `1e-5` is a number, as YAML 1.2 and every user
expect, and a key given twice in one mapping is an error naming the file and both lines), parsing
`section.field=value` overrides, applying a model preset before explicit fields, and converting
each value to its field's type with an error that names the field. The sections themselves and
their checks are config.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from megaindex import presets
from megaindex.config import Config, ConfigError


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats (1e-5) and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}:{line}: duplicate key '{key}' (first at line {seen[key]}); "
                    f"YAML would silently keep only the last one, so merge the two."
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def read_yaml(text: str, name: str) -> Any:
    """Parse recipe YAML; `name` (a path) is what errors point at."""
    loader = _RecipeLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {k: v for k, v in hints.items() if dataclasses.is_dataclass(v)}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'.{hint} Known keys in this section: {', '.join(known)}")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert a YAML value to the field's annotated type, naming the field on failure."""
    origin = get_origin(typ)
    if origin is Literal:
        if value not in get_args(typ):
            choices = ", ".join(repr(a) for a in get_args(typ))
            raise ConfigError(f"{where} = {value!r} is not one of {choices}.")
        return value
    args = get_args(typ)
    if args and type(None) in args:  # Optional[X] / X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} = {value!r} must be true or false.")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} = {value!r} must be an integer.")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r} must be a number.")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r} must be a string.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} = {value!r} must be a list.")
        return value
    return value


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts; the model preset is applied before explicit fields."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections.")
    sections = _section_types()
    top_known = [f.name for f in dataclasses.fields(Config)]
    cfg = Config()
    for key, value in raw.items():
        if key not in top_known:
            raise _unknown(key, top_known, f"{source}: ")
        if key not in sections:
            setattr(cfg, key, _coerce(value, get_type_hints(Config)[key], f"{source}: {key}"))
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section '{key}' must be a mapping, got {value!r}.")
        cls = sections[key]
        hints = get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        values = dict(value)
        if key == "model" and values.get("preset"):
            try:
                values = {**presets.preset(values["preset"]), **values}
            except KeyError as e:
                raise ConfigError(f"{source}: model.preset: {e.args[0]}") from None
        kwargs = {}
        for k, v in values.items():
            if k not in known:
                raise _unknown(k, known, f"{source}: {key}.")
            kwargs[k] = _coerce(v, hints[k], f"{source}: {key}.{k}")
        setattr(cfg, key, cls(**kwargs))
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-5' -> (['optim', 'lr'], 1e-5); the value is parsed as recipe YAML.

    A value YAML cannot read is taken as the plain string it is (`name=@home`), unless it opens a
    quote or a bracket it does not close, which is a one-line error.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.field=value (e.g. optim.lr=1e-5).")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) not in (1, 2) or not all(parts):
        raise ConfigError(f"override '{text}': the key must be section.field (e.g. parallel.context_parallel_size).")
    if not value.strip():
        return parts, None
    try:
        return parts, read_yaml(value, f"override '{text}'")
    except yaml.YAMLError as e:
        if value.strip()[0] in "\"'[{":
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise ConfigError(
                f"override '{text}': cannot read the value ({problem}); close the quote or bracket "
                f"(in a shell, wrap the whole override in single quotes: '{key}=\"...\"')."
            ) from None
        return parts, value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a YAML recipe and apply dotted overrides; errors name the file and the key."""
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist.")
        try:
            raw = read_yaml(path.read_text(), str(path)) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
        source = str(path)
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 1:
            raw[parts[0]] = value
        else:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"override '{text}': '{parts[0]}' is not a section.")
            section[parts[1]] = value
    return from_dict(raw, source)


def parse_args_with_overrides(parser, argv: list[str]):
    """`parser.parse_args(argv)` for commands whose positional `overrides` list may also stand
    after options (`info RECIPE --json optim.lr=1e-5`): argparse stops filling a positional list
    at the first option, so `section.field=value` words left over are added to it."""
    args, rest = parser.parse_known_args(argv)
    extra = [w for w in rest if "=" in w and not w.startswith("-")]
    unknown = [w for w in rest if w not in extra]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args
