"""Linear evaluation at scale: the sharded probe step (2 gloo ranks = 1 process), `linear-eval` under
torchrun, SIGTERM + `--resume` (the uninterrupted result), the head file and `export --head` (a
torchvision classifier with the evaluation's logits), and bad input (one line, no traceback)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from typer.testing import CliRunner

from relic_fast.cli import app
from relic_fast.errors import ExitCode

from tests.support import cli_process

TINY = ["model.encoder=resnet18", "model.small_stem=true", "eval.image_size=16", "eval.linear_epochs=2",
        "eval.linear_batch_size=16", "train.device=cpu", "data.device=cpu", "data.num_threads=1"]
"""On the 40-image 32 px `tiny_demo`: 3 train batches a rank, one val batch per split."""


def sets(options):
    """`--set` flags for the CLI."""
    return [item for option in options for item in ("--set", option)]


def eval_args(data, out, *options) -> list[str]:
    """`linear-eval --random-init` on `data` into `out` with TINY and `options` on top."""
    return ["linear-eval", "--random-init", "--data", str(data), "--out", str(out), *sets(TINY + list(options))]


def report(out) -> dict:
    return json.loads((out / "linear_eval.json").read_text())


def head(out) -> dict:
    return torch.load(out / "head.pt", weights_only=True)


def one_error_line(output: str, label: str) -> str:
    """The single `label: ...` line of `output`, asserting that no traceback came with it."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if f"{label}:" in line]
    assert len(lines) == 1, output
    return lines[0]


