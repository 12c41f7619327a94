"""Tests of `relic_fast`."""
