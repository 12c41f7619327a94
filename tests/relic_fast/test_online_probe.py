"""The live accuracy signal while pretraining: the online probe learns from the training batches' labels
without touching the encoder's training, and the monitor logs kNN and probe top-1 on the val split."""

import dataclasses
import json

import torch

from relic_fast.checkpoint import checkpoint_path, read_checkpoint
from relic_fast.evaluation.validate import KnnValidator
from relic_fast.trainer import pretrain


def with_sections(config, **sections):
    """`config` with fields of its sections replaced, e.g. train={"max_steps": 4}."""
    return config.replace(**{name: dataclasses.replace(getattr(config, name), **changes)
                             for name, changes in sections.items()})


def test_the_probe_leaves_the_encoders_training_bit_for_bit(tiny_config, tmp_path):
    runs = {}
    for probe in (False, True):
        config = with_sections(tiny_config, train={"max_steps": 4, "checkpoint_every": 4},
                               eval={"online_probe": probe})
        pretrain(config, out_dir=tmp_path / str(probe))
        runs[probe] = read_checkpoint(checkpoint_path(tmp_path / str(probe), 4))
    assert runs[True]["online_probe"] is not None and runs[False]["online_probe"] is None
    for network in ("online", "target"):
        with_probe, without = runs[True][network], runs[False][network]
        assert with_probe.keys() == without.keys()
        assert all(torch.equal(with_probe[key], without[key]) for key in without), network
    assert torch.equal(runs[True]["rng"][0]["cpu"], runs[False]["rng"][0]["cpu"])  # no random draw of its own


def test_metrics_hold_the_probe_and_the_monitor(tiny_config, tmp_path, capsys):
    config = with_sections(tiny_config, train={"max_steps": 10, "knn_every_epochs": 1, "log_every": 5},
                           eval={"online_probe": True, "image_size": 32})
    pretrain(config, out_dir=tmp_path, validator=KnnValidator.from_config(config))  # 5 steps per epoch
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "online_probe_train_top1" in line]
    monitored = [line for line in lines if "knn_top1" in line]
    assert [line["step"] for line in logged] == [5, 10]
    assert all(0.0 <= line["online_probe_train_top1"] <= 100.0 for line in logged)
    assert [(line["step"], line["epoch"]) for line in monitored] == [(5, 1.0), (10, 2.0)]
    assert all(0.0 <= line["online_probe_top1"] <= 100.0 and 0.0 <= line["knn_top1"] <= 100.0 for line in monitored)
    printed = capsys.readouterr().out.replace("\n", " ")
    assert "monitor every 1 epoch(s) on" in printed and "online probe on" in printed


def test_the_plan_says_when_the_monitor_is_off(tiny_config, tmp_path, capsys):
    config = with_sections(tiny_config, train={"max_steps": 1, "knn_every_epochs": 1})
    pretrain(config, out_dir=tmp_path / "none", validator=None)
    assert "monitor off (train.knn_every_epochs = 0)" in capsys.readouterr().out.replace("\n", " ")


class FailingValidator:
    """A monitor that fails at its first pass (a val split that turned unreadable mid-run, say)."""

    def should_validate(self, epochs_done):
        return True

    def validate(self, encoder, **_):
        raise OSError("val/x.jpg: Input/output error")


class SignalledValidator:
    """A monitor during which SIGTERM arrives (a preemption): it polls `should_stop` as the real one does."""

    def __init__(self):
        self.gave_up = False

    def should_validate(self, epochs_done):
        return True

    def validate(self, encoder, *, should_stop, **_):
        import os
        import signal

        from relic_fast.loop import MonitorInterrupted

        os.kill(os.getpid(), signal.SIGTERM)
        if should_stop():
            self.gave_up = True
            raise MonitorInterrupted()
        return {"knn_top1": 0.0}


def test_a_failing_monitor_checkpoints_before_the_run_stops(tiny_config, tmp_path):
    import pytest

    from relic_fast.checkpoint import list_checkpoints
    from relic_fast.errors import MonitorError

    config = with_sections(tiny_config, train={"max_steps": 10, "checkpoint_every": 100})
    with pytest.raises(MonitorError, match=r"after epoch 1 \(OSError: val/x.jpg: Input/output error\); saved .*"
                                           r"step-000000005.pt; `--resume` continues"):
        pretrain(config, out_dir=tmp_path, validator=FailingValidator())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000005.pt"]


def test_a_stop_signal_during_the_monitor_checkpoints_and_stops(tiny_config, tmp_path):
    import pytest

    from relic_fast.checkpoint import list_checkpoints
    from relic_fast.errors import RunStopped

    validator = SignalledValidator()
    config = with_sections(tiny_config, train={"max_steps": 10, "checkpoint_every": 100})
    with pytest.raises(RunStopped, match="SIGTERM received; finished step 5 and saved"):
        pretrain(config, out_dir=tmp_path, validator=validator)
    assert validator.gave_up
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000005.pt"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any("knn_top1" in line for line in lines)  # an abandoned pass logs nothing


def test_plot_draws_the_curves_of_a_run(tiny_config, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from relic_fast.cli import app
    from relic_fast.loss import LOSS_METRICS
    from relic_fast.plot import panels, read_metrics, series

    config = with_sections(tiny_config, train={"max_steps": 4, "log_every": 1}, eval={"online_probe": True})
    summary = pretrain(config, out_dir=tmp_path)
    assert summary["curves"] == tmp_path / "curves.png" and summary["curves"].is_file()  # a finished run draws once
    rows = read_metrics(tmp_path)
    assert series(rows, "loss")[0] == [1, 2, 3, 4] and len(series(rows, "online_probe_train_top1")[1]) == 4
    (tmp_path / "curves.png").unlink()
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "curves.png") as picture:
        width, height = picture.size
    assert height > width and len(panels(LOSS_METRICS)) == 4  # one panel a row
    missing = CliRunner().invoke(app, ["plot", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "metrics.jsonl does not exist" in missing.output
