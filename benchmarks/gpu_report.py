"""The GPU proof's summary: every figure of a `benchmarks/gpu_proof.sh` run, judged against the GPU targets.

Reads the folder the proof wrote (the benchmark JSONs and `profile-*/profile.json`), writes one JSON
in the results format `{"machine": {gpu, cpus, torch, dali}, "command", "results": [{bench, config,
images_per_s | ms | seconds | peak_gib | tax, baseline, target, met, command}]}` and prints it as a
Markdown table (the README's performance table is one). Each row kind is judged against its target in
`TARGETS`. A side-by-side proof (`OLD=... gpu_proof.sh`, the other tree's results in `old/`) adds
`ratio_to_old` to every row that has an old twin and rows for the targets in `ROUND2_TARGETS`. Every
number is read from a file a project command wrote; none is typed in. How to run the proof:
docs/gpu-proof.md.

    python -m benchmarks.gpu_report benchmarks/results/2026-11-25-h100 --json benchmarks/results/2026-11-25-h100.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

PROOF_COMMAND = "OUT=<dir> bash benchmarks/gpu_proof.sh (each result names the command that printed it)"

TARGETS = {
    "loop": ">= 1,100 img/s and >= 98% of the synthetic-fed step",
    "pipeline": ">= 10,000 img/s with saliency blending",
    "warmup": "<= 90 s from process start to the end of the first step, 0 recompiles after it",
    "loss": "faster than the compiled reference, peak extra <= 0.5 GiB",
    "tax": "named (step with vs without the pipeline)",
    "cpu-decoded": "says input-bound",
}
"""The first GPU round's targets, by the row kind that answers them."""


ROUND2_TARGETS = {
    "1. step": ">= 1.15x the old commit's synthetic-fed step (same call)",
    "2. fed": ">= 98% of the same step on synthetic views",
    "3. pipeline": ">= 2x the old commit's GPU pipeline with saliency (same call)",
    "4. warm-up": "cold <= 90 s; a second process on the persisted cache <= 30 s",
    "5. memory": "peak GiB at 128 and 256 images per GPU (reported)",
}
"""The side-by-side round's targets, judged from a side-by-side proof (`OLD=... gpu_proof.sh`)."""

FIGURES = ("images_per_s", "seconds", "ms")
"""The figure of a row that `ratio_to_old` divides (the first one the row has)."""


def load_json(path: Path) -> dict[str, Any]:
    """A JSON file, with the file named if it does not parse."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None


def bench_files(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every benchmark JSON (`{"command", "machine", "results"}`) directly in `folder`, by name."""
    for path in sorted(folder.glob("*.json")):
        payload = load_json(path)
        if {"command", "machine", "results"} <= set(payload):
            yield path, payload


def row_by(payload: dict[str, Any], pipeline: str) -> dict[str, Any] | None:
    """The result row of `pipeline` in a benchmark JSON, if any."""
    return next((row for row in payload["results"] if row["pipeline"] == pipeline), None)


