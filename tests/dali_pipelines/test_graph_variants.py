"""Every shape the recipe can give the graph: each variant runs one batch on the CPU (uint8 views of the right
sizes, statistics that agree with the settings) and is constructed for device 0 on the GPU (no GPU here)."""

from __future__ import annotations

import numpy as np
import pytest

from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.pretrain import STATS_FIELDS, multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig

BASE = dict(num_large=2, num_small=1, large_size=16, small_size=8, saliency_p=0.5)
VARIANTS = {
    "default": {},
    "exact jitter, random order": {"jitter_clip": "each"},
    "exact jitter, fixed order": {"jitter_clip": "each", "jitter_order": "fixed"},
    "multiplicative brightness": {"brightness_mode": "multiplicative"},
    "always flipped, always gray, always blurred": {"flip_p": 1.0, "grayscale_p": 1.0, "blur_p": (1.0,)},
    "always jittered, never gray": {"jitter_p": 1.0, "grayscale_p": 0.0},
    "gray only": {"jitter_p": 0.0, "grayscale_p": 0.5},
    "noise fill": {"saliency_fill": "noise"},
    "other image fill": {"saliency_fill": "other_image"},
    "large views only, solarize everywhere": {"num_small": 0, "solarize_p": (0.5,)},
}
COLUMN = {name: i for i, name in enumerate(STATS_FIELDS)}


def plan_of(identity_data) -> ReadPlan:
    dataset = resolve_dataset(str(identity_data.folder))
    return ReadPlan(dataset, np.arange(dataset.num_samples), masks=True)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_runs_on_the_cpu_and_is_constructed_for_the_gpu(identity_data, name):
    views = ViewsConfig(**{**BASE, **VARIANTS[name]})
    plan = plan_of(identity_data)
    gpu = multi_view_pipeline(plan, views, "gpu", True, batch_size=4, num_threads=1, device_id=0)
    assert [o.device for o in gpu._graph_out] == ["gpu"] * views.num_views + ["cpu", "cpu"]
    pipe = multi_view_pipeline(plan, views, "cpu", True, batch_size=8, num_threads=1, device_id=None, seed=3)
    pipe.build()
    outputs = pipe.run()
    for k, spec in enumerate(views.view_specs()):
        view = np.asarray(outputs[k][0])
        assert view.shape == (spec.size, spec.size, 3) and view.dtype == np.uint8
    stats = np.stack([np.asarray(t) for t in outputs[-1]])
    assert stats.shape == (8, views.num_views, len(STATS_FIELDS))
    for flag, p in (("flip", views.flip_p), ("gray", views.grayscale_p), ("jitter", views.jitter_p)):
        if p in (0.0, 1.0):
            assert (stats[..., COLUMN[flag]] == p).all(), flag
    sigma = stats[..., COLUMN["sigma"]]
    assert ((views.blur_sigma[0] <= sigma) & (sigma <= views.blur_sigma[1])).all()
