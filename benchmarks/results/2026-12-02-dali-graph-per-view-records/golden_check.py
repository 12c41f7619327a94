"""Golden outputs + operator counts of the pretrain graph, to show that a refactor keeps it bit-identical.

Run from the repository root at each commit: `python golden_check.py OUT_PREFIX`, then compare the two
OUT_PREFIX.npz files array by array (np.array_equal) and the op counts in OUT_PREFIX.json."""
import sys, json, collections
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path.cwd() / "tests" / "dali_pipelines"))
from pipeline_data import write_layouts
from test_pipeline_loader import graph_ops
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.pretrain import multi_view_pipeline
from dali_pipelines.readers import ReadPlan, mask_table
from dali_pipelines.recipe import DataConfig, ViewsConfig

out = sys.argv[1]
root = Path(out).parent / "golden-data"
if not root.exists():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(16)]
    masks = [(rng.random((20, 28)) * 255).astype(np.uint8) if i % 3 else None for i in range(16)]
    write_layouts(root, images, masks, suffix=".jpg", shards=1)
dataset = resolve_dataset(str(root / "train"))
CASES = {
    "default": dict(saliency_p=0.5),
    "each_random": dict(saliency_p=0.5, jitter_clip="each", jitter_order="random", saliency_fill="noise"),
    "each_fixed": dict(saliency_p=0.5, jitter_clip="each", jitter_order="fixed", saliency_fill="other_image",
                       brightness_mode="multiplicative"),
    "blur_mix": dict(saliency_p=0.0, blur_p=(0.5, 0.0, 1.0), solarize_p=(0.3,), interpolation="cubic", hue=0.0),
    "no_small": dict(num_small=0, saliency_p=0.3, brightness=0.0),
}
arrays, counts = {}, {}
for name, kw in CASES.items():
    views = ViewsConfig(num_large=2, num_small=kw.pop("num_small", 2), large_size=24, small_size=12, **kw)
    loader = build_pretrain_loader(dataset, views, DataConfig(num_threads=2), batch_size=4, seed=3, debug=True)
    for i, b in zip(range(3), loader):
        arrays[f"{name}/{i}/large"] = b.large.numpy()
        if b.small is not None:
            arrays[f"{name}/{i}/small"] = b.small.numpy()
        arrays[f"{name}/{i}/stats"] = b.stats.numpy()
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=mask_table(dataset))
    for device, did in (("cpu", None), ("gpu", 0)):
        pipe = multi_view_pipeline(plan, views, device, True, batch_size=2, num_threads=1, device_id=did)
        ops = [kind for kind, _ in graph_ops(pipe._graph_out)]
        counts[f"{name}/{device}"] = [len(ops), dict(collections.Counter(ops).most_common())]
np.savez(out + ".npz", **arrays)
json.dump(counts, open(out + ".json", "w"), indent=1)
for k, v in counts.items():
    print(k, v[0])
