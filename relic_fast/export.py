"""From a pretraining run to a backbone: the encoder's weights as a plain tensors-only state dict.

`export_encoder` reads a checkpoint (a file, or a run folder's newest one) through
`relic_fast.checkpoint`, takes the online or target encoder, and writes its state dict without the
`encoder.` prefix, plus a JSON sidecar (`FILE.json`: the weights' full name plus `.json`, so `x.pt` and
`x.safetensors` never share one) saying what it is: encoder, width, stem, network, whose BatchNorm
statistics it carries, step, config hash. A `.safetensors` file carries the same metadata in its header,
which is the truth: its sidecar must agree with it. Both files are written through temporary files and
renamed into place, so a failed export leaves the previous one intact. Our encoder's parameter and
buffer names are torchvision's ResNet names (timm's ResNets use the same ones), less the `fc`
classifier, so:

- `--format torchvision`: `torchvision.models.resnet50()` with `fc = nn.Identity()` loads the file
  with `strict=True` (resnet18/34/50/101/152 at width 1 with the standard 7x7 stem);
- `--format timm`: `timm.create_model("resnet50", num_classes=0)` loads it with `strict=True`
  (resnet200 too);
- `--format relic-fast`: anything `build_encoder` builds, loaded back by `load_encoder`. The only
  choice for width 2 and 4 (SimCLR-style: stem and every stage widened; torchvision's
  `wide_resnet50_2` widens only the 3x3 convolutions, another network) and for the small stem.

A `.safetensors` file needs the `safetensors` package (the `export` extra); `.pt`/`.pth` files are
`torch.save` dicts of tensors that `torch.load(path, weights_only=True)` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from dali_pipelines.atomic import staged_file
from relic_fast.checkpoint import load_weights_only, read_checkpoint, resolve_checkpoint_file
from relic_fast.config import ModelConfig, config_from_dict
from relic_fast.errors import ExitCode, RelicFastError
from relic_fast.models import build_encoder

FORMATS = ("torchvision", "timm", "relic-fast")
NETWORKS = ("online", "target")
SUFFIXES = (".safetensors", ".pt", ".pth")
TORCHVISION_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
"""Depths torchvision builds (`torchvision.models.<name>()`); timm builds every depth we train."""
SIDECAR_VERSION = 2
"""2: the sidecar is named FILE.json (was FILE less its suffix, .json) and records `batchnorm_statistics`."""
BATCHNORM_STATISTICS = "online"
"""Whose BatchNorm running statistics an export carries, for either network: the EMA target averages only the
parameters and copies the buffers from the online network at every step (`relic_fast.models.ema_update`)."""


class ExportError(RelicFastError, ValueError):
    """A request the export cannot honour (format, network, file name); the message says what to do instead."""

    exit_code = ExitCode.CONFIG
    label = "export error"


@dataclass(frozen=True)
class ExportReport:
    """What `export_encoder` wrote: the weights file, its sidecar, and the sidecar's contents."""

    weights: Path
    sidecar: Path
    metadata: dict[str, Any]

    def rows(self) -> list[tuple[str, str]]:
        """(item, value) rows for the command's summary table."""
        meta = self.metadata
        statistics = "the online network's" + ("" if meta["network"] == "online" else
                                               " (the EMA target copies them): re-estimate them on data to trust "
                                               "the target's features")
        return [("weights", str(self.weights)), ("sidecar", str(self.sidecar)),
                ("encoder", f"{meta['encoder']} {meta['width']}x, stem {meta['stem']}, {meta['feature_dim']} features"),
                ("network", f"{meta['network']} at step {meta['step']} ({meta['checkpoint']})"),
                ("BatchNorm statistics", statistics),
                ("loaded strict=True by", meta["verified_with"]), ("load with", meta["load"])]


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the run's resolved config (canonical JSON): equal hashes, equal recipes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stem_name(small_stem: bool) -> str:
    """The stem in words, as the sidecar records it."""
    return "3x3 stride 1, no max-pool" if small_stem else "7x7 stride 2 + 3x3 max-pool"


