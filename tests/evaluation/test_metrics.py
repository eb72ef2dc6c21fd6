"""Pass@1 / Pass@k / Cons@k and the behaviour scores on hand-made run tables with known answers."""

import pandas as pd
import pytest

from webdancer_dagster.evaluation.metrics import cons_at_k, pass_at_1, pass_at_k, score_runs, token_f1


def runs_table(outcomes: dict[str, list[bool]], **columns) -> pd.DataFrame:
    rows = [
        {"question_id": qid, "run": run, "correct": correct}
        for qid, results in outcomes.items()
        for run, correct in enumerate(results)
    ]
    frame = pd.DataFrame(rows)
    for name, values in columns.items():
        frame[name] = values
    return frame


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ({"q": [True, False, True]}, (2 / 3, 1.0, 1.0)),
        ({"q": [False, False, True]}, (1 / 3, 1.0, 0.0)),
        ({"q": [False, False, False]}, (0.0, 0.0, 0.0)),
        ({"q": [True, True, True]}, (1.0, 1.0, 1.0)),
        ({"a": [True, True, True], "b": [True, False, False], "c": [False, False, False]}, (4 / 9, 2 / 3, 1 / 3)),
        ({"a": [True, False, True], "b": [False, True, True]}, (2 / 3, 1.0, 1.0)),
    ],
)
def test_pass_and_cons_at_3(outcomes, expected):
    runs = runs_table(outcomes)
    assert (pass_at_1(runs), pass_at_k(runs), cons_at_k(runs)) == pytest.approx(expected)


def test_cons_needs_a_majority_of_k_runs():
    runs = runs_table({"a": [True, True, False, False, False], "b": [True, True, True, False, False]})
    assert pass_at_1(runs, 5) == pytest.approx(0.5)
    assert cons_at_k(runs, 5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        (runs_table({"a": [True, True, True], "b": [True, False]}), "other than 3 runs, e.g. 'b' with 2"),
        (pd.DataFrame({"question_id": ["a", "a"], "run": [0, 0], "correct": [True, True]}), "duplicate run"),
        (pd.DataFrame({"question_id": [], "run": [], "correct": []}), "no runs"),
        (pd.DataFrame({"question_id": ["a"], "run": [0]}), "lacks columns"),
    ],
)
def test_bad_run_tables_raise(runs, message):
    with pytest.raises(ValueError, match=message):
        pass_at_1(runs)


def test_score_runs_behaviour_columns():
    runs = runs_table(
        {"a": [True, False, True], "b": [False, False, False]},
        searches=[1, 2, 0, 3, 0, 0],
        visits=[1, 0, 0, 1, 0, 0],
        format_errors=[0, 1, 0, 0, 2, 0],
        format_valid=[True, False, True, False, False, False],
        answered=[True, True, True, False, False, False],
        termination=["answer", "answer", "answer", "max_llm_calls", "format_error", "no_answer"],
        tokens=[10, 20, 30, 40, 50, 60],
        judge_flag=["", "", "", "unparsed", "", ""],
        em=[True, False, False, False, False, False],
        f1=[1.0, 0.0, 0.5, 0.0, 0.0, 0.5],
    )
    scores = score_runs(runs)
    assert scores.questions == 2 and scores.runs_per_question == 3
    assert (scores.pass_at_1, scores.pass_at_k, scores.cons_at_k) == pytest.approx((1 / 3, 0.5, 0.5))
    assert scores.mean_actions == pytest.approx(8 / 6)
    assert (scores.mean_searches, scores.mean_visits) == pytest.approx((1.0, 2 / 6))
    assert scores.format_error_rate == pytest.approx(2 / 6)
    assert (scores.format_valid_rate, scores.answered_rate) == pytest.approx((2 / 6, 3 / 6))
    assert scores.mean_tokens == pytest.approx(35.0)
    assert scores.judge_flagged == 1
    assert (scores.exact_match, scores.f1) == pytest.approx((1 / 6, 2 / 6))
    assert scores.terminations == {"answer": 3, "format_error": 1, "max_llm_calls": 1, "no_answer": 1}
    row = scores.as_row()
    assert row["termination_answer"] == 3 and row["termination_context_limit_forced_answer"] == 0
    assert "terminations" not in row


@pytest.mark.parametrize(
    ("predicted", "golds", "expected"),
    [
        ("G. Stanley Hall", ["G. Stanley Hall"], 1.0),
        ("Stanley Hall", ["G. Stanley Hall"], 0.8),
        ("Wundt", ["G. Stanley Hall", "Stanley Hall"], 0.0),
        ("the psychologist Stanley Hall", ["Stanley Hall"], 0.8),
        ("", ["x"], 0.0),
    ],
)
def test_token_f1(predicted, golds, expected):
    assert token_f1(predicted, golds) == pytest.approx(expected)
