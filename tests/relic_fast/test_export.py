"""`relic-fast export`: the encoder of a checkpoint as a tensors-only state dict that torchvision and timm
ResNets load with strict=True and that gives our encoder's features, its sidecar, and the refusals."""

import contextlib
import copy
import json
import os

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from relic_fast.checkpoint import save_checkpoint
from relic_fast.cli import app
from relic_fast.config import Config, ModelConfig
from relic_fast.export import (ExportError, config_hash, export_encoder, library_model, load_encoder,
                               load_tensors, read_metadata)
from relic_fast.models import build_networks

SMALL_HEADS = dict(projector_hidden=32, embedding_dim=16, predictor_hidden=32)


def scramble(module: torch.nn.Module, seed: int) -> None:
    """Random values in every weight and BatchNorm statistic, so a swapped or dropped tensor shows in the features."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var") or name.endswith("bn3.weight") or name.endswith("bn2.weight"):
                tensor.copy_(0.5 + noise)  # variances positive; residual gammas away from their zero init
            else:
                tensor.add_(0.1 * (noise - 0.5))


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    """A function writing a run folder with one checkpoint (step 7) of `model`; online and target differ."""

    def make(with_target: bool = True, **model_fields) -> tuple:
        model = ModelConfig(**SMALL_HEADS, **model_fields)
        torch.manual_seed(0)
        online, target = build_networks(model)
        scramble(online, 1)
        scramble(target, 2)
        if not with_target:  # a smaller file: the test exports the online network only
            target = torch.nn.Module()
        config = Config().replace(model=model)
        run = tmp_path_factory.mktemp("run")
        state = {"step": 7, "config": config.to_dict(), "online": online.state_dict(), "target": target.state_dict(),
                 "world_size": 1}
        save_checkpoint(state, run, 7, keep=1)
        return run, online, target, config

    return make


def features(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Eval-mode features in contiguous memory format (our networks train channels-last; the library models
    are contiguous, and the two layouts run different convolution kernels)."""
    encoder = copy.deepcopy(encoder).to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        return encoder(images)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_torchvision_resnet_loads_strict_and_gives_our_features(make_run, tmp_path, encoder, one_thread):
    run, online, _, _ = make_run(encoder=encoder)
    report = export_encoder(run, tmp_path / f"{encoder}.safetensors", network="online", fmt="torchvision")
    weights = load_tensors(report.weights)
    assert all(isinstance(v, torch.Tensor) for v in weights.values()) and not any(k.startswith("fc.") for k in weights)
    model = getattr(torchvision.models, encoder)(weights=None)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected  # all but the classifier
    model.fc = torch.nn.Identity()
    model.load_state_dict(weights, strict=True)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(features(model, images), features(online.encoder, images), rtol=1e-5, atol=1e-5)
    assert report.metadata["verified_with"] == "torchvision"


def test_timm_resnet_loads_strict_and_gives_our_features(make_run, tmp_path, one_thread):
    timm = pytest.importorskip("timm")
    run, online, _, _ = make_run(encoder="resnet18")
    report = export_encoder(run, tmp_path / "r18.safetensors", fmt="timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.load_state_dict(load_tensors(report.weights), strict=True)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(features(model, images), features(online.encoder, images), rtol=1e-5, atol=1e-5)
    # timm's own file loading (no hub): pretrained_cfg_overlay points at the exported file
    from_file = timm.create_model("resnet18", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(report.weights)})
    torch.testing.assert_close(features(from_file, images), features(online.encoder, images), rtol=1e-5, atol=1e-5)
    assert report.metadata["verified_with"] == "timm"


def test_timm_has_every_depth_torchvision_lacks_resnet200(make_run, tmp_path):
    run, *_ = make_run(encoder="resnet18")
    with torch.device("meta"):
        names = set(library_model("torchvision", "resnet18").state_dict())
    assert names == set(load_tensors(export_encoder(run, tmp_path / "a.pt").weights))
    from relic_fast.export import check_format

    with pytest.raises(ExportError, match="torchvision has no resnet200; use --format timm"):
        check_format(ModelConfig(encoder="resnet200"), "torchvision")
    check_format(ModelConfig(encoder="resnet200"), "timm")


