"""Tests of `relic_fast.bench`."""
