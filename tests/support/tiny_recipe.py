"""The tiny CPU pretraining recipe the trainer-side tests share (imported by conftest and tests)."""

from tests.support import REPO

DEMO_RECIPE = REPO / "configs" / "demo_cpu.toml"

TINY_OVERRIDES = [
    "model.encoder=resnet18", "model.small_stem=true", "model.projector_hidden=64", "model.embedding_dim=32",
    "model.predictor_hidden=64", "views.num_large=2", "views.num_small=1", "views.large_size=32",
    "views.small_size=16", "views.saliency_p=0.5", "data.device=cpu", "data.num_threads=1",
    "train.batch_size=8", "train.epochs=2", "train.device=cpu",
    "train.compile=off", "train.precision=fp32", "train.log_every=1", "train.checkpoint_every=2",
    "loss.implementation=reference", "optim.warmup_epochs=0.5",
]
"""Overrides on top of configs/demo_cpu.toml: resnet18 small-stem, 2x32 px + 1x16 px views, batch 8."""

BROKEN = {"truncated.jpg": None, "notes.jpg": b"this is text, not an image\n"}
"""The unreadable files of the `messy_tree` fixture: a truncated JPEG (None: cut from a good one) and text."""