def check_format(model: ModelConfig, fmt: str) -> None:
    """Raise `ExportError` when library `fmt` has no network matching `model`, naming what to use instead."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "relic-fast":
        return
    instead = "; export with --format relic-fast and load it with relic_fast.export.load_encoder(FILE)"
    if model.width != 1:
        raise ExportError(f"model.width = {model.width}: torchvision and timm have no {model.encoder} {model.width}x "
                          f"(SimCLR-style, stem and every stage widened; torchvision's wide_resnet50_2 widens only "
                          f"the 3x3 convolutions, a different network){instead}")
    if model.small_stem:
        raise ExportError(f"model.small_stem = true ({stem_name(True)}): torchvision's and timm's ResNets have only "
                          f"the {stem_name(False)} stem{instead}")
    if fmt == "torchvision" and model.encoder not in TORCHVISION_ENCODERS:
        raise ExportError(f"model.encoder = {model.encoder}: torchvision has no {model.encoder}; "
                          f"use --format timm (timm.create_model('{model.encoder}')) or --format relic-fast")


def encoder_state_dict(state: dict[str, Any], network: str) -> dict[str, torch.Tensor]:
    """The `network` ("online" or "target") encoder's tensors from a checkpoint, names without `encoder.`.

    Contiguous copies: checkpoints hold channels-last weights, and safetensors stores dense tensors only."""
    prefix = "encoder."
    return {name[len(prefix):]: tensor.detach().contiguous().clone()
            for name, tensor in state[network].items() if name.startswith(prefix)}


def sidecar_path(weights: Path) -> Path:
    """Where the JSON sidecar of weights file `weights` lives: its full name plus `.json` (`x.pt.json`), so the
    exports `x.pt` and `x.safetensors` in one folder each keep their own."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".json")


def legacy_sidecar_path(weights: Path) -> Path:
    """Where sidecar format 1 put it: the weights' name less its suffix, plus `.json` (shared by `x.pt` and
    `x.safetensors`; read only for a `.pt`/`.pth` file, and only if it names that file)."""
    return Path(weights).with_suffix(".json")


def check_output(out: Path) -> None:
    """The weights file name must say its format; `.safetensors` needs the package."""
    if out.suffix not in SUFFIXES:
        raise ExportError(f"--out {out}: name the file *.safetensors, *.pt or *.pth (the suffix picks the format)")
    if out.suffix == ".safetensors":
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            raise ExportError(f"--out {out}: writing .safetensors needs the safetensors package "
                              f"(pip install 'relic-fast[export]'); or name the file *.pt") from None


