"""`relic-fast pack`: shards read back (tarfile and DALI) give the same samples: bytes, labels, masks."""

from __future__ import annotations

import io
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from relic_fast.cli import app
from dali_pipelines.formats.shard_index import write_wds_index
from relic_fast.dataset_tools.pack import pack_dataset
from relic_fast.demo_data import generate_demo_dataset

from tests.support.image_zoo import write_zoo


@pytest.fixture()
def source(tmp_path) -> tuple[Path, Path, dict[str, str | None]]:
    """The image zoo plus a mask for every usable `cat/` image: (image root, mask root, expectations)."""
    root = tmp_path / "data"
    expected = write_zoo(root)
    masks = tmp_path / "masks"
    for name, category in expected.items():
        if category is None and name.startswith("cat/"):
            target = masks / Path(name).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            size = Image.open(root / name).size
            Image.fromarray((np.arange(size[0] * size[1]).reshape(size[::-1]) % 2 * 255).astype(np.uint8)).save(target)
    return root, masks, expected


def read_shards(shards: list[Path]) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of every sample in the shards, checking each key appears once."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                assert ext not in samples[key], member.name
                samples[key][ext] = tar.extractfile(member).read()
    return dict(samples)


def source_name(key: str, names: list[str]) -> str:
    """The source image a key was made from (keys: number, then the sanitized path stem)."""
    stem = key.split("_", 1)[1]
    matches = [n for n in names if re.sub(r"[^A-Za-z0-9_-]+", "_", Path(n).with_suffix("").as_posix()) == stem]
    assert len(matches) == 1, key
    return matches[0]


def test_pack_round_trip_bytes_labels_masks(source, tmp_path):
    root, masks, expected = source
    out = tmp_path / "shards"
    report = pack_dataset(root, out, shard_size=3, masks=masks, workers=1)
    usable = sorted(n for n, c in expected.items() if c is None)
    assert report.samples == len(usable) and len(report.shards) == -(-len(usable) // 3)
    assert sorted(n for n, _ in report.rejected) == sorted(n for n, c in expected.items() if c is not None)
    samples = read_shards(report.shards)
    assert len(samples) == len(usable)
    seen = []
    for key, parts in samples.items():
        name = source_name(key, usable)
        seen.append(name)
        original = (root / name).read_bytes()
        image_ext = "jpg" if "jpg" in parts else "png"
        assert set(parts) - {"mask.png"} == {image_ext, "cls"}
        if Image.open(root / name).format in ("JPEG", "PNG"):
            assert parts[image_ext] == original, name  # original bytes, not re-encoded
        else:  # BMP, WebP: stored as lossless PNG of the same pixels
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(parts["png"]))),
                                  np.asarray(Image.open(root / name)))
        assert int(parts["cls"].decode("ascii")) == (0 if name.startswith("cat/") else 1)
        mask = masks / Path(name).with_suffix(".png")
        assert parts.get("mask.png") == (mask.read_bytes() if mask.is_file() else None), name
    assert sorted(seen) == usable
    assert report.masks == sum(1 for n in usable if n.startswith("cat/"))


