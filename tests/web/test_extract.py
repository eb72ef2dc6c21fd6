"""Text extraction: titles, main text, encodings, and garbage that must not crash it."""

import os
import re

import pytest

from webdancer_dagster.web.extract import (
    ExtractedPage,
    decode_html,
    extract_page,
    extract_tree,
    page_links,
    parse_html,
)

ARTICLE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Marie Curie</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT_TEXT";</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/index">All pages</a></nav>
<main><article>
<h1>Marie Curie</h1>
<p>Marie Salomea Skłodowska-Curie was a Polish and naturalised-French physicist and chemist who conducted
pioneering research on radioactivity. She was the first woman to win a Nobel Prize, the first person to win a
Nobel Prize twice, and the only person to win a Nobel Prize in two scientific fields.</p>
<p>Her husband, Pierre Curie, was a co-winner of her first Nobel Prize, making them the first married couple
to win the Nobel Prize and launching the Curie family legacy of five Nobel Prizes.</p>
</article></main>
<footer>Copyright footer text</footer>
</body></html>
"""


def test_title_and_main_text_of_an_article():
    page = extract_page(ARTICLE, "http://wiki.webdancer.test/wiki/Marie_Curie.html")
    assert page.title == "Marie Curie"
    assert "pioneering research on radioactivity" in page.text
    assert "launching the Curie family legacy" in page.text
    assert "SCRIPT_TEXT" not in page.text and "color: red" not in page.text


def test_bytes_and_str_give_the_same_page():
    assert extract_page(ARTICLE.encode("utf-8"), "u") == extract_page(ARTICLE, "u")


def test_title_falls_back_to_first_h1_then_empty():
    page = extract_page("<html><body><h1>  Only\n  a heading </h1><p>Short.</p></body></html>", "u")
    assert page.title == "Only a heading"
    assert extract_page("<html><body><p>No title anywhere.</p></body></html>", "u").title == ""


def test_page_without_main_content_falls_back_to_visible_body_text():
    # A footer-only page has no main content; the body's visible text is used instead.
    html = (
        "<html><head><title>Tiny</title><style>.x{}</style></head><body><footer>Contact&nbsp;us   here."
        "<script>hidden()</script><template>TEMPLATE</template></footer><style>.y{}</style></body></html>"
    )
    assert extract_page(html, "u") == ExtractedPage(title="Tiny", text="Contact us here.")


def test_fallback_text_breaks_lines_at_blocks_but_not_inside_words():
    html = "<html><head><title>T</title></head><body><footer><div>One</div><div>Tw<b>o</b>fold</div>x<br>y</footer>"
    assert extract_page(html, "u").text.split("\n") == ["One", "Twofold", "x", "y"]


def test_link_list_page_keeps_its_link_texts_apart():
    html = (
        "<html><head><title>All pages</title></head><body><ul><li><a href='/a'>Alpha</a></li>"
        "<li><a href='/b'>Beta</a></li></ul><script>hidden()</script></body></html>"
    )
    page = extract_page(html, "u")
    assert page.title == "All pages"
    assert re.findall(r"\w+", page.text) == ["Alpha", "Beta"]


def test_whitespace_is_normalised():
    html = "<html><body><pre>first   line\t\t here\n\n\n\n   second\xa0line   </pre></body></html>"
    text = extract_page(html, "u").text
    assert "  " not in text and "\t" not in text and "\xa0" not in text
    assert "\n\n\n" not in text
    assert text == text.strip()
    assert "first line here" in text and "second line" in text


@pytest.mark.parametrize(
    "body",
    [b"", b"   \n\t ", "", "<!-- only a comment -->", b"<html></html>", b"<<<>>>&&&;;", b"\x00\x00\x00"],
)
def test_empty_and_degenerate_documents_give_an_empty_page(body):
    page = extract_page(body, "u")
    assert isinstance(page, ExtractedPage)
    assert page.title == ""
    assert page.text.strip("<>&; \x00\ufffd") == ""


def test_random_binary_bytes_do_not_crash():
    blob = os.urandom(64 * 1024) + b"<title>after garbage</title>"
    page = extract_page(blob, "u")
    assert isinstance(page.text, str) and isinstance(page.title, str)


def test_invalid_utf8_is_replaced_not_fatal():
    body = (
        b"<html><head><title>Caf\xc3\xa9 \xff\xfe</title></head>"
        b"<body><p>Bad \xc3\x28 bytes \x80 here.</p></body></html>"
    )
    page = extract_page(body, "u")
    assert page.title == "Café \ufffd\ufffd"
    assert "Bad \ufffd( bytes \ufffd here." in page.text


@pytest.mark.parametrize(
    ("data", "encoding", "expected"),
    [
        ("already text", None, "already text"),
        ("café".encode(), None, "café"),
        ("café".encode("latin-1"), "ISO-8859-1", "café"),
        ("café".encode("cp1252"), "windows-1252", "café"),
        ("café".encode(), "no-such-charset", "café"),
        (b"caf\xe9", None, "caf\ufffd"),
        (b"\xff\xfe\xfd", "utf-8", "\ufffd\ufffd\ufffd"),
    ],
)
def test_decode_html(data, encoding, expected):
    assert decode_html(data, encoding) == expected


def test_declared_encoding_is_used_for_extraction():
    body = "<html><head><title>Éléphant</title></head><body><p>Ça va très bien.</p></body></html>".encode("latin-1")
    page = extract_page(body, "u", encoding="latin-1")
    assert page.title == "Éléphant" and "Ça va très bien." in page.text


def test_parse_html_returns_none_for_blank_input():
    assert parse_html(b"  ") is None
    assert extract_tree(None, "u") == ExtractedPage(title="", text="")


def test_a_parsed_tree_can_be_extracted_repeatedly():
    # The crawler parses once, then takes both links and text from the same tree.
    tree = parse_html(ARTICLE)
    first = extract_tree(tree, "u")
    assert extract_tree(tree, "u") == first == extract_page(ARTICLE, "u")


def test_page_links_in_document_order():
    html = (
        "<html><body><a href='/wiki/B.html'>B</a><p><a href='http://x.test/a?q=1#f'>x</a>"
        "<a>no href</a><a href=''>empty</a><a href='/wiki/B.html'>again</a></p></body></html>"
    )
    assert page_links(html) == ["/wiki/B.html", "http://x.test/a?q=1#f", "/wiki/B.html"]
    assert page_links(html.encode("latin-1"), "latin-1") == page_links(html)
    assert page_links("") == [] and page_links(b"  \n") == []