def save_export(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> Path:
    """Write `tensors` to `path` (safetensors with `metadata` in its header, or a `torch.save` dict, by suffix)
    and `metadata` to its sidecar; returns the sidecar's path.

    Both go to temporary files first and are renamed into place only once both are written, so a failure
    (a full disk, an error) leaves the previous export intact and no partial or temporary file. The old
    sidecar is removed just before the renames: a crash between them leaves weights without a sidecar
    (an error when read), never weights described by another export's sidecar."""
    sidecar = sidecar_path(path)
    sidecar_text = (json.dumps(metadata, indent=2) + "\n").encode()
    with staged_file(path, lambda handle: write_tensors(tensors, handle, path.suffix, metadata)) as weights_file, \
            staged_file(sidecar, lambda handle: handle.write(sidecar_text)) as sidecar_file:
        sidecar.unlink(missing_ok=True)
        os.replace(weights_file, path)
        os.replace(sidecar_file, sidecar)
    return sidecar


def write_tensors(tensors: dict[str, torch.Tensor], handle: IO[bytes], suffix: str, metadata: dict[str, Any]) -> None:
    """Write `tensors` to the open binary `handle` as safetensors (`metadata` in its header, each value as JSON)
    when `suffix` is `.safetensors`, else as a `torch.save` dict."""
    if suffix == ".safetensors":
        from safetensors.torch import save

        handle.write(save(tensors, metadata={key: json.dumps(value) for key, value in metadata.items()}))
    else:
        torch.save(tensors, handle)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an exported file (safetensors or a `torch.save` dict), on the CPU, without pickled code
    (a `.pt` file is read through `load_weights_only`: refused on a torch too old to do that safely)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return load_weights_only(path)


def load_instructions(fmt: str, encoder: str, weights: Path) -> str:
    """Python that loads the exported file in its format's library (written to the sidecar and printed)."""
    read = (f"safetensors.torch.load_file('{weights.name}')" if weights.suffix == ".safetensors"
            else f"torch.load('{weights.name}', weights_only=True)")
    if fmt == "torchvision":
        return (f"model = torchvision.models.{encoder}(); model.fc = torch.nn.Identity(); "
                f"model.load_state_dict({read})")
    if fmt == "timm":
        return f"model = timm.create_model('{encoder}', num_classes=0); model.load_state_dict({read})"
    return f"encoder = relic_fast.export.load_encoder('{weights.name}')"


def export_encoder(source: Path, out: Path, network: str = "online", fmt: str = "torchvision") -> ExportReport:
    """Write the `network` encoder of checkpoint or run folder `source` to `out` (+ sidecar) in format `fmt`.

    The file is loaded back into `fmt`'s own model before returning (when that library is installed), so an
    export that succeeds is one that library reads with `strict=True`."""
    out = Path(out)
    check_output(out)
    if network not in NETWORKS:
        raise ExportError(f"--network {network!r}: choose online or target")
    file = resolve_checkpoint_file(Path(source))
    state = read_checkpoint(file)
    config = config_from_dict(state["config"], source=f"{file} (saved config)", warn_legacy=False)
    check_format(config.model, fmt)
    tensors = encoder_state_dict(state, network)
    model = config.model
    metadata = {"format_version": SIDECAR_VERSION, "format": fmt, "encoder": model.encoder, "width": model.width,
                "small_stem": model.small_stem, "stem": stem_name(model.small_stem), "network": network,
                "batchnorm_statistics": BATCHNORM_STATISTICS, "step": int(state["step"]),
                "config_hash": config_hash(state["config"]),
                "feature_dim": build_encoder_on_meta(model).feature_dim, "checkpoint": file.name,
                "tensors": len(tensors), "load": load_instructions(fmt, model.encoder, out)}
    verified = verify_loads(tensors, fmt, model)
    metadata["verified_with"] = verified
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = save_export(tensors, out, metadata)
    return ExportReport(out, sidecar, metadata)


def build_encoder_on_meta(model: ModelConfig):
    """Our encoder for `model` on the meta device: its shapes and names, without allocating weights."""

    with torch.device("meta"):
        return build_encoder(model.encoder, model.width, model.small_stem)


def library_model(fmt: str, encoder: str) -> nn.Module:
    """`fmt`'s own ResNet `encoder` without a classifier (fc = Identity), randomly initialized."""
    if fmt == "torchvision":
        import torchvision

        network = getattr(torchvision.models, encoder)(weights=None)
        network.fc = nn.Identity()
        return network
    if fmt == "timm":
        import timm

        return timm.create_model(encoder, pretrained=False, num_classes=0)
    raise ExportError(f"no library model for format {fmt!r}")


def verify_loads(tensors: dict[str, torch.Tensor], fmt: str, model: ModelConfig) -> str:
    """Load `tensors` with strict=True into the model that `fmt` promises; the name of what checked it.

    timm is optional: without it the timm format is checked against our encoder (whose names and shapes
    are timm's) and the sidecar says so."""
    if fmt == "timm":
        try:
            import timm  # noqa: F401
        except ImportError:
            fmt = "relic-fast"
    if fmt == "relic-fast":
        network: nn.Module = build_encoder_on_meta(model)
        label = "relic_fast.models.build_encoder"
    else:
        with torch.device("meta"):
            network = library_model(fmt, model.encoder)
        label = fmt
    try:
        network.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise ExportError(f"the exported tensors do not load into {label}'s {model.encoder}: {err}") from None
    return label


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of an exported file: for safetensors its own header (the truth; a sidecar next to it
    must agree, else `ExportError`), for `.pt`/`.pth` its JSON sidecar."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if path.suffix == ".safetensors":
        header = safetensors_metadata(path)
        if sidecar.is_file():
            check_sidecar_agrees(path, header, sidecar)
        return header
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    legacy = legacy_sidecar_path(path)
    if legacy.is_file():
        metadata = json.loads(legacy.read_text())
        if f"'{path.name}'" in str(metadata.get("load", "")):  # format 1 named the file it describes there
            return metadata
    raise ExportError(f"{path}: no sidecar {sidecar.name} next to it; cannot tell which encoder it holds "
                      f"(export it again, or load its tensors with torch.load(FILE, weights_only=True))")


def safetensors_metadata(path: Path) -> dict[str, Any]:
    """The relic-fast metadata in a safetensors file's header (each value JSON-decoded); `ExportError` if none."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if "encoder" not in header:
        raise ExportError(f"{path}: its safetensors header holds no relic-fast metadata; cannot tell which encoder "
                          f"it holds (was it written by `relic-fast export`?)")
    return {key: json.loads(value) for key, value in header.items()}


def check_sidecar_agrees(path: Path, header: dict[str, Any], sidecar: Path) -> None:
    """Raise `ExportError` naming every key where `sidecar` says other than the header of safetensors file `path`."""
    written = json.loads(sidecar.read_text())
    differing = sorted(key for key in set(header) | set(written) if header.get(key) != written.get(key))
    if differing:
        details = "; ".join(f"{key}: {header.get(key)!r} in the file, {written.get(key)!r} in the sidecar"
                            for key in differing)
        raise ExportError(f"{path}: its sidecar {sidecar.name} disagrees with the file's own header ({details}); "
                          f"the header is what the file holds: delete the sidecar or export again")


def load_encoder(path: Path) -> nn.Module:
    """Our encoder (`build_encoder`, any depth, width and stem) with the weights of an exported file.

    Returns pooled features of size `feature_dim`, in eval mode; the way back in for widths 2 and 4
    and the small stem, which torchvision and timm cannot build."""

    metadata = read_metadata(Path(path))
    encoder = build_encoder(metadata["encoder"], metadata["width"], metadata["small_stem"])
    encoder.load_state_dict(load_tensors(Path(path)), strict=True)
    return encoder.eval()