def test_index_files_match_dali_tool_and_dali_reads_the_shards(source, tmp_path):
    from nvidia.dali import fn, pipeline_def, types
    from wds2idx import IndexCreator  # DALI's own index tool, installed with DALI

    root, masks, expected = source
    report = pack_dataset(root, tmp_path / "shards", shard_size=4, masks=masks, workers=1)
    reference = tmp_path / "reference.idx"
    with IndexCreator(str(report.shards[0]), str(reference), verbose=False) as creator:
        creator.create_index()
    assert report.shards[0].with_suffix(".idx").read_text() == reference.read_text()

    tars = [str(p) for p in report.shards]

    @pipeline_def(batch_size=report.samples, num_threads=1, device_id=None)
    def read():
        image, label, mask = fn.readers.webdataset(
            paths=tars, index_paths=[t[:-4] + ".idx" for t in tars], ext=["jpg;png", "cls", "mask.png"],
            missing_component_behavior="empty", random_shuffle=False)
        return fn.decoders.image(image, device="cpu", output_type=types.RGB), label, mask

    pipe = read()
    pipe.build()
    images, labels, mask_bytes = pipe.run()
    decoded = [np.asarray(images.at(i)) for i in range(report.samples)]
    assert all(image.ndim == 3 and image.shape[2] == 3 for image in decoded)
    read_labels = sorted(int(bytes(np.asarray(labels.at(i))).decode()) for i in range(report.samples))
    usable = [n for n, c in expected.items() if c is None]
    assert read_labels == sorted(0 if n.startswith("cat/") else 1 for n in usable)
    assert sum(np.asarray(mask_bytes.at(i)).size > 0 for i in range(report.samples)) == report.masks


def test_shuffle_is_seeded_and_existing_shards_need_overwrite(source, tmp_path):
    root, masks, _ = source
    first = pack_dataset(root, tmp_path / "a", shard_size=100, seed=1, workers=1)
    again = pack_dataset(root, tmp_path / "b", shard_size=100, seed=1, workers=1)
    other = pack_dataset(root, tmp_path / "c", shard_size=100, seed=2, workers=1)
    assert first.shards[0].read_bytes() == again.shards[0].read_bytes()  # reproducible shards
    assert list(read_shards(first.shards)) != list(read_shards(other.shards))
    with pytest.raises(FileExistsError):
        pack_dataset(root, tmp_path / "a", shard_size=2, workers=1)
    replaced = pack_dataset(root, tmp_path / "a", shard_size=100, overwrite=True, workers=1)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["classes.json", "manifest.json",
                                                                 "shard-000000.idx", "shard-000000.tar"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):  # the folder is replaced whole: not over others' files
        pack_dataset(root, tmp_path / "a", shard_size=100, overwrite=True, workers=1)
    assert replaced.samples == first.samples