def test_sidecar_and_target_network(make_run, tmp_path):
    run, online, target, config = make_run(encoder="resnet18")
    report = export_encoder(run, tmp_path / "target.pt", network="target")
    sidecar = json.loads((tmp_path / "target.pt.json").read_text())
    assert sidecar == report.metadata == read_metadata(report.weights)
    assert (sidecar["encoder"], sidecar["width"], sidecar["small_stem"], sidecar["network"], sidecar["step"]) == \
        ("resnet18", 1, False, "target", 7)
    assert sidecar["stem"].startswith("7x7") and sidecar["feature_dim"] == 512
    assert sidecar["config_hash"] == config_hash(config.to_dict()) != config_hash(Config().to_dict())
    weights = torch.load(report.weights, weights_only=True)  # a .pt export is plain tensors
    expected = {k[len("encoder."):]: v for k, v in target.state_dict().items() if k.startswith("encoder.")}
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    assert not torch.equal(weights["conv1.weight"], online.encoder.conv1.weight.detach())


@pytest.mark.parametrize("fields, message", [
    (dict(encoder="resnet18", width=2), "model.width = 2: torchvision and timm have no resnet18 2x"),
    (dict(encoder="resnet18", small_stem=True), "model.small_stem = true"),
])
def test_wide_and_small_stem_encoders_export_for_build_encoder(make_run, tmp_path, fields, message, one_thread):
    run, online, _, _ = make_run(with_target=False, **fields)
    for fmt in ("torchvision", "timm"):
        with pytest.raises(ExportError, match=message) as caught:
            export_encoder(run, tmp_path / "x.safetensors", fmt=fmt)
        assert "--format relic-fast" in str(caught.value) and "load_encoder" in str(caught.value)
    report = export_encoder(run, tmp_path / "ours.safetensors", fmt="relic-fast")
    report.sidecar.unlink()  # the safetensors header alone says which encoder to build
    encoder = load_encoder(report.weights)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(features(encoder, images), features(online.encoder, images), rtol=1e-5, atol=1e-5)


def test_cli_export_and_its_one_line_errors(make_run, tmp_path):
    run, *_ = make_run(encoder="resnet18")
    out = tmp_path / "backbone.safetensors"
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "backbone.safetensors.json").is_file() and "torchvision" in result.output
    for args, text in ((["--format", "onnx"], "choose one of torchvision, timm, relic-fast"),
                       (["--network", "ema"], "choose online or target")):
        result = CliRunner().invoke(app, ["export", str(run), "--out", str(out), *args])
        output = " ".join(result.output.split())  # the console wraps long lines
        assert result.exit_code == 2 and text in output and "Traceback" not in output
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(out)])
    assert result.exit_code == 5 and "no such checkpoint" in " ".join(result.output.split())  # ExitCode.CHECKPOINT
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "backbone.bin")])
    assert result.exit_code == 2 and "*.safetensors, *.pt or *.pth" in " ".join(result.output.split())


def test_pt_and_safetensors_of_one_name_keep_their_own_sidecars(make_run, tmp_path):
    run, *_ = make_run(encoder="resnet18")
    pt = export_encoder(run, tmp_path / "backbone.pt", network="online")
    safetensors = export_encoder(run, tmp_path / "backbone.safetensors", network="target")
    assert (pt.sidecar.name, safetensors.sidecar.name) == ("backbone.pt.json", "backbone.safetensors.json")
    assert read_metadata(pt.weights)["network"] == "online"
    assert read_metadata(safetensors.weights)["network"] == "target"
    assert json.loads(pt.sidecar.read_text()) == pt.metadata


