"""Shared fixtures: every test gets its own WebDancer home, so nothing touches ./.webdancer."""

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "webdancer-home"
    monkeypatch.setenv("WEBDANCER_HOME", str(home))
    return home
