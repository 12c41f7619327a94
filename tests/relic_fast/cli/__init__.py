"""Tests of `relic_fast.cli`."""
