"""prepare_views: loader batches of every output dtype reach the step as normalized float32 channels-last views."""

import pytest
import torch

from dali_pipelines.batch import ViewBatch
from relic_fast.config import ViewsConfig
from relic_fast.step import prepare_views

VIEWS = ViewsConfig(num_large=2, num_small=1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32])
def test_every_loader_dtype_becomes_float32_channels_last(dtype):
    pixels = torch.full((4, 8, 8, 3), 128, dtype=torch.uint8).permute(0, 3, 1, 2)  # NHWC storage
    normalized = dtype != torch.uint8
    large = pixels if not normalized else ((pixels.float() / 255 - 0.5) / 0.25).to(dtype)
    batch = ViewBatch(large=large, small=large[:2], labels=torch.zeros(2, dtype=torch.int64), normalized=normalized)
    inputs = prepare_views(batch, VIEWS, torch.device("cpu"), channels_last=True)
    for views in (inputs.large, inputs.small):
        assert views.dtype == torch.float32
        assert views.is_contiguous(memory_format=torch.channels_last)
    if not normalized:  # uint8: (x / 255 - mean) / std per channel
        expected = (128 / 255 - torch.tensor(VIEWS.mean)) / torch.tensor(VIEWS.std)
        torch.testing.assert_close(inputs.large[0, :, 0, 0], expected)
    assert (inputs.num_large, inputs.num_small) == (2, 1)