def test_cli_pack_demo_root_takes_its_masks(tmp_path):
    demo = tmp_path / "demo"
    generate_demo_dataset(demo, images=20, size=32, seed=0, workers=1, progress=False)
    result = CliRunner().invoke(app, ["pack", str(demo), "--out", str(tmp_path / "shards"), "--shard-size", "8",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    samples = read_shards(shards)
    assert len(shards) == 3 and len(samples) == 20
    assert all("mask.png" in parts and "jpg" in parts for parts in samples.values())
    classes = sorted(p.name for p in (demo / "train").iterdir() if p.is_dir())
    for key, parts in samples.items():  # each mask is the demo's mask of that very image
        _, folder, stem = key.split("_")
        assert int(parts["cls"]) == classes.index(folder)
        assert parts["mask.png"] == (demo / "masks" / "train" / folder / f"{stem}.png").read_bytes()


def test_write_wds_index_groups_components_by_key(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("a.jpg", b"xx"), ("a.cls", b"1"), ("b.mask.png", b"mmm"), ("b.jpg", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_wds_index(shard, tmp_path / "s.idx")
    lines = (tmp_path / "s.idx").read_text().splitlines()
    assert lines[0] == "v1.2 2"
    assert [line.split()[0::4] for line in lines[1:]] == [["jpg", "cls"], ["mask.png", "jpg"]]
    with tarfile.open(shard) as tar:
        offsets = {m.name: m.offset_data for m in tar}
    assert lines[1].split()[1] == str(offsets["a.jpg"]) and lines[2].split()[5] == str(offsets["b.jpg"])


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar holding `members` (name, bytes) in order, as a third-party WebDataset writer might lay it out."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_one_key_rule_for_the_scan_and_both_indexes(tmp_path, monkeypatch):
    """The index `relic-fast pack` writes and the one the readers write for a shard without one follow the
    scan's key rule (`scan_tar`): a key ends at the first dot of the base name, extensions are read in lower
    case, a member without an extension belongs to no sample. (pack's own copy wrote `PNG`, which DALI's
    `ext="jpg;jpeg;png"` does not match, and made a sample of `README`.)"""
    from dali_pipelines.formats.shard_index import wds_index
    from dali_pipelines.formats.shards import scan_tar

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shard = write_tar(tmp_path / "third-party.tar", [("README", b"notes"), ("dir.v1/UP.PNG", b"png"),
                                                     ("dir.v1/UP.cls", b"1"), ("dir.v1/.hidden", b"x"),
                                                     ("x-y.JPEG", b"jpeg"), ("x-y.mask.PNG", b"mask")])
    assert [(key, sorted(parts)) for key, parts in scan_tar(shard)] == [("dir.v1/UP", ["cls", "png"]),
                                                                         ("x-y", ["jpeg", "mask.png"])]
    write_wds_index(shard, tmp_path / "packed.idx")
    with tarfile.open(shard) as tar:
        where = {m.name: f"{m.offset_data} {m.size} {m.name}" for m in tar}
    expected = ["v1.2 2", f"png {where['dir.v1/UP.PNG']} cls {where['dir.v1/UP.cls']}",
                f"jpeg {where['x-y.JPEG']} mask.png {where['x-y.mask.PNG']}"]
    assert (tmp_path / "packed.idx").read_text().splitlines() == expected
    assert wds_index(shard).read_text().splitlines() == expected


KEYS_WITH_DOTS = {  # image path -> (its colour, whether it has a mask)
    "Cls.A-1/a.b-C.JPG": ((220, 40, 40), True),
    "b-B/x-y.jpeg": ((40, 220, 40), False),
    "b-B/UP.PNG": ((40, 40, 220), True),
}


def test_pack_then_read_keys_with_dots_dashes_and_upper_case(tmp_path, monkeypatch):
    """Images and class folders named with dots, dashes and upper case, packed, then read by the readers
    (`read_encoded` over the pack's own indexes): every sample comes back with its label and its mask."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_pipelines.dataset import resolve_dataset
    from dali_pipelines.readers import ReadPlan, read_encoded

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, masks = tmp_path / "data", tmp_path / "masks"
    for number, (name, (colour, masked)) in enumerate(KEYS_WITH_DOTS.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 12), colour).save(root / name, format="PNG" if name.endswith(".PNG") else "JPEG")
        if masked:
            (masks / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (16, 12), 60 * number).save(masks / Path(name).with_suffix(".png"))
    report = pack_dataset(root, tmp_path / "shards", shard_size=2, masks=masks, workers=1)
    assert (report.samples, report.masks, report.rejected) == (3, 2, [])
    dataset = resolve_dataset(str(tmp_path / "shards"))
    assert dataset.num_samples == 3 and dataset.class_names == ["Cls.A-1", "b-B"]
    plan = ReadPlan(dataset, np.arange(len(dataset.tar_paths)), masks=True)

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def read():
        encoded = read_encoded(plan)
        image = fn.decoders.image(encoded.images, device="cpu", output_type=types.RGB)
        return image, encoded.labels, encoded.mask_bytes, encoded.has_mask

    pipe = read()
    pipe.build()
    images, labels, mask_bytes, has_mask = pipe.run()
    seen = []
    for i in range(3):
        colour = np.asarray(images.at(i)).reshape(-1, 3).mean(0)
        name = min(KEYS_WITH_DOTS, key=lambda n: np.abs(np.subtract(KEYS_WITH_DOTS[n][0], colour)).sum())
        seen.append(name)
        assert int(np.asarray(labels.at(i))[0]) == dataset.class_names.index(name.split("/")[0]), name
        mask = masks / Path(name).with_suffix(".png")
        assert bool(np.asarray(has_mask.at(i))) == KEYS_WITH_DOTS[name][1], name
        assert bytes(np.asarray(mask_bytes.at(i))) == (mask.read_bytes() if mask.is_file() else b""), name
    assert sorted(seen) == sorted(KEYS_WITH_DOTS)


# ---------------------------------------------------------------- crash-safe overwrite and the manifest

def tiny_tree(root: Path, count: int = 6) -> Path:
    """`count` small JPEGs in two class folders: the least a pack needs."""
    for i in range(count):
        target = root / ("a" if i % 2 else "b") / f"{i:02d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(target)
    return root


def test_pack_killed_midway_leaves_the_old_set_intact_and_readable(tmp_path, monkeypatch):
    from dali_pipelines.dataset import resolve_dataset
    from relic_fast.dataset_tools import pack as pack_module

    root, out = tiny_tree(tmp_path / "data"), tmp_path / "shards"
    pack_dataset(root, out, shard_size=6, workers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write_shard, written = pack_module._write_shard, []

    def crash_after_the_first_shard(*args, **kwargs):
        if written:
            raise RuntimeError("killed mid-pack")
        written.append(real_write_shard(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(pack_module, "_write_shard", crash_after_the_first_shard)
    with pytest.raises(RuntimeError, match="killed mid-pack"):
        pack_dataset(root, out, shard_size=2, seed=5, overwrite=True, workers=1)
    assert written  # the new set had begun
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert resolve_dataset(str(out)).num_samples == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "shards"]  # no partial folder left


def test_manifest_that_disagrees_is_refused_naming_the_shard(tmp_path):
    import json
    import shutil

    from dali_pipelines.dataset import DatasetError, resolve_dataset

    out = tmp_path / "shards"
    pack_dataset(tiny_tree(tmp_path / "data"), out, shard_size=2, workers=1)
    assert resolve_dataset(str(out)).num_samples == 6
    shard = out / "shard-000001.tar"
    shard.rename(tmp_path / "aside.tar")  # a shard missing
    with pytest.raises(DatasetError, match=r"shard-000001\.tar"):
        resolve_dataset(str(out))
    refused = CliRunner().invoke(app, ["info", "--data", str(out)])
    last_line = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 3 and last_line.startswith("dataset error:") and "shard-000001.tar" in last_line
    (tmp_path / "aside.tar").rename(shard)
    shutil.copyfile(shard, out / "shard-000007.tar")  # an extra shard
    with pytest.raises(DatasetError, match=r"shard-000007\.tar"):
        resolve_dataset(str(out))
    (out / "shard-000007.tar").unlink()
    manifest = (out / "manifest.json").read_text()
    edited = json.loads(manifest)
    edited["shards"][1]["samples"] += 1  # a count that disagrees
    (out / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(DatasetError, match=r"shard-000001\.tar.*2 .*manifest\.json.*3"):
        resolve_dataset(str(out))
    (out / "manifest.json").write_text(manifest)
    with open(shard, "ab") as grown:  # still a readable tar with the same samples: only the size tells
        grown.write(bytes(512))
    with pytest.raises(DatasetError, match=r"shard-000001\.tar"):
        resolve_dataset(str(out))
    shard.unlink()
    (out / "manifest.json").unlink()  # a set `pack` wrote (its classes.json says so) without its manifest
    with pytest.raises(DatasetError, match=r"manifest\.json"):
        resolve_dataset(str(out))


def test_third_party_shards_without_manifest_read_with_one_warning(tmp_path):
    from dali_pipelines.dataset import resolve_dataset

    shard = tmp_path / "shards" / "part-0.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in (("x.jpg", (tiny_tree(tmp_path / "data", 1) / "b" / "00.jpg").read_bytes()),
                           ("x.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.warns(UserWarning, match=r"no manifest\.json") as caught:
        assert resolve_dataset(str(shard.parent)).num_samples == 1
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
