"""Results tied to their configs: the provenance record every results JSON carries, and its warnings."""

from __future__ import annotations

import hashlib
import json

import pytest

from relic_fast import provenance as prov
from relic_fast.config import load_config

from tests.support import REPO

DEMO = REPO / "configs" / "demo_cpu.toml"


def in_git_checkout() -> bool:
    return prov.repository_root() is not None


def test_record_holds_the_resolved_config_plan_file_hash_and_commit():
    config = load_config(DEMO)
    record = prov.provenance(config, DEMO)
    assert record["config"] == config.to_dict()
    assert record["plan"]["device"] == "cpu" and record["plan"]["precision"] == "fp32"
    assert record["config_file"]["sha256"] == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert {"commit", "dirty", "uncommitted", "untracked"} <= set(record["git"]) and "torch" in record["machine"]
    if in_git_checkout():
        assert record["config_file"]["path"] == "configs/demo_cpu.toml"  # relative to the repository
        assert record["config_file"]["tracked"] is True and len(record["git"]["commit"]) == 40
        assert record["git"]["dirty"] == bool(record["git"]["uncommitted"])


def test_warnings_name_an_untracked_config_and_a_dirty_tree(tmp_path, monkeypatch):
    outside = tmp_path / "mine.toml"
    outside.write_text("[train]\nbatch_size = 8\n")
    record = prov.provenance(None, outside)
    assert record["config_file"]["path"] == str(outside) and not record["config_file"]["in_repository"]
    monkeypatch.setattr(prov, "git_state", lambda: {"commit": "a" * 40, "dirty": True,
                                                    "uncommitted": ["relic_fast/loss.py"], "untracked": []})
    record = prov.provenance(None, outside)
    warnings = prov.provenance_warnings(record)
    assert any("outside the repository" in w for w in warnings)
    assert any("uncommitted changes (relic_fast/loss.py)" in w and "aaaaaaaaaaaa" in w for w in warnings)
    untracked = {**record, "config_file": {"path": "configs/new.toml", "in_repository": True, "tracked": False,
                                           "committed": False},
                 "git": {"commit": "a" * 40, "dirty": False, "uncommitted": [], "untracked": []}}
    assert prov.provenance_warnings(untracked) == [
        "the config file configs/new.toml is not tracked by git: commit it, or nobody can recover the recipe "
        "behind these results"]


def test_written_json_carries_the_record(tmp_path):
    record = prov.provenance(load_config(DEMO), DEMO)
    path = prov.write_results_json(tmp_path / "deep" / "r.json", {"rows": [1]}, record)
    saved = json.loads(path.read_text())
    assert saved["rows"] == [1] and saved["provenance"]["config_file"] == record["config_file"]
    assert list(path.parent.iterdir()) == [path]  # written through a temporary name, nothing left behind


def test_the_experiment_writes_provenance_and_warns(tiny_demo, tmp_path, monkeypatch, capsys):
    from relic_fast.experiments import experiment, variants

    monkeypatch.setattr(variants, "evaluate_encoder", lambda encoder, config, data_root: {
        "splits": {"val": {"top1": 20.0, "top5": 60.0}}})
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("[views]\nsaliency_p = 0.0\n")
    experiment.run_demo_experiment(recipe, data_root=tiny_demo, out_dir=tmp_path / "exp", seeds=1,
                                   variants=["random_init"])
    assert "outside the repository" in " ".join(capsys.readouterr().out.split())
    saved = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    record = saved["provenance"]
    assert record["config_file"]["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert record["config"]["views"]["saliency_p"] == 0.0 and record["plan"]["device"] == "cpu"
    assert saved["settings"]["config"] == str(recipe.resolve())
    assert saved["rows"][0]["code"] == {"commit": record["git"]["commit"], "dirty": record["git"]["dirty"]}
