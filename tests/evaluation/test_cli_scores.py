"""`webdancer scores` and `webdancer eval` from a terminal."""

import pandas as pd
from typer.testing import CliRunner

from webdancer_dagster.cli import app
from webdancer_dagster.warehouse import WarehouseStore


def test_scores_prints_every_scored_partition(isolated_home):
    row = {"model": "base", "benchmark": "musique", "questions": 3, "pass_at_1": 2 / 3, "pass_at_k": 1.0,
           "cons_at_k": 1.0, "mean_actions": 2.5, "format_error_rate": 0.0, "mean_tokens": 120.0}  # fmt: skip
    WarehouseStore(isolated_home).replace_table(
        "scores", pd.DataFrame([row, {**row, "model": "sft", "pass_at_1": 1.0}])
    )
    result = CliRunner().invoke(app, ["scores", "--home", str(isolated_home)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Pass@1" in result.output and "Cons@k" in result.output
    lines = [line for line in result.output.splitlines() if "musique" in line]
    assert len(lines) == 2 and "0.667" in lines[0] and "sft" in lines[1]


def test_scores_without_any_evaluation_says_so(isolated_home):
    result = CliRunner().invoke(app, ["scores", "--home", str(isolated_home)])
    assert result.exit_code == 1 and "nothing scored yet" in result.output


def test_eval_rejects_an_unknown_partition(isolated_home):
    result = CliRunner().invoke(app, ["eval", "--model", "nope", "--home", str(isolated_home)])
    assert result.exit_code == 2 and "no partition nope|musique" in result.output
