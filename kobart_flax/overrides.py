"""A config from a file and the command line: `get_config()` files, `section.field=value`.

A config file is Python with a `get_config()` that returns a `kobart_flax.config.Config` (the
big_vision convention), so it can compute values (`16 * 32`) and carry comments. Any field can
then be overridden on the command line as `section.field=value`; a bad one is a one-line
ConfigError naming the field (and the nearest real name for a typo).

Like config, this module does not import jax.
"""

import argparse
import dataclasses
import difflib
import importlib.util
import types
import typing
from pathlib import Path

from kobart_flax.config import Config, ConfigError, field_types, section_class, section_names


def load_config(path: str) -> Config:
    """Imports the Python file at `path` and returns what its `get_config()` returns."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_kobart_config_{config_path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import config file {path} (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} must define get_config()")
    config = get_config()
    if not isinstance(config, Config):
        raise ConfigError(
            f"get_config() in {path} returned {type(config).__name__}, expected "
            "kobart_flax.config.Config"
        )
    return config


def _did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    matches = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {prefix + matches[0]!r}?" if matches else ""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError


def parse_value(text: str, annotation: typing.Any, field_name: str) -> typing.Any:
    """Turns the text of an override into a value of the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)

    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        return parse_value(text, inner, field_name)

    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            return tuple(args[0](item) for item in items)
        except ValueError:
            raise ConfigError(
                f"{field_name}: expected comma-separated {args[0].__name__}s "
                f"like '64,128,256', got {text!r}"
            ) from None

    parsers = {bool: _parse_bool, int: int, float: float, str: str}
    if annotation not in parsers:
        raise ConfigError(f"{field_name}: overriding fields of type {annotation} is not supported")
    try:
        return parsers[annotation](text)
    except ValueError:
        raise ConfigError(f"{field_name}: expected {annotation.__name__}, got {text!r}") from None


def _split_override(override: str) -> tuple[str, str, str]:
    """'train.batch_size=64' -> ('train', 'batch_size', '64'), with helpful errors."""
    key, equals, value = override.partition("=")
    key = key.strip()
    if not equals:
        raise ConfigError(
            f"{key}: missing '=' in override {override!r}, expected section.field=value"
        )
    section_name, dot, field_name = key.partition(".")
    if not dot:
        # Someone wrote 'batch_size=64'; find the section that has this field.
        owners = [
            f"{name}.{key}" for name in section_names() if key in field_types(section_class(name))
        ]
        hint = f"; did you mean {owners[0]!r}?" if owners else ""
        raise ConfigError(f"override {override!r}: expected section.field=value{hint}")
    if section_name not in section_names():
        raise ConfigError(
            f"unknown config section {section_name!r} in override {override!r}"
            + _did_you_mean(section_name, section_names())
        )
    known_fields = list(field_types(section_class(section_name)))
    if field_name not in known_fields:
        raise ConfigError(
            f"unknown config field {key!r}"
            + _did_you_mean(field_name, known_fields, prefix=f"{section_name}.")
        )
    return section_name, field_name, value


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Returns a copy of `config` with each `section.field=value` override applied in order."""
    for override in overrides:
        section_name, field_name, text = _split_override(override)
        section = getattr(config, section_name)
        annotation = field_types(type(section))[field_name]
        value = parse_value(text, annotation, f"{section_name}.{field_name}")
        # replace() builds new section objects, so the caller's config is never mutated.
        config = dataclasses.replace(
            config, **{section_name: dataclasses.replace(section, **{field_name: value})}
        )
    return config


def parse_args(argv: list[str] | None = None) -> Config:
    """`--config PATH section.field=value ...` -> Config. Exits with a usage message on a
    bad config or override, like any other command-line error."""
    parser = argparse.ArgumentParser(
        description="Load a config file and apply section.field=value overrides.",
        epilog=(
            "example:\n  %(prog)s --config configs/kobart_base.py "
            "train.workdir=gs://my-bucket/run1 train.batch_size=256 data.source_buckets=128,256,512"
        ),
        # Keeps the example on one line, as it would be typed.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="configs/tiny.py", help="Python file with get_config()")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value", help="config overrides"
    )
    args = parser.parse_args(argv)
    try:
        return apply_overrides(load_config(args.config), args.overrides)
    except ConfigError as error:
        parser.error(str(error))
