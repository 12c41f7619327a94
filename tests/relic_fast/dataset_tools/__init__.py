"""Tests of `relic_fast.dataset_tools`."""
