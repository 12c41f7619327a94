"""Config: TOML recipes round-trip, overrides parse to field types, every error names key and file."""

from pathlib import Path

import pytest

from relic_fast.config import (Config, ConfigError, load_config, load_run_config, section_names, section_type,
                               to_toml)
from relic_fast.config_fields import field_docs

from tests.support import REPO

CONFIGS = sorted((REPO / "configs").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_paper():
    config = load_config(None)
    assert (config.views.num_large, config.views.num_small) == (4, 2)
    assert config.views.view_setting(0) == (1.0, 0.0) and config.views.view_setting(1) == (0.1, 0.2)
    assert config.views.view_setting(4) == (1.0, 0.0)  # small views continue the alternation
    assert config.loss.temperature == 0.2 and config.optim.tau_base == 0.996


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    again = load_config(write(tmp_path, to_toml(config)))
    assert again == config


def test_round_trip_preserves_non_default_values(tmp_path):
    config = load_config(None, ["views.blur_p=[0.5, 0.25, 0.75]", "train.precision=fp16",
                                "model.small_stem=true", "optim.base_lr=0.45"])
    assert config.views.blur_p == (0.5, 0.25, 0.75)
    assert config.train.precision == "fp16" and config.model.small_stem is True
    assert load_config(write(tmp_path, to_toml(config))) == config


def test_overrides_parse_to_field_types():
    config = load_config(None, ["train.batch_size=256", "optim.weight_decay=1", "data.path=/data/x"])
    assert config.train.batch_size == 256 and isinstance(config.train.batch_size, int)
    assert config.optim.weight_decay == 1.0 and isinstance(config.optim.weight_decay, float)
    assert config.data.path == "/data/x"


@pytest.mark.parametrize("text, expected", [
    ("[nonsense]\nx = 1\n", ["unknown section [nonsense]", "valid sections", "views"]),
    ("[train]\nbatchsize = 4\n", ["'train.batchsize'", "valid keys", "batch_size"]),
    ("[train]\nbatch_size = \"big\"\n", ["'train.batch_size'", "expected an integer"]),
    ("[train]\nbatch_size = 1\n", ["'train.batch_size'", "must be >= 2"]),
    ("[train]\nprecision = \"fp8\"\n", ["'train.precision'", "'bf16'", "'fp16'", "'fp32'"]),
    ("[views]\nlarge_area = [0.9, 0.1]\n", ["'views.large_area'", "min <= max"]),
    ("[views]\nflip_p = 1.5\n", ["'views.flip_p'", "probability"]),
    ("[views]\nmean = [0.5, 0.5]\n", ["'views.mean'", "3"]),
    ("[model]\nwidth = 3\n", ["'model.width'", "1, 2 or 4"]),
    ("[model]\nsmall_stem = 1\n", ["'model.small_stem'", "true or false"]),
    ("[loss]\ntemperature = 0\n", ["'loss.temperature'", "> 0"]),
])
def test_errors_name_key_file_and_choices(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match="'optim.momentum'"):
        load_config(None, ["optim.momentum=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["batch_size=3"])
    with pytest.raises(ConfigError, match=r"unknown section \[optimizer\]"):
        load_config(None, ["optimizer.lr=1"])


def test_command_line_options_go_on_top_of_the_recipe_and_its_sets():
    config = load_run_config(None, ["data.path=set", "train.max_steps=5"], data="flag", val="val", steps=7)
    assert (config.data.path, config.data.val, config.train.max_steps) == ("flag", "val", 7)
    config = load_run_config(None, ["data.path=set"], data=None, val_labels="labels.csv")
    assert (config.data.path, config.data.val_labels, config.train.max_steps) == ("set", "labels.csv", 0)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))


def test_every_field_is_documented():
    for name in section_names():
        cls = section_type(name)
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if f not in docs]
        assert not missing, f"[{name}] fields without a docstring: {missing}"


def test_config_is_frozen():
    config = Config()
    with pytest.raises(Exception):
        config.train.batch_size = 3  # type: ignore[misc]
