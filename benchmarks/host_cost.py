"""The pretraining graph's host cost per image, a commit against this working tree, in one command.

    python -m benchmarks.host_cost --old dcb3fab --json benchmarks/results/2026-12-07-host-cost-cpu-2core.json

Both sides run the same `relic-fast bench loader` (DALI CPU pipeline, recipe 4L+2S, 2 threads, batch 16,
saliency p 0.1) on the same generated photo corpus with masks, at each view size, in separate processes:
the old side from `git archive OLD` extracted to a temporary folder (the working tree's virtual environment
runs both), the new side from this tree. Rounds interleave the sides (old then new, then new then old...)
so that load from other work on a shared machine falls on both alike; a row's figure is the median over
rounds of the benchmark's own median, and each new row carries `ratio_to_old` (its CPU-ms per image, and
images/s, over the old row's). The operators of each side's default graph (224/96, saliency with masks) are
counted on the CPU and, constructed for device 0 without a GPU, on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import date
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run inside each side's tree, so it cannot import today's `dali_pipelines.pretrain.graph_operators`: commits
# before the graph's rework lack it, and the count must be made the same way on both sides.
COUNT_OPERATORS = r"""
import collections, json, sys
import numpy as np
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.pretrain import multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig
try:
    from dali_pipelines.readers import mask_table            # before the dataset formats: a table of masks
except ImportError:
    mask_table = None
dataset = resolve_dataset(sys.argv[1], masks=sys.argv[2])
plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=mask_table(dataset) if mask_table else True)
counts = {}
for device in ("cpu", "gpu"):
    pipe = multi_view_pipeline(plan, ViewsConfig(saliency_p=0.1), device, False, batch_size=2, num_threads=1,
                               device_id=0 if device == "gpu" else None)
    seen, stack = {}, list(pipe._graph_out)
    while stack:
        node = stack.pop()
        if id(node.source) not in seen:
            seen[id(node.source)] = node.source
            stack += list(node.source.inputs)
    kinds = collections.Counter(op.name.strip("_").rsplit("_", 1)[0] for op in seen.values())
    counts[device] = {"operators": sum(kinds.values()), "by_kind": dict(kinds.most_common())}
