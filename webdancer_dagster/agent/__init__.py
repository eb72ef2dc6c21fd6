"""The WebDancer ReAct agent: prompts, parser, tools and the loop (no Dagster imports)."""
