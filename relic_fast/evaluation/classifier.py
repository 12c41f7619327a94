"""The trained linear probe as a file (`head.pt`), and encoder + probe as one classifier (`export --head`).

The head file, `DIR/head.pt` of `relic-fast linear-eval --out DIR`, is a `torch.save` dict of tensors
and plain values (`torch.load(path, weights_only=True)` reads it, no pickled code):

- `format`: "relic-fast-linear-head/1";
- `weight` (K, F) and `bias` (K,), float32: the probe's `nn.Linear` (F pooled features, K classes);
- `feature_norm`: "batchnorm" or "none". For "batchnorm" (the `logistic` mode's standardization, or
  `eval.linear_feature_norm = "batchnorm"`) also `mean` (F,), `var` (F,) and `eps`: the probe computes
  `weight @ ((x - mean) / sqrt(var + eps)) + bias`, a BatchNorm1d without affine parameters in eval mode;
- `num_classes`, `feature_dim`, `class_names` (the train split's class names, index order; [] if unknown);
- `encoder`: {"encoder", "width", "small_stem"}: the network whose features it reads;
- `source`: {"checkpoint" (the file evaluated, or None), "step", "config_hash" (of its saved config,
  as `export` computes it), "network": "online", "random_init"}: which weights it belongs to;
- `mode`, `top1`, `top5`, `top5_k`: how it was trained and what it scored on the headline split.

`export_classifier` (`relic-fast export RUN --out FILE --head DIR`) folds the standardization into the
layer (`folded_linear`: W' = W / sqrt(var + eps), b' = b - W' mean, in float64) and writes the online
encoder's tensors plus `fc.weight`, `fc.bias`: `torchvision.models.resnet50(num_classes=K)` (or the
depth the run trained; timm's `create_model(name, num_classes=K)` with `--format timm`) loads it with
`strict=True` and, in eval mode, gives the evaluation's logits. It refuses a head of another checkpoint
(step or config hash), a random-init head, and networks neither library builds (width > 1, the small stem).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_pipelines.atomic import write_atomically
from relic_fast.checkpoint import load_weights_only, read_checkpoint, resolve_checkpoint_file
from relic_fast.config import ModelConfig, config_from_dict
from relic_fast.errors import RelicFastError
from relic_fast.evaluation.linear import LinearProbe
from relic_fast.export import (SIDECAR_VERSION, ExportError, ExportReport, build_encoder_on_meta, check_format, check_output,
                               config_hash, encoder_state_dict, save_export, stem_name)

HEAD_FILE = "head.pt"
HEAD_FORMAT = "relic-fast-linear-head/1"
CLASSIFIER_FORMATS = ("torchvision", "timm")


def head_payload(head: LinearProbe, *, class_names: list[str] | None, info: dict[str, Any]) -> dict[str, Any]:
    """The head file's contents for a trained `head` (see the module docstring); `info` adds `encoder`,
    `source`, `mode`, `top1`, ..."""
    linear = head.linear
    payload: dict[str, Any] = {
        "format": HEAD_FORMAT, "weight": linear.weight.detach().float().cpu().contiguous().clone(),
        "bias": linear.bias.detach().float().cpu().contiguous().clone(),
        "feature_norm": "batchnorm" if isinstance(head.norm, nn.BatchNorm1d) else "none",
        "num_classes": int(linear.out_features), "feature_dim": int(linear.in_features),
        "class_names": list(class_names or []), **info}
    if isinstance(head.norm, nn.BatchNorm1d):
        payload.update(mean=head.norm.running_mean.detach().float().cpu().clone(),
                       var=head.norm.running_var.detach().float().cpu().clone(), eps=float(head.norm.eps))
    return payload


def save_head(path: Path, payload: dict[str, Any]) -> Path:
    """Write a head file atomically (a temporary file renamed into place); its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: torch.save(payload, handle))
    return path


def head_file(where: Path) -> Path:
    """The head file of a linear-eval folder (or the file itself)."""
    where = Path(where)
    return where / HEAD_FILE if where.is_dir() else where


