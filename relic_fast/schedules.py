"""Learning-rate and EMA schedules as pure functions of the optimizer step.

Pure functions (no state, no optimizer) so the trainer, the linear evaluation, the supervised baseline,
tests and plots all read the same numbers: `learning_rate` (linear warm-up from 0, then cosine to 0; the
linear probe's schedule is the same without warm-up), `ema_tau` (target decay rising from tau_base to 1
on a cosine), and `scaled_lr` (the linear scaling rule base_lr * batch / 256).
"""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Peak learning rate for `global_batch` images per step: base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Learning rate at `step`: linear from 0 to `peak_lr` over warm-up, then cosine down to 0.

    Step `warmup_steps` is at the peak, step `total_steps` (and after) at 0.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_tau(step: int, *, total_steps: int, tau_base: float) -> float:
    """Target EMA decay at `step`: 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2, clamped at K."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * progress) + 1.0) / 2.0
