"""The GPU path's device placement, checked without a GPU: the trainer's per-step work runs on `meta`.

Why: the CUDA path has not run for weeks, and every change since was tested on the CPU only, where a
tensor made without `device=` lands on the training device by accident. On torch's `meta` device
(shapes and dtypes, no data, no kernels) the same Python runs the same ops in milliseconds, so a
tensor created on the wrong device shows up here, before it reaches a GPU:

- torch's meta kernels reject most mixes of a CPU tensor with meta tensors (elementwise ops, `cat`,
  `stack`, `where`), as CUDA does: `test_meta_alone_rejects_host_tensor_mixed_into_device_math`.
- They let through what CUDA rejects or pays a stream sync for (torch 2.14.1): a CPU tensor inside a
  `torch._foreach_*` list (LARS and the EMA are made of these), a 0-dim CPU tensor used as a scalar, a
  CPU tensor copied in with `.to(device)` (on CUDA, without pinned memory and `non_blocking`, a stream
  sync), and `torch.tensor(data, device=...)`, whose host-to-device copy (again a stream sync on CUDA)
  happens below the dispatcher, out of sight of a dispatch mode. `only_device_tensors` closes these
  gaps: while it is active every aten op must take and return tensors on the step's device only, and
  no Python data may become a device tensor. It is strict on purpose: the step as it stands creates no
  host tensor at all, so any that appears is new and worth a look.
- A `FakeTensorMode` with a fake "cuda" device (the other way to fake a GPU) has the same `_foreach_*`
  gap, and every op of the fp32 step (`torch.randperm` and `_foreach_norm` included) runs on meta, so
  it would add nothing here.

Covered, as `Trainer._train_on` runs them each step (eager fp32): `prepare_views` of a GPU-pipeline
batch (uint8 views already on the device, normalized by the trainer), `draw_offsets` (all negatives,
and `loss.num_negatives > 0`: shared offsets from `torch.randperm` on the device), `train_step` with
activation checkpointing off and on (forward, backward with the recomputation, LARS over both param
groups with and without weight decay, momentum buffers created at step 1 and reused at step 2, the EMA
update), `NonFiniteGuard.record` and `LoggingWindow.add`.

Not covered here, and why:
- autocast (bf16/fp16) and the fp16 `GradScaler`: torch has no autocast for meta, and refuses even a
  disabled one ("unsupported autocast device_type 'meta'"). The fp32 step's `autocast(enabled=False)`
  contexts do nothing on any device, so `autocast_off_allowed_on_meta` replaces exactly those with a
  null context; an enabled autocast on meta would still raise.
- torch.compile: Inductor generates no code for meta; the eager step is what runs here.
- `NonFiniteGuard.check`: it is the host read by design (`.item()`, which meta tensors cannot do), made
  only at log and checkpoint time; tests/relic_fast/test_step.py checks it on the CPU, and its
  gpu-marked test checks on CUDA that the step plus `record` never synchronizes.
- the fused Triton loss (what "auto" picks on CUDA), DDP, SyncBatchNorm and the all-gather: GPU or
  multi-process only; the reference loss runs here.
- a CPU loader's batch: `prepare_views` copies it to the device (`non_blocking`), the one intended
  host-to-device transfer of a step, so the checked batch is already on the device.

Found and fixed with this test: `dali_pipelines.batch.normalize_views` built its per-channel constants
with `torch.tensor(list, device=x.device)` on every step: on CUDA two pageable host-to-device copies,
each followed by a stream sync (`memcpy_and_sync`), in the trainer's hot loop. It now fills them on the
device (`test_only_device_tensors_catches_host_tensor[normalization_constants_from_host_lists]` keeps
the old version as a fault the check must catch).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import relic_fast.models
import relic_fast.step
from dali_pipelines.batch import ViewBatch
from relic_fast.config import LossConfig, ModelConfig, OptimConfig, ViewsConfig
from relic_fast.loop import LoggingWindow
from relic_fast.loss import LOSS_TERMS
from relic_fast.models import _target_pairs, unwrap
from relic_fast.step import NonFiniteGuard, StepContext, prepare_views, train_step
from relic_fast.synthetic import standalone_context

META = torch.device("meta")
BATCH = 4
VIEWS = ViewsConfig(num_large=2, num_small=1, large_size=32, small_size=16)
DEFAULT_WEIGHT_DECAY = OptimConfig().weight_decay
STAGES_PER_FORWARD = 4  # layer1..layer4, each one checkpoint with activation checkpointing
ONLINE_FORWARDS_PER_STEP = 2  # large views, then small views (the target runs without grad: no checkpoint)


# ---------------------------------------------------------------- the check
class HostTensorOnDevicePath(AssertionError):
    """A tensor off the step's device (or Python data copied onto it) appeared during the step.

    An AssertionError, not a RuntimeError: torch falls back on some RuntimeErrors, never on this."""


class _OpsStayOnDevice(TorchDispatchMode):
    """Every aten op, backward and optimizer included, must take and return tensors on `device` only."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._check(func, "takes", (args, kwargs))
        result = func(*args, **kwargs)
        self._check(func, "returns", result)
        return result

    def _check(self, func, verb: str, tree) -> None:
        for leaf in tree_leaves(tree):
            if isinstance(leaf, torch.Tensor) and leaf.device != self.device:
                raise HostTensorOnDevicePath(f"{func} {verb} a {leaf.device} tensor of shape {tuple(leaf.shape)} "
                                             f"in a step on {self.device}")


