"""The `relic-fast` command line: parse, resolve the config, call one library function.

No training logic lives here; every command is a thin wrapper over a `relic_fast` function. Errors
a user can fix (`relic_fast.errors`) become one line and their exit code in one place,
`common.ErrorReportingGroup`; `--debug` or RELIC_FAST_DEBUG=1 adds the full traceback. The dataset
tools and the benchmarks' commands live in `tools`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from relic_fast.cli.common import (DEBUG_ENV, ConfigPath, ErrorReportingGroup, SetOption, console, launch_rank,
                                   print_rows, resolve_config, usage_error)
from relic_fast.cli.tools import add_dataset_commands, bench_app

app = typer.Typer(help="RELICv2 self-supervised pretraining of ResNets with DALI GPU pipelines.",
                  cls=ErrorReportingGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect configuration recipes.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help=f"Show the full traceback of an error (as {DEBUG_ENV}=1 does).")] = False) -> None:
    """Options for every command (they come before the command: `relic-fast --debug pretrain ...`)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


add_dataset_commands(app)
app.add_typer(bench_app, name="bench")


@config_app.command("show")
def config_show(path: Annotated[Optional[Path], typer.Argument(help="TOML recipe; omit for the defaults.")] = None,
                overrides: SetOption = None,
                explain: Annotated[bool, typer.Option(help="Print each key's documentation too.")] = False) -> None:
    """Print the resolved config (file + --set overrides + defaults) as TOML."""
    from relic_fast.config import section_type, to_toml
    from relic_fast.config_fields import field_docs

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
         overrides: SetOption = None,
         data: Annotated[Optional[str], typer.Option("--data", help="Also check what a run of the recipe would read from this dataset: images and classes, saliency-mask coverage (images with a mask / images), and the split the monitor scores (or off, and why).")] = None) -> None:
    """Show versions (torch, torchvision, DALI, Triton, apex), devices, which fast paths run here and, with
    --config, what a run of that recipe would do on this machine (with --data, on that dataset)."""
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
    if config is not None or overrides or data is not None:
        plan = Table(title=f"run plan of {config or 'the defaults'} here")
        plan.add_column("choice")
        plan.add_column("resolved to")
        resolved = resolve_config(config, overrides)
        for key, value in resolve_plan(resolved).rows():
            plan.add_row(key, value)
        if data is not None:
            from relic_fast.data_plan import data_plan_rows

            for key, value in data_plan_rows(resolved, data):
                plan.add_row(key, value)
        console.print(plan)


