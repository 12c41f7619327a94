"""One rule for `pretrain --resume` (`relic_fast.resume_rule`): every config key may change or is refused, a
refusal names every changed key in one line (exit 6, never the loader's traceback), `--accept-change KEY` goes
on with the new value for real and records it, and what may change keeps the run bit-identical."""

import dataclasses
import json
import re
import shutil
import tomllib

import pytest
import torch
from typer.testing import CliRunner

from relic_fast.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint
from relic_fast.cli import app
from relic_fast.config import section_names, section_type
from relic_fast.errors import ExitCode
from relic_fast.resume_rule import MAY_CHANGE, PSEUDO_KEYS, REFUSED, RULES

from tests.relic_fast.test_trainer import assert_same_weights
from tests.support import REPO, cli_process

PROBE = ("--set", "eval.online_probe=true")
"""Every run here trains the online probe, so that a resume can show it restarting."""


def config_keys() -> set[str]:
    """`section.key` of every field of every config section."""
    return {f"{name}.{field.name}" for name in section_names() for field in dataclasses.fields(section_type(name))}


def test_every_config_key_is_classified():
    assert config_keys() - RULES.keys() == set(), "give these keys a line in relic_fast/resume_rule.py"
    assert RULES.keys() - config_keys() - set(PSEUDO_KEYS) == set(), "the rule names keys the config lacks"
    assert {rule.verdict for rule in RULES.values()} == {MAY_CHANGE, REFUSED}


def readme_resume_table() -> dict[str, str]:
    """{key or `section.*`: verdict} from the README's table of what `--resume` may change."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| what | on `--resume` |"):]
    rows = {}
    for line in (line.strip() for line in table.splitlines()[2:]):
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for key in re.findall(r"`([a-z_]+(?:\.[a-z_*]+)?)`", cells[0]):
            rows[key] = cells[1]
    return rows


def test_the_readme_table_states_the_rule():
    documented = readme_resume_table()
    for key, rule in RULES.items():
        section = key.split(".")[0]
        verdict = documented.get(key, documented.get(f"{section}.*"))
        assert verdict is not None, f"{key} is missing from the README's resume table"
        assert verdict.startswith(rule.verdict), f"{key}: README says {verdict!r}, the rule {rule.verdict!r}"


@pytest.fixture(scope="module")
def data_copy(tmp_path_factory, tiny_demo):
    """A copy of the tiny demo dataset (tests make smaller variants of it)."""
    return shutil.copytree(tiny_demo, tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, data_copy):
    """A tiny run stopped by `--steps 2` (checkpoint at step 2); tests resume copies of it."""
    run = tmp_path_factory.mktemp("two-steps") / "run"
    result = CliRunner().invoke(app, cli_process.pretrain_args(data_copy, run, 2, *PROBE))
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture()
def run_copy(two_step_run, tmp_path):
    """A copy of `two_step_run` this test may resume."""
    return shutil.copytree(two_step_run, tmp_path / "run")


def smaller(data, tmp_path, drop: int):
    """A copy of `data` less the first `drop` images of its first train class: fewer, different files."""
    copy = shutil.copytree(data, tmp_path / "smaller")
    first_class = sorted(p for p in (copy / "train").iterdir() if p.is_dir())[0]
    for image in sorted(first_class.glob("*.jpg"))[:drop]:
        image.unlink()
    return copy


def one_line(output: str, label: str) -> str:
    """The single `label: ...` line of `output`; no traceback may come with it."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith(f"{label}:")]
    assert len(lines) == 1, output
    return lines[0]


def test_a_resume_that_changes_the_run_is_refused_naming_every_changed_key(data_copy, run_copy, tmp_path):
    changes = {"data.shuffle": "false", "views.flip_p": "0.5", "optim.weight_decay": "0.001", "train.epochs": "3",
               "loss.beta": "0.5", "optim.base_lr": "1.0", "data.num_threads": "2"}
    overrides = [arg for key, value in changes.items() for arg in ("--set", f"{key}={value}")]
    args = cli_process.pretrain_args(smaller(data_copy, tmp_path, 2), run_copy, 4, "--resume", *PROBE, *overrides)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ExitCode.RESUME_MISMATCH, result.output
    line = one_line(result.output, "cannot resume")
    for key in changes.keys() - {"data.num_threads"}:  # that one may change
        assert f"{key} = " in line and f"--accept-change {key}" in line, (key, line)
    assert "data.num_threads" not in line, line
    assert "dataset: 40 images" in line and "38 images" in line, line  # the data itself, by its fingerprint
    assert "--accept-change dataset" in line and "relic-fast index" in line, line  # the way on after dropping bad files
    assert [p.name for p in list_checkpoints(run_copy)] == ["step-000000002.pt"]


