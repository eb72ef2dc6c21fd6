"""Reasoning blocks are cut from a reply before its answer is read."""

from webdancer_dagster.llm.reasoning import strip_reasoning


def test_strip_reasoning():
    assert strip_reasoning("<think>a</think> b <think>c</think>d") == "b d"
    assert strip_reasoning("half</think>rest") == "rest"
