"""relic-fast: RELICv2 self-supervised pretraining of ResNets fed by NVIDIA DALI multi-view pipelines."""

__version__ = "0.1.0"
