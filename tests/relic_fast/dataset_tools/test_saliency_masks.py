"""Unsupervised saliency masks: the methods find objects, masks beat a centre prior on the demo dataset,
runs resume, masks match DALI's decoded size, and the scores are the textbook ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from relic_fast.cli import app
from relic_fast.dataset_tools.masks import (DEFAULT_METHOD, compute_masks, evaluate_centre_prior,
                                            evaluate_masks, load_for_saliency, mask_scores, read_mask)
from relic_fast.dataset_tools.saliency import (METHODS, binarize, centre_prior_mask, otsu_threshold,
                                               rgb_to_lab)
from relic_fast.demo_data import generate_demo_dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small demo dataset with ground-truth masks under masks/train."""
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(root, images=60, size=64, seed=3, workers=1, progress=False)
    return root


def square_on_stripes(batch: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of a red square (random place) on grey/blue stripes, and the squares' masks."""
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(size)
    stripes = ((x[None, :] + x[:, None]) // 4 % 2).float()
    rgb = torch.stack([0.3 + 0.1 * stripes, 0.3 + 0.1 * stripes, 0.4 + 0.5 * stripes])[None].repeat(batch, 1, 1, 1)
    truth = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(batch):
        top, left = torch.randint(8, size - 28, (2,), generator=generator).tolist()
        rgb[i, :, top:top + 20, left:left + 20] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
        truth[i, top:top + 20, left:left + 20] = True
    return rgb, truth


def test_every_method_maps_to_unit_range_and_finds_a_square():
    rgb, truth = square_on_stripes()
    centre = centre_prior_mask(64, 64, area=400 / 4096)
    centre_iou = np.mean([mask_scores(centre.numpy(), t.numpy())[0] for t in truth])
    for name, method in METHODS.items():
        saliency = method(rgb)
        assert saliency.shape == (4, 64, 64) and saliency.min() >= 0 and saliency.max() <= 1, name
        for one, inside in zip(saliency, truth):
            assert one[inside].mean() > 2 * one[~inside].mean(), name  # stripes repeat, the square does not
        if name == "spectral_residual":
            continue  # it marks the square's outline, not its area (see its docstring)
        masks = binarize(saliency)
        iou = np.mean([mask_scores(m.numpy(), t.numpy())[0] for m, t in zip(masks, truth)])
        assert iou > max(0.5, centre_iou), (name, iou, centre_iou)


def test_otsu_splits_two_modes_and_lab_matches_known_colours():
    saliency = torch.cat([torch.full((1, 10, 10), 0.2), torch.full((1, 10, 10), 0.7)], dim=1)
    cut = otsu_threshold(saliency)
    assert 0.2 < cut.item() < 0.7
    assert binarize(saliency).sum() == 100
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]).view(2, 3, 1, 1))
    assert torch.allclose(lab[0, :, 0, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.1)
    assert torch.allclose(lab[1, :, 0, 0], torch.tensor([53.24, 80.09, 67.20]), atol=0.3)


def test_centre_prior_covers_the_requested_area():
    mask = centre_prior_mask(90, 120, area=0.25)
    assert mask.shape == (90, 120) and mask[45, 60] and not mask[0, 0]
    assert math.isclose(mask.float().mean().item(), 0.25, abs_tol=0.01)


def test_mask_scores_match_hand_values():
    pred = np.zeros((4, 5), bool)
    truth = np.zeros((4, 5), bool)
    pred[0, :2] = True          # two predicted pixels
    truth[0, 1:4] = True        # three true pixels, one overlapping
    iou, f, mae = mask_scores(pred, truth)
    precision, recall = 1 / 2, 1 / 3
    assert math.isclose(iou, 1 / 4)
    assert math.isclose(f, 1.3 * precision * recall / (0.3 * precision + recall))
    assert math.isclose(mae, 3 / 20)
    assert mask_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == (1.0, 1.0, 0.0)


def test_default_masks_beat_the_centre_prior_on_the_demo_dataset(demo, tmp_path):
    out = tmp_path / "masks"
    report = compute_masks(demo, out, batch_size=16)
    assert report.written == 60 and not report.failed
    truth = demo / "masks" / "train"
    ours = evaluate_masks(out, truth)
    assert ours["images"] == 60 and ours["missing"] == 0
    for area in (0.1, 0.2, 0.3):  # whatever the ellipse's size
        centre = evaluate_centre_prior(truth, area=area)
        assert ours["iou"] > centre["iou"] + 0.2, (ours, centre)
        assert ours["f_measure"] > centre["f_measure"] and ours["mae"] < centre["mae"]
    # The truth against itself is perfect; a missing prediction counts as an empty mask.
    assert evaluate_masks(truth, truth)["iou"] == 1.0
    first = sorted(out.rglob("*.png"))[0]
    first.unlink()
    assert evaluate_masks(out, truth)["missing"] == 1


def test_masks_resume_and_have_the_decoded_size(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    rgb, _ = square_on_stripes(batch=3, size=48)
    for i, image in enumerate(rgb):
        pixels = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((48 + 16 * i, 48)).save(root / "a" / f"{i}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed (and decoded by DALI) turned by 90 degrees
    Image.open(root / "a" / "2.jpg").save(root / "a" / "turned.jpg", exif=exif.tobytes())
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "masks"
    report = compute_masks(root, out, batch_size=2, method="frequency_tuned")
    assert report.written == 4 and [name for name, _ in report.failed] == ["a/broken.jpg"]
    assert read_mask(out / "a" / "1.png").shape == (48, 64)
    assert read_mask(out / "a" / "turned.png").shape == (80, 48)
    assert set(np.unique(np.asarray(Image.open(out / "a" / "0.png")))) <= {0, 255}
    again = compute_masks(root, out, batch_size=2)
    assert (again.written, again.skipped) == (0, 4)
    (out / "a" / "0.png").unlink()
    assert compute_masks(root, out, batch_size=2).written == 1


def test_an_unreadable_exif_block_reads_as_stored_for_the_validator_and_the_masks(tmp_path, monkeypatch):
    """One orientation rule (`dali_pipelines.image_check.exif_orientation`): an EXIF block PIL cannot parse
    leaves the image as stored. The validator kept such an image while `relic-fast masks` failed on it."""
    from dali_pipelines.image_check import check_image

    path = tmp_path / "wide.jpg"
    Image.new("RGB", (40, 24), (90, 120, 150)).save(path)

    def broken_exif(self):
        raise SyntaxError("broken EXIF block")

    monkeypatch.setattr(Image.Image, "getexif", broken_exif)
    check = check_image(path)
    assert check.reason is None and (check.width, check.height) == (40, 24)
    pixels, size = load_for_saliency(path, 16)
    assert pixels.shape == (16, 16, 3) and size == (24, 40)


def test_cli_masks_scores_against_truth(demo, tmp_path):
    train = demo / "train"
    some = sorted(p.relative_to(train).as_posix() for p in train.rglob("*.jpg"))[:8]
    listing = tmp_path / "some.txt"
    listing.write_text("".join(f"{train / name} 0\n" for name in some))
    out = tmp_path / "cli_masks"
    result = CliRunner().invoke(app, ["masks", str(listing), "--out", str(out), "--method", DEFAULT_METHOD,
                                      "--batch-size", "4", "--truth", str(demo / "masks" / "train")])
    assert result.exit_code == 0, result.output
    assert "centre prior" in result.output and len(list(out.rglob("*.png"))) == 8
    bad = CliRunner().invoke(app, ["masks", str(demo), "--out", str(out), "--method", "magic"])
    assert bad.exit_code == 2 and "unknown method" in bad.output
