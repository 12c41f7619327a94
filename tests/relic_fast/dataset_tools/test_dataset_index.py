"""`relic-fast index`: broken files rejected with reasons, unusual valid ones kept and decodable by DALI,
the cache makes a re-run skip work, and the index resolves from wherever it is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dali_pipelines.image_check import reason_category
from relic_fast.cli import app
from dali_pipelines.dataset import resolve_dataset
from relic_fast.dataset_tools.index import index_dataset

from tests.support.image_zoo import write_zoo


def read_file_list(path: Path):
    """An index as the readers see it."""
    return resolve_dataset(str(path))


@pytest.fixture()
def zoo(tmp_path) -> tuple[Path, dict[str, str | None]]:
    """A fresh zoo tree per test (tests here write indexes and caches into it)."""
    root = tmp_path / "data"
    return root, write_zoo(root)


def decode_with_dali(index: Path, count: int) -> list[np.ndarray]:
    """Decode every file of a file list with DALI's CPU decoder to RGB, in list order (the files as the
    readers list them: DALI's own `file_list=` does not skip the list's `#` header)."""
    from nvidia.dali import fn, pipeline_def, types

    listed = read_file_list(index)
    files = [str(listed.root / name) for name in listed.files]

    @pipeline_def(batch_size=count, num_threads=1, device_id=None)
    def decode():
        encoded, _ = fn.readers.file(files=files, random_shuffle=False)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    (images,) = pipe.run()
    return [np.asarray(images.at(i)) for i in range(count)]


def test_index_rejects_broken_keeps_unusual_and_dali_decodes_the_index(zoo):
    root, expected = zoo
    report = index_dataset(root, workers=1)
    assert report.index_path == root / "index.txt"
    kept = sorted(f for f, category in expected.items() if category is None)
    listed = read_file_list(report.index_path)
    assert listed.files == kept
    assert listed.labels == [0 if f.startswith("cat/") else 1 for f in kept]  # sorted class folders
    rejected = dict(line.split("\t") for line in report.rejected_path.read_text().splitlines())
    assert sorted(rejected) == sorted(f for f, category in expected.items() if category is not None)
    for name, reason in rejected.items():
        assert reason_category(reason) == expected[name], (name, reason)
    # Every kept file decodes to 3-channel RGB of the recorded (EXIF-oriented) size.
    shapes = {f: (c.height, c.width) for f, c in zip(report.source.files, report.checks)}
    images = decode_with_dali(report.index_path, len(kept))
    for name, image in zip(kept, images):
        assert image.dtype == np.uint8 and image.shape == (*shapes[name], 3), name


def test_rerun_uses_the_cache_and_sees_new_damage(zoo):
    root, expected = zoo
    first = index_dataset(root, workers=1)
    assert (first.validated, first.cached) == (len(expected), 0)
    index_text = first.index_path.read_text()
    second = index_dataset(root, workers=1)
    assert (second.validated, second.cached) == (0, len(expected))
    assert second.index_path.read_text() == index_text
    data = (root / "cat/rgb.jpg").read_bytes()
    (root / "cat/rgb.jpg").write_bytes(data[:100])
    third = index_dataset(root, workers=1)
    assert third.validated == 1
    assert "cat/rgb.jpg" in dict(third.rejected)
    assert "cat/rgb.jpg" not in read_file_list(third.index_path).files


def test_index_written_elsewhere_still_points_at_the_images(zoo, tmp_path):
    root, expected = zoo
    inside = index_dataset(root, out=root / "lists" / "clean.txt", workers=1)
    elsewhere = index_dataset(root, out=tmp_path / "other" / "clean.txt", workers=1)
    assert inside.rejected_path == root / "lists" / "clean.rejected.tsv"
    for report in (inside, elsewhere):
        listed = read_file_list(report.index_path)
        assert len(listed.files) == sum(c is None for c in expected.values())
        for name in listed.files:
            assert (listed.root / name).resolve().is_file()  # readers join with the list's folder
    assert all(Path(f).is_absolute() for f in read_file_list(elsewhere.index_path).files)
    assert elsewhere.cached == len(expected)  # same dataset root, same cache


def test_file_list_source_keeps_its_labels(zoo):
    root, expected = zoo
    names = sorted(expected)
    listing = root / "train.txt"
    listing.write_text("# comment\n" + "".join(f"{n} {7 + i % 3}\n" for i, n in enumerate(names)))
    report = index_dataset(listing, workers=1)
    assert report.index_path == root / "train.index.txt"
    listed = read_file_list(report.index_path)
    labels = {n: 7 + i % 3 for i, n in enumerate(names)}
    assert listed.files == [n for n in names if expected[n] is None]
    assert listed.labels == [labels[n] for n in listed.files]


def test_bad_file_list_line_is_named(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg 0\nb.jpg\n")
    with pytest.raises(ValueError, match="list.txt:2"):
        index_dataset(listing, workers=1)


def test_cli_index_prints_summary(zoo):
    root, expected = zoo
    result = CliRunner().invoke(app, ["index", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "rejected: truncated" in result.output and "kept" in result.output
    assert (root / "index.txt").is_file() and (root / "index.rejected.tsv").is_file()
    missing = CliRunner().invoke(app, ["index", str(root / "nope")])
    assert missing.exit_code == 3 and "does not exist" in " ".join(missing.output.split())  # a dataset error


def test_index_line_paths_resolve_from_the_index_folder(tmp_path):
    from relic_fast.dataset_tools.index import index_line_paths

    root = tmp_path / "data" / "lists"
    files = ["cat/a.jpg", "../cat/b.jpg", str(tmp_path / "x.jpg")]
    assert index_line_paths(root, files, tmp_path / "data") == [
        "lists/cat/a.jpg", "cat/b.jpg", str(tmp_path / "x.jpg")]
    assert index_line_paths(root, files, root) == ["cat/a.jpg", str(tmp_path / "data/cat/b.jpg"), str(tmp_path / "x.jpg")]
    assert index_line_paths(root, files[:1], tmp_path / "other") == [str(root / "cat/a.jpg")]