# ---------------------------------------------------------------- the sharded step (gloo, 2 processes)

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _batches():
    """Three steps' worth of features and labels; rank 1 gets no row of the last step (an empty batch)."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(rows, 6, generator=generator) * 3 + 1, torch.randint(0, 4, (rows,), generator=generator))
            for rows in (9, 8, 3)]


def _fit(feature_norm: str, rank: int = 0, world=None):
    """A zero probe after three `sgd_step`s: one process on every row, or rank `rank` on its share (the first
    5 rows of each step go to rank 0: uneven shares, and an empty one)."""
    from relic_fast.evaluation.linear import make_head, make_sgd, sgd_step

    torch.manual_seed(0)
    probe = make_head(6, 4, "cpu", feature_norm)
    optimizer = make_sgd(probe, 0.5)
    for features, labels in _batches():
        if world is not None:
            rows = slice(0, 5) if rank == 0 else slice(5, None)
            features, labels = features[rows], labels[rows]
        sgd_step(probe, optimizer, features, labels, 0.5, world)
    return probe.state_dict()


def _sharded_rank(rank: int, world_size: int, port: int, out: str) -> None:
    from relic_fast.distributed import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    world = World(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))
    torch.save({norm: _fit(norm, rank, world) for norm in ("none", "batchnorm")}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_sharded_probe_step_is_the_global_batch_step(tmp_path):
    """Gradients all-reduced over ranks (and the batchnorm probe's statistics over the global batch) give
    the head one process gets from the same rows, on every rank, whatever each rank's share."""
    out = str(tmp_path / "heads")
    torch.multiprocessing.spawn(_sharded_rank, args=(2, _free_port(), out), nprocs=2)
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    for norm in ("none", "batchnorm"):
        single = _fit(norm)
        for key, value in single.items():
            assert torch.equal(ranks[0][norm][key], ranks[1][norm][key]), f"{norm} {key} differs across ranks"
            if value.is_floating_point():
                torch.testing.assert_close(ranks[0][norm][key], value, rtol=1e-5, atol=1e-6, msg=f"{norm} {key}")
            else:
                assert torch.equal(ranks[0][norm][key], value), f"{norm} {key}"
        assert single["linear.weight"].abs().sum() > 0  # it moved: the comparison is not between two zero heads


# ---------------------------------------------------------------- torchrun: 2 ranks vs 1

@pytest.mark.slow
def test_two_ranks_logistic_give_one_rank_result(tiny_demo, tmp_path):
    """`logistic` all-gathers the train features in dataset order, so 2 ranks fit the problem 1 rank fits: the
    same top-1 and top-5 within float tolerance (the features differ by float rounding only: another batch
    composition, 1 thread a rank), and rank 0 alone reports."""
    one, two = tmp_path / "one", tmp_path / "two"
    result = CliRunner().invoke(app, eval_args(tiny_demo, one, "eval.linear_mode=logistic"))
    assert result.exit_code == 0, result.output
    code, output = cli_process.run(eval_args(tiny_demo, two, "eval.linear_mode=logistic"), ranks=2)
    assert code == 0, output
    assert output.count("wrote ") == 1 and output.count("linear evaluation (") == 1, output  # rank 0 alone
    single, double = report(one), report(two)
    assert double["devices"] == 2 and single["devices"] == 1
    for name, scores in single["splits"].items():
        for key in ("top1", "top5"):
            assert double["splits"][name][key] == pytest.approx(scores[key], abs=1e-6), (name, key)
    assert double["l2"] == single["l2"]
    torch.testing.assert_close(head(two)["mean"], head(one)["mean"], rtol=1e-4, atol=1e-5)  # the same features
    assert double["cost"]["devices"] == 2 and double["cost"]["encoded_images"] == 40 + 3 * 10  # train; val, val_correlated, test
    assert double["cost"]["features_per_s_per_device"] > 0


@pytest.mark.slow
def test_two_ranks_augmented_train_and_report(tiny_demo, tmp_path):
    """`augmented` under torchrun: each rank its shard, gradients all-reduced, top-1 and top-5 reported.

    The ranks draw other crops than one process (each rank's DALI stream is seeded by (seed, epoch, rank))
    and batch other rows together, which moves the probe as much as another seed does; each val image
    is 10 points here. Tolerance: 20 points (two of the 10 images) of top-1 on each split, the spread
    one process showed over seeds 0-2 on these splits (measured: top-1 0, top-5 20 points). The exact
    part, that the sharded step is the global batch's, is `test_sharded_probe_step_is_the_global_batch_step`."""
    one, two = tmp_path / "one", tmp_path / "two"
    options = ("eval.linear_mode=augmented", "eval.linear_feature_norm=batchnorm", "eval.linear_epochs=3")
    result = CliRunner().invoke(app, eval_args(tiny_demo, one, *options))
    assert result.exit_code == 0, result.output
    code, output = cli_process.run(eval_args(tiny_demo, two, *options), ranks=2)
    assert code == 0, output
    single, double = report(one), report(two)
    assert double["devices"] == 2 and double["batch_size"] == single["batch_size"] == 16  # the global batch
    for name, scores in single["splits"].items():
        assert 0.0 <= double["splits"][name]["top1"] <= double["splits"][name]["top5"] <= 100.0
        assert abs(double["splits"][name]["top1"] - scores["top1"]) <= 20.0, (name, single["splits"], double["splits"])
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "images_per_s" not in record]  # the epochs' ends
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # one per epoch, and it learned
    assert double["cost"]["encoded_images"] == 3 * 40 + 3 * 10  # 3 epochs of train; 3 splits


# ---------------------------------------------------------------- SIGTERM and --resume (one process)

SIGTERM_AT = ("import os, signal, relic_fast.evaluation.{module} as m; real = m.{function}; calls = [0]\n"
              "def patched(*a, **k):\n"
              "    calls[0] += 1\n"
              "    if calls[0] == {call}: os.kill(os.getpid(), signal.SIGTERM)\n"
              "    return real(*a, **k)\n"
              "m.{function} = patched\n")
"""A prelude that sends the child SIGTERM from inside its `call`-th call of `function`: mid-step, as a
scheduler's signal would land, at a step the test chooses."""


