"""Benchmarks, judge and metrics (no Dagster imports)."""
