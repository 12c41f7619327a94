"""A golden loss curve (as torchtitan keeps in its tests): the first steps of a tiny CPU run, committed, so a
change that alters training (data order, augmentation, model, loss, optimizer, schedules) is seen at once.

After a change that alters training on purpose, regenerate the curve with
`RELIC_FAST_UPDATE_GOLDEN=1 python -m pytest tests/relic_fast/test_golden_loss.py` and say why in the commit.
"""

import dataclasses
import json
import os

import pytest

from relic_fast.trainer import pretrain

from tests.support import REPO

GOLDEN = REPO / "tests" / "assets" / "losses" / "tiny_cpu.json"
STEPS = 6
TOLERANCE = 1e-4
"""Absolute, on losses around 2: a real change moves them by 1e-2 or more at once, while float reordering
between two machines of the same kind stays below 1e-5 over these few steps."""


@pytest.mark.slow
def test_the_first_steps_follow_the_golden_curve(tiny_config, tmp_path):
    config = tiny_config.replace(train=dataclasses.replace(tiny_config.train, max_steps=STEPS, log_every=1))
    pretrain(config, out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    curve = {name: [row[name] for row in rows if "loss" in row] for name in ("loss", "contrastive", "invariance")}
    assert len(curve["loss"]) == STEPS
    if os.environ.get("RELIC_FAST_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"recipe": "tests/support/tiny_recipe.py on the tiny_demo fixture",
                                      "steps": STEPS, **curve}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for name, values in curve.items():
        assert values == pytest.approx(golden[name], abs=TOLERANCE), name
