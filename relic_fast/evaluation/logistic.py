"""The logistic probe: standardized cached features, multinomial logistic regression fitted to convergence.

The same code for every encoder, so that no encoder wins by the probe's optimiser settings:
- features are standardized with the train split's mean and standard deviation (a random encoder's
  features are tiny and badly scaled; a pretrained one's are not);
- the weights minimise mean cross-entropy + `l2` / 2 * ||W||^2 (bias not penalized), full batch, with
  L-BFGS and a strong-Wolfe line search until no gradient entry exceeds `tolerance` (1e-4, as
  scikit-learn's lbfgs) or `MAX_ITERATIONS` (a convex problem:
  the optimum does not depend on data order or learning rate);
- `l2` is chosen from a grid by accuracy on a stratified held-out part of the train split, then the
  probe is refit on the whole train split (SimCLR's and BYOL's protocol on small datasets).
The result is a `LinearProbe` whose BatchNorm holds the standardization: still one linear map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from relic_fast.evaluation.linear import LinearProbe

MAX_ITERATIONS = 300
"""L-BFGS iterations per fit (the tolerance usually stops it earlier)."""

EPS = 1e-5
"""Added to the variance before standardizing (a constant feature stays finite)."""


def standardized_probe(features: torch.Tensor, num_classes: int) -> LinearProbe:
    """A zero `LinearProbe` whose BatchNorm standardizes by `features`' mean and (population) variance."""
    probe = LinearProbe(features.shape[1], num_classes, "batchnorm").to(features.device)
    probe.norm.running_mean.copy_(features.mean(0))
    probe.norm.running_var.copy_(features.var(0, unbiased=False))
    probe.norm.eps = EPS
    return probe.eval()


def fit_lbfgs(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor, *, l2: float,
              tolerance: float = 1e-4, max_iterations: int = MAX_ITERATIONS) -> LinearProbe:
    """Minimise mean cross-entropy + l2 / 2 * ||W||^2 over `probe.linear` (from its current weights)."""
    with torch.no_grad():
        inputs = probe.norm(features)  # eval mode: the fixed standardization
    linear = probe.linear
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=tolerance, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(inputs), labels) + 0.5 * l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) index tensors: `fraction` of each class held out (at least one sample of a class of two+)."""
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for label in labels.unique().tolist():
        rows = (labels == label).nonzero().flatten().cpu()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        count = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        held.append(rows[:count])
        fit.append(rows[count:])
    return torch.cat(fit).to(labels.device), torch.cat(held).to(labels.device)


def accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of `probe` on `features`."""
    with torch.no_grad():
        return 100.0 * (probe(features).argmax(1) == labels).float().mean().item()


def grid_fits(l2_grid: tuple[float, ...]) -> int:
    """How many L-BFGS fits `fit_logistic_on_features` makes: one per penalty on the holdout (when there is a
    choice), then the refit on the whole train split."""
    return (len(l2_grid) if len(l2_grid) > 1 else 0) + 1


def fit_logistic_on_features(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                             l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1), holdout: float = 0.2,
                             seed: int = 0, device: torch.device | str = "cpu", resume: dict | None = None,
                             on_fit: Callable[[Callable[[], dict]], None] | None = None) -> tuple[LinearProbe, dict]:
    """The logistic probe on cached train features; returns it and {"l2", "holdout_top1": {l2: %}}.

    With one value in `l2_grid` no holdout is made. Ties in held-out accuracy go to the larger l2.
    `on_fit(state)` is called after each holdout fit (a fit runs to its end: a stop waits for it);
    `resume` (such a `state()`) skips the fits done, warm-starting from the saved weights.
    """
    features = features.to(device).float()
    labels = labels.to(device).long()
    scores: dict[float, float] = {float(k): v for k, v in (resume or {}).get("scores", {}).items()}
    if len(l2_grid) > 1:
        fit_rows, held_rows = stratified_holdout(labels, holdout, seed)
        probe = standardized_probe(features[fit_rows], num_classes)
        if resume is not None:
            probe.linear.load_state_dict(resume["linear"])
        for l2 in sorted(l2_grid, reverse=True)[len(scores):]:  # strongest penalty first: each warm-starts the next
            fit_lbfgs(probe, features[fit_rows], labels[fit_rows], l2=l2)
            scores[l2] = accuracy(probe, features[held_rows], labels[held_rows])
            if on_fit is not None:
                on_fit(lambda: {"scores": dict(scores), "linear": probe.linear.state_dict()})
    best = max(sorted(l2_grid, reverse=True), key=lambda l2: scores.get(l2, 0.0))
    probe = fit_lbfgs(standardized_probe(features, num_classes), features, labels, l2=best)
    return probe, {"l2": best, "holdout_top1": scores}
