"""A recipe that masks backgrounds never trains silently without masks: no mask at all stops before any work
(exit 3, naming both fixes); partial coverage is said with counts; the plan line names the coverage."""

import shutil

import pytest

from dali_pipelines.dataset import DatasetError, resolve_dataset
from relic_fast.config import ViewsConfig
from relic_fast.data_plan import check_saliency_masks, data_plan_rows, describe_masks
from relic_fast.errors import ExitCode

from tests.relic_fast.cli.test_cli_errors import one_error_line
from tests.support import REPO, cli_process


@pytest.fixture()
def unmasked_train(tiny_demo, tmp_path):
    """The tiny demo's train split alone: class folders without a mask folder."""
    root = tmp_path / "unmasked"
    shutil.copytree(tiny_demo / "train", root)
    return root


def test_saliency_without_masks_names_both_fixes(unmasked_train):
    with pytest.raises(DatasetError) as err:
        check_saliency_masks(resolve_dataset(str(unmasked_train)), ViewsConfig(saliency_p=0.1))
    message = str(err.value)
    assert str(unmasked_train) in message
    assert f"relic-fast masks {unmasked_train} --out MASKS" in message and "--set data.masks=MASKS" in message
    assert "--set views.saliency_p=0" in message


def test_no_masking_needs_no_masks(unmasked_train):
    assert check_saliency_masks(resolve_dataset(str(unmasked_train)), ViewsConfig(saliency_p=0.0)) is None
    assert describe_masks(None).startswith("off")


def test_partial_coverage_is_counted(tiny_demo, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    masks = sorted((root / "masks" / "train").rglob("*.png"))
    for mask in masks[::2]:
        mask.unlink()
    dataset = resolve_dataset(str(root / "train"))
    coverage = check_saliency_masks(dataset, ViewsConfig(saliency_p=0.5))
    assert coverage == dataset.mask_coverage() == (len(masks) - len(masks[::2]), dataset.num_samples)
    line = describe_masks(coverage)
    assert f"{coverage.with_mask} / {dataset.num_samples} images have a mask" in line
    assert "never blended" in line  # what happens to them: tests/dali_pipelines/test_pipeline_views.py proves it
    full = check_saliency_masks(resolve_dataset(str(tiny_demo / "train")), ViewsConfig(saliency_p=0.5))
    assert describe_masks(full) == f"all {full.images} images have a mask"


def test_pretrain_stops_before_any_work_with_exit_3(unmasked_train, tmp_path):
    run = tmp_path / "run"
    code, output = cli_process.run(cli_process.pretrain_args(unmasked_train, run, 2))
    assert code == ExitCode.DATASET, output
    assert "views.saliency_p=0" in one_error_line(output, "dataset error")
    assert not (run / "checkpoints").exists()


def test_the_plan_names_the_mask_coverage(tiny_demo, tmp_path):
    code, output = cli_process.run(cli_process.pretrain_args(tiny_demo, tmp_path / "run", 1))
    assert code == 0, output
    assert "saliency masks: all" in output.replace("\n", " ")


def test_info_with_data_shows_coverage_and_the_monitors_split(imagenet_kaggle, unmasked_train):
    from typer.testing import CliRunner

    from relic_fast.cli import app
    from relic_fast.config import load_config

    config = load_config(REPO / "configs" / "imagenet_resnet50.toml", ["train.knn_every_epochs=1"])
    rows = dict(data_plan_rows(config, str(imagenet_kaggle.train)))
    assert rows["training images"].startswith("9 in 3 classes")  # 3 wnids x 3 images
    assert "none: pretrain stops" in rows["saliency masks"]  # the recipe masks; the download has no masks
    assert rows["monitor"] == f"every 1 epoch(s) on {imagenet_kaggle.val} (6 images)"  # flat val, CSV found
    assert dict(data_plan_rows(config, str(unmasked_train)))["monitor"] == "off (no val split found)"
    shown = CliRunner().invoke(app, ["info", "--config", "configs/imagenet_resnet50.toml", "--data",
                                     str(imagenet_kaggle.train)])
    assert shown.exit_code == 0, shown.output
    assert "saliency masks" in shown.output and "monitor" in shown.output


def test_pretrain_val_names_the_monitors_split(imagenet_kaggle, tiny_demo, tmp_path):
    code, output = cli_process.run(cli_process.pretrain_args(
        imagenet_kaggle.train, tmp_path / "run", 1, "--set", "views.saliency_p=0", "--set", "train.knn_every_epochs=1",
        "--set", "train.batch_size=4", "--val", str(imagenet_kaggle.val)))
    assert code == 0, output
    assert f"monitor every 1 epoch(s) on {imagenet_kaggle.val} (6 images)" in output.replace("\n", "")
