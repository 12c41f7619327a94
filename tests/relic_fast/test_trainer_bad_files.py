"""Pretraining meets real-world data: bad files stop an unindexed run naming the file, an indexed run never
meets them, and `data.on_bad_file = "skip"` trains on the rest."""

import dataclasses

import pytest

from dali_pipelines.loader import BadImageError
from relic_fast.dataset_tools.index import index_dataset
from relic_fast.trainer import pretrain

from tests.support.tiny_recipe import BROKEN

def configured(config, path, **data):
    """The tiny recipe on `path` (a tree without masks: no saliency masking) for 2 steps."""
    return config.replace(data=dataclasses.replace(config.data, path=str(path), **data),
                          views=dataclasses.replace(config.views, saliency_p=0.0),
                          train=dataclasses.replace(config.train, max_steps=2, epochs=20))


def test_unindexed_run_stops_naming_the_bad_file(tiny_config, messy_tree, tmp_path):
    with pytest.raises(BadImageError) as info:
        pretrain(configured(tiny_config, messy_tree), out_dir=tmp_path / "run")
    message = str(info.value)
    assert any(name in message for name in BROKEN), message
    assert "relic-fast index" in message


def test_indexed_run_never_meets_a_bad_file(tiny_config, messy_tree, tmp_path):
    report = index_dataset(messy_tree, workers=1)
    rejected = report.rejected_path.read_text()
    assert all(name in rejected for name in BROKEN)
    summary = pretrain(configured(tiny_config, report.index_path), out_dir=tmp_path / "run")
    assert summary["steps"] == 2


def test_skip_mode_trains_on_the_readable_images(tiny_config, messy_tree, tmp_path, capsys):
    summary = pretrain(configured(tiny_config, messy_tree, on_bad_file="skip"), out_dir=tmp_path / "run")
    assert summary["steps"] == 2
    assert "skipping 2 unreadable image(s)" in capsys.readouterr().out
