"""The decode-only ceiling of the loader benchmark: DALI reading and decoding the same JPEGs, nothing else.

No augmentation pipeline can beat the rate at which its images are read and decoded, so this tiny
pipeline (`fn.readers.file` -> `fn.decoders.image`, CPU decoder or the `mixed` nvJPEG decoder on a
GPU) gives the ceiling that the full view recipe is compared with. A benchmark artefact: the
product's pipelines live in `dali_pipelines/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


def build_decode_pipeline(root: str | Path, files: Sequence[str], *, batch_size: int, num_threads: int,
                          device_id: int | None = None, seed: int = 0):
    """A built DALI pipeline that reads `files` (relative to `root`) shuffled and decodes them to RGB.

    `device_id=None` decodes on the CPU; an int uses the `mixed` decoder on that GPU.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def
    def decode_only():
        jpegs, labels = fn.readers.file(file_root=str(root), files=list(files), labels=[0] * len(files),
                                        random_shuffle=True, name="Reader")
        images = fn.decoders.image(jpegs, device="cpu" if device_id is None else "mixed",
                                   output_type=types.RGB)
        return images, labels

    pipe = decode_only(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    pipe.build()
    return pipe


def decode_step(pipe, batches: int) -> Callable[[], None]:
    """A function that decodes `batches` batches with `pipe` (the unit `time_it` times)."""

    def step() -> None:
        for _ in range(batches):
            pipe.run()  # returns once the batch's outputs are ready (GPU ones included)

    return step
