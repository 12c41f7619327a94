"""Throughput and memory benchmarks: scripts that print a table and write JSON."""