@pytest.mark.slow
@pytest.mark.parametrize("mode,module,function,call,phase,step", [
    ("augmented", "linear", "sgd_step", 4, "augmented", 4),  # step 1 of epoch 2: DALI's random state mid-epoch
    ("logistic", "features", "encode", 2, "extract", 2),     # the train features part-way
    ("logistic", "protocol", "encode", 1, "score", 9),       # after 3 extraction steps and 5 L-BFGS fits
])
def test_sigterm_checkpoints_and_resume_ends_with_the_uninterrupted_result(tiny_demo, tmp_path, mode, module,
                                                                           function, call, phase, step):
    options = (f"eval.linear_mode={mode}", "eval.linear_feature_norm=batchnorm")
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    result = CliRunner().invoke(app, eval_args(tiny_demo, reference, *options))
    assert result.exit_code == 0, result.output
    prelude = SIGTERM_AT.format(module=module, function=function, call=call)
    code, output = cli_process.run(eval_args(tiny_demo, stopped, *options), prelude=prelude)
    assert code == ExitCode.STOPPED, output
    assert "Traceback" not in output and "wrote" not in output, output
    saved = sorted((stopped / "checkpoints").glob("step-*.pt"))
    assert len(saved) == 1 and f"saved {saved[0]}" in output, output
    state = torch.load(saved[0], weights_only=True)
    assert state["phase"] == phase and state["step"] == step, (state["phase"], state["step"])
    assert not (stopped / "linear_eval.json").exists() and not (stopped / "head.pt").exists()
    result = CliRunner().invoke(app, eval_args(tiny_demo, stopped, *options) + ["--resume"])
    assert result.exit_code == 0, result.output
    assert f"step {step} of" in result.output  # "resumed from ... (step N of T, phase)"
    assert report(stopped)["splits"] == report(reference)["splits"]
    for key, value in head(reference).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(head(stopped)[key], value), key  # bit-identical: the same steps on the same data


@pytest.mark.slow
def test_resume_refuses_other_settings(tiny_demo, tmp_path):
    stopped = tmp_path / "stopped"
    prelude = SIGTERM_AT.format(module="linear", function="sgd_step", call=2)
    code, output = cli_process.run(eval_args(tiny_demo, stopped, "eval.linear_mode=augmented"), prelude=prelude)
    assert code == ExitCode.STOPPED, output
    result = CliRunner().invoke(app, eval_args(tiny_demo, stopped, "eval.linear_mode=augmented",
                                               "eval.linear_epochs=3") + ["--resume"])
    assert result.exit_code == ExitCode.RESUME_MISMATCH, result.output
    line = one_error_line(result.output, "cannot resume")
    assert "eval.linear_epochs = 2 in the checkpoint, 3 now" in line, line


def _stop_and_resume(fit, stop_at: int):
    """`fit(resume, hook)` run through, and run again stopped after its `stop_at`-th hook call (the state then
    taken, as a checkpoint would) and resumed from that state: (uninterrupted, resumed, hook calls of each)."""
    saved, whole_calls, resumed_calls = [], [], []

    class Stop(Exception):
        pass

    def stop(state):
        saved.append(state())
        if len(saved) == stop_at:
            raise Stop

    with pytest.raises(Stop):
        fit(None, stop)
    whole = fit(None, lambda state: whole_calls.append(1))
    resumed = fit(saved[-1], lambda state: resumed_calls.append(1))
    return whole, resumed, len(whole_calls), len(resumed_calls)


def test_cached_features_fit_resumes_exactly():
    from relic_fast.evaluation.linear import fit_linear_on_features

    generator = torch.Generator().manual_seed(3)
    features, labels = torch.randn(50, 8, generator=generator), torch.randint(0, 3, (50,), generator=generator)

    def fit(resume, hook):
        return fit_linear_on_features(features, labels, num_classes=3, epochs=3, batch_size=16, base_lr=0.4, seed=1,
                                      feature_norm="batchnorm", resume=resume,
                                      on_step=hook and (lambda step, rows, loss, batches, state: hook(state)))

    for stop_at in (2, 4, 8):  # mid-epoch, an epoch's end (4 steps an epoch), mid-epoch of the last
        whole, resumed, steps, remaining = _stop_and_resume(fit, stop_at)
        assert (steps, remaining) == (12, 12 - stop_at)  # it went on from the saved step, not from the start
        for key, value in whole.state_dict().items():
            assert torch.equal(resumed.state_dict()[key], value), (stop_at, key)


