"""Helpers shared by the tests and the benchmarks (no test framework imported here)."""
