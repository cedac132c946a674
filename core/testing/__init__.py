"""Test utilities that speak real protocols (used by the test suite and benchmarks)."""
