"""Tests of the procedural demo dataset: determinism, balance, masks, the documented background rule, caching, CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from relic_fast import demo_data
from relic_fast.cli import app
from relic_fast.demo_data import (BACKGROUND_FAMILIES, CLASS_NAMES, OWN_BACKGROUND, SPLITS, class_counts,
                                  default_demo_root, ensure_demo_dataset, generate_demo_dataset, plan_split,
                                  render_sample, val_images)
from relic_fast.demo_render import _SHAPES

IMAGES, SIZE, SEED = 63, 40, 5  # 63: not divisible by 10, so the remainder rule is exercised


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One small dataset rendered serially, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(out, images=IMAGES, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sidecar(root: Path) -> list[dict[str, str]]:
    """The rows of backgrounds.tsv."""
    with open(root / "backgrounds.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_same_seed_gives_identical_bytes_with_any_number_of_workers(dataset, tmp_path):
    parallel = tmp_path / "parallel"
    generate_demo_dataset(parallel, images=IMAGES, size=SIZE, seed=SEED, workers=2, progress=False)
    serial_files, parallel_files = files_of(dataset), files_of(parallel)
    assert len(serial_files) == 2 * (IMAGES + 3 * val_images(IMAGES)) + 2  # val, val_correlated, test
    assert serial_files.keys() == parallel_files.keys()
    assert all(serial_files[name] == parallel_files[name] for name in serial_files)


def test_different_seed_gives_different_images(dataset, tmp_path):
    other = tmp_path / "other"
    generate_demo_dataset(other, images=IMAGES, size=SIZE, seed=SEED + 1, workers=1, progress=False)
    first, second = files_of(dataset), files_of(other)
    images = [name for name in first if name.endswith(".jpg")]
    assert sum(first[name] != second.get(name) for name in images) >= 0.95 * len(images)
    assert first["backgrounds.tsv"] != second["backgrounds.tsv"]


def test_classes_are_balanced_with_the_remainder_going_to_the_first_classes(dataset):
    for split in SPLITS:
        total = IMAGES if split == "train" else val_images(IMAGES)
        counts = [len(list((dataset / split / name).glob("*.jpg"))) for name in CLASS_NAMES]
        assert sum(counts) == total and max(counts) - min(counts) <= 1
        assert counts == sorted(counts, reverse=True)  # the extra images go to the first classes
        summary = json.loads((dataset / "dataset.json").read_text())
        assert list(summary["splits"][split]["per_class"].values()) == counts
    assert sorted(p.name for p in (dataset / "train").iterdir()) == list(CLASS_NAMES)  # label = sorted index


def test_masks_are_aligned_binary_and_cover_the_object(dataset):
    rows = sidecar(dataset)
    colour_gaps, areas = [], []
    for row in rows:
        image_path = dataset / row["image"]
        mask_path = dataset / "masks" / Path(row["image"]).with_suffix(".png")
        image, mask = np.asarray(Image.open(image_path).convert("RGB")), Image.open(mask_path)
        assert mask.mode == "L" and mask.size == (SIZE, SIZE) and image.shape == (SIZE, SIZE, 3)
        mask = np.asarray(mask)
        assert set(np.unique(mask)) <= {0, 255}
        inside = mask == 255
        areas.append(inside.mean())
        gap = np.linalg.norm(image[inside].mean(axis=0) - image[~inside].mean(axis=0))
        colour_gaps.append(gap)
    assert 0.03 <= min(areas) and max(areas) <= 0.6
    assert np.mean(np.array(colour_gaps) > 25) >= 0.9  # the object stands out from its background


def test_files_are_the_rendering_of_their_recorded_class_and_background(dataset):
    rows = sidecar(dataset)
    assert len(rows) == IMAGES + 3 * val_images(IMAGES)
    for row in rows[::7]:
        split, label = row["split"], CLASS_NAMES.index(row["class"])
        index = int(Path(row["image"]).stem)
        assert row["image"].startswith(f"{split}/{row['class']}/")
        image, mask = render_sample(SEED, split, index, label, BACKGROUND_FAMILIES.index(row["background"]), SIZE)
        decoded = np.asarray(Image.open(dataset / row["image"]).convert("RGB")).astype(np.int16)
        error = np.abs(decoded - image).mean()
        assert error < 8  # JPEG quality 90, 4:4:4
        other = (BACKGROUND_FAMILIES.index(row["background"]) + 1) % len(BACKGROUND_FAMILIES)
        assert np.abs(decoded - render_sample(SEED, split, index, label, other, SIZE)[0]).mean() > 2 * error
        assert np.array_equal(np.asarray(Image.open(dataset / "masks" / split / row["class"] / f"{index:06d}.png")),
                              mask)


def own_fraction(labels: np.ndarray, backgrounds: np.ndarray) -> float:
    """Fraction of images drawn on their class's own background family (class i owns family i)."""
    return float(np.mean(backgrounds == labels))


