"""ImageNet as it is downloaded (Kaggle's layout): a flat val/ labelled by LOC_val_solution.csv, class names
that travel with file lists and shard sets, splits labelled by the train split's class NAMES, class subsets
(`data.classes`), the monitor's split, and `linear-eval --data ROOT` / `--train --val`. Every bad input is
one `DatasetError` naming the file and row (exit code 3 on the command line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dali_pipelines.dataset import (BUILTIN_CLASS_LISTS, DatasetError, find_monitor_split, read_class_list,
                                    resolve_dataset, resolve_split)
from dali_pipelines.formats.file_list import file_list_text
from dali_pipelines.formats.flat import find_labels_file
from relic_fast.cli import app
from relic_fast.config import ConfigError, load_config
from relic_fast.evaluation.runner import EvalSplits, split_datasets

from tests.support.imagenet_kaggle import MAPPING, WNIDS

TINY = ["model.encoder=resnet18", "model.small_stem=true", "eval.image_size=16", "eval.linear_epochs=2",
        "eval.linear_batch_size=8", "eval.linear_mode=cached_features", "train.device=cpu", "data.device=cpu",
        "data.num_threads=1"]


def sets(options):
    return [item for option in options for item in ("--set", option)]


def linear_eval(*args: str):
    """`relic-fast linear-eval --random-init` on the tiny settings (in-process)."""
    return CliRunner().invoke(app, ["linear-eval", "--random-init", *args, *sets(TINY)])


def error_line(output: str) -> str:
    """The one `dataset error:` line of a CLI output (and no traceback)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "dataset error:" in line]
    assert len(lines) == 1, output
    return lines[0]


# ---------------------------------------------------------------- the flat val folder and its labels

def test_flat_val_reads_the_kaggle_labels_found_by_looking_up(imagenet_kaggle):
    assert find_labels_file(imagenet_kaggle.val) == imagenet_kaggle.solution.resolve()
    val = resolve_dataset(str(imagenet_kaggle.val))
    assert val.format.name == "flat" and val.files == sorted(imagenet_kaggle.val_labels)
    assert val.class_names == list(MAPPING)  # LOC_synset_mapping.txt's order, unused classes included
    assert [val.class_names[label] for label in val.labels] == [imagenet_kaggle.val_labels[f] for f in val.files]
    test = resolve_dataset(str(imagenet_kaggle.test))  # no LOC_test_solution.csv: unlabelled, fine to pretrain on
    assert test.labels == [-1, -1] and test.class_names == []


def test_a_split_takes_the_train_split_class_indices_by_name(imagenet_kaggle):
    train = resolve_dataset(str(imagenet_kaggle.train))
    assert train.class_names == list(WNIDS)
    val = resolve_split(imagenet_kaggle.val, train=train)
    assert val.class_names == list(WNIDS)
    assert val.labels == [WNIDS.index(imagenet_kaggle.val_labels[f]) for f in val.files]


def test_the_labels_file_may_be_named_and_sorted_classes_serve_without_a_mapping(imagenet_kaggle, tmp_path):
    elsewhere = tmp_path / "labels.csv"
    shutil.move(imagenet_kaggle.solution, elsewhere)
    imagenet_kaggle.mapping.unlink()
    assert resolve_dataset(str(imagenet_kaggle.val)).class_names == []  # nothing found: unlabelled
    val = resolve_dataset(str(imagenet_kaggle.val), labels=str(elsewhere))
    assert val.class_names == sorted(set(imagenet_kaggle.val_labels.values()))
    train = resolve_dataset(str(imagenet_kaggle.train))
    aligned = resolve_split(imagenet_kaggle.val, train=train, labels=str(elsewhere))
    assert aligned.labels == [WNIDS.index(imagenet_kaggle.val_labels[f]) for f in aligned.files]
    with pytest.raises(DatasetError, match="needs labels"):
        resolve_split(imagenet_kaggle.test, train=train)


