"""The `relic-fast` command line: parse, resolve the config, call one library function.

No training logic lives here; every command is a thin wrapper over a `relic_fast` function. Errors
a user can fix (`relic_fast.errors`) become one line and their exit code in one place,
`ErrorReportingGroup`; `--debug` or RELIC_FAST_DEBUG=1 adds the full traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from relic_fast.config import Config, load_config
from relic_fast.errors import ExitCode, classify, describe

DEBUG_ENV = "RELIC_FAST_DEBUG"
console = Console()
error_console = Console(stderr=True)


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun set them (imported on use: commands like `config show` start without torch)."""
    from relic_fast.distributed import launch_rank as from_environment

    return from_environment()


def report_error(label: str, message: str, style: str = "bold red") -> None:
    """Print `label: message` to stderr unwrapped, naming the rank under torchrun."""
    rank, world_size = launch_rank()
    where = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    error_console.print(Text.assemble(where, (f"{label}:", style), " ", message), soft_wrap=True)


class ErrorReportingGroup(TyperGroup):
    """The command group whose `invoke` turns every known error of any command into one line and its
    exit code (`relic_fast.errors.ExitCode`); unexpected errors keep their traceback (a bug to report)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors
        except KeyboardInterrupt:  # a second Ctrl-C during a run (see run_control), or one outside it
            self._show_traceback()
            report_error("interrupted", "stopped at once, no checkpoint written; `--resume` continues from the "
                                        "last one")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as err:
            known = classify(err)
            if known is None:
                if launch_rank()[1] > 1:
                    report_error("unexpected error", f"{type(err).__name__} (traceback below)")
                raise
            code, label = known
            if not (getattr(err, "rank_0_speaks", False) and launch_rank()[0] != 0):
                self._show_traceback()
                report_error(label, describe(err), "bold yellow" if code == ExitCode.STOPPED else "bold red")
            if code == ExitCode.STOPPED and launch_rank()[1] > 1:
                # Under torchrun every rank leaves at once after the agreed checkpoint: torchrun SIGTERMs the
                # ranks still alive when the first one exits, and a rank in Python's slow teardown (its stop
                # handlers already gone) would die of it and be reported as killed.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            raise typer.Exit(code) from None

    @staticmethod
    def _show_traceback() -> None:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()


app = typer.Typer(help="RELICv2 self-supervised pretraining of ResNets with DALI GPU pipelines.",
                  cls=ErrorReportingGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect configuration recipes.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help=f"Show the full traceback of an error (as {DEBUG_ENV}=1 does).")] = False) -> None:
    """Options for every command (they come before the command: `relic-fast --debug pretrain ...`)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"

ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML recipe (see configs/); defaults apply to what it leaves out.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override one key: section.key=value (repeatable), e.g. --set train.batch_size=256.")]


def resolve_config(path: Optional[Path], overrides: Optional[list[str]]) -> Config:
    """Load and validate the config (a `ConfigError` names the key; `ErrorReportingGroup` reports it)."""
    return load_config(path, overrides or [])


@config_app.command("show")
def config_show(path: Annotated[Optional[Path], typer.Argument(help="TOML recipe; omit for the defaults.")] = None,
                overrides: SetOption = None,
                explain: Annotated[bool, typer.Option(help="Print each key's documentation too.")] = False) -> None:
    """Print the resolved config (file + --set overrides + defaults) as TOML."""
    from relic_fast.config import field_docs, section_type, to_toml

    config = resolve_config(path, overrides)
    if not explain:
        typer.echo(to_toml(config))
        return
    for name, values in config.to_dict().items():
        docs = field_docs(section_type(name))
        typer.echo(f"[{name}]")
        for key, value in values.items():
            typer.echo(f"# {docs.get(key, '')}")
            typer.echo(f"{key} = {value!r}")
        typer.echo("")


