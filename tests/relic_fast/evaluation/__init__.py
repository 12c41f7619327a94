"""Tests of `relic_fast.evaluation`."""
