"""Dataset tools behind `relic-fast index`, `masks` and `pack`: validate and index a dataset, compute
unsupervised saliency masks, and pack images (and masks) into WebDataset shards."""