@app.command()
def info(config: Annotated[Optional[Path], typer.Option("--config", help="Also show the run plan of this TOML recipe here: every \"auto\" resolved (device, DALI device, compile, loss and LARS implementation, interpolation, precision).")] = None,
         overrides: SetOption = None) -> None:
    """Show versions (torch, torchvision, DALI, Triton, apex), devices, which fast paths run here and, with
    --config, what a run of that recipe would do on this machine."""
    from relic_fast.environment import fast_paths, machine_info
    from relic_fast.run_plan import resolve_plan

    machine = machine_info()
    table = Table(title="relic-fast environment")
    table.add_column("item")
    table.add_column("value")
    for key in ("python", "torch", "torchvision", "dali", "triton"):
        table.add_row(key, str(machine[key] or "not installed"))
    from relic_fast.environment import apex_available
    table.add_row("apex", "installed" if apex_available() else "not installed")
    devices = f"{machine['gpus']} CUDA GPU(s): {machine['gpu']}" if machine["gpus"] else "no CUDA GPU"
    table.add_row("devices", f"{devices}; CPU: {machine['cpu']} ({machine['cpus']} cores)")
    console.print(table)
    paths = Table(title="fast paths")
    paths.add_column("path")
    paths.add_column("available")
    paths.add_column("note")
    for name, (ok, note) in fast_paths().items():
        paths.add_row(name, "[green]yes[/]" if ok else "[yellow]no[/]", note)
    console.print(paths)
    if config is not None or overrides:
        plan = Table(title=f"run plan of {config or 'the defaults'} here")
        plan.add_column("choice")
        plan.add_column("resolved to")
        for key, value in resolve_plan(resolve_config(config, overrides)).rows():
            plan.add_row(key, value)
        console.print(plan)


