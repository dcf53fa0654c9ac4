"""Tiny random components in their real on-disk formats, for tests and benchmarks."""
