"""Benchmarks of the gateway against a naive baseline, side by side (docs/benchmarks.md)."""
