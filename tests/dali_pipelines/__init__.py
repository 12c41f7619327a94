"""Tests of `dali_pipelines`."""
