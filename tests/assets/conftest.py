"""Fixtures shared by the asset tests: `small_web`, a tiny local copy of every site the corpus stage crawls."""

import json

import pytest

WIKI = [
    {"title": "Teutberga", "text": "Teutberga was a queen of Lotharingia, wife of Lothair II."},
    {"title": "Lothair II", "text": "Lothair II was king of Lotharingia and husband of Teutberga."},
    {"title": "Lotharingia", "text": "Lotharingia was a kingdom ruled by Lothair II."},
]
MUSIQUE = [
    {
        "title": "Journal of Mathematical Physics",
        "text": "The Journal of Mathematical Physics is a peer-reviewed journal.",
    },
    {"title": "G. Stanley Hall", "text": "Granville Stanley Hall was a pioneering American psychologist."},
]


@pytest.fixture
def small_web(tmp_path):
    data = tmp_path / "data"
    (data / "wiki2").mkdir(parents=True)
    (data / "musique").mkdir(parents=True)
    (data / "wiki2" / "2wikimultihopqa_corpus.json").write_text(json.dumps(WIKI))
    (data / "musique" / "musique_corpus.json").write_text(json.dumps(MUSIQUE))
    docs = tmp_path / "pydoc"
    (docs / "library").mkdir(parents=True)
    (docs / "index.html").write_text(
        "<html><head><title>Python docs</title></head><body><h1>Python</h1>"
        "<p>Welcome to the Python documentation index page.</p>"
        '<a href="library/os.html">os</a> <a href="library/json.html">json</a></body></html>'
    )
    for name, body in {"os": "Miscellaneous operating system interfaces.", "json": "JSON encoder and decoder."}.items():
        (docs / "library" / f"{name}.html").write_text(
            f"<html><head><title>{name} module</title></head><body><h1>{name}</h1><p>{body} "
            f"This page documents the {name} module of the standard library in detail.</p>"
            '<a href="../index.html">back</a></body></html>'
        )
    return data, docs