def test_an_export_that_fails_while_writing_leaves_the_previous_one_intact(make_run, tmp_path, monkeypatch):
    import errno

    run, *_ = make_run(encoder="resnet18")
    first = export_encoder(run, tmp_path / "backbone.pt")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        with open(file, "wb") if isinstance(file, (str, os.PathLike)) else contextlib.nullcontext(file) as handle:
            handle.write(b"the first bytes of a state dict")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError, match="No space left"):
        export_encoder(run, tmp_path / "backbone.pt", network="target")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # no partial file, no temporary
    assert read_metadata(first.weights)["network"] == "online"


def test_the_safetensors_header_is_the_truth_and_the_sidecar_must_agree(make_run, tmp_path):
    run, *_ = make_run(encoder="resnet18")
    report = export_encoder(run, tmp_path / "target.safetensors", network="target")
    sidecar = json.loads(report.sidecar.read_text())
    report.sidecar.write_text(json.dumps({**sidecar, "network": "online"}))  # edited, or another export's
    for read in (read_metadata, load_encoder):
        with pytest.raises(ExportError) as info:
            read(report.weights)
        message = str(info.value)
        assert "network" in message and "'target'" in message and "'online'" in message, message
        assert report.sidecar.name in message
    report.sidecar.unlink()
    assert read_metadata(report.weights)["network"] == "target"  # the header alone


@pytest.mark.parametrize("network", ["online", "target"])
def test_the_sidecar_says_whose_batchnorm_statistics_the_weights_carry(make_run, tmp_path, network):
    run, *_ = make_run(encoder="resnet18")
    metadata = export_encoder(run, tmp_path / f"{network}.pt", network=network).metadata
    assert metadata["batchnorm_statistics"] == "online"  # the EMA target copies them from the online network
    assert read_metadata(tmp_path / f"{network}.pt")["batchnorm_statistics"] == "online"


def test_an_old_torch_loads_no_exported_or_checkpoint_file(make_run, tmp_path, monkeypatch):
    from tests.relic_fast.test_checkpoint import assert_refused_for_old_torch, pretend_old_torch

    run, *_ = make_run(encoder="resnet18")
    exported = export_encoder(run, tmp_path / "backbone.pt").weights
    calls = pretend_old_torch(monkeypatch)
    for load in (lambda: export_encoder(run, tmp_path / "again.pt"), lambda: load_tensors(exported),
                 lambda: load_encoder(exported)):
        with pytest.raises(Exception) as info:
            load()
        assert_refused_for_old_torch(info.value)
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "cli.pt")])
    assert result.exit_code == 5 and "unsafe torch: torch 2.5.1+cu124" in " ".join(result.output.split())
    assert calls == [] and not (tmp_path / "again.pt").exists()


def test_a_format_1_sidecar_is_read_only_for_the_pt_file_it_names(make_run, tmp_path):
    run, *_ = make_run(encoder="resnet18")
    report = export_encoder(run, tmp_path / "old.pt")
    legacy = report.sidecar.rename(tmp_path / "old.json")  # where sidecar format 1 put it
    assert read_metadata(report.weights)["encoder"] == "resnet18"
    other = tmp_path / "other.pt"
    other.write_bytes(report.weights.read_bytes())
    (tmp_path / "other.json").write_text(legacy.read_text())  # it describes old.pt, not other.pt
    with pytest.raises(ExportError, match="no sidecar other.pt.json"):
        read_metadata(other)


def test_the_ema_target_carries_the_online_batchnorm_statistics_as_the_sidecar_says():
    """What `batchnorm_statistics` claims for `--network target`: after an EMA update the target's running
    statistics are the online network's, while its weights are not."""
    from relic_fast.export import BATCHNORM_STATISTICS
    from relic_fast.models import ema_update

    online, target = build_networks(ModelConfig(encoder="resnet18", **SMALL_HEADS))
    scramble(online, 3)
    ema_update(target, online, tau=0.99)
    buffers = dict(online.encoder.named_buffers())
    assert BATCHNORM_STATISTICS == "online"
    assert all(torch.equal(tensor, buffers[name]) for name, tensor in target.encoder.named_buffers())
    assert not torch.equal(target.encoder.conv1.weight, online.encoder.conv1.weight)