@app.command()
def pretrain(config: ConfigPath = None,
             data: Annotated[Optional[str], typer.Option("--data", help="Dataset: folder tree, demo-data root, file list (.txt) or WebDataset shard folder. Omitted: the built-in demo dataset (generated on first use).")] = None,
             out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints/, metrics.jsonl, config.toml, tensorboard/.")] = Path("runs/pretrain"),
             overrides: SetOption = None,
             resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest usable checkpoint in --out. A config that would make the run differ from one never stopped is refused (exit 6), every changed key named; the README's resume table lists what may change.")] = False,
             accept_change: Annotated[Optional[list[str]], typer.Option("--accept-change", help="With --resume: go on with this refused change on purpose (repeatable): a config key (section.key), 'dataset' (other images) or 'ranks'. The new value takes effect; the run's output and metrics.jsonl record it.")] = None,
             steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Stop after this many optimizer steps (schedules still span train.epochs).")] = None,
             val: Annotated[Optional[str], typer.Option("--val", help="The labelled split the monitor (kNN, online probe) scores, as data.val: a class-folder tree, a file list, shards, or a flat folder with its labels CSV. Omitted: val/ inside the data root, else the val beside a data folder named train; the plan printed at the start names it, or says off.")] = None,
             val_labels: Annotated[Optional[str], typer.Option("--val-labels", help="Labels CSV of a flat --val folder (as data.val_labels; default: LOC_val_solution.csv found by looking up from the folder).")] = None) -> None:
    """Pretrain a ResNet with RELICv2 (single process, or one rank under `torchrun -m relic_fast pretrain`)."""
    from relic_fast.stop_signals import StopSignals

    with StopSignals() as signals:  # first: a stop signal during the seconds of imports below is not fatal
        from relic_fast.evaluation.validate import KnnValidator
        from relic_fast.trainer import pretrain as run_pretrain

        cfg = resolve_config(config, overrides, data=data, val=val, val_labels=val_labels, steps=steps)
        summary = run_pretrain(cfg, out_dir=out, resume=resume, validator=KnnValidator.from_config(cfg),
                               accept_changes=accept_change or (), signals=signals)
    if launch_rank()[0] == 0:  # one voice under torchrun
        console.print(f"[bold green]done:[/] {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                      f"checkpoint {summary['checkpoint']}")


@app.command("plot")
def plot_command(run: Annotated[Path, typer.Argument(help="Run folder (pretrain --out) holding metrics.jsonl.")],
                 out: Annotated[Optional[Path], typer.Option("--out", help="Picture to write (default RUN/curves.png).")] = None) -> None:
    """Draw a run's curves into RUN/curves.png: loss terms, lr and tau, kNN and online-probe top-1, images/s and
    data wait, against the step. Safe while the run trains (it only reads metrics.jsonl)."""
    from relic_fast.loss import LOSS_METRICS
    from relic_fast.plot import plot_run

    console.print(f"wrote {plot_run(run, out, loss_metrics=LOSS_METRICS)}")


@app.command("linear-eval")
def linear_eval_command(
        checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file, or a run folder (its newest checkpoint). Its saved config gives the encoder.")] = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="Dataset root holding train/ and val/ (e.g. the demo data, or Kaggle's ImageNet .../ILSVRC/Data/CLS-LOC); every other labelled split folder next to them (e.g. val_correlated/) is reported too, an unlabelled one (Kaggle's test/) skipped with one line. Or give --train and --val.")] = None,
        train: Annotated[Optional[str], typer.Option("--train", help="The train split (instead of --data): a class-folder tree, a file list (.txt), WebDataset shards, or a flat folder with its labels CSV.")] = None,
        val: Annotated[Optional[list[str]], typer.Option("--val", help="A validation split (repeatable, with --train), any layout --train takes; each is reported under its folder's (or list's) name. Its labels follow the train split's class names.")] = None,
        val_labels: Annotated[Optional[Path], typer.Option("--val-labels", help="Labels CSV of a flat val folder (header row, then 'image,class ...'; Kaggle's LOC_val_solution.csv). Default: data.val_labels, else LOC_<folder>_solution.csv in the folder or up to 4 folders above it.")] = None,
        config: ConfigPath = None,
        overrides: SetOption = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="The evaluation's folder: linear_eval.json (the report), head.pt (the trained probe, for `export --head`), metrics.jsonl and checkpoints/ (default: linear_eval/ in the checkpoint's run folder, runs/random_init/ for --random-init). A FILE.json puts the report there and the rest in FILE/.")] = None,
        random_init: Annotated[bool, typer.Option("--random-init", help="Evaluate a randomly initialized encoder of the config's model section with torchvision's default init (the baseline; never zero-init residual); no checkpoint needed.")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out (written on SIGTERM/SIGINT/SIGUSR1, exit 75, or every eval.checkpoint_minutes): the same result as a run never stopped.")] = False) -> None:
    """Linear evaluation of a frozen encoder: top-1/top-5 on every validation split, written to linear_eval.json.

    `torchrun --nproc-per-node N -m relic_fast linear-eval ...` runs it on N devices: each reads its shard,
    rank 0 reports."""
    from relic_fast.evaluation.runner import EvalSplits, linear_eval_table, run_linear_eval, split_name

    cfg = resolve_config(config, overrides)  # validates --config/--set; the whole config of --random-init
    if checkpoint is None and not random_init:
        usage_error("give --checkpoint, or --random-init for the baseline")
    if (data is None) == (train is None and not val):
        usage_error("give --data ROOT, or --train SPLIT with one or more --val SPLIT (not both)")
    if data is None and (train is None or not val):
        usage_error("--train and --val go together: one train split, one or more validation splits")
    names = [split_name(v) for v in val or []]
    if len(set(names)) < len(names):
        usage_error(f"two --val splits have the same name ({', '.join(names)}); each is reported under its folder's name")
    splits = EvalSplits(data=data, train=train or "", val=tuple(val or ()), val_labels=str(val_labels or ""))
    result, path = run_linear_eval(data_root=splits, config=cfg, checkpoint=checkpoint, config_path=config,
                                   overrides=overrides, random_init=random_init, out=out, log=console.print,
                                   resume=resume)
    if launch_rank()[0] == 0:  # one voice under torchrun
        console.print(linear_eval_table(result))
        console.print(f"[bold green]wrote[/] {path}")


@app.command("export")
def export_command(
        source: Annotated[Path, typer.Argument(help="Checkpoint file, or a run folder (its newest checkpoint).")],
        out: Annotated[Path, typer.Option("--out", help="Weights file: *.safetensors (needs the safetensors package) or *.pt; the JSON sidecar goes next to it (its full name plus .json, e.g. backbone.safetensors.json).")],
        network: Annotated[str, typer.Option("--network", help="online (what the paper's evaluation probes) or target (the EMA encoder; it carries the online network's BatchNorm statistics, which the sidecar's batchnorm_statistics says).")] = "online",
        fmt: Annotated[str, typer.Option("--format", help="torchvision, timm (strict=True loads into their resnetN without the fc) or relic-fast (any width and stem; relic_fast.export.load_encoder).")] = "torchvision",
        head: Annotated[Optional[Path], typer.Option("--head", help="A linear-eval --out folder: write a complete classifier instead, the encoder plus that probe as fc (its standardization folded in), which torchvision's resnetN(num_classes=K) (or timm's, --format timm) loads with strict=True.")] = None) -> None:
    """Export the pretrained encoder as a plain state dict that torchvision / timm ResNets load, plus a JSON sidecar."""
    if head is not None:
        from relic_fast.evaluation.classifier import export_classifier

        report = export_classifier(source, out, head, network=network, fmt=fmt)
    else:
        from relic_fast.export import export_encoder

        report = export_encoder(source, out, network=network, fmt=fmt)
    print_rows("relic-fast export", report.rows())


@app.command("experiment")
def experiment_command(
        config: ConfigPath = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="Dataset root: train/, val/ (choose settings on it), test/ (report on it), any other labelled split (the demo's val_correlated/), masks/. Default: the recipe's data.path, else the built-in demo dataset.")] = None,
        out: Annotated[Path, typer.Option("--out", help="Folder for the runs (seed<N>/<variant>/) and experiment.json, rewritten after every row; run again with the same --out to run only the rows it lacks.")] = Path("runs/experiment"),
        seeds: Annotated[int, typer.Option("--seeds", min=1, help="Number of seeds (train.seed, train.seed + 1, ...); the table shows mean ± std.")] = 3,
        steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Pretraining steps per run (default: the recipe's train.max_steps).")] = None,
        variants: Annotated[Optional[str], typer.Option("--variants", help="Comma-separated rows to run (default: all): random_init, random_init_zero_residual, relicv2_no_saliency, relicv2_saliency, relicv2_no_invariance, relicv2_multicrop, relicv2_learned_masks, peer, peer_byol, supervised.")] = None) -> None:
    """Experiment: the default-init random encoder vs RELICv2 and its ablations (no saliency, no invariance term, multi-crop, learned masks), lightly's SimCLR and BYOL, and a supervised reference, all probed the same way on val and test; warns when the config file is not committed or the tree is dirty."""
    from relic_fast.experiments.experiment import VARIANTS, ExperimentMismatch, run_demo_experiment

    resolve_config(config, None)  # a clean error for a bad recipe before any run starts
    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    unknown = [v for v in chosen or [] if v not in VARIANTS]
    if unknown:
        usage_error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    try:
        run_demo_experiment(config, data_root=data, out_dir=out, seeds=seeds, steps=steps, variants=chosen,
                            console=console)
    except ExperimentMismatch as err:
        usage_error(str(err))
    console.print(f"[bold green]wrote[/] {out / 'experiment.json'}")


