"""The comparison chart is never an empty frame without words: no scores, a model that answered nothing and a panel
of zero bars each say so in text."""

import pandas as pd
from matplotlib import pyplot as plt

from webdancer_dagster.evaluation.plots import NO_SCORES, comparison_chart, comparison_figure


def _texts(figure) -> str:
    """Every piece of text the figure draws: free text, titles and tick labels."""
    pieces = [text.get_text() for text in figure.texts]
    for axes in figure.axes:
        pieces += [text.get_text() for text in axes.texts] + [axes.get_title()]
        pieces += [label.get_text() for label in axes.get_xticklabels()]
    plt.close(figure)
    return "\n".join(pieces)


def _row(model: str, benchmark: str, answered: float, **rates: float) -> dict:
    zero = {"format_valid_rate": 0.0, "pass_at_1": 0.0, "exact_match": 0.0, "f1": 0.0}
    return {"model": model, "benchmark": benchmark, "answered_rate": answered, **zero, **rates}


def test_no_scores_draw_a_chart_that_says_so(tmp_path):
    texts = _texts(comparison_figure(pd.DataFrame()))
    assert NO_SCORES in texts

    png = comparison_chart(pd.DataFrame(), tmp_path / "scores.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "scores.png").read_bytes() == png


def test_a_panel_of_zero_bars_and_a_silent_model_are_named():
    scores = pd.DataFrame(
        [
            _row("base", "musique", 0.0),
            _row("sft", "musique", 0.0),
            _row("base", "frames", 0.0, format_valid_rate=0.4),
            _row("sft", "frames", 0.6, format_valid_rate=0.9, pass_at_1=0.3),
        ]
    )
    figure = comparison_figure(scores)
    panels = {axes.get_title(): axes for axes in figure.axes}

    musique = "\n".join(text.get_text() for text in panels["musique"].texts)
    frames = "\n".join(text.get_text() for text in panels["frames"].texts)
    labels = [label.get_text() for label in panels["frames"].get_xticklabels()]
    plt.close(figure)

    assert "every bar is 0: no run kept the format or answered" in musique
    assert frames == "", "a panel with bars needs no note"
    assert labels == ["base\n(no answers)", "sft"]
