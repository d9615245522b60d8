"""Benchmarks: hwattn against what users would pick instead, side by side in one run."""