print(json.dumps(counts))
"""


def git_output(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` (read with `git archive`, the checkout untouched) under `into`."""
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def corpus(folder: Path, count: int) -> tuple[Path, Path]:
    """`count` generated photos and their saliency masks (`relic-fast masks`), made once in `folder`."""
    images, masks = folder / "corpus", folder / "masks"
    if not images.exists():
        subprocess.run([sys.executable, "-m", "relic_fast.bench.corpus", str(images), "--count", str(count)],
                       cwd=REPO, check=True, capture_output=True)
    if not masks.exists():
        subprocess.run([sys.executable, "-m", "relic_fast", "masks", str(images), "--out", str(masks)],
                       cwd=REPO, check=True, capture_output=True)
    return images, masks


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def bench_loader(tree: Path, data: tuple[Path, Path], sizes: tuple[int, int], args, out: Path) -> dict:
    """One `relic-fast bench loader` run of `tree`'s code: its DALI row."""
    command = [sys.executable, "-m", "relic_fast", "bench", "loader", "--data", str(data[0]), "--masks", str(data[1]),
               "--saliency-p", "0.1", "--device", "cpu", "--recipe", "4L+2S", "--threads", "2",
               "--batch-size", "16", "--pipelines", "dali", "--large-size", str(sizes[0]),
               "--small-size", str(sizes[1]), "--batches", str(args.batches), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--json", str(out)]
    subprocess.run(command, cwd=tree, env=environment(tree), check=True, capture_output=True)
    row = json.loads(out.read_text())["results"][0]
    return {"cpu_ms_per_image": row["cpu_ms_per_image"], "images_per_s": row["images_per_s"],
            "load_average": json.loads(out.read_text())["machine"].get("load_average")}


def operators(tree: Path, data: tuple[Path, Path]) -> dict:
    out = subprocess.run([sys.executable, "-c", COUNT_OPERATORS, str(data[0]), str(data[1])], cwd=tree,
                         env=environment(tree), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarize(side: str, commit: str, sizes: tuple[int, int], runs: list[dict], ops: dict) -> dict:
    cpu = [run["cpu_ms_per_image"] for run in runs]
    rate = [run["images_per_s"] for run in runs]
    return {"side": side, "code": commit, "views": f"4x{sizes[0]}+2x{sizes[1]}",
            "cpu_ms_per_image": statistics.median(cpu), "cpu_ms_per_image_rounds": cpu,
            "images_per_s": statistics.median(rate), "images_per_s_rounds": rate,
            "load_average_rounds": [run["load_average"] for run in runs],
            "operators_cpu_graph": ops["cpu"]["operators"], "operators_gpu_graph": ops["gpu"]["operators"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="dcb3fab", help="the commit to compare against (default dcb3fab)")
    parser.add_argument("--sizes", nargs="+", default=["32/16", "224/96"], help="large/small view sides")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved old/new rounds (default 3)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--images", type=int, default=64, help="photos in the generated corpus (default 64)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in text.split("/")) for text in args.sizes]
    with tempfile.TemporaryDirectory(prefix="host-cost-") as scratch:
        scratch = Path(scratch)
        data = corpus(scratch, args.images)
        trees = {"old": extract(args.old, scratch / "old"), "new": REPO}
        runs = {(side, size): [] for side in trees for size in sizes}
        for round_index in range(args.rounds):
            for size in sizes:
                order = ("old", "new") if round_index % 2 == 0 else ("new", "old")
                for side in order:
                    runs[side, size].append(bench_loader(trees[side], data, size, args, scratch / "row.json"))
                    print(f"round {round_index + 1} {side} {size}: {runs[side, size][-1]}", flush=True)
        ops = {side: operators(tree, data) for side, tree in trees.items()}
    codes = {"old": git_output("rev-parse", "--short", args.old), "new": "working tree"}
    rows = []
    for size in sizes:
        old = summarize("old", codes["old"], size, runs["old", size], ops["old"])
        new = summarize("new", codes["new"], size, runs["new", size], ops["new"])
        new["ratio_to_old"] = {key: new[key] / old[key] for key in
                               ("cpu_ms_per_image", "images_per_s", "operators_cpu_graph", "operators_gpu_graph")}
        rows += [old, new]
    from relic_fast.provenance import provenance, write_results_json

    record = provenance()
    loads = [load for row in rows for load in row["load_average_rounds"] if load is not None]
    cpus = os.cpu_count() or 1
    note = (f"the machine was shared with other work while it measured (1-minute load average {min(loads):.1f} to "
            f"{max(loads):.1f} on {cpus} cores, e.g. training runs under nice): CPU time per image rises with the "
            "contention; the rounds interleave the sides so that it falls on both"
            if loads and max(loads) > cpus else f"load average at most {max(loads, default=0):.1f} on {cpus} cores")
    payload = {"command": " ".join(["python -m benchmarks.host_cost", *(argv if argv is not None else sys.argv[1:])]),
               "what": ("relic-fast bench loader --pipelines dali --recipe 4L+2S --threads 2 --batch-size 16 "
                        "--saliency-p 0.1 on a generated photo corpus with masks; each side's figure is the median "
                        "over interleaved rounds of the benchmark's median (process CPU time: every thread and "
                        "child, not wall); operators of the default graph (224/96, saliency 0.1, masks)"),
               "machine": {**record["machine"], "commit": (record["git"]["commit"] or "")[:7],
                           "uncommitted": record["git"]["uncommitted"], "date": date.today().isoformat()},
               "note": note, "operators": ops, "rows": rows}
    if args.json:
        print(f"wrote {write_results_json(args.json, payload, record)}")
    for row in rows:
        print(row["side"], row["views"], f"{row['cpu_ms_per_image']:.2f} CPU-ms/img",
              f"{row['images_per_s']:.1f} img/s", row.get("ratio_to_old", ""))
    return payload


if __name__ == "__main__":
    main()
