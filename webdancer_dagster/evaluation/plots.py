"""The comparison every evaluation shows: all scored (model, benchmark) partitions as a table and a bar chart."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

COMPARED = ["pass_at_1", "pass_at_k", "cons_at_k"]


def comparison_table(scores: pd.DataFrame) -> pd.DataFrame:
    """All scored partitions side by side, rounded for reading."""
    columns = ["model", "benchmark", "questions", *COMPARED, "mean_actions", "format_error_rate", "mean_tokens"]
    return scores[columns].sort_values(["benchmark", "model"]).round(3).reset_index(drop=True)


def comparison_chart(scores: pd.DataFrame, path: Path) -> bytes:
    """Grouped bars of Pass@1 / Pass@k / Cons@k per (model, benchmark); written to `path`, bytes returned."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    table = comparison_table(scores)
    labels = [f"{row.model}\n{row.benchmark}" for row in table.itertuples()]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.6 * len(labels) + 2), 3.2), dpi=100)
    width = 0.8 / len(COMPARED)
    for offset, (column, name) in enumerate(zip(COMPARED, ["Pass@1", "Pass@k", "Cons@k"], strict=True)):
        positions = [index + (offset - 1) * width for index in range(len(labels))]
        axes.bar(positions, table[column], width, label=name)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylim(0, 1)
    axes.set_ylabel("share of questions")
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    data = buffer.getvalue()
    staging = path.with_suffix(".png.tmp")
    staging.write_bytes(data)
    staging.replace(path)
    return data
