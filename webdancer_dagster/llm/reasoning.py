"""Reasoning blocks in model replies: what a reader of the reply's answer (JSON, a verdict word) must skip."""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_OPEN_THINK = re.compile(r"^.*?</think>", re.DOTALL)  # reasoning templates often eat the opening tag


def strip_reasoning(text: str) -> str:
    """The reply without reasoning blocks, which often contain draft JSON or verdict words that are not the answer."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = _OPEN_THINK.sub("", text)
    return text.strip()