@app.command()
def pretrain(config: ConfigPath = None,
             data: Annotated[Optional[str], typer.Option("--data", help="Dataset: folder tree, demo-data root, file list (.txt) or WebDataset shard folder. Omitted: the built-in demo dataset (generated on first use).")] = None,
             out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints/, metrics.jsonl, config.toml, tensorboard/.")] = Path("runs/pretrain"),
             overrides: SetOption = None,
             resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest usable checkpoint in --out.")] = False,
             steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Stop after this many optimizer steps (schedules still span train.epochs).")] = None) -> None:
    """Pretrain a ResNet with RELICv2 (single process, or one rank under `torchrun -m relic_fast pretrain`)."""
    import dataclasses

    from relic_fast.evaluation.validate import KnnValidator
    from relic_fast.trainer import pretrain as run_pretrain

    cfg = resolve_config(config, overrides)
    if data is not None:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, path=data))
    if steps is not None:
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, max_steps=steps))
    summary = run_pretrain(cfg, out_dir=out, resume=resume, validator=KnnValidator.from_config(cfg))
    if launch_rank()[0] == 0:  # one voice under torchrun
        console.print(f"[bold green]done:[/] {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                      f"checkpoint {summary['checkpoint']}")


@app.command("index")
def index_command(
        source: Annotated[Path, typer.Argument(help="Folder tree DIR/<class>/<image>, a demo-data root, or a file list (.txt: 'path label' per line).")],
        out: Annotated[Optional[Path], typer.Option(help="Index file to write (default DIR/index.txt, or X.index.txt for a list X.txt). Paths in it are relative to its folder, or absolute.")] = None,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Validation processes (default: all CPU cores).")] = None,
        max_pixels: Annotated[int, typer.Option(min=1, help="Reject images larger than this many pixels (width*height).")] = 100_000_000,
        min_side: Annotated[int, typer.Option(min=1, help="Reject images whose shorter side is below this many pixels.")] = 1) -> None:
    """Check every image decodes (in parallel, cached), write the clean file list and the rejected TSV."""
    from relic_fast.dataset_tools.index import index_dataset, summary_rows
    from relic_fast.dataset_tools.progress import progress_bar

    try:
        with progress_bar("validating", console) as (on_start, on_progress):
            report = index_dataset(source, out=out, workers=workers, max_pixels=max_pixels,
                                   min_side=min_side, on_start=on_start, on_progress=on_progress)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    print_rows("relic-fast index", summary_rows(report))


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """Print (item, value) rows as a two-column table."""
    table = Table(title=title)
    table.add_column("item")
    table.add_column("value")
    for item, value in rows:
        table.add_row(item, value)
    console.print(table)


@app.command("masks")
def masks_command(
        source: Annotated[Path, typer.Argument(help="Folder tree DIR/<class>/<image>, a demo-data root, or a file list (.txt).")],
        out: Annotated[Path, typer.Option(help="Mask tree to write: OUT/<relative image path with .png>, 0/255 PNGs (use as data.masks).")],
        method: Annotated[str, typer.Option(help="Saliency method: boundary_contrast, frequency_tuned or spectral_residual.")] = "boundary_contrast",
        batch_size: Annotated[int, typer.Option(min=1, help="Images per batch on the device.")] = 64,
        work_size: Annotated[int, typer.Option(min=16, help="Side of the square the saliency is computed at.")] = 64,
        threshold: Annotated[str, typer.Option(help="Binarization: otsu or adaptive (2 x mean saliency).")] = "otsu",
        device: Annotated[str, typer.Option(help="auto (the GPU when CUDA is available), cpu or gpu.")] = "auto",
        truth: Annotated[Optional[Path], typer.Option(help="Ground-truth mask tree: score the masks (IoU, F-measure, MAE) against it and against a centre prior.")] = None) -> None:
    """Compute an unsupervised saliency mask for every image (resumable: existing masks are kept)."""
    from relic_fast.dataset_tools.masks import compute_masks, evaluate_centre_prior, evaluate_masks
    from relic_fast.dataset_tools.progress import progress_bar

    try:
        with progress_bar("saliency masks", console) as (on_start, on_progress):
            report = compute_masks(source, out, method=method, batch_size=batch_size, work_size=work_size,
                                   threshold=threshold, device=device, on_start=on_start, on_progress=on_progress)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    rows = [("masks", str(report.mask_root)), ("written", str(report.written)),
            ("already there (skipped)", str(report.skipped)), ("unreadable images", str(len(report.failed))),
            ("time", f"{report.seconds:.2f} s")]
    if truth is not None:
        for name, scores in (("masks", evaluate_masks(out, truth)), ("centre prior", evaluate_centre_prior(truth))):
            rows.append((f"{name}: IoU / F(0.3) / MAE",
                         f"{scores['iou']:.3f} / {scores['f_measure']:.3f} / {scores['mae']:.3f} ({scores['images']} images)"))
    print_rows("relic-fast masks", rows)


@app.command("pack")
def pack_command(
        source: Annotated[Path, typer.Argument(help="Folder tree DIR/<class>/<image>, a demo-data root, or a file list (.txt).")],
        out: Annotated[Path, typer.Option(help="Folder for the WebDataset shards shard-000000.tar (+ .idx for DALI).")],
        shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard.")] = 1000,
        masks: Annotated[Optional[Path], typer.Option(help="Saliency-mask tree parallel to the images (default: a demo root's masks/train).")] = None,
        shuffle: Annotated[bool, typer.Option(help="Shuffle samples across shards (seeded) before packing.")] = True,
        seed: Annotated[int, typer.Option(help="Seed of the shuffle.")] = 0,
        overwrite: Annotated[bool, typer.Option(help="Replace shards already in OUT.")] = False,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Validation processes (default: all CPU cores).")] = None) -> None:
    """Write usable images (original bytes), labels and masks as WebDataset tar shards with DALI indexes."""
    from relic_fast.dataset_tools.pack import pack_dataset
    from relic_fast.dataset_tools.progress import progress_bar

    try:
        with progress_bar("packing", console) as (on_start, on_progress):
            report = pack_dataset(source, out, shard_size=shard_size, masks=masks, shuffle=shuffle, seed=seed,
                                  overwrite=overwrite, workers=workers, on_start=on_start, on_progress=on_progress)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    print_rows("relic-fast pack", [("shards", f"{len(report.shards)} in {out}"), ("samples", str(report.samples)),
                                   ("with a mask", str(report.masks)), ("left out (not usable)", str(len(report.rejected))),
                                   ("time", f"{report.seconds:.2f} s")])


@app.command("linear-eval")
def linear_eval_command(
        checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file, or a run folder (its newest checkpoint). Its saved config gives the encoder.")] = None,
        data: Annotated[Path, typer.Option("--data", help="Dataset root holding train/ and val/ class-folder trees; every other split folder next to them (e.g. val_correlated/) is reported too.")] = ...,
        config: ConfigPath = None,
        overrides: SetOption = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="Report file (.json) or folder for linear_eval.json (default: next to the checkpoint).")] = None,
        random_init: Annotated[bool, typer.Option("--random-init", help="Evaluate a randomly initialized encoder of the config's model section with torchvision's default init (the baseline; never zero-init residual); no checkpoint needed.")] = False) -> None:
    """Linear evaluation of a frozen encoder: top-1/top-5 on every validation split, written to linear_eval.json."""
    from relic_fast.evaluation.runner import linear_eval_table, run_linear_eval

    cfg = resolve_config(config, overrides)  # validates --config/--set; the whole config of --random-init
    if checkpoint is None and not random_init:
        console.print("[bold red]error:[/] give --checkpoint, or --random-init for the baseline")
        raise typer.Exit(2)
    result, path = run_linear_eval(data_root=data, config=cfg, checkpoint=checkpoint, config_path=config,
                                   overrides=overrides, random_init=random_init, out=out, log=console.print)
    console.print(linear_eval_table(result))
    console.print(f"[bold green]wrote[/] {path}")


