"""Benchmarks of the gateway against a naive baseline, measured side by side (docs/benchmarks.md)."""