def damage(kaggle, case: str) -> str:
    """Break the miniature one way; returns what the error line must contain."""
    solution = kaggle.solution
    lines = solution.read_text().splitlines()
    if case == "wnid unknown to train":  # a class of the mapping with no train folder
        lines[1] = lines[1].split(",")[0] + ",n01491361 1 1 5 5"
        solution.write_text("\n".join(lines) + "\n")
        return f"{solution}:2: class 'n01491361' is not a class of the train split"
    if case == "wnid unknown to the mapping":
        lines[3] = lines[3].split(",")[0] + ",n09999999 1 1 5 5"
        solution.write_text("\n".join(lines) + "\n")
        return f"{solution}:4: class 'n09999999' is not in"
    if case == "listed image missing":
        solution.write_text("\n".join(lines + ["ILSVRC2012_val_00000099,n01440764 1 1 5 5"]) + "\n")
        return f"{solution}:{len(lines) + 1}: image 'ILSVRC2012_val_00000099' is not in"
    if case == "image without a row":
        solution.write_text("\n".join(lines[:-1]) + "\n")
        return "ILSVRC2012_val_00000001.JPEG: no row in"
    if case == "broken row":
        lines[2] = lines[2].split(",")[0]
        solution.write_text("\n".join(lines) + "\n")
        return f"{solution}:3: expected 'image,class ...'"
    raise AssertionError(case)


BAD_LABELS = ["wnid unknown to train", "wnid unknown to the mapping", "listed image missing", "image without a row",
              "broken row"]


@pytest.mark.parametrize("case", BAD_LABELS)
def test_a_bad_labels_file_is_one_error_naming_file_and_row(imagenet_kaggle, case):
    expected = damage(imagenet_kaggle, case)
    train = resolve_dataset(str(imagenet_kaggle.train))
    with pytest.raises(DatasetError) as caught:
        resolve_split(imagenet_kaggle.val, train=train)
    assert expected in str(caught.value)


@pytest.mark.parametrize("case", ["wnid unknown to train", "broken row"])
def test_linear_eval_stops_on_a_bad_labels_file_with_code_3(imagenet_kaggle, case):
    expected = damage(imagenet_kaggle, case)
    result = linear_eval("--data", str(imagenet_kaggle.cls_loc), "--out", str(imagenet_kaggle.root / "r.json"))
    assert result.exit_code == 3, result.output
    assert expected in error_line(result.output)
    assert not (imagenet_kaggle.root / "r.json").exists()


# ---------------------------------------------------------------- class names in file lists and shard sets

def test_file_list_version_2_records_class_names_and_version_1_still_reads(tmp_path):
    (tmp_path / "a b").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text(file_list_text(["a b/x.jpg", "y.jpg"], [1, 0], ["cat", "big dog"]))
    assert listing.read_text().splitlines()[:3] == ["#relic-fast file-list 2", "#class 0 cat", "#class 1 big dog"]
    spec = resolve_dataset(str(listing))
    assert (spec.files, spec.labels, spec.class_names) == (["a b/x.jpg", "y.jpg"], [1, 0], ["cat", "big dog"])
    legacy = tmp_path / "legacy.txt"
    legacy.write_text("# a comment\nx.jpg 2\ny.jpg 0\n")
    assert resolve_dataset(str(legacy)).class_names == ["0", "1", "2"]


@pytest.mark.parametrize("text, expected", [
    ("#relic-fast file-list 2\n#class 0 cat\n#class 2 dog\nx.jpg 0\n", "list.txt:3: expected '#class 1 <name>'"),
    ("#relic-fast file-list 2\n#class 0 cat\nx.jpg 1\n", "list.txt:3: label 1, but the header names 1 classes"),
    ("#relic-fast file-list 2\n#class 0 cat\n#class 1 cat\nx.jpg 0\n", "list.txt:3: class 'cat' is named twice"),
    ("#relic-fast file-list 9\nx.jpg 0\n", "list.txt:1: file-list version 9 is newer"),
])
def test_a_malformed_file_list_header_names_its_row(tmp_path, text, expected):
    listing = tmp_path / "list.txt"
    listing.write_text(text)
    with pytest.raises(DatasetError, match=expected):
        resolve_dataset(str(listing))