def test_logistic_grid_resumes_exactly():
    from relic_fast.evaluation.logistic import fit_logistic_on_features

    generator = torch.Generator().manual_seed(4)
    features, labels = torch.randn(60, 5, generator=generator), torch.arange(60) % 3

    def fit(resume, hook):
        return fit_logistic_on_features(features, labels, num_classes=3, l2_grid=(1e-3, 1e-2, 1e-1), resume=resume,
                                        on_fit=hook)

    (whole, whole_info), (resumed, resumed_info), fits, remaining = _stop_and_resume(fit, 2)
    assert (fits, remaining) == (3, 1)  # the holdout fits; the resumed run made only the third
    assert resumed_info == whole_info and len(whole_info["holdout_top1"]) == 3
    assert torch.equal(resumed.linear.weight, whole.linear.weight)


# ---------------------------------------------------------------- the head file and export --head

@pytest.fixture()
def standard_stem_run(tmp_path):
    """A pretraining checkpoint of a resnet18 with the standard stem (what torchvision builds), default init."""
    from relic_fast.checkpoint import save_checkpoint
    from relic_fast.config import load_config
    from relic_fast.models import build_networks

    saved = load_config(None, ["model.encoder=resnet18", "model.small_stem=false", "model.zero_init_residual=false",
                               "model.projector_hidden=8", "model.predictor_hidden=8", "model.embedding_dim=4",
                               "eval.image_size=32", "eval.linear_batch_size=16", "eval.linear_mode=logistic",
                               "train.device=cpu", "data.device=cpu", "data.num_threads=1"])
    torch.manual_seed(0)
    online, _ = build_networks(saved.model)
    run = tmp_path / "run"
    save_checkpoint({"config": saved.to_dict(), "online": online.state_dict(), "step": 7}, run, 7, keep=1)
    return run


def test_export_head_writes_a_torchvision_classifier_with_the_evaluations_logits(tiny_demo, standard_stem_run,
                                                                                tmp_path):
    import torchvision

    from dali_pipelines.dataset import resolve_dataset
    from relic_fast.checkpoint import encoder_from_checkpoint
    from relic_fast.evaluation.classifier import HEAD_FORMAT, probe_from_head
    from relic_fast.evaluation.features import encode
    from relic_fast.evaluation.protocol import eval_loader

    run = standard_stem_run
    result = CliRunner().invoke(app, ["linear-eval", "--checkpoint", str(run), "--data", str(tiny_demo)])
    assert result.exit_code == 0, result.output
    folder = run / "linear_eval"  # the default --out of a checkpoint: a folder in its run folder
    evaluation = report(folder)
    saved = head(folder)  # loads with weights_only=True: tensors and plain values
    assert saved["format"] == HEAD_FORMAT and saved["feature_norm"] == "batchnorm"  # logistic standardizes
    assert saved["weight"].shape == (10, 512) and saved["mean"].shape == saved["var"].shape == (512,)
    assert saved["class_names"] == sorted(p.name for p in (tiny_demo / "train").iterdir())
    assert saved["source"]["step"] == 7 and saved["top1"] == evaluation["top1"]
    assert evaluation["head"] == str(folder / "head.pt")

    out = tmp_path / "classifier.pt"
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--head", str(folder)])
    assert result.exit_code == 0, result.output
    classifier = torchvision.models.resnet18(num_classes=10)
    classifier.load_state_dict(torch.load(out, weights_only=True), strict=True)
    classifier.eval()
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["num_classes"] == 10 and sidecar["classifier"] is True and sidecar["verified_with"] == "torchvision"

    encoder, config = encoder_from_checkpoint(run)
    encoder.eval()
    probe = probe_from_head(saved)
    loader = eval_loader(resolve_dataset(str(tiny_demo / "val"), "folder"), train=False, eval_cfg=config.eval,
                         data_cfg=config.data, device="cpu", seed=0)
    hits = rows = 0
    with torch.no_grad():
        for images, labels in loader:
            expected = probe(encode(encoder, images, "cpu"))          # what linear-eval scored with
            logits = classifier(images.contiguous())                  # the exported classifier, fp32
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
            hits += int((logits.argmax(1) == labels.flatten()).sum())
            rows += labels.numel()
    assert 100.0 * hits / rows == pytest.approx(evaluation["splits"]["val"]["top1"])


