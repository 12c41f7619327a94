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


# ---------------------------------------------------------------- the non-finite guard
def test_guard_records_the_first_non_finite_step_and_its_terms():
    from relic_fast.step import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(torch.device("cpu"))
    guard.record(torch.tensor([1.0, 0.5, 0.5]), step=1)
    guard.record(torch.tensor([3e38, 3e38, 3e38]), step=1)  # finite terms whose plain sum would overflow
    guard.check()  # all finite: no error
    guard.record(torch.tensor([float("inf"), 1.0, float("inf")]), step=2)
    guard.record(torch.tensor([float("nan")] * 3), step=3)  # later bad steps do not overwrite the first
    with pytest.raises(NonFiniteLossError, match=r"at step 2: .*inf, 1\.0, inf") as err:
        guard.check()
    assert err.value.step == 2


def test_guard_check_takes_the_minimum_over_ranks():
    from relic_fast.step import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(torch.device("cpu"))
    guard.record(torch.tensor([1.0, 1.0, 1.0]), step=1)
    with pytest.raises(NonFiniteLossError, match="at step 1: on another rank"):
        guard.check(reduce_min=lambda first_step: torch.minimum(first_step, torch.tensor(1)))


class SyncCounter:
    """Counts the Tensor methods that read a value back to the host (each one a device sync on CUDA)."""

    READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))

    def _counted(self, name, original):
        def counted(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return counted


def tiny_context_and_inputs(device: str = "cpu"):
    from relic_fast.config import LossConfig, ModelConfig, OptimConfig
    from relic_fast.synthetic import standalone_context, synthetic_inputs

    model = ModelConfig(encoder="resnet18", small_stem=True, projector_hidden=32, predictor_hidden=32,
                        embedding_dim=16)
    context = standalone_context(model, LossConfig(implementation="reference"), OptimConfig(), device=device,
                                 precision="fp32", channels_last=True, compiled=False)
    views = ViewsConfig(num_large=2, num_small=1, large_size=16, small_size=8)
    return context, synthetic_inputs(views, batch_size=4, device=device, channels_last=True)


def test_steps_with_the_guard_read_nothing_back_to_the_host(monkeypatch, one_thread):
    """The hot loop (step + guard record) never reads a tensor on the host; only `check` does."""
    from relic_fast.step import NonFiniteGuard, train_step

    context, inputs = tiny_context_and_inputs()
    guard = NonFiniteGuard(context.device)
    counter = SyncCounter(monkeypatch)
    for step in range(1, 3):
        guard.record(train_step(context, inputs, lr=0.1, tau=0.99, global_batch=4), step)
    assert counter.calls == []
    guard.check()
    assert counter.calls  # the counter sees reads: `check` makes one


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_steps_with_the_guard_never_synchronize_the_gpu():
    """CUDA's own sync detector: any synchronizing call in step + guard record raises."""
    from relic_fast.step import NonFiniteGuard, train_step

    context, inputs = tiny_context_and_inputs("cuda")
    guard = NonFiniteGuard(context.device)
    guard.record(train_step(context, inputs, lr=0.1, tau=0.99, global_batch=4), 1)  # first step: lazy inits
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 5):
            guard.record(train_step(context, inputs, lr=0.1, tau=0.99, global_batch=4), step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard.check()
