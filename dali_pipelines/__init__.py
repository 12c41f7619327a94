"""DALI graphs for relic-fast: readers, RELICv2 multi-view augmentation, saliency blending, torch loaders.

Knows DALI and nothing of training; never imports `relic_fast`.
"""
