"""Training entry points launched by torchrun: SFT, DAPO, masking, rewards (no Dagster imports)."""
