"""Tests of `relic_fast.experiments`."""
