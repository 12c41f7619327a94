"""The linear-evaluation pipelines: resize + centre crop (val) and random-resized-crop + flip (train).

Val (`train=False`): resize the short side to `size * 256 / 224` (antialiased bilinear, as
torchvision's eval transform), centre crop `size`, normalize. Train: decode-and-crop in one step
(`fn.decoders.image_random_crop`: area U(0.08, 1), aspect [3/4, 4/3], torchvision-style retries),
resize to `size`, random flip, normalize. Both emit float32 HWC (the loader permutes to
channels-last NCHW); the device is a parameter as in the pretraining pipeline.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.readers import ReadPlan, read_encoded
from dali_pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, pixel_scale

EVAL_OUTPUTS = ["images", "labels"]


@pipeline_def
def eval_pipeline(plan: ReadPlan, size: int, train: bool, device: str = "cpu", mean=IMAGENET_MEAN,
                  std=IMAGENET_STD):
    """Linear-eval pipeline over `plan`; outputs (images float32 HWC normalized, labels int32 (1,))."""
    encoded = read_encoded(plan)
    decoder = "mixed" if device == "gpu" else "cpu"
    normalize = dict(dtype=types.FLOAT, output_layout="HWC", mean=pixel_scale(mean).tolist(),
                     std=pixel_scale(std).tolist())
    if train:
        images = fn.decoders.image_random_crop(encoded.images, device=decoder, output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[0.75, 4.0 / 3.0],
                                               num_attempts=10)
        images = fn.resize(images, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(probability=0.5), **normalize)
    else:
        images = fn.decoders.image(encoded.images, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=size * 256 / 224, interp_type=types.INTERP_LINEAR,
                           antialias=True)
        images = fn.crop_mirror_normalize(images, crop=[size, size], crop_pos_x=0.5, crop_pos_y=0.5, **normalize)
    return images, encoded.labels