def evenly_spread(families: list[int], allowed: list[int]) -> bool:
    """Whether `families` only uses `allowed` families and each is used as often as any other, give or take one."""
    counts = Counter(families)
    return set(counts) <= set(allowed) and np.ptp([counts[f] for f in allowed]) <= 1


def test_sidecar_follows_the_documented_background_rule(dataset):
    rows = sidecar(dataset)
    everything = list(range(len(BACKGROUND_FAMILIES)))
    for split in SPLITS:
        for label, name in enumerate(CLASS_NAMES):
            families = [BACKGROUND_FAMILIES.index(row["background"]) for row in rows
                        if row["split"] == split and row["class"] == name]
            assert families and len(families) == class_counts(len([r for r in rows if r["split"] == split]))[label]
            if split in ("val", "test"):
                assert evenly_spread(families, everything)
                continue
            own = BACKGROUND_FAMILIES.index(OWN_BACKGROUND[name])
            assert families.count(own) == int(np.floor(0.7 * len(families) + 0.5))
            assert evenly_spread([f for f in families if f != own], [f for f in everything if f != own])


@pytest.mark.parametrize("total", [1000, 257])
def test_plan_correlation_is_exact_in_correlated_splits_and_uniform_in_val(total):
    everything = list(range(len(BACKGROUND_FAMILIES)))
    for split in ("train", "val_correlated"):
        labels, backgrounds = plan_split(split, total, seed=3, correlation=0.7)
        assert np.array_equal(np.bincount(labels), class_counts(total))
        expected = sum(np.floor(0.7 * n + 0.5) for n in class_counts(total)) / total
        assert own_fraction(labels, backgrounds) == pytest.approx(expected)
        assert abs(own_fraction(labels, backgrounds) - 0.7) < 0.01
        for c in range(len(CLASS_NAMES)):
            rest = backgrounds[(labels == c) & (backgrounds != c)].tolist()
            assert evenly_spread(rest, [f for f in everything if f != c])
    labels, backgrounds = plan_split("val", total, seed=3, correlation=0.7)
    assert abs(own_fraction(labels, backgrounds) - 0.1) < 0.02
    for c in range(len(CLASS_NAMES)):
        assert evenly_spread(backgrounds[labels == c].tolist(), everything)  # independent of the class
    assert not np.array_equal(plan_split("train", total, seed=4, correlation=0.7)[1],
                              plan_split("train", total, seed=3, correlation=0.7)[1])


def test_every_shape_fits_its_unit_disc_and_the_shapes_differ():
    axis = np.linspace(-1.5, 1.5, 301, dtype=np.float32)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    masks = {name: _SHAPES[name](u, v) for name in CLASS_NAMES}
    for name, inside in masks.items():
        assert np.sqrt(u * u + v * v)[inside].max() <= 1.0, name  # render() only draws inside the object's box
        assert inside.mean() > 0.1, name
    for i, first in enumerate(CLASS_NAMES):
        for second in CLASS_NAMES[i + 1:]:
            union = (masks[first] | masks[second]).sum()
            assert (masks[first] & masks[second]).sum() / union < 0.85, (first, second)


