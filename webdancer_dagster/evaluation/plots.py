"""The comparison every evaluation shows: all scored (model, benchmark) partitions as a table, and one bar chart per
benchmark comparing its models on format, answering and correctness side by side."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

# What a reader compares models on: does it keep the agent's format, does it answer, is the answer right
# (judged, and by exact match and token F1, which no judge can sway).
CHARTED = {
    "format_valid_rate": "format-valid",
    "answered_rate": "answered",
    "pass_at_1": "Pass@1",
    "exact_match": "exact match",
    "f1": "F1",
}
TABLE_COLUMNS = [
    "model", "benchmark", "questions", "format_valid_rate", "answered_rate", "pass_at_1", "pass_at_k", "cons_at_k",
    "exact_match", "f1", "mean_actions", "format_error_rate", "mean_tokens", "judge",
]  # fmt: skip


def comparison_table(scores: pd.DataFrame) -> pd.DataFrame:
    """All scored partitions side by side, rounded for reading; columns that rows scored by older code lack are
    empty rather than an error."""
    table = scores.reindex(columns=TABLE_COLUMNS).sort_values(["benchmark", "model"]).reset_index(drop=True)
    numeric = table.select_dtypes("number").columns
    table[numeric] = table[numeric].round(3)
    return table


def comparison_chart(scores: pd.DataFrame, path: Path) -> bytes:
    """One panel per benchmark, grouped bars of `CHARTED` per model; written to `path`, bytes returned."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    table = comparison_table(scores)
    benchmarks = list(dict.fromkeys(table["benchmark"]))
    widest = max(table["benchmark"].value_counts().max(), 1)
    figure, panels = plt.subplots(
        len(benchmarks), 1, figsize=(max(5.0, 1.8 * widest + 2), 2.8 * len(benchmarks)), dpi=100, squeeze=False
    )
    width = 0.8 / len(CHARTED)
    for axes, benchmark in zip(panels[:, 0], benchmarks, strict=True):
        rows = table[table["benchmark"] == benchmark]
        for offset, (column, name) in enumerate(CHARTED.items()):
            positions = [index + (offset - (len(CHARTED) - 1) / 2) * width for index in range(len(rows))]
            axes.bar(positions, rows[column].fillna(0.0), width, label=name)
        axes.set_xticks(range(len(rows)), list(rows["model"]))
        axes.set_ylim(0, 1)
        axes.set_title(benchmark, fontsize="medium")
        axes.set_ylabel("share of runs")
    panels[0, 0].legend(loc="upper right", fontsize="small", ncols=len(CHARTED))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    data = buffer.getvalue()
    staging = path.with_suffix(".png.tmp")
    staging.write_bytes(data)
    staging.replace(path)
    return data
