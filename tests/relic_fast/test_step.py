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
def loss_terms(total: float, parts: float) -> torch.Tensor:
    """Stacked loss terms as a step returns them: `total`, then `parts` for every other term of `LossTerms`."""
    from relic_fast.loss import LOSS_TERMS

    return torch.tensor([total] + [parts] * (len(LOSS_TERMS) - 1))


def test_guard_records_the_first_non_finite_step_and_its_terms():
    from relic_fast.step import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(torch.device("cpu"))
    guard.record(loss_terms(1.0, 0.5), step=1)
    guard.record(loss_terms(3e38, 3e38), step=1)  # finite terms whose plain sum would overflow
    guard.check()  # all finite: no error
    guard.record(loss_terms(float("inf"), 1.0), step=2)
    guard.record(loss_terms(float("nan"), float("nan")), step=3)  # later bad steps do not overwrite the first
    with pytest.raises(NonFiniteLossError, match=r"at step 2: \(total, contrastive, .*\) = \[inf, 1\.0, ") as err:
        guard.check()
    assert err.value.step == 2


def test_guard_check_takes_the_minimum_over_ranks():
    from relic_fast.step import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(torch.device("cpu"))
    guard.record(loss_terms(1.0, 1.0), step=1)
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


# ---------------------------------------------------------------- bf16 at the smallest view sizes
def _bf16_run(steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Loss terms and final online weights of `steps` bf16 steps at the shapes of the ImageNet recipe scaled
    down to this machine (resnet18, 256-wide heads, 4 x 32 px + 2 x 16 px views, batch 16)."""
    from relic_fast.config import LossConfig, ModelConfig, OptimConfig
    from relic_fast.step import train_step
    from relic_fast.synthetic import standalone_context, synthetic_inputs

    model = ModelConfig(encoder="resnet18", projector_hidden=256, predictor_hidden=256, embedding_dim=64)
    views = ViewsConfig(num_large=4, num_small=2, large_size=32, small_size=16)
    context = standalone_context(model, LossConfig(implementation="reference"), OptimConfig(), device="cpu",
                                 precision="bf16", channels_last=True, compiled=False, lr=0.5)
    terms = []
    for step in range(steps):
        inputs = synthetic_inputs(views, 16, "cpu", channels_last=True, seed=step)
        terms.append(train_step(context, inputs, lr=0.5, tau=0.99, global_batch=16))
        # leave freed memory full of NaN, so that a kernel that reads memory it never wrote shows it
        del_after = torch.full((1 << 22,), float("nan"), dtype=torch.bfloat16)
        del del_after
    return terms, [p.detach().clone() for p in context.online_module.parameters()]


def test_bf16_steps_with_small_views_are_finite_and_repeatable():
    """bf16 steps whose 16 px views reach a 1x1 map in the last stage: every loss finite, two runs bit-identical
    (oneDNN's bf16 backward of a strided conv on a 1x1 map once made such runs stop at random)."""
    first_terms, first_weights = _bf16_run(steps=6)
    assert all(torch.isfinite(t).all() for t in first_terms)
    assert all(torch.isfinite(w).all() for w in first_weights)
    again_terms, again_weights = _bf16_run(steps=6)
    assert all(torch.equal(a, b) for a, b in zip(first_terms, again_terms))
    assert all(torch.equal(a, b) for a, b in zip(first_weights, again_weights))