TENSORS_FROM_PYTHON_DATA = {"tensor": 0, "as_tensor": 0, "asarray": 0, "new_tensor": 1}
"""Functions that build a tensor from Python data (name -> position of the data argument): with a
non-CPU device, a host-to-device copy that happens below the dispatcher."""


class _NoPythonDataCopiedToDevice(TorchFunctionMode):
    """`torch.tensor(data, device=...)` and kin with Python data and a non-CPU result are refused."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        position = TENSORS_FROM_PYTHON_DATA.get(getattr(func, "__name__", ""))
        if position is not None and isinstance(result, torch.Tensor) and result.device.type != "cpu":
            data = args[position] if len(args) > position else kwargs.get("data", kwargs.get("obj"))
            if not isinstance(data, torch.Tensor):
                raise HostTensorOnDevicePath(f"torch.{func.__name__}({data!r}, device={result.device}) copies "
                                             "Python data to the device (on CUDA a stream sync)")
        return result


@contextmanager
def only_device_tensors(device: torch.device) -> Iterator[None]:
    """Raise `HostTensorOnDevicePath` at the first op that touches a tensor off `device`, or that turns
    Python data into a tensor on it (see the module docstring for what meta alone would miss)."""
    with _NoPythonDataCopiedToDevice(), _OpsStayOnDevice(device):
        yield


# ---------------------------------------------------------------- the step on meta
REAL_AUTOCAST = torch.autocast


def _autocast_or_null(device_type: str, *args, enabled: bool = True, **kwargs):
    """`torch.autocast`, except a disabled one on meta (a no-op everywhere, refused by torch on meta)."""
    if device_type == "meta" and not enabled:
        return nullcontext()
    return REAL_AUTOCAST(device_type, *args, enabled=enabled, **kwargs)


@pytest.fixture()
def autocast_off_allowed_on_meta(monkeypatch):
    """The fp32 step's `torch.autocast(..., enabled=False)` becomes a null context on meta (step.py, loss.py)."""
    monkeypatch.setattr(torch, "autocast", _autocast_or_null)


def meta_context(*, activation_checkpointing: bool = False, weight_decay: float = DEFAULT_WEIGHT_DECAY,
                 num_negatives: int = 0) -> StepContext:
    """The trainer's step context (`build_step_context` via `standalone_context`) on meta: eager fp32,
    resnet18 with 16-wide embeddings and 32-wide heads."""
    model = ModelConfig(encoder="resnet18", small_stem=True, projector_hidden=32, predictor_hidden=32,
                        embedding_dim=16, activation_checkpointing=activation_checkpointing)
    return standalone_context(model, LossConfig(implementation="reference", num_negatives=num_negatives),
                              OptimConfig(weight_decay=weight_decay), device=META, precision="fp32",
                              channels_last=True, compiled=False)