def test_export_head_refuses_a_head_of_other_weights(tiny_demo, standard_stem_run, tmp_path):
    from relic_fast.evaluation.classifier import check_head_matches, head_payload
    from relic_fast.checkpoint import read_checkpoint, resolve_checkpoint_file
    from relic_fast.config import config_from_dict
    from relic_fast.evaluation.linear import LinearProbe
    from relic_fast.export import ExportError, config_hash

    file = resolve_checkpoint_file(standard_stem_run)
    state = read_checkpoint(file)
    model = config_from_dict(state["config"], "test").model
    encoder = {"encoder": "resnet18", "width": 1, "small_stem": False}
    source = {"step": 7, "config_hash": config_hash(state["config"]), "random_init": False}
    payload = head_payload(LinearProbe(512, 10), class_names=None, info={"encoder": encoder, "source": source})
    check_head_matches(payload, state, file, model, 512)  # its own checkpoint: fine
    for changed in ({"step": 8}, {"config_hash": "0" * 64}, {"random_init": True}):
        payload["source"] = {**source, **changed}
        with pytest.raises(ExportError, match="--head"):
            check_head_matches(payload, state, file, model, 512)


# ---------------------------------------------------------------- bad input: one line, no traceback

def test_export_head_bad_input_is_one_line(tiny_demo, standard_stem_run, tmp_path):
    from relic_fast.checkpoint import save_checkpoint
    from relic_fast.config import load_config
    from relic_fast.models import build_networks

    result = CliRunner().invoke(app, ["export", str(standard_stem_run), "--out", str(tmp_path / "c.pt"),
                                      "--head", str(tmp_path / "nowhere")])
    assert result.exit_code == ExitCode.CONFIG
    assert "no head.pt there" in one_error_line(result.output, "export error")
    small = load_config(None, ["model.encoder=resnet18", "model.small_stem=true", "model.projector_hidden=8",
                               "model.predictor_hidden=8", "model.embedding_dim=4"])
    save_checkpoint({"config": small.to_dict(), "online": build_networks(small.model)[0].state_dict(), "step": 1},
                    tmp_path / "small", 1, keep=1)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "small"), "--out", str(tmp_path / "c.pt"),
                                      "--head", str(tmp_path / "nowhere")])
    assert result.exit_code == ExitCode.CONFIG
    assert "small_stem" in one_error_line(result.output, "export error")


def test_linear_eval_refuses_a_pretraining_run_folder_as_out(tiny_demo, standard_stem_run):
    before = sorted(p.name for p in (standard_stem_run / "checkpoints").iterdir())
    result = CliRunner().invoke(app, ["linear-eval", "--checkpoint", str(standard_stem_run), "--data",
                                      str(tiny_demo), "--out", str(standard_stem_run)])
    assert result.exit_code == ExitCode.CONFIG
    assert "not a linear evaluation's checkpoint" in one_error_line(result.output, "linear-eval error")
    assert not (standard_stem_run / "run.lock").exists()  # released
    assert sorted(p.name for p in (standard_stem_run / "checkpoints").iterdir()) == before  # nothing deleted


def test_linear_eval_missing_data_is_one_line(tmp_path):
    result = CliRunner().invoke(app, eval_args(tmp_path / "nothing", tmp_path / "out"))
    assert result.exit_code == ExitCode.DATASET
    one_error_line(result.output, "dataset error")
    assert not (tmp_path / "out").exists()  # nothing written: no empty folder left either