def test_index_validates_a_flat_split_and_writes_its_class_names(imagenet_kaggle, tmp_path):
    from relic_fast.dataset_tools.index import index_dataset

    report = index_dataset(imagenet_kaggle.val, workers=1)
    assert report.index_path == imagenet_kaggle.val / "index.txt" and report.kept == 6
    listed = resolve_dataset(str(report.index_path))
    assert listed.class_names == list(MAPPING)
    assert [listed.class_names[label] for label in listed.labels] == \
        [imagenet_kaggle.val_labels[Path(f).name] for f in listed.files]
    train = resolve_dataset(str(imagenet_kaggle.train))  # the list as a split: labels by name, not index
    assert resolve_split(report.index_path, train=train).labels == \
        [WNIDS.index(imagenet_kaggle.val_labels[Path(f).name]) for f in listed.files]
    damage(imagenet_kaggle, "broken row")
    result = CliRunner().invoke(app, ["index", str(imagenet_kaggle.val), "--out", str(tmp_path / "i.txt")])
    assert result.exit_code == 3 and not (tmp_path / "i.txt").exists()


def test_pack_records_class_names_beside_the_shards(imagenet_kaggle, tmp_path):
    from relic_fast.dataset_tools.pack import pack_dataset

    pack_dataset(imagenet_kaggle.train, tmp_path / "train", shard_size=4, workers=1)
    pack_dataset(imagenet_kaggle.val, tmp_path / "val", shard_size=4, workers=1)
    assert json.loads((tmp_path / "train" / "classes.json").read_text())["classes"] == list(WNIDS)
    train = resolve_dataset(str(tmp_path / "train"))
    assert train.format.name == "webdataset" and train.class_names == list(WNIDS)
    assert resolve_dataset(str(tmp_path / "val")).class_names == list(MAPPING)
    # The val shards' indices (mapping order) happen to equal train's for the classes they use.
    assert resolve_split(tmp_path / "val", train=train).class_names == list(WNIDS)
    (tmp_path / "train" / "classes.json").write_text(json.dumps({"classes": ["x", "y", "z"]}))
    with pytest.raises(DatasetError, match="class 'n01440764' is not a class of the train split"):
        resolve_split(tmp_path / "val", train=resolve_dataset(str(tmp_path / "train")))


# ---------------------------------------------------------------- class subsets

def test_the_imagenet100_list_ships_100_wnids():
    classes = read_class_list("imagenet100")
    assert len(classes.names) == len(set(classes.names)) == 100 and "imagenet100" in BUILTIN_CLASS_LISTS
    assert all(len(n) == 9 and n.startswith("n") and n[1:].isdigit() for n in classes.names)
    assert classes.names[:2] == ["n02869837", "n01749939"]  # CMC's order


def test_data_classes_restricts_every_split_in_the_train_order(imagenet_kaggle, tmp_path):
    subset = tmp_path / "subset.txt"
    subset.write_text(f"# two of three\n{WNIDS[2]}\n\n{WNIDS[0]}\n")
    train = resolve_dataset(str(imagenet_kaggle.train), classes=str(subset))
    assert train.class_names == [WNIDS[0], WNIDS[2]] and train.num_samples == 6
    assert {Path(f).parts[0] for f in train.files} == {WNIDS[0], WNIDS[2]}
    val = resolve_split(imagenet_kaggle.val, train=train, classes=str(subset))
    assert val.num_samples == 4 and set(val.labels) == {0, 1}
    assert [train.class_names[label] for label in val.labels] == [imagenet_kaggle.val_labels[f] for f in val.files]
    subset.write_text(f"{WNIDS[0]}\nn09999999\n")
    with pytest.raises(DatasetError, match=r"subset.txt:2: class 'n09999999' is not a class of"):
        resolve_dataset(str(imagenet_kaggle.train), classes=str(subset))


def test_a_classes_file_naming_a_missing_class_stops_linear_eval_with_code_3(imagenet_kaggle, tmp_path):
    subset = tmp_path / "subset.txt"
    subset.write_text(f"{WNIDS[0]}\nn09999999\n")
    result = linear_eval("--data", str(imagenet_kaggle.cls_loc), "--set", f"data.classes={subset}")
    assert result.exit_code == 3, result.output
    assert "subset.txt:2: class 'n09999999' is not a class of" in error_line(result.output)