def metrics_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_accepted_change_takes_effect_and_is_recorded(data_copy, run_copy):
    args = cli_process.pretrain_args(data_copy, run_copy, 3, "--resume", *PROBE, "--set", "optim.weight_decay=0.001",
                                     "--set", "optim.momentum=0.8", "--set", "eval.online_probe_lr=0.05",
                                     "--accept-change", "optim.weight_decay", "--accept-change", "optim.momentum")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "accepted changes at step 2: optim.weight_decay 1e-06 -> 0.001, optim.momentum 0.9 -> 0.8" in text, text
    assert "online probe restarts" in text and "eval.online_probe_lr" in text, text
    recorded = [row for row in metrics_rows(run_copy) if "accepted_changes" in row]
    assert [row["step"] for row in recorded] == [2]
    assert recorded[0]["accepted_changes"] == {"optim.weight_decay": {"old": 1e-06, "new": 0.001},
                                               "optim.momentum": {"old": 0.9, "new": 0.8}}
    groups = read_checkpoint(checkpoint_path(run_copy, 3))["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["momentum"]) for g in groups] == [(0.001, 0.8), (0.0, 0.8)]  # norms: no decay
    assert tomllib.loads((run_copy / "config.toml").read_text())["optim"]["weight_decay"] == 0.001


def test_a_changed_dataset_goes_on_when_accepted_its_order_restarting(data_copy, run_copy, tmp_path):
    args = cli_process.pretrain_args(smaller(data_copy, tmp_path, 2), run_copy, 4, "--resume", *PROBE,
                                     "--accept-change", "dataset")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dataset 40 images" in text and "38 images" in text and "data order restarts" in text, text
    assert read_checkpoint(list_checkpoints(run_copy)[-1])["step"] == 4
    assert read_checkpoint(checkpoint_path(run_copy, 4))["dataset"]["images"] == 38


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_copy):
    """The 4-step run the resumed ones must match."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = CliRunner().invoke(app, cli_process.pretrain_args(data_copy, run, 4, *PROBE))
    assert result.exit_code == 0, result.output
    return run


def test_what_may_change_keeps_the_run_bit_identical(data_copy, run_copy, uninterrupted):
    free = ["data.num_threads=2", "data.prefetch_queue_depth=3", "train.log_every=3", "train.checkpoint_every=1",
            "train.keep_checkpoints=5", "eval.knn_k=5", f"data.val={data_copy / 'val'}"]
    args = cli_process.pretrain_args(data_copy, run_copy, 4, "--resume", *PROBE,
                                     *[arg for item in free for arg in ("--set", item)])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "accepted changes" not in result.output and "online probe restarts" not in result.output
    assert_same_weights(checkpoint_path(uninterrupted, 4), checkpoint_path(run_copy, 4))


def as_written_before_the_rule(path) -> None:
    """Rewrite checkpoint `path` as older versions wrote it: rank 0's random state alone, no fingerprint of the
    images, no resolved config."""
    state = read_checkpoint(path)
    state["rng"] = state["rng"][0]
    for key in ("dataset", "resolved_config"):
        del state[key]
    torch.save(state, path)


def test_a_checkpoint_written_before_the_rule_still_resumes_and_is_still_checked(data_copy, run_copy, tmp_path,
                                                                                  uninterrupted):
    as_written_before_the_rule(checkpoint_path(run_copy, 2))
    args = cli_process.pretrain_args(smaller(data_copy, tmp_path, 2), run_copy, 4, "--resume", *PROBE)
    result = CliRunner().invoke(app, args)  # its image count is read from the saved loader position
    assert result.exit_code == ExitCode.RESUME_MISMATCH, result.output
    assert "dataset: 40 images in the checkpoint" in one_line(result.output, "cannot resume")
    result = CliRunner().invoke(app, cli_process.pretrain_args(data_copy, run_copy, 4, "--resume", *PROBE))
    assert result.exit_code == 0, result.output
    assert_same_weights(checkpoint_path(uninterrupted, 4), checkpoint_path(run_copy, 4))
