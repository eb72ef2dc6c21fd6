"""QA synthesis, rejection sampling and the filtering funnel (no Dagster imports)."""
