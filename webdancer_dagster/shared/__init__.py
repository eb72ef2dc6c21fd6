"""What every stage uses and no stage owns: answers, hashing, the QA pair record, the judge (no Dagster imports)."""
