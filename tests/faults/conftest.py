"""Fault tests reuse the asset tests' helpers (`corpus_helpers`, `scripted_roles`) and their `small_web` fixture, and
the training tests' tiny Llama and chats."""

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS / "assets", TESTS / "training"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _conftest_of(folder: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_tests_conftest", TESTS / folder / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


small_web = _conftest_of("assets").small_web
_training = _conftest_of("training")
tiny_model, short_chats, short_chats_file = _training.tiny_model, _training.short_chats, _training.short_chats_file
