"""Dagster resources: thin typed wrappers around the domain modules."""
