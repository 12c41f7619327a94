"""Typed configuration: TOML recipes in `configs/` become frozen dataclass sections (`config_sections` for the
training side, `dali_pipelines.recipe` for the data side), assembled into one `Config`.

Each component receives only its own section. `load_config` reads a TOML file, applies
`--set section.key=value` overrides, and validates everything before any work starts: an unknown
section or key, a wrong type or an out-of-range value raises `ConfigError` naming the key, the file
and the valid choices.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dali_pipelines.recipe import DataConfig, InvalidField, ViewsConfig
from relic_fast.config_fields import coerce_field, describe_type, toml_value
from relic_fast.config_legacy import migrate_spellings
from relic_fast.config_sections import EvalConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from relic_fast.errors import ExitCode, RelicFastError


class ConfigError(RelicFastError, ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names key and file."""

    exit_code = ExitCode.CONFIG
    label = "config error"


@dataclass(frozen=True)
class Config:
    """A whole run: one typed section per component."""

    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists), e.g. for JSON or TOML output."""
        return {name: {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in section_names()}

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "LossConfig", "ModelConfig",
           "OptimConfig", "TrainConfig", "ViewsConfig", "load_config", "load_run_config", "parse_overrides",
           "to_toml"]


def section_names() -> list[str]:
    """Names of the config sections, in file order."""
    return [f.name for f in dataclasses.fields(Config)]


def section_type(name: str) -> type:
    """The dataclass of section `name`."""
    return typing.get_type_hints(Config)[name]


def _build_section(name: str, values: dict[str, Any], source: str) -> Any:
    """Build section `name` from `values`, naming key and source in every error."""
    cls = section_type(name)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key '{name}.{key}'; valid keys of [{name}]: "
                              + ", ".join(hints))
        try:
            kwargs[key] = coerce_field(value, hints[key])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: '{name}.{key}': {err}") from None
    try:
        return cls(**kwargs)
    except InvalidField as err:
        hint = hints.get(err.field)
        extra = f" ({describe_type(hint)})" if hint is not None else ""
        raise ConfigError(f"{source}: '{name}.{err.field}': {err.message}{extra}") from None


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Parse `section.key=value` strings; values are read as TOML, falling back to a plain string."""
    parsed: dict[str, dict[str, Any]] = {}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.batch_size=256")
        dotted, raw = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        parsed.setdefault(section, {})[key] = value
    return parsed


def config_from_dict(data: dict[str, Any], source: str = "<dict>",
                     overrides: dict[str, dict[str, Any]] | None = None, warn_legacy: bool = True) -> Config:
    """Build a validated `Config` from nested dicts (file contents, then overrides on top).

    Old spellings and removed keys (`relic_fast.config_legacy`) are read as today's config, with a
    warning; `warn_legacy=False` reads them quietly (a checkpoint's saved config, which the user did not
    write)."""
    merged: dict[str, dict[str, Any]] = {}
    for layer, layer_source in ((data, source), (overrides or {}, "--set")):
        for section, values in layer.items():
            if section not in section_names():
                raise ConfigError(f"{layer_source}: unknown section [{section}]; valid sections: "
                                  + ", ".join(section_names()))
            if not isinstance(values, dict):
                raise ConfigError(f"{layer_source}: [{section}] must be a table of keys")
            merged.setdefault(section, {}).update(migrate_spellings(section, values, layer_source, warn_legacy))
    where = source if not overrides else f"{source} (with --set)"
    return Config(**{name: _build_section(name, merged.get(name, {}), where)
                     for name in section_names()})


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read the TOML recipe at `path` (None: all defaults) and apply `--set` overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return config_from_dict(data, source, parse_overrides(overrides))


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, data: str | None = None,
                    val: str | None = None, val_labels: str | None = None, steps: int | None = None) -> Config:
    """The config a command runs: the recipe at `path` with its `--set` overrides (`load_config`), then the
    command's own options on top, each given one (not None) replacing its key: `--data` (data.path), `--val`
    (data.val), `--val-labels` (data.val_labels) and `--steps` (train.max_steps).

    The one place the command line's overrides are applied: `pretrain`, `profile` and `bench train` call it."""
    config = load_config(path, overrides)
    data_options = {key: value for key, value in (("path", data), ("val", val), ("val_labels", val_labels))
                    if value is not None}
    if data_options:
        config = config.replace(data=dataclasses.replace(config.data, **data_options))
    if steps is not None:
        config = config.replace(train=dataclasses.replace(config.train, max_steps=steps))
    return config


def to_toml(config: Config) -> str:
    """The resolved config as a TOML document that `load_config` reads back to an equal Config."""
    lines = []
    for name, values in config.to_dict().items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