def load_head(where: Path) -> dict[str, Any]:
    """The head file of folder `where` (or the file), checked; `ExportError` if it is missing or not one."""
    path = head_file(where)
    if not path.is_file():
        raise ExportError(f"--head {where}: no {HEAD_FILE} there; give the --out folder of a finished "
                          f"`relic-fast linear-eval`")
    try:
        payload = load_weights_only(path)
    except RelicFastError:  # a torch too old to load safely
        raise
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ExportError(f"{path}: unreadable head file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise ExportError(f"{path}: not a relic-fast linear head ({HEAD_FORMAT})")
    return payload


def probe_from_head(payload: dict[str, Any]) -> LinearProbe:
    """The `LinearProbe` a head file holds, in eval mode (what linear-eval scored with)."""
    probe = LinearProbe(payload["feature_dim"], payload["num_classes"], payload["feature_norm"])
    with torch.no_grad():
        probe.linear.weight.copy_(payload["weight"])
        probe.linear.bias.copy_(payload["bias"])
        if payload["feature_norm"] == "batchnorm":
            probe.norm.running_mean.copy_(payload["mean"])
            probe.norm.running_var.copy_(payload["var"])
            probe.norm.eps = payload["eps"]
    return probe.eval()


def folded_linear(payload: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) float32 of one `nn.Linear` equal to the head: its standardization folded in (float64)."""
    weight, bias = payload["weight"].double(), payload["bias"].double()
    if payload["feature_norm"] == "batchnorm":
        scale = (payload["var"].double() + payload["eps"]).rsqrt()
        weight = weight * scale
        bias = bias - weight @ payload["mean"].double()
    return weight.float().contiguous(), bias.float().contiguous()


@dataclass(frozen=True)
class ClassifierReport(ExportReport):
    """What `export_classifier` wrote: the weights file, its sidecar, and the sidecar's contents."""

    def rows(self) -> list[tuple[str, str]]:
        """(item, value) rows for the command's summary table."""
        meta = self.metadata
        accuracy = (f"top-1 {meta['top1']:.2f} % on the linear evaluation's {meta['scored_on']} split"
                    if isinstance(meta.get("top1"), (int, float)) else "no score recorded")
        return [("weights", str(self.weights)), ("sidecar", str(self.sidecar)),
                ("classifier", f"{meta['encoder']} {meta['width']}x, stem {meta['stem']}, {meta['num_classes']} "
                               f"classes (fc: the probe, standardization folded in)"),
                ("network", f"online at step {meta['step']} ({meta['checkpoint']})"),
                ("head", f"{meta['head']} ({meta['mode']}; {accuracy})"),
                ("loaded strict=True by", meta["verified_with"]), ("load with", meta["load"])]


def check_classifier(model: ModelConfig, fmt: str) -> None:
    """Refuse encoders that no torchvision / timm classifier matches (one line saying what to do instead)."""
    instead = ("; export the encoder alone with --format relic-fast (relic_fast.export.load_encoder) and apply "
               "the probe of head.pt to its features (relic_fast.evaluation.classifier.probe_from_head)")
    if model.width != 1:
        raise ExportError(f"--head: model.width = {model.width}: torchvision's and timm's ResNets are width 1, so "
                          f"no library classifier holds a {model.encoder} {model.width}x{instead}")
    if model.small_stem:
        raise ExportError(f"--head: model.small_stem = true ({stem_name(True)}): torchvision's and timm's ResNets "
                          f"have only the {stem_name(False)} stem{instead}")
    check_format(model, fmt)


def check_head_matches(payload: dict[str, Any], state: dict[str, Any], file: Path, model: ModelConfig,
                       feature_dim: int) -> None:
    """Refuse a head trained on other weights than checkpoint `file`'s online encoder."""
    source = payload.get("source", {})
    if source.get("random_init"):
        raise ExportError("--head: that probe was trained on a random-init encoder's features, not on this run's; "
                          "evaluate the run (`linear-eval --checkpoint RUN --out DIR`) and export with that DIR")
    step, digest = int(state["step"]), config_hash(state["config"])
    if source.get("step") != step or source.get("config_hash") != digest:
        other = "" if source.get("config_hash") == digest else ", another run"
        raise ExportError(f"--head: the probe was trained on {source.get('checkpoint')} (step {source.get('step')}), "
                          f"not on {file} (step {step}{other}); export that checkpoint, or evaluate this one first")
    encoder = payload.get("encoder", {})
    mine = {"encoder": model.encoder, "width": model.width, "small_stem": model.small_stem}
    if encoder != mine or payload["feature_dim"] != feature_dim:
        raise ExportError(f"--head: the probe reads {payload['feature_dim']} features of {encoder}, the checkpoint's "
                          f"encoder is {mine} with {feature_dim}")


def classifier_model(fmt: str, encoder: str, num_classes: int) -> nn.Module:
    """`fmt`'s own ResNet `encoder` with a `num_classes` classifier, on the meta device (shapes and names only)."""
    with torch.device("meta"):
        if fmt == "timm":
            import timm

            return timm.create_model(encoder, pretrained=False, num_classes=num_classes)
        import torchvision

        return getattr(torchvision.models, encoder)(weights=None, num_classes=num_classes)


def verify_classifier(tensors: dict[str, torch.Tensor], fmt: str, model: ModelConfig, num_classes: int) -> str:
    """Load `tensors` with strict=True into `fmt`'s ResNet with `num_classes` classes; the name of what checked it
    (timm is optional: without it, torchvision's network of the same depth checks a timm export)."""
    if fmt == "timm":
        try:
            import timm  # noqa: F401
        except ImportError:
            fmt = "torchvision"
    try:
        network = classifier_model(fmt, model.encoder, num_classes)
    except AttributeError:  # a depth torchvision lacks, timm not installed
        network = build_encoder_on_meta(model)
        with torch.device("meta"):
            network.fc = nn.Linear(tensors["fc.weight"].shape[1], num_classes)
        fmt = "relic_fast.models.build_encoder + fc"
    try:
        network.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise ExportError(f"the classifier's tensors do not load into {fmt}'s {model.encoder}: {err}") from None
    return fmt


def classifier_instructions(fmt: str, encoder: str, num_classes: int, weights: Path) -> str:
    """Python that loads the exported classifier."""
    read = (f"safetensors.torch.load_file('{weights.name}')" if weights.suffix == ".safetensors"
            else f"torch.load('{weights.name}', weights_only=True)")
    if fmt == "timm":
        return (f"model = timm.create_model('{encoder}', num_classes={num_classes}); "
                f"model.load_state_dict({read}); model.eval()")
    return (f"model = torchvision.models.{encoder}(num_classes={num_classes}); model.load_state_dict({read}); "
            f"model.eval()")


def export_classifier(source: Path, out: Path, head: Path, network: str = "online",
                      fmt: str = "torchvision") -> ClassifierReport:
    """Write checkpoint `source`'s online encoder with the probe of linear-eval folder `head` as `fc`, as one
    state dict that `fmt`'s ResNet with K classes loads with strict=True (+ the JSON sidecar)."""
    out = Path(out)
    check_output(out)
    if fmt not in CLASSIFIER_FORMATS:
        raise ExportError(f"--head with --format {fmt!r}: the classifier is torchvision's (default) or timm's "
                          f"ResNet with num_classes=K; our encoder has no classifier")
    if network != "online":
        raise ExportError(f"--head with --network {network}: the probe was trained on the online encoder's "
                          f"features; export --network online")
    file = resolve_checkpoint_file(Path(source))
    state = read_checkpoint(file)
    config = config_from_dict(state["config"], source=f"{file} (saved config)", warn_legacy=False)
    model = config.model
    check_classifier(model, fmt)
    payload = load_head(head)
    feature_dim = build_encoder_on_meta(model).feature_dim
    check_head_matches(payload, state, file, model, feature_dim)
    tensors = encoder_state_dict(state, "online")
    tensors["fc.weight"], tensors["fc.bias"] = folded_linear(payload)
    num_classes = int(payload["num_classes"])
    metadata = {"format_version": SIDECAR_VERSION, "format": fmt, "classifier": True, "encoder": model.encoder,
                "width": model.width, "small_stem": model.small_stem, "stem": stem_name(model.small_stem),
                "network": "online", "step": int(state["step"]), "config_hash": config_hash(state["config"]),
                "feature_dim": feature_dim, "checkpoint": file.name, "num_classes": num_classes,
                "class_names": payload.get("class_names", []), "head": str(head_file(head)),
                "mode": payload.get("mode"), "top1": payload.get("top1"), "top5": payload.get("top5"),
                "scored_on": payload.get("scored_on"), "tensors": len(tensors),
                "load": classifier_instructions(fmt, model.encoder, num_classes, out)}
    metadata["verified_with"] = verify_classifier(tensors, fmt, model, num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = save_export(tensors, out, metadata)
    return ClassifierReport(out, sidecar, metadata)