def test_the_new_data_keys_are_validated():
    assert load_config(None, ["data.classes=imagenet100"]).data.classes == "imagenet100"
    assert load_config(None, ["data.val_labels=/x/LOC_val_solution.csv", "data.val=/x/val"]).data.val == "/x/val"
    with pytest.raises(ConfigError, match="'data.classes'.*imagenet100"):
        load_config(None, ["data.classes=imagenet10"])
    with pytest.raises(ConfigError, match="'data.val_labels'.*csv"):
        load_config(None, ["data.val_labels=/x/labels.txt"])


# ---------------------------------------------------------------- the monitor's split

def test_find_monitor_split(imagenet_kaggle, tiny_demo, tmp_path):
    assert find_monitor_split(str(tiny_demo)) == tiny_demo.resolve() / "val"  # the demo layout
    assert find_monitor_split(str(imagenet_kaggle.train)) == imagenet_kaggle.val.resolve()  # beside train/
    assert find_monitor_split(str(imagenet_kaggle.cls_loc)) == imagenet_kaggle.val.resolve()  # inside the root
    assert find_monitor_split(str(imagenet_kaggle.train), explicit=str(imagenet_kaggle.test)) == imagenet_kaggle.test
    assert find_monitor_split(str(imagenet_kaggle.val)) is None  # no val/ in it or beside it
    assert find_monitor_split("") is None
    with pytest.raises(DatasetError, match="does not exist"):
        find_monitor_split(str(tiny_demo), explicit=str(tmp_path / "nowhere"))
    labels = shutil.move(imagenet_kaggle.solution, tmp_path / "labels.csv")
    assert find_monitor_split(str(imagenet_kaggle.train)) is None  # a flat val without labels: none
    assert find_monitor_split(str(imagenet_kaggle.train), labels=str(labels)) == imagenet_kaggle.val.resolve()


# ---------------------------------------------------------------- linear-eval's splits

def test_split_datasets_of_a_root_skips_the_unlabelled_test_folder(imagenet_kaggle):
    said = []
    train, vals = split_datasets(imagenet_kaggle.cls_loc, log=said.append)
    assert list(vals) == ["val"] and train.class_names == vals["val"].class_names == list(WNIDS)
    assert said == ["skipping split test: no labels file (LOC_test_solution.csv not found)"]


def test_split_datasets_of_explicit_splits_names_each_by_its_folder(imagenet_kaggle, tmp_path):
    from relic_fast.dataset_tools.index import index_dataset

    listing = index_dataset(imagenet_kaggle.val, out=tmp_path / "val_list.txt", workers=1).index_path
    splits = EvalSplits(train=str(imagenet_kaggle.train), val=(str(imagenet_kaggle.val), str(listing)))
    train, vals = split_datasets(splits)
    assert list(vals) == ["val", "val_list"]
    assert vals["val"].labels == vals["val_list"].labels
    with pytest.raises(DatasetError, match="both be reported as 'val'"):
        split_datasets(EvalSplits(train=str(imagenet_kaggle.train), val=(str(imagenet_kaggle.val),) * 2))


def test_linear_eval_on_the_kaggle_layout(imagenet_kaggle, tmp_path):
    result = linear_eval("--data", str(imagenet_kaggle.cls_loc), "--out", str(tmp_path / "root.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "root.json").read_text())
    assert list(report["splits"]) == ["val"] and report["num_classes"] == 3 and report["val_samples"] == {"val": 6}
    assert "skipping split test" in result.output
    labels = shutil.move(imagenet_kaggle.solution, tmp_path / "labels.csv")
    result = linear_eval("--train", str(imagenet_kaggle.train), "--val", str(imagenet_kaggle.val),
                         "--val", str(imagenet_kaggle.train), "--val-labels", str(labels),
                         "--out", str(tmp_path / "explicit.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "explicit.json").read_text())
    assert report["val_samples"] == {"val": 6, "train": 9} and report["data"].startswith("train=")


@pytest.mark.parametrize("args", [[], ["--data", "D", "--train", "T", "--val", "V"], ["--train", "T"]])
def test_linear_eval_split_flags_go_together(args):
    assert linear_eval(*args).exit_code == 2
