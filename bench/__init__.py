"""Benchmarks against the limits (``make bench``); see docs/benchmarks.md."""