def train_results(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a `bench train` JSON: the fed loops against the synthetic-fed step, and the warm-up."""
    out = []
    synthetic = row_by(payload, "trainer + synthetic")
    for row in payload["results"]:
        config = f"{row['encoder']}, {row['recipe']}, B={row['batch_size']}, {row['precision']}, compile={row['compile']}"
        if row["pipeline"] == "compile warm-up":
            entry = {"bench": "warmup", "config": config, "seconds": row["seconds"],
                     "recompiles": row["recompiles_after_first_step"], "compiled_graphs": row["compiled_graphs"],
                     "baseline": None}
            if row["compile"] != "off":
                entry["target"] = TARGETS["warmup"]
                entry["met"] = row["seconds"] <= 90.0 and row["recompiles_after_first_step"] == 0
            out.append(entry)
        elif row["pipeline"] != "trainer + synthetic":
            entry = {"bench": "train", "config": f"{row['pipeline']}: {config}, saliency p={row['saliency_p']}",
                     "images_per_s": row["images_per_s"], "data_wait_pct": row["data_wait_pct"],
                     "peak_gib": row.get("peak_gib"), "baseline": None}
            if synthetic is not None:
                entry["baseline"] = {"what": "trainer + synthetic (same process)",
                                     "images_per_s": synthetic["images_per_s"],
                                     "ratio": row["images_per_s"] / synthetic["images_per_s"]}
            if "dali-gpu" in row["pipeline"] and synthetic is not None:
                entry["target"] = TARGETS["loop"]
                entry["met"] = row["images_per_s"] >= 1100 and entry["baseline"]["ratio"] >= 0.98
            out.append(entry)
        else:
            out.append({"bench": "train", "config": f"trainer + synthetic views: {config}",
                        "images_per_s": row["images_per_s"], "baseline": None})
    return out


def loader_results(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a `bench loader` JSON (GPU pipeline with or without saliency, decode ceiling)."""
    out = []
    for row in payload["results"]:
        saliency = row.get("saliency_p", 0.0) or 0.0
        config = f"{row['pipeline']} {row.get('recipe') or ''} B={row['batch_size']}, {row['threads']} threads".replace("  ", " ")
        if row["pipeline"].startswith("dali"):
            config += f", saliency p={saliency}, {row.get('interpolation', 'auto')} crops"
        entry = {"bench": "loader", "config": config,
                 "images_per_s": row["images_per_s"], "cpu_ms_per_image": row.get("cpu_ms_per_image"),
                 "baseline": {"what": "GPU.md plain probe, no saliency", "images_per_s": 6712}
                 if row["pipeline"] == "dali-gpu" else None}
        if row["pipeline"] == "dali-gpu" and saliency > 0:
            entry["target"], entry["met"] = TARGETS["pipeline"], row["images_per_s"] >= 10_000
        out.append(entry)
    return out


def step_results(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a `bench step` JSON: each variant's images/s on synthetic views and its first step's seconds."""
    return [{"bench": "step", "config": f"{row['pipeline']} {row['encoder']} {row['recipe']} B={row['batch_size']}",
             "images_per_s": row["images_per_s"], "first_step_s": row["first_step_s"], "peak_gib": row.get("peak_gib"),
             "baseline": None} for row in payload["results"]]


def loss_results(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a `bench loss` JSON: each implementation's ms and peak extra memory vs the compiled reference."""
    out = []
    words = payload["command"].split()
    precision = words[words.index("--matmul-precision") + 1] if "--matmul-precision" in words else "highest"
    for row in payload["results"]:
        reference = next((r for r in payload["results"] if r["pipeline"] == "reference-compiled"
                          and r["recipe"] == row["recipe"]), None)
        entry = {"bench": "loss", "config": f"{row['pipeline']} {row['recipe']} D=256, fp32 matmul precision {precision}",
                 "ms": row["ms"], "peak_gib": row["peak_gib"], "baseline": None}
        if reference is not None and row["pipeline"].startswith("fused"):
            entry["baseline"] = {"what": "reference-compiled", "ms": reference["ms"], "peak_gib": reference["peak_gib"]}
            entry["target"] = TARGETS["loss"]
            entry["met"] = row["ms"] < reference["ms"] and row["peak_gib"] <= 0.5
        out.append(entry)
    return out


def profile_results(name: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdict and data tax of one `relic-fast profile` report."""
    m = report["measurements"]
    config = (f"{name}: {m['pipeline_device']} pipeline, B={report['config']['train']['batch_size']}, "
              f"{report['config']['model']['encoder']}")
    out = [{"bench": "profile", "config": config, "verdict": report["verdict"]["text"],
            "bound": report["verdict"]["bound"], "images_per_s": m["loop"]["summary"]["images_per_s"],
            "baseline": {"what": "the step alone on synthetic views", "images_per_s": m["consumption_images_per_s"]}}]
    if m["pipeline_device"] == "cpu":
        out[0]["target"], out[0]["met"] = TARGETS["cpu-decoded"], report["verdict"]["bound"] == "input"
    if "data_tax" in m:
        tax = m["data_tax"]
        entry = {"bench": "data-tax", "config": config, "tax": tax["tax"], "images_per_s": tax["images_per_s_with_pipeline"],
                 "baseline": {"what": "the step alone", "images_per_s": tax["images_per_s_alone"]}}
        if m["pipeline_device"] == "gpu":
            entry["target"], entry["met"] = TARGETS["tax"], True
        out.append(entry)
    return out


def collect(folder: Path) -> dict[str, Any]:
    """The summary of one proof folder: machine, command and every result row."""
    results, machine = [], None
    readers = {"bench train": train_results, "bench_train": train_results, "bench loader": loader_results,
               "bench_loader": loader_results, "bench loss": loss_results, "bench_loss": loss_results,
               "bench step": step_results, "bench_step": step_results}
    for path, payload in bench_files(folder):
        reader = next((fn for key, fn in readers.items() if key in payload["command"]), None)
        if reader is None:
            continue
        machine = machine or payload["machine"]
        for entry in reader(payload):
            results.append({**entry, "command": payload["command"], "file": path.name})
    for path in sorted(folder.glob("profile-*/profile.json")):
        report = load_json(path)
        machine = machine or report.get("machine")
        for entry in profile_results(path.parent.name, report):
            results.append({**entry, "command": "relic-fast profile (see log.txt for the options)",
                            "file": str(path.relative_to(folder))})
    if machine is None:
        raise ValueError(f"{folder}: no benchmark JSON or profile.json found")
    order = ("train", "warmup", "step", "loader", "loss", "profile", "data-tax", "target")
    results.sort(key=lambda row: order.index(row["bench"]))
    keep = ("gpu", "cpus", "cpu", "torch", "torchvision", "dali", "triton", "commit", "date")
    return {"machine": {key: machine.get(key) for key in keep}, "command": PROOF_COMMAND, "results": results}


def add_ratios_to_old(results: list[dict[str, Any]], old: list[dict[str, Any]]) -> None:
    """`ratio_to_old` (this tree's figure / the old commit's) on every row that has a twin in `old`:
    the same file name, bench and configuration."""
    twins = {(row["file"], row["bench"], row["config"]): row for row in old}
    for row in results:
        twin = twins.get((row["file"], row["bench"], row["config"]))
        figure = next((key for key in FIGURES if row.get(key) is not None), None)
        if twin is not None and figure is not None and twin.get(figure):
            row["old"] = {figure: twin[figure], "commit": twin.get("commit")}
            row["ratio_to_old"] = row[figure] / twin[figure]


def find(results: list[dict[str, Any]], file: str, bench: str, config_start: str = "") -> dict[str, Any] | None:
    """The first row of `file` and `bench` whose configuration starts with `config_start`."""
    return next((row for row in results if row["file"] == file and row["bench"] == bench
                 and row["config"].startswith(config_start)), None)


def round2_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The side-by-side round's five targets as rows (`met` None where a figure is missing or only reported)."""
    synthetic = find(results, "train.json", "train", "trainer + synthetic")
    fed = find(results, "train.json", "train", "trainer + dali-gpu")
    pipeline = next((row for row in results if row["file"] == "loader.json" and row["config"].startswith("dali-gpu")
                     and "saliency p=0.1" in row["config"]), None)
    cold, warm = find(results, "train.json", "warmup"), find(results, "train-warm.json", "warmup")
    fed_256 = find(results, "train-256.json", "train", "trainer + dali-gpu")

    def ratio(row, key="ratio_to_old"):
        return None if row is None or row.get(key) is None else row[key]

    fed_ratio = None if fed is None or not fed.get("baseline") else fed["baseline"].get("ratio")
    checks = {
        "1. step": (ratio(synthetic), lambda v: v >= 1.15, "x old"),
        "2. fed": (fed_ratio, lambda v: v >= 0.98, "of synthetic"),
        "3. pipeline": (ratio(pipeline), lambda v: v >= 2.0, "x old"),
    }
    rows = []
    for name, (value, rule, unit) in checks.items():
        rows.append({"bench": "target", "config": name, "value": "missing" if value is None else f"{value:.3f} {unit}",
                     "ratio": value, "target": ROUND2_TARGETS[name], "met": None if value is None else rule(value),
                     "baseline": None})
    seconds = [None if row is None else row["seconds"] for row in (cold, warm)]
    text = ", ".join(f"{what} {'missing' if v is None else f'{v:.1f} s'}" for what, v in zip(("cold", "warm"), seconds))
    rows.append({"bench": "target", "config": "4. warm-up", "value": text, "cold_s": seconds[0], "warm_s": seconds[1],
                 "target": ROUND2_TARGETS["4. warm-up"], "baseline": None,
                 "met": None if None in seconds else seconds[0] <= 90 and seconds[1] <= 30})
    peaks = {batch: None if row is None else row.get("peak_gib") for batch, row in (("128", fed), ("256", fed_256))}
    rows.append({"bench": "target", "config": "5. memory", "peak_gib": peaks, "baseline": None, "met": None,
                 "value": ", ".join(f"B={b}: {'missing' if g is None else f'{g:.1f} GiB'}" for b, g in peaks.items()),
                 "target": ROUND2_TARGETS["5. memory"]})
    return rows


def collect_side_by_side(folder: Path) -> dict[str, Any]:
    """`collect` of this tree's results, `ratio_to_old` from the old commit's (`folder/old`), the side-by-side round's targets."""
    summary = collect(folder)
    old = collect(folder / "old")
    for row in old["results"]:
        row["commit"] = old["machine"].get("commit")
    add_ratios_to_old(summary["results"], old["results"])
    summary["old_machine"] = old["machine"]
    summary["results"] += [{**row, "command": PROOF_COMMAND, "file": ""} for row in round2_targets(summary["results"])]
    return summary


def headline(row: dict[str, Any]) -> str:
    """The measured figure of a row, formatted for the table."""
    if "value" in row:
        return row["value"]
    if "tax" in row:
        return f"{100 * row['tax']:.1f}% ({row['images_per_s']:,.0f} img/s)"
    if "seconds" in row:
        return f"{row['seconds']:.1f} s, {row['recompiles']} recompiles"
    if "ms" in row:
        return f"{row['ms']:.2f} ms, {row['peak_gib']:.2f} GiB"
    if "verdict" in row:
        return f"{row['bound']}-bound, loop {row['images_per_s']:,.0f} img/s"
    return f"{row['images_per_s']:,.0f} img/s"


def baseline_text(row: dict[str, Any]) -> str:
    """The baseline a row is compared with, formatted for the table."""
    base = row.get("baseline")
    if not base:
        return f"{row['ratio_to_old']:.2f}x old" if "ratio_to_old" in row else ""
    if "ms" in base:
        return f"{base['what']}: {base['ms']:.2f} ms, {base['peak_gib']:.2f} GiB"
    text = f"{base['what']}: {base['images_per_s']:,.0f} img/s"
    text += f" ({100 * base['ratio']:.1f}%)" if "ratio" in base else ""
    return text + (f"; {row['ratio_to_old']:.2f}x old" if "ratio_to_old" in row else "")


def markdown(summary: dict[str, Any]) -> str:
    """The README table: what, figure, baseline, target and whether it was met."""
    lines = ["| bench | configuration | figure | baseline (same run) | target | met |", "|---|---|---|---|---|---|"]
    for row in summary["results"]:
        met = {True: "yes", False: "**no**"}.get(row.get("met"), "")
        lines.append(f"| {row['bench']} | {row['config']} | {headline(row)} | {baseline_text(row)} | "
                     f"{row.get('target', '')} | {met} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: summarize a proof folder into JSON and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the proof's results folder (unpacked proof.tar.gz: results/)")
    parser.add_argument("--json", type=Path, help="write the summary JSON here")
    args = parser.parse_args(argv)
    summary = collect_side_by_side(args.folder) if (args.folder / "old").is_dir() else collect(args.folder)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