def _rendered_per_class(per_class: int = 20, size: int = 64):
    """(label, image float RGB in [0, 1], foreground bool mask) for `per_class` images of every class."""
    for label in range(len(CLASS_NAMES)):
        for i in range(per_class):
            image, mask = render_sample(3, "train", 100 * label + i, label, i % len(BACKGROUND_FAMILIES), size)
            yield label, image.astype(np.float32) / 255, mask > 127


def test_objects_are_large_enough_for_the_32px_demo_views():
    # at the old radius (0.4-0.7 of half the image) the smallest objects covered 5.5 % of it (an ellipse);
    # the CPU demo's 32 px views then leave too few pixels to tell the shapes apart
    fractions = [mask.mean() for _, _, mask in _rendered_per_class()]
    assert min(fractions) >= 0.1


def test_the_object_stands_out_from_its_calm_background():
    # separation: distance between the mean object and mean background colours over the background's own
    # RMS spread; with the two background colours at full contrast only 29 % of images reached 2, now ~98 %
    separations = []
    for _, image, mask in _rendered_per_class():
        background, foreground = image[~mask], image[mask]
        spread = np.sqrt(((background - background.mean(0)) ** 2).sum(1).mean())
        separations.append(np.linalg.norm(foreground.mean(0) - background.mean(0)) / spread)
    assert np.mean(np.array(separations) > 2) >= 0.9


def test_ensure_generates_once_then_reuses_and_replaces_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("RELIC_FAST_CACHE", str(tmp_path / "cache"))
    assert default_demo_root(12, 16, 1).is_relative_to(tmp_path / "cache")
    calls = []
    real = demo_data.generate_demo_dataset
    monkeypatch.setattr(demo_data, "generate_demo_dataset", lambda *a, **k: calls.append(k) or real(*a, **k))
    root = ensure_demo_dataset(images=12, size=16, seed=1, progress=False)
    assert root == default_demo_root(12, 16, 1) and json.loads((root / "dataset.json").read_text())["seed"] == 1
    assert ensure_demo_dataset(images=12, size=16, seed=1, progress=False) == root and len(calls) == 1
    mine = tmp_path / "mine"
    ensure_demo_dataset(images=12, size=16, seed=1, root=mine, progress=False)
    ensure_demo_dataset(images=12, size=16, seed=2, root=mine, progress=False)  # other parameters: replaced
    assert json.loads((mine / "dataset.json").read_text())["seed"] == 2 and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mine"]  # no temporary folders left


def test_ensure_refuses_a_foreign_folder_and_a_crash_leaves_nothing(tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_demo_dataset(images=12, size=16, root=foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    def crash(*args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(demo_data, "_run_jobs", crash)
    with pytest.raises(RuntimeError):
        ensure_demo_dataset(images=12, size=16, root=tmp_path / "crashed", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]


def test_bad_parameters_are_rejected(tmp_path):
    for kwargs in ({"images": 9}, {"size": 8}, {"seed": -1}, {"correlation": 1.5}):
        arguments = {"images": 20, "size": 16, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            generate_demo_dataset(tmp_path / "bad", progress=False, **arguments)


def test_cli_help_documents_the_rule():
    result = CliRunner().invoke(app, ["demo-data", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "round(correlation * n)" in text and "--images" in text and "--seed" in text
    for name, family in OWN_BACKGROUND.items():
        assert f"{name}: {family}" in text


def test_cli_writes_a_tiny_dataset_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli"
    arguments = ["demo-data", str(out), "--images", "20", "--size", "24", "--seed", "3", "--workers", "1",
                 "--no-progress"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "dataset.json").read_text())
    assert (summary["images"], summary["size"], summary["seed"]) == (20, 24, 3)
    assert len(list((out / "train").rglob("*.jpg"))) == 20 and "val_correlated" in result.output
    again = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert CliRunner().invoke(app, arguments + ["--overwrite"]).exit_code == 0
