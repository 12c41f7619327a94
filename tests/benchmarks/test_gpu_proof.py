"""The GPU proof driver (benchmarks/gpu_proof.sh, run here in its CPU smoke mode) and its summary
(benchmarks/gpu_report.py, on the committed H100 results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks.gpu_report import collect, markdown

REPO = Path(__file__).resolve().parents[2]
H100 = REPO / "benchmarks" / "results" / "2026-11-25-h100"


def run_proof(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    out, work = tmp_path / "out", tmp_path / "work"
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_proof.sh")], capture_output=True, text=True,
                            env={**os.environ, "OUT": str(out), "WORK": str(work), "DEVICE": "cpu",
                                 "PY": sys.executable, **env}, timeout=900)
    return result, out


def stages(out: Path) -> dict[str, str]:
    with tarfile.open(out / "proof.tar.gz") as tar:
        text = tar.extractfile("./results/stages.tsv").read().decode()
    return {line.split("\t")[0]: line.split("\t")[1] for line in text.splitlines()}


def test_stages_past_the_deadline_are_skipped_and_recorded(tmp_path):
    result, out = run_proof(tmp_path, DEADLINE="0")
    assert result.returncode == 0, result.stderr
    recorded = stages(out)
    assert {"info", "train", "loader", "profile", "train-torchvision"} <= set(recorded)
    assert set(recorded.values()) == {"skipped"}
    assert "SKIP train" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_smoke_run_writes_each_stage_result_into_the_pack(tmp_path):
    result, out = run_proof(tmp_path, STAGES="corpus loss loader", DEADLINE="600")
    assert result.returncode == 0, result.stderr
    assert stages(out) == {"corpus": "0", "loss": "0", "loader": "0"}
    with tarfile.open(out / "proof.tar.gz") as tar:
        names = set(tar.getnames())
        loader = json.loads(tar.extractfile("./results/loader.json").read())
    assert {"./results/loss.json", "./results/loader.json"} <= names
    assert not any("corpus" in name for name in names)  # the JPEGs stay behind
    rows = {row["pipeline"]: row for row in loader["results"]}
    assert rows["dali-cpu"]["saliency_p"] == 0.1 and rows["decode-only"]["images_per_s"] > 0


def test_report_judges_the_h100_run_against_the_targets():
    summary = collect(H100)
    assert summary["machine"]["gpu"] == "NVIDIA H100 80GB HBM3" and summary["machine"]["dali"] == "2.4.0"
    judged = {(row["bench"], row["config"].split(":")[0].split(" ")[0]): row for row in summary["results"]
              if "met" in row}
    loop = judged[("train", "trainer")]
    assert loop["met"] is False and loop["images_per_s"] < 1100
    assert loop["baseline"]["ratio"] == pytest.approx(loop["images_per_s"] / loop["baseline"]["images_per_s"])
    bf16 = [row for row in summary["results"] if row["bench"] == "loss" and row["config"].startswith("fused-bf16")]
    assert bf16 and all(row["met"] and row["ms"] < row["baseline"]["ms"] and row["peak_gib"] <= 0.5 for row in bf16)
    warmup = [row for row in summary["results"] if row["bench"] == "warmup" and "met" in row]
    assert [row["met"] for row in warmup] == [False] and warmup[0]["recompiles"] == 0
    cpu_profile = [row for row in summary["results"] if row["bench"] == "profile" and "cpu pipeline" in row["config"]]
    assert cpu_profile[0]["bound"] == "input" and cpu_profile[0]["met"] is True
    table = markdown(summary)
    assert table.count("\n") == len(summary["results"]) + 1 and "**no**" in table


def test_report_names_a_folder_without_results(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        collect(tmp_path)
