"""Where a saliency mask lives: one rule (`dali_pipelines.dataset.mask_file`) for the readers and for
`relic-fast masks`, which never leaves the mask root and never names the image itself, whatever the file
list holds (`..`, absolute entries) and whatever symlinks the trees hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from dali_pipelines.dataset import DatasetError, mask_file, resolve_dataset
from relic_fast.dataset_tools.masks import compute_masks


def write_png(path: Path) -> bytes:
    """A tiny RGB PNG at `path` (a red square on grey); returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (16, 16), (90, 90, 90))
    image.paste((220, 20, 20), (4, 4, 12, 12))
    image.save(path, format="PNG")
    return path.read_bytes()


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies strictly inside `folder`, symlinks followed."""
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def make_masks(source: Path, out: Path):
    """`relic-fast masks` on the CPU, small and single-threaded (these tests only check where masks go)."""
    return compute_masks(source, out, batch_size=4, work_size=16, device="cpu", workers=1)


def test_a_dotdot_entry_gets_its_mask_under_the_mask_root_not_on_the_image(tmp_path):
    image = tmp_path / "imgs" / "c" / "a.png"
    original = write_png(image)
    listing = tmp_path / "lists" / "l.txt"
    listing.parent.mkdir()
    listing.write_text("../imgs/c/a.png 0\n")
    out = tmp_path / "masks"
    report = make_masks(listing, out)
    assert (report.written, report.skipped, report.failed) == (1, 0, [])
    expected = out / "_abs" / str(image.resolve()).lstrip("/")  # <mask_root>/_abs/<absolute path>.png
    assert expected.is_file()
    assert image.read_bytes() == original  # the image was neither taken for its mask nor overwritten
    spec = resolve_dataset(str(listing), masks=str(out))
    assert mask_file(spec.mask_root, spec.files[0]) == expected  # the readers look where the writer wrote


def test_an_absolute_entry_never_makes_the_image_its_own_mask(tmp_path):
    image = tmp_path / "imgs" / "c" / "a.png"
    write_png(image)
    listing = tmp_path / "index" / "index.txt"  # what `relic-fast index --out elsewhere` writes
    listing.parent.mkdir()
    listing.write_text(f"{image} 0\n")
    mask_root = tmp_path / "masks"
    mask_root.mkdir()
    spec = resolve_dataset(str(listing), masks=str(mask_root))
    mask = mask_file(spec.mask_root, spec.files[0])
    assert mask != image and inside(mask, mask_root)
    assert mask == mask_root / "_abs" / str(image).lstrip("/")
    report = make_masks(listing, mask_root)
    assert report.written == 1 and mask.is_file()


@pytest.mark.parametrize("entry, expected", [("/abs/../../a.jpg", "_abs/a.png"), ("//x/./y/a.jpg", "_abs/x/y/a.png"),
                                             ("./c/./a.jpg", "c/a.png"), ("c/../d/a.jpeg", "d/a.png")])
def test_mask_file_stays_inside_the_mask_root(tmp_path, entry, expected):
    mask = mask_file(tmp_path / "masks", entry)
    assert mask == tmp_path / "masks" / expected and inside(mask, tmp_path / "masks")


@pytest.mark.parametrize("entry", ["../../x/a.jpg", "c/../../a.jpg", "..", "."])
def test_mask_file_refuses_an_entry_that_climbs_out_of_the_dataset_folder(tmp_path, entry):
    with pytest.raises(DatasetError, match="climbs out of"):  # file lists store such entries absolute
        mask_file(tmp_path / "masks", entry)


def test_symlinked_class_folder_and_image_keep_their_masks_under_the_root(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_png(elsewhere / "cat" / "a.png")
    write_png(elsewhere / "b.png")
    root = tmp_path / "data"
    (root / "dog").mkdir(parents=True)
    (root / "cat").symlink_to(elsewhere / "cat", target_is_directory=True)
    (root / "dog" / "b.png").symlink_to(elsewhere / "b.png")
    out = tmp_path / "masks"
    report = make_masks(root, out)
    assert report.written == 2
    written = sorted(p for p in out.rglob("*.png"))
    assert written == [out / "cat" / "a.png", out / "dog" / "b.png"]
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["a.png", "b.png", "cat"]  # nothing written there


def test_masks_refuses_to_write_through_a_symlink_out_of_the_mask_root(tmp_path):
    root = tmp_path / "data"
    original = write_png(root / "cat" / "a.png")
    out = tmp_path / "masks"
    out.mkdir()
    (out / "cat").symlink_to(root / "cat", target_is_directory=True)  # mask folder leads into the images
    report = make_masks(root, out)
    assert (report.written, report.skipped) == (0, 0)
    assert [path for path, _ in report.failed] == ["cat/a.png"]
    assert "outside the mask folder" in report.failed[0][1]
    assert (root / "cat" / "a.png").read_bytes() == original


def test_the_dataset_folder_cannot_be_its_own_mask_folder(tmp_path):
    root = tmp_path / "data"
    write_png(root / "cat" / "a.png")
    with pytest.raises(DatasetError, match="mask folder .* is the dataset folder"):
        resolve_dataset(str(root), masks=str(root))
    with pytest.raises(DatasetError, match="mask folder .* is the dataset folder"):
        make_masks(root, root)
