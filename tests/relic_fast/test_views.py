"""`relic-fast views` on a small demo dataset: the picture exists with one row per image and one panel per view
(plus the image and its mask), and every caption says what the pipeline's debug statistics recorded."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dali_pipelines.pretrain import STATS_FIELDS
from relic_fast.cli import app
from relic_fast.config import load_run_config
from relic_fast.demo_data import generate_demo_dataset
from relic_fast.views import CAPTION_LINES, CELL, LINE, write_views

VIEWS = ["views.num_large=2", "views.num_small=1", "views.large_size=32", "views.small_size=16",
         "views.saliency_p=0.5", "views.solarize_p=[0.0, 0.5]", "data.num_threads=1"]
"""Every augmentation drawn often enough that 3 images show each decision both ways."""

CAPTION = re.compile(r"(?P<name>(large|small) \d)(?P<flipped>, flipped)?\n"
                     r"y (?P<y0>[\d.]+)-(?P<y1>[\d.]+) x (?P<x0>[\d.]+)-(?P<x1>[\d.]+)\n"
                     r"jitter (?P<jitter>yes|no), gray (?P<gray>yes|no)\n"
                     r"blur (?P<blur>no|[\d.]+), sol (?P<solarize>yes|no), sal (?P<saliency>yes|no)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("views") / "demo"
    generate_demo_dataset(root, images=20, size=32, seed=0, workers=1, progress=False)
    return root


def test_the_picture_has_a_row_per_image_and_captions_match_the_statistics(demo, tmp_path):
    config = load_run_config(None, VIEWS, data=str(demo))
    sheet = write_views(config, tmp_path / "views.png", images=3)
    assert (sheet.rows, sheet.columns) == (3, 2 + 3)
    assert Image.open(sheet.path).size == (sheet.columns * CELL, sheet.rows * (CELL + LINE * CAPTION_LINES))
    assert sheet.stats.shape == (3, 3, len(STATS_FIELDS))
    column = {name: i for i, name in enumerate(STATS_FIELDS)}
    for i in range(3):
        for k, text in enumerate(sheet.captions[i]):
            match = CAPTION.fullmatch(text)
            assert match, text
            stats = sheet.stats[i, k]
            assert match["name"] == ("large 0", "large 1", "small 0")[k]
            for key in ("y0", "y1", "x0", "x1"):
                assert float(match[key]) == pytest.approx(stats[column[key]], abs=0.005)
            assert bool(match["flipped"]) == (stats[column["flip"]] > 0) == (stats[column["x0"]] > stats[column["x1"]])
            for key in ("jitter", "gray", "solarize", "saliency"):
                assert (match[key] == "yes") == (stats[column[key]] > 0), key
            blurred = match["blur"] != "no"
            assert blurred == (stats[column["blur"]] > 0)
            if blurred:
                assert float(match["blur"]) == pytest.approx(stats[column["sigma"]], abs=0.005)
    decisions = sheet.stats[..., [column[key] for key in ("flip", "jitter", "solarize")]]
    assert 0 < decisions.sum() < decisions.size  # the captions are not all alike
    assert not np.any(sheet.stats[:, 2, column["saliency"]])  # the small view never blends


def test_the_command_writes_the_picture(demo, tmp_path):
    out = tmp_path / "sheet.png"
    args = ["views", "--data", str(demo), "--out", str(out), "--images", "2"]
    for override in VIEWS:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (5 * CELL, 2 * (CELL + LINE * CAPTION_LINES))
