"""Tests of `relic_fast.kernels`."""
