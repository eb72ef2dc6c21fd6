"""WebDancer recipe as a Dagster project."""