def gpu_pipeline_batch() -> ViewBatch:
    """What a GPU DALI pipeline hands over: uint8 NHWC views on the device, seen as NCHW, not normalized."""

    def views(count: int, size: int) -> torch.Tensor:
        return torch.empty(count * BATCH, size, size, 3, dtype=torch.uint8, device=META).permute(0, 3, 1, 2)

    return ViewBatch(large=views(VIEWS.num_large, VIEWS.large_size), small=views(VIEWS.num_small, VIEWS.small_size),
                     labels=torch.full((BATCH,), -1, dtype=torch.int64, device=META), normalized=False)


def run_trainer_steps(context: StepContext, steps: int = 2) -> tuple[list[torch.Tensor], NonFiniteGuard]:
    """`steps` steps as `Trainer._train_on` runs them (prepare_views, train_step, guard record, window add);
    guard and window are made first, as the trainer makes them at start-up. Returns each step's terms."""
    guard, window = NonFiniteGuard(context.device), LoggingWindow(context.device)
    batch = gpu_pipeline_batch()
    all_terms = []
    for step in range(1, steps + 1):
        inputs = prepare_views(batch, VIEWS, context.device, channels_last=True)
        terms = train_step(context, inputs, lr=0.1, tau=0.99, global_batch=BATCH)
        guard.record(terms, step)
        window.add(terms, 0.0, lr=0.1, tau=0.99)
        all_terms.append(terms)
    return all_terms, guard


STEP_VARIANTS = [  # every pair of settings appears once: 4 runs instead of 8
    pytest.param(False, DEFAULT_WEIGHT_DECAY, 0, id="plain-weight_decay-all_negatives"),
    pytest.param(False, 0.0, 2, id="plain-no_weight_decay-sampled_negatives"),
    pytest.param(True, DEFAULT_WEIGHT_DECAY, 2, id="checkpointed-weight_decay-sampled_negatives"),
    pytest.param(True, 0.0, 0, id="checkpointed-no_weight_decay-all_negatives"),
]
"""(activation_checkpointing, weight_decay, num_negatives) of the step runs."""


@pytest.mark.parametrize(("activation_checkpointing", "weight_decay", "num_negatives"), STEP_VARIANTS)
def test_trainer_steps_on_meta_touch_only_device_tensors(activation_checkpointing, weight_decay, num_negatives,
                                                         autocast_off_allowed_on_meta, monkeypatch):
    """Two fp32 steps on meta (prepare_views, offsets, forward, backward, LARS, EMA, guard record, window add)
    create and use no tensor off the device; spies confirm the paths under test really ran."""
    context = meta_context(activation_checkpointing=activation_checkpointing, weight_decay=weight_decay,
                           num_negatives=num_negatives)
    checkpointed_stages, drawn_offsets = [], []

    def counted_checkpoint_stage(stage, x, real=relic_fast.models.checkpoint_stage):
        checkpointed_stages.append(stage)
        return real(stage, x)

    def recorded_offsets(*args, real=relic_fast.step.draw_negative_offsets, **kwargs):
        drawn_offsets.append(real(*args, **kwargs))
        return drawn_offsets[-1]

    monkeypatch.setattr(relic_fast.models, "checkpoint_stage", counted_checkpoint_stage)
    monkeypatch.setattr(relic_fast.step, "draw_negative_offsets", recorded_offsets)

    with only_device_tensors(META):
        all_terms, guard = run_trainer_steps(context, steps=2)

    assert all(terms.device == META and terms.shape == (len(LOSS_TERMS),) for terms in all_terms)
    assert guard.first_step.device == META and guard.first_terms.device == META
    expected_checkpoints = 2 * STAGES_PER_FORWARD * ONLINE_FORWARDS_PER_STEP if activation_checkpointing else 0
    assert len(checkpointed_stages) == expected_checkpoints
    assert len(drawn_offsets) == (2 if num_negatives else 0)
    assert all(offsets.device == META and offsets.shape == (num_negatives,) for offsets in drawn_offsets)
    groups = context.optimizer.param_groups
    assert [group["lars_exclude"] for group in groups] == [False, True]  # adapted weights, then biases/norms
    assert groups[0]["weight_decay"] == weight_decay
    for group in groups:  # both groups stepped: every parameter has its momentum buffer, on the device
        assert group["params"]
        for param in group["params"]:
            assert context.optimizer.state[param]["momentum_buffer"].device == META
    networks = (context.online_module, context.target)
    assert all(tensor.device == META for net in networks for tensor in [*net.parameters(), *net.buffers()])


