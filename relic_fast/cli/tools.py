"""The dataset tools and the benchmarks on the command line: `index`, `masks`, `pack`, `demo-data`, `bench ...`.

Each dataset command wraps one `relic_fast.dataset_tools` (or `demo_data`) function with a progress bar and a
summary table; the `bench` commands are the benchmarks of `relic_fast.bench.registry`, each forwarding its
arguments untouched to the one harness main (`Benchmark.main`), so `python -m benchmarks.bench_X` and
`relic-fast bench X` are one implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from relic_fast.bench.registry import REGISTRY, run as run_benchmark
from relic_fast.cli.common import console, print_rows, usage_error

def index_command(
        source: Annotated[Path, typer.Argument(help="Folder tree DIR/<class>/<image>, a demo-data root, a flat folder of images with its labels CSV (ImageNet's Kaggle val/), or a file list (.txt: 'path label' per line).")],
        out: Annotated[Optional[Path], typer.Option(help="Index file to write (default DIR/index.txt, or X.index.txt for a list X.txt): a version-2 file list whose header names the classes. Paths in it are relative to its folder, or absolute.")] = None,
        labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels CSV of a flat folder (header row, then 'image,class ...'; Kaggle's LOC_val_solution.csv). Default: LOC_<folder>_solution.csv in the folder or up to 4 folders above it.")] = None,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Validation processes (default: all CPU cores).")] = None,
        max_pixels: Annotated[int, typer.Option(min=1, help="Reject images larger than this many pixels (width*height).")] = 100_000_000,
        min_side: Annotated[int, typer.Option(min=1, help="Reject images whose shorter side is below this many pixels.")] = 1,
        max_image_mb: Annotated[int, typer.Option(min=1, help="Reject files larger than this many MB (2**20 bytes) from their size, without reading them.")] = 64) -> None:
    """Check every image decodes (in parallel, cached), write the clean file list and the rejected TSV."""
    from dali_pipelines.dataset import DatasetError
    from relic_fast.dataset_tools.index import index_dataset, summary_rows
    from relic_fast.dataset_tools.progress import progress_bar

    try:
        with progress_bar("validating", console) as (on_start, on_progress):
            report = index_dataset(source, out=out, labels=str(labels or ""), workers=workers,
                                   max_pixels=max_pixels, min_side=min_side, max_image_mb=max_image_mb,
                                   on_start=on_start, on_progress=on_progress)
    except DatasetError:
        raise  # one line, exit code 3 (ErrorReportingGroup)
    except (FileNotFoundError, ValueError) as err:
        usage_error(str(err))
    print_rows("relic-fast index", summary_rows(report))


def masks_command(
        source: Annotated[Path, typer.Argument(help="Folder tree DIR/<class>/<image>, a demo-data root, or a file list (.txt).")],
        out: Annotated[Path, typer.Option(help="Mask tree to write (not the dataset folder): OUT/<relative image path with .png>, absolute list entries under OUT/_abs/<path>; 0/255 PNGs (use as data.masks).")],
        method: Annotated[str, typer.Option(help="Saliency method: boundary_contrast, frequency_tuned or spectral_residual.")] = "boundary_contrast",
        batch_size: Annotated[int, typer.Option(min=1, help="Images per batch on the device.")] = 64,
        work_size: Annotated[int, typer.Option(min=16, help="Side of the square the saliency is computed at.")] = 64,
        threshold: Annotated[str, typer.Option(help="Binarization: otsu or adaptive (2 x mean saliency).")] = "otsu",
        device: Annotated[str, typer.Option(help="auto (the GPU when CUDA is available), cpu or gpu.")] = "auto",
        truth: Annotated[Optional[Path], typer.Option(help="Ground-truth mask tree: score the masks (IoU, F-measure, MAE) against it and against a centre prior.")] = None) -> None:
    """Compute an unsupervised saliency mask for every image (resumable: existing masks are kept)."""
    from dali_pipelines.dataset import DatasetError
    from relic_fast.dataset_tools.masks import compute_masks, evaluate_centre_prior, evaluate_masks
    from relic_fast.dataset_tools.progress import progress_bar

    try:
        with progress_bar("saliency masks", console) as (on_start, on_progress):
            report = compute_masks(source, out, method=method, batch_size=batch_size, work_size=work_size,
                                   threshold=threshold, device=device, on_start=on_start, on_progress=on_progress)
    except DatasetError:
        raise  # one line, exit code 3 (ErrorReportingGroup)
    except (FileNotFoundError, ValueError) as err:
        usage_error(str(err))
    rows = [("masks", str(report.mask_root)), ("written", str(report.written)),
            ("already there (skipped)", str(report.skipped)), ("unreadable images", str(len(report.failed))),
            ("time", f"{report.seconds:.2f} s")]
    if truth is not None:
        for name, scores in (("masks", evaluate_masks(out, truth)), ("centre prior", evaluate_centre_prior(truth))):
            rows.append((f"{name}: IoU / F(0.3) / MAE",
                         f"{scores['iou']:.3f} / {scores['f_measure']:.3f} / {scores['mae']:.3f} ({scores['images']} images)"))
    print_rows("relic-fast masks", rows)


def pack_command(
        source: Annotated[Path, typer.Argument(help="Folder tree DIR/<class>/<image>, a demo-data root, or a file list (.txt).")],
        out: Annotated[Path, typer.Option(help="Folder for the WebDataset shards shard-000000.tar (+ .idx for DALI), classes.json and manifest.json; new, empty, or an earlier pack's (replaced whole once the new set is complete).")],
        shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard.")] = 1000,
        masks: Annotated[Optional[Path], typer.Option(help="Saliency-mask tree parallel to the images (default: a demo root's masks/train).")] = None,
        labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels CSV of a flat folder (as for index).")] = None,
        shuffle: Annotated[bool, typer.Option(help="Shuffle samples across shards (seeded) before packing.")] = True,
        seed: Annotated[int, typer.Option(help="Seed of the shuffle.")] = 0,
        overwrite: Annotated[bool, typer.Option(help="Replace the shard set already in OUT (kept until the new one is complete).")] = False,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Validation processes (default: all CPU cores).")] = None) -> None:
    """Write usable images (original bytes), labels and masks as WebDataset tar shards with DALI indexes,
    the class names in classes.json and the manifest (shards, sample counts, sizes, SHA-256) beside them."""
    from dali_pipelines.dataset import DatasetError
    from relic_fast.dataset_tools.pack import pack_dataset
    from relic_fast.dataset_tools.progress import progress_bar

    try:
        with progress_bar("packing", console) as (on_start, on_progress):
            report = pack_dataset(source, out, shard_size=shard_size, masks=masks, labels=str(labels or ""),
                                  shuffle=shuffle, seed=seed, overwrite=overwrite, workers=workers,
                                  on_start=on_start, on_progress=on_progress)
    except DatasetError:
        raise  # one line, exit code 3 (ErrorReportingGroup)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        usage_error(str(err))
    print_rows("relic-fast pack", [("shards", f"{len(report.shards)} in {out}"), ("samples", str(report.samples)),
                                   ("with a mask", str(report.masks)), ("left out (not usable)", str(len(report.rejected))),
                                   ("time", f"{report.seconds:.2f} s")])


DEMO_DATA_HELP = (
    "Write a procedural dataset of 10 shape classes on 10 background texture families with a spurious cue.\n\n"
    "Class i owns background family i (circle: stripes, crescent: checkerboard, cross: clouds, ellipse: dots, "
    "heart: gradient, hexagon: waves, ring: grid, square: speckle, star: zigzag, triangle: sunburst). "
    "In train/ and val_correlated/, exactly round(correlation * n) of a class's n images use its own family "
    "and the rest are spread evenly over the other nine; in val/ and test/ each class's images are spread evenly "
    "over all ten. The val_correlated - val accuracy gap measures reliance on the background. Choose settings on "
    "val/, report on the held-out test/.\n\n"
    "Saliency masks: masks/<split>/<class>/<stem>.png (0/255); per-image families: backgrounds.tsv.")


def demo_data_command(
        out: Annotated[Path, typer.Argument(help="Folder to create: train/, val/, val_correlated/, test/, masks/, backgrounds.tsv, dataset.json.")],
        images: Annotated[int, typer.Option("--images", min=10, help="Training images (classes balanced); val, val_correlated and test get max(images // 4, 10) each.")] = 2000,
        size: Annotated[int, typer.Option("--size", min=16, help="Image side in pixels (square JPEGs).")] = 96,
        seed: Annotated[int, typer.Option("--seed", min=0, help="Same seed, identical bytes; another seed, other images.")] = 0,
        correlation: Annotated[float, typer.Option("--correlation", min=0.0, max=1.0, help="Fraction of each class's train/val_correlated images on the class's own background family (0.1 = no cue).")] = 0.7,
        workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Rendering processes (default: all CPU cores); the bytes do not depend on it.")] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True) -> None:
    """Write the procedural demo dataset (shapes on textured backgrounds, spurious background cue)."""
    import time

    from relic_fast.demo_data import generate_demo_dataset

    start = time.perf_counter()
    try:
        summary = generate_demo_dataset(out, images=images, size=size, seed=seed, correlation=correlation,
                                        workers=workers, progress=progress, overwrite=overwrite)
    except FileExistsError:
        usage_error(f"{out} exists and is not empty; add --overwrite to replace it")
    table = Table(title=f"demo data in {out} ({time.perf_counter() - start:.1f} s)")
    for column in ("split", "images", "per class", "backgrounds", "own-background fraction"):
        table.add_column(column)
    for split, info in summary["splits"].items():
        counts = sorted(set(info["per_class"].values()))
        table.add_row(split, str(info["images"]), "-".join(map(str, counts)), info["background_rule"],
                      f"{info['own_background_fraction']:.3f}")
    console.print(table)


def add_dataset_commands(app: typer.Typer) -> None:
    """Put the dataset tools on `app` as top-level commands (`relic-fast index`, ...)."""
    app.command("index")(index_command)
    app.command("masks")(masks_command)
    app.command("pack")(pack_command)
    app.command("demo-data", help=DEMO_DATA_HELP)(demo_data_command)


bench_app = typer.Typer(help="Throughput benchmarks: print a table, write JSON (machine, versions, commit) and a chart.",
                        no_args_is_help=True)


def forward_to_benchmark(name: str):
    """The `bench NAME` command: the registry imports the benchmark when it runs (so the CLI starts without
    torch) and hands it the arguments as they came (the benchmark owns its options, argparse)."""

    def command(ctx: typer.Context) -> None:
        run_benchmark(name, ctx.args, prog=f"relic-fast bench {name}")

    return command


for _entry in REGISTRY:
    bench_app.command(_entry.name, help=_entry.summary, add_help_option=False,
                      context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        forward_to_benchmark(_entry.name))
