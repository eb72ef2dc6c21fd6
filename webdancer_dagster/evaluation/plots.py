"""The comparison every evaluation shows: all scored (model, benchmark) partitions as a table, and one bar chart per
benchmark comparing its models on format, answering and correctness side by side. A chart never stays an empty frame
without words: no scores, a model that answered nothing and a panel of zero bars are each said in text."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# What a reader compares models on: does it keep the agent's format, does it answer, is the answer right
# (judged, and by exact match and token F1, which no judge can sway).
CHARTED = {
    "format_valid_rate": "format-valid",
    "answered_rate": "answered",
    "pass_at_1": "Pass@1",
    "exact_match": "exact match",
    "f1": "F1",
}
NO_SCORES = "no scored partitions yet"
NO_ANSWERS = "no answers"
NO_ANSWERS_NOTE = "no run kept the format or answered\n(see answered_rate and terminations in the metadata)"
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


def model_label(row: pd.Series) -> str:
    """A bar group's label: the model, marked "(no answers)" when none of its runs ended with an answer."""
    answered = row.get("answered_rate")
    silent = answered is not None and not pd.isna(answered) and answered <= 0
    return f"{row['model']}\n({NO_ANSWERS})" if silent else str(row["model"])


def panel_note(rows: pd.DataFrame) -> str | None:
    """Words for a benchmark's panel whose bars are all 0, which would otherwise draw as an empty frame."""
    if (rows.reindex(columns=list(CHARTED)).fillna(0.0) > 0).any(axis=None):
        return None
    return f"every bar is 0: {NO_ANSWERS_NOTE}"


def comparison_figure(scores: pd.DataFrame) -> Figure:
    """One panel per benchmark, grouped bars of `CHARTED` per model; with no scores, a figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    table = comparison_table(scores)
    if table.empty:
        figure, axes = plt.subplots(figsize=(5.0, 1.5), dpi=100)
        axes.axis("off")
        axes.text(0.5, 0.5, f"{NO_SCORES}: materialize a benchmark_scores partition", ha="center", va="center")
        return figure
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
        axes.set_xticks(range(len(rows)), [model_label(row) for _, row in rows.iterrows()])
        axes.set_ylim(0, 1)
        axes.set_title(benchmark, fontsize="medium")
        axes.set_ylabel("share of runs")
        note = panel_note(rows)
        if note is not None:
            axes.text(0.5, 0.55, note, transform=axes.transAxes, ha="center", va="center", fontsize="small")
    panels[0, 0].legend(loc="upper right", fontsize="small", ncols=len(CHARTED))
    figure.tight_layout()
    return figure


def comparison_chart(scores: pd.DataFrame, path: Path) -> bytes:
    """`comparison_figure` as a PNG written to `path`, bytes returned."""
    from matplotlib import pyplot as plt

    figure = comparison_figure(scores)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    data = buffer.getvalue()
    staging = path.with_suffix(".png.tmp")
    staging.write_bytes(data)
    staging.replace(path)
    return data