# ---------------------------------------------------------------- the check has teeth
def _guard_terms_on_host(monkeypatch, context: StepContext) -> None:
    """NonFiniteGuard keeps its first terms in `torch.zeros(len(LOSS_TERMS))`: `device=` forgotten."""
    real_init = NonFiniteGuard.__init__

    def init_with_host_terms(self, device):
        real_init(self, device)
        self.first_terms = torch.zeros(len(LOSS_TERMS))

    monkeypatch.setattr(NonFiniteGuard, "__init__", init_with_host_terms)


def _lars_momentum_buffers_on_host(monkeypatch, context: StepContext) -> None:
    """LARS momentum buffers made as `torch.zeros(p.shape)` (host) instead of `zeros_like(p)`: they only ever
    meet device tensors in `_foreach_*` lists, which meta does not check."""
    for group in context.optimizer.param_groups:
        for param in group["params"]:
            context.optimizer.state[param]["momentum_buffer"] = torch.zeros(param.shape)


def _ema_with_tau_as_host_tensor(monkeypatch, context: StepContext) -> None:
    """An EMA that turns tau into a tensor (as one might to spare torch.compile a recompile) without `device=`:
    a 0-dim host tensor in `_foreach_*` ops, which meta lets through."""

    def ema_update_with_host_tau(target, online, tau):
        tau = torch.tensor(tau)
        target_params, online_params = _target_pairs(unwrap(target), unwrap(online))
        with torch.no_grad():
            torch._foreach_mul_(target_params, tau)
            torch._foreach_add_(target_params, torch._foreach_mul(online_params, 1.0 - tau))

    monkeypatch.setattr(relic_fast.step, "ema_update", ema_update_with_host_tau)


def _offsets_drawn_on_host(monkeypatch, context: StepContext) -> None:
    """Negative offsets drawn with `torch.randperm` on the host: the loss moves them with `.to(device)`, so
    nothing fails anywhere, but on CUDA that copy is a stream sync every step."""
    real_draw = relic_fast.step.draw_negative_offsets
    monkeypatch.setattr(relic_fast.step, "draw_negative_offsets",
                        lambda n_cols, num_negatives, device: real_draw(n_cols, num_negatives))


def _normalization_constants_from_host_lists(monkeypatch, context: StepContext) -> None:
    """`normalize_views` as it was before this test: `torch.tensor(list, device=x.device)`, a syncing
    host-to-device copy on CUDA that happens below the dispatcher."""

    def normalize_views_from_host_lists(x, mean, std, dtype=torch.float32):
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(mean, std)], device=x.device).view(1, 3, 1, 1)
        return (x.to(torch.float32) * scale - shift).to(dtype)

    monkeypatch.setattr(relic_fast.step, "normalize_views", normalize_views_from_host_lists)


HOST_TENSOR_FAULTS: dict[str, Callable[..., None]] = {
    "guard_terms_on_host": _guard_terms_on_host,
    "lars_momentum_buffers_on_host": _lars_momentum_buffers_on_host,
    "ema_with_tau_as_host_tensor": _ema_with_tau_as_host_tensor,
    "offsets_drawn_on_host": _offsets_drawn_on_host,
    "normalization_constants_from_host_lists": _normalization_constants_from_host_lists,
}


@pytest.mark.parametrize("fault", list(HOST_TENSOR_FAULTS))
def test_only_device_tensors_catches_host_tensor(fault, autocast_off_allowed_on_meta, monkeypatch):
    """Each fault puts one host tensor (or Python data copy) into the step the test above runs: the check raises."""
    context = meta_context(num_negatives=2)
    HOST_TENSOR_FAULTS[fault](monkeypatch, context)
    with pytest.raises(HostTensorOnDevicePath, match="cpu tensor|copies Python data"):
        with only_device_tensors(META):
            run_trainer_steps(context, steps=1)


def test_meta_alone_rejects_host_tensor_mixed_into_device_math(autocast_off_allowed_on_meta, monkeypatch):
    """Without `only_device_tensors`, meta itself rejects a host tensor that meets device tensors in an
    elementwise op (here the guard's `torch.where`), as CUDA would."""
    context = meta_context()
    _guard_terms_on_host(monkeypatch, context)
    with pytest.raises(RuntimeError, match="device"):
        run_trainer_steps(context, steps=1)
