"""Benchmarks of kobart-flax against the original PyTorch pipeline; see bench/README.md."""