@app.command("views")
def views_command(
        config: ConfigPath = None,
        data: Annotated[Optional[str], typer.Option("--data", help="Images (as for pretrain): a folder tree, demo-data root or file list. Omitted: the recipe's data.path, else the built-in demo dataset.")] = None,
        out: Annotated[Path, typer.Option("--out", help="Picture to write (PNG).")] = Path("views.png"),
        images: Annotated[int, typer.Option("--images", min=1, help="Images to show, one row each: the first of the dataset.")] = 4,
        overrides: SetOption = None) -> None:
    """Draw the views the trainer would get: per image, the image and its mask, then every large and small view as
    the loader emits it (uint8, before normalization), each captioned with its draws (crop window, flip, jitter,
    gray, blur sigma, solarize, saliency)."""
    from relic_fast.views import write_views

    sheet = write_views(resolve_config(config, overrides, data=data), out, images)
    console.print(f"wrote {sheet.path}: {sheet.rows} images, {sheet.columns} panels each")


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
        out: Annotated[Path, typer.Option("--out", help="Folder for profile.json and profile_trace.json (Chrome trace); the profiled training's config.toml, plan.toml and metrics.jsonl go to its profiled_run/ subfolder, so a pretraining run's folder keeps its own. Refused (exit code 8) while a run or another profile holds the folder's run.lock.")] = Path("runs/profile"),
        overrides: SetOption = None) -> None:
    """Run the real training loop for a few steps and report where time goes: input-bound or compute-bound, and what to change.

    Holds --out's run lock as a run does, and never writes over the files of a run already in that folder."""
    from relic_fast.profile_report import print_report
    from relic_fast.profiler import ProfileSettings, profile_run

    cfg = resolve_config(config, overrides, data=data)
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
        usage_error(str(err))
    print_results(results, console)
    raise typer.Exit(exit_code(results))
