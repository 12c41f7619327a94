"""The README's "ImageNet, end to end" section, run as written on an ImageNet-shaped miniature in Kaggle's layout.

The test reads the section's bash block, so a README command that changes without this test changing runs
changed here (or fails). It changes only what a CPU machine needs: the dataset root (`/data/imagenet` -> the
`imagenet_kaggle` fixture), the run folder (`runs/` -> a temporary folder), the rank count (8 -> 2 gloo
ranks) and `--set`s for tiny sizes. Step 3 is stopped by a SIGTERM once its first checkpoint exists and
step 4 resumes it, as a preempted job would.
"""

import json
import shlex
import signal
from pathlib import Path

import pytest
import torch
import torchvision

from relic_fast.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint

from tests.support import REPO, cli_process

SECTION = "## ImageNet, end to end"
DATA_ROOT = "/data/imagenet"
RANKS = 2

TINY = {
    "pretrain": ["model.encoder=resnet18", "model.projector_hidden=64", "model.predictor_hidden=64",
                 "model.embedding_dim=32", "views.large_size=32", "views.small_size=16", "train.batch_size=4",
                 "train.epochs=3", "optim.warmup_epochs=1", "train.checkpoint_every=2", "train.log_every=1",
                 "train.knn_every_epochs=1", "eval.image_size=32", "eval.linear_batch_size=8",
                 "data.num_threads=1"],
    "linear-eval": ["eval.linear_epochs=2", "eval.image_size=32", "eval.linear_batch_size=4", "data.num_threads=1"],
}
"""The `--set`s added per subcommand: sizes a 2-core CPU runs in seconds (9 training images, 2 steps an epoch)."""


def readme_commands() -> list[str]:
    """The commands of the section's bash block, continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    block = text[text.index("```bash\n", start) + len("```bash\n"):]
    block = block[:block.index("```")]
    commands, pending = [], ""
    for line in block.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


def adapt(command: str, data_root: Path, runs: Path) -> tuple[list[str], int]:
    """(the CLI's arguments, ranks) for one README command on this machine."""
    words = [word.replace(DATA_ROOT, str(data_root)) for word in shlex.split(command)]
    words = [str(runs / word.removeprefix("runs/")) if word.startswith("runs/") else word for word in words]
    if words[0] == "torchrun":
        assert words[1:3] == ["--nproc-per-node", "8"] and words[3:5] == ["-m", "relic_fast"], command
        args, ranks = words[5:], RANKS
    else:
        assert words[0] == "relic-fast", command
        args, ranks = words[1:], 0
    for item in TINY.get(args[0], []):
        args += ["--set", item]
    return args, ranks


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_readme_imagenet_path_runs_as_written(imagenet_kaggle, tmp_path):
    commands = readme_commands()
    subcommands = [adapt(command, imagenet_kaggle.root, tmp_path)[0][0] for command in commands]
    assert subcommands == ["index", "masks", "pretrain", "pretrain", "plot", "linear-eval", "export"]
    steps = [adapt(command, imagenet_kaggle.root, tmp_path / "runs") for command in commands]
    run = tmp_path / "runs" / "r50"

    for args, ranks in steps[:2]:  # index, masks
        code, output = cli_process.run(args, ranks=ranks)
        assert code == 0, output
    assert (imagenet_kaggle.root / "train.txt").is_file() and any((imagenet_kaggle.root / "masks").rglob("*.png"))

    args, ranks = steps[2]  # pretrain, stopped by SIGTERM once its first checkpoint exists
    code, output = cli_process.signal_when(checkpoint_path(run, 2), cli_process.start(args, ranks=ranks),
                                           signal.SIGTERM)
    assert code != 0 and "stopped: SIGTERM received; finished step" in output, output  # torchrun: SignalException
    assert "saliency masks: all 9 images have a mask" in output.replace("\n", " "), output
    assert f"monitor every 1 epoch(s) on {imagenet_kaggle.val} (6 images)" in output.replace("\n", ""), output
    stopped_at = read_checkpoint(list_checkpoints(run)[-1])["step"]
    assert 2 <= stopped_at < 6

    args, ranks = steps[3]  # the same command with --resume
    code, output = cli_process.run(args, ranks=ranks)
    assert code == 0, output
    assert read_checkpoint(list_checkpoints(run)[-1])["step"] == 6  # 3 epochs of 2 steps
    rows = metrics(run)
    for name in ("knn_top1", "online_probe_top1", "online_probe_train_top1"):
        assert any(name in row for row in rows), (name, rows)

    args, ranks = steps[4]  # plot
    code, output = cli_process.run(args, ranks=ranks)
    assert code == 0 and (run / "curves.png").is_file(), output

    args, ranks = steps[5]  # linear-eval on 2 ranks
    code, output = cli_process.run(args, ranks=ranks)
    assert code == 0, output
    report = json.loads((run / "linear" / "linear_eval.json").read_text())
    assert 0.0 <= report["top1"] <= 100.0 and 0.0 <= report["top5"] <= 100.0
    assert (run / "linear" / "head.pt").is_file()

    args, ranks = steps[6]  # export the classifier
    code, output = cli_process.run(args, ranks=ranks)
    assert code == 0, output
    classifier = torchvision.models.resnet18(num_classes=3)  # the README's resnet50 at this test's --set size
    state = torch.load(run / "resnet50_classifier.pt", map_location="cpu", weights_only=True)
    classifier.load_state_dict(state)  # strict
    classifier.eval()
    with torch.no_grad():
        assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 3)