@app.command("export")
def export_command(
        source: Annotated[Path, typer.Argument(help="Checkpoint file, or a run folder (its newest checkpoint).")],
        out: Annotated[Path, typer.Option("--out", help="Weights file: *.safetensors (needs the safetensors package) or *.pt; the JSON sidecar goes next to it (same name, .json).")],
        network: Annotated[str, typer.Option("--network", help="online (what the paper's evaluation probes) or target (the EMA encoder).")] = "online",
        fmt: Annotated[str, typer.Option("--format", help="torchvision, timm (strict=True loads into their resnetN without the fc) or relic-fast (any width and stem; relic_fast.export.load_encoder).")] = "torchvision") -> None:
    """Export the pretrained encoder as a plain state dict that torchvision / timm ResNets load, plus a JSON sidecar."""
    from relic_fast.export import export_encoder

    report = export_encoder(source, out, network=network, fmt=fmt)
    print_rows("relic-fast export", report.rows())


@app.command("experiment")
def experiment_command(
        config: ConfigPath = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="Demo-data root (train/, val/, val_correlated/, masks/). Default: the recipe's data.path, else the built-in demo dataset.")] = None,
        out: Annotated[Path, typer.Option("--out", help="Folder for the runs (seed<N>/<variant>/) and experiment.json.")] = Path("runs/experiment"),
        seeds: Annotated[int, typer.Option("--seeds", min=1, help="Number of seeds (train.seed, train.seed + 1, ...); the table shows mean ± std.")] = 3,
        steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Pretraining steps per run (default: the recipe's train.max_steps).")] = None,
        variants: Annotated[Optional[str], typer.Option("--variants", help="Comma-separated rows to run (default: all): random_init, random_init_zero_residual, relicv2_no_saliency, relicv2_saliency, peer, supervised.")] = None) -> None:
    """Demo experiment: the default-init random encoder vs RELICv2 with / without saliency masking (same probe on val and val_correlated), a lightly SimCLR peer, and a supervised reference."""
    from relic_fast.experiments.experiment import VARIANTS, run_demo_experiment

    resolve_config(config, None)  # a clean error for a bad recipe before any run starts
    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    unknown = [v for v in chosen or [] if v not in VARIANTS]
    if unknown:
        console.print(f"[bold red]error:[/] --variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        raise typer.Exit(2)
    run_demo_experiment(config, data_root=data, out_dir=out, seeds=seeds, steps=steps, variants=chosen,
                        console=console)
    console.print(f"[bold green]wrote[/] {out / 'experiment.json'}")


bench_app = typer.Typer(help="Throughput benchmarks: print a table, write JSON (machine, versions, commit) and a chart.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
# The benchmark modules own their options (argparse), so `python -m benchmarks.X` and
# `relic-fast bench X` are one implementation: the command forwards its arguments untouched.
FORWARD_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@bench_app.command("loader", context_settings=FORWARD_ARGS, add_help_option=False)
def bench_loader_command(ctx: typer.Context) -> None:
    """Loader images/s: DALI pipeline vs torchvision + PIL vs DALI decode-only, per recipe and thread count (--help for options)."""
    from relic_fast.bench.loader import main

    main(ctx.args, prog="relic-fast bench loader")


@bench_app.command("step", context_settings=FORWARD_ARGS, add_help_option=False)
def bench_step_command(ctx: typer.Context) -> None:
    """Training-step images/s on synthetic views: eager vs compiled, channels-last vs contiguous, fp32 vs bf16 (--help for options)."""
    from relic_fast.bench.step import main

    main(ctx.args, prog="relic-fast bench step")


@bench_app.command("train", context_settings=FORWARD_ARGS, add_help_option=False)
def bench_train_command(ctx: typer.Context) -> None:
    """The real trainer's images/s fed by its DALI pipeline, by synthetic views and by torchvision, plus compile warm-up (--help for options)."""
    from relic_fast.bench.train import main

    main(ctx.args, prog="relic-fast bench train")


@bench_app.command("memory", context_settings=FORWARD_ARGS, add_help_option=False)
def bench_memory_command(ctx: typer.Context) -> None:
    """Peak memory of a training step with and without activation checkpointing, per batch size (--help for options)."""
    from relic_fast.bench.memory import main

    main(ctx.args, prog="relic-fast bench memory")


@bench_app.command("all", context_settings=FORWARD_ARGS, add_help_option=False)
def bench_all_command(ctx: typer.Context) -> None:
    """Loader, step and loss benchmarks with the device's defaults into one folder (--out DIR; --help for options)."""
    from relic_fast.bench.suite import main

    main(ctx.args, prog="relic-fast bench all")


DEMO_DATA_HELP = (
    "Write a procedural dataset of 10 shape classes on 10 background texture families with a spurious cue.\n\n"
    "Class i owns background family i (circle: stripes, crescent: checkerboard, cross: clouds, ellipse: dots, "
    "heart: gradient, hexagon: waves, ring: grid, square: speckle, star: zigzag, triangle: sunburst). "
    "In train/ and val_correlated/, exactly round(correlation * n) of a class's n images use its own family "
    "and the rest are spread evenly over the other nine; in val/ each class's images are spread evenly over all "
    "ten. The val_correlated - val accuracy gap measures reliance on the background.\n\n"
    "Saliency masks: masks/<split>/<class>/<stem>.png (0/255); per-image families: backgrounds.tsv.")


@app.command("demo-data", help=DEMO_DATA_HELP)
def demo_data_command(
        out: Annotated[Path, typer.Argument(help="Folder to create: train/, val/, val_correlated/, masks/, backgrounds.tsv, dataset.json.")],
        images: Annotated[int, typer.Option("--images", min=10, help="Training images (classes balanced); each val split gets max(images // 4, 10).")] = 2000,
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
        console.print(f"[bold red]error:[/] {out} exists and is not empty; add --overwrite to replace it")
        raise typer.Exit(2) from None
    table = Table(title=f"demo data in {out} ({time.perf_counter() - start:.1f} s)")
    for column in ("split", "images", "per class", "backgrounds", "own-background fraction"):
        table.add_column(column)
    for split, info in summary["splits"].items():
        counts = sorted(set(info["per_class"].values()))
        table.add_row(split, str(info["images"]), "-".join(map(str, counts)), info["background_rule"],
                      f"{info['own_background_fraction']:.3f}")
    console.print(table)


@bench_app.command("loss", context_settings=FORWARD_ARGS, add_help_option=False)
def bench_loss_command(ctx: typer.Context) -> None:
    """RELICv2 loss forward + backward: reference vs compiled vs fused Triton kernel, per batch size (--help for options)."""
    from relic_fast.bench.loss import main

    main(ctx.args, prog="relic-fast bench loss")


@app.command("profile")
def profile_command(
        config: ConfigPath = None,
        data: Annotated[Optional[str], typer.Option("--data", help="Dataset (as for pretrain). Omitted: the recipe's data.path, else the built-in demo dataset.")] = None,
        steps: Annotated[int, typer.Option("--steps", min=1, help="Profiled training steps (after --warmup).")] = 10,
        warmup: Annotated[int, typer.Option("--warmup", min=1, help="Training steps first, untimed (compilation, pipeline start).")] = 2,
        loader_batches: Annotated[int, typer.Option("--loader-batches", min=1, help="Batches per timed window of a loader measurement.")] = 8,
        loader_repeats: Annotated[int, typer.Option("--loader-repeats", min=1, help="Timed windows per loader measurement (median).")] = 3,
        synthetic_steps: Annotated[int, typer.Option("--synthetic-steps", min=1, help="Timed steps of the model alone on synthetic views.")] = 5,
        ablation: Annotated[bool, typer.Option("--ablation/--no-ablation", help="Cost DALI operator groups by ablation (one loader measurement each).")] = True,
        out: Annotated[Path, typer.Option("--out", help="Run folder: profile.json, profile_trace.json (Chrome trace), metrics.jsonl, config.toml.")] = Path("runs/profile"),
        overrides: SetOption = None) -> None:
    """Run the real training loop for a few steps and report where time goes: input-bound or compute-bound, and what to change."""
    import dataclasses

    from relic_fast.profile_report import print_report
    from relic_fast.profiler import ProfileSettings, profile_run

    cfg = resolve_config(config, overrides)
    if data is not None:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, path=data))
    settings = ProfileSettings(steps=steps, warmup=warmup, loader_batches=loader_batches, loader_repeats=loader_repeats,
                               synthetic_steps=synthetic_steps, ablation=ablation)
    report = profile_run(cfg, out, settings, log=console.log)
    print_report(report, console)
    console.print(f"[bold green]wrote[/] {out / 'profile.json'}")


@app.command("selftest")
def selftest_command(
        device: Annotated[str, typer.Option("--device", help="auto (the GPU when CUDA is present), cpu or gpu.")] = "auto",
        only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only this check (repeatable): pipeline-statistics, fused-loss, compiled-step.")] = None,
        compile_backend: Annotated[Optional[str], typer.Option("--compile-backend", help="torch.compile backend of the compiled-step check (default: inductor on CUDA, aot_eager on CPU).")] = None,
        perturb: Annotated[float, typer.Option("--perturb", hidden=True, help="Test hook: scale every fast-path result by (1 + PERTURB) before comparing.")] = 0.0) -> None:
    """Prove the fast paths match their references here: GPU vs CPU pipeline statistics, fused vs reference loss, compiled vs eager step."""
    from relic_fast.selftest import exit_code, print_results, run_selftest

    try:
        results = run_selftest(device, only=tuple(only) if only else None, perturb=perturb,
                               compile_backend=compile_backend, log=console.log)
    except ValueError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    print_results(results, console)
    raise typer.Exit(exit_code(results))
