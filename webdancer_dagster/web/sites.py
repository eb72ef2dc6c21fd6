"""Local websites the agent browses: real documentation trees and pages rendered from QA corpora.

Every site gets a stable virtual host (``{name}.webdancer.test``) so stored URLs never depend on the
ephemeral port of the server that happens to host them.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ahocorasick

from webdancer_dagster.files import swap_in_dir

logger = logging.getLogger(__name__)

SITE_DOMAIN = "webdancer.test"
PYTHON_DOC_DIR = Path("/usr/share/doc/python3.11/html")
PYTHON_DOC_APT_PACKAGE = "python3.11-doc"

# Bump when the rendered HTML changes, so existing builds are recognised as stale.
BUILDER_VERSION = 1
MANIFEST_NAME = "manifest.json"
HTML_DIR_NAME = "html"
LISTING_PAGE_SIZE = 80
ARTICLE_DIR = "wiki"
LISTING_DIR = "index"


def site_host(name: str) -> str:
    """The virtual host name of a site, e.g. ``python-docs.webdancer.test``."""
    return f"{name}.{SITE_DOMAIN}"


def site_root_url(name: str) -> str:
    """The root URL of a site; stable across server restarts."""
    return f"http://{site_host(name)}/"


@dataclass(frozen=True)
class SiteSpec:
    """What to build: an existing HTML tree (``static_dir``) or a JSON list of paragraphs (``corpus``)."""

    name: str
    kind: Literal["static_dir", "corpus"]
    source: Path
    benchmark: bool = False
    description: str = ""


@dataclass(frozen=True)
class BuiltSite:
    """A site ready to serve: ``directory`` is the document root for ``host``."""

    name: str
    host: str
    root_url: str
    directory: Path
    pages: int
    benchmark: bool
    source: str


@dataclass(frozen=True)
class CorpusPage:
    """One corpus paragraph rendered as a page at ``/wiki/{slug}.html``."""

    title: str
    text: str
    slug: str

    @property
    def path(self) -> str:
        return f"/{ARTICLE_DIR}/{self.slug}.html"


def default_site_specs(data_dir: Path, python_doc_dir: Path = PYTHON_DOC_DIR) -> list[SiteSpec]:
    """The project's sites: Python docs and the 2Wiki corpus for synthesis, MuSiQue as the benchmark web."""
    return [
        SiteSpec(
            name="python-docs",
            kind="static_dir",
            source=python_doc_dir,
            description=f"Python 3.11 documentation (Debian {PYTHON_DOC_APT_PACKAGE})",
        ),
        SiteSpec(
            name="wiki",
            kind="corpus",
            source=data_dir / "wiki2" / "2wikimultihopqa_corpus.json",
            description="Wikipedia-like pages from the 2WikiMultihopQA corpus",
        ),
        SiteSpec(
            name="musique",
            kind="corpus",
            source=data_dir / "musique" / "musique_corpus.json",
            benchmark=True,
            description="MuSiQue benchmark paragraphs; never read by synthesis",
        ),
    ]


def build_site(spec: SiteSpec, out_dir: Path) -> BuiltSite:
    """Build ``spec`` into ``out_dir`` (document root ``out_dir/html``), reusing an up-to-date build.

    The build happens in a temporary directory next to ``out_dir`` and is swapped in by rename, so a
    failed build leaves the previous one intact.
    """
    out_dir = Path(out_dir)
    source = Path(spec.source)
    fingerprint = _source_fingerprint(spec)
    existing = _read_manifest(out_dir)
    if existing is not None and existing.get("fingerprint") == fingerprint:
        logger.info("site %s is up to date in %s", spec.name, out_dir)
        return _built_site(spec, out_dir, int(existing["pages"]))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        if spec.kind == "static_dir":
            pages = _link_static_dir(source, tmp_dir / HTML_DIR_NAME)
        elif spec.kind == "corpus":
            pages = render_corpus_site(_load_corpus(source), tmp_dir / HTML_DIR_NAME, spec.name)
        else:
            raise ValueError(f"site {spec.name!r}: unknown kind {spec.kind!r} (expected static_dir or corpus)")
        manifest = {
            "name": spec.name,
            "kind": spec.kind,
            "source": str(source),
            "fingerprint": fingerprint,
            "pages": pages,
            "benchmark": spec.benchmark,
        }
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        swap_in_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("built site %s: %d pages in %s", spec.name, pages, out_dir)
    return _built_site(spec, out_dir, pages)


def _built_site(spec: SiteSpec, out_dir: Path, pages: int) -> BuiltSite:
    return BuiltSite(
        name=spec.name,
        host=site_host(spec.name),
        root_url=site_root_url(spec.name),
        directory=out_dir / HTML_DIR_NAME,
        pages=pages,
        benchmark=spec.benchmark,
        source=str(spec.source),
    )


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST_NAME
    if not path.is_file() or not (out_dir / HTML_DIR_NAME).exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("ignoring unreadable site manifest %s; rebuilding", path)
        return None


def _source_fingerprint(spec: SiteSpec) -> str:
    """A content hash of the source and the builder version; equal fingerprints mean equal builds."""
    source = Path(spec.source)
    digest = hashlib.sha256(f"{BUILDER_VERSION}|{spec.kind}|{spec.name}|{source}".encode())
    if spec.kind == "static_dir":
        _require_static_dir(source)
        # Path, size and mtime of every file: cheap, and changes whenever the package is upgraded.
        for path in sorted(source.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(source)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    else:
        if not source.is_file():
            raise FileNotFoundError(f"corpus file for site {spec.name!r} not found: {source}")
        with source.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _require_static_dir(source: Path) -> None:
    if not (source / "index.html").is_file():
        hint = f" (install the Debian package: apt-get install {PYTHON_DOC_APT_PACKAGE})"
        raise FileNotFoundError(
            f"static site directory {source} has no index.html"
            + (hint if source == PYTHON_DOC_DIR or "python3" in str(source) else "")
        )


def _link_static_dir(source: Path, target: Path) -> int:
    """Point the document root at an installed HTML tree (a symlink: 67 MB need not be copied)."""
    _require_static_dir(source)
    target.symlink_to(source.resolve(), target_is_directory=True)
    return sum(1 for _ in source.rglob("*.html"))


def _load_corpus(source: Path) -> list[dict]:
    if not source.is_file():
        raise FileNotFoundError(f"corpus file not found: {source}")
    records = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"corpus {source} must be a JSON list of {{title, text}} objects")
    for i, record in enumerate(records):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("title"), str)
            or not isinstance(record.get("text"), str)
        ):
            raise ValueError(f"corpus {source} record {i} is not a {{title: str, text: str}} object")
    return records


# ---------------------------------------------------------------- corpus rendering


def slugify(title: str) -> str:
    """An ASCII, URL-safe slug in Wikipedia style ("Tom Hanks" -> "Tom_Hanks")."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ascii_title).strip("_")
    return slug[:120] or "page"


def assign_pages(records: Sequence[dict]) -> list[CorpusPage]:
    """One page per distinct (title, text); slugs unique and stable under reordering of the corpus.

    A slug shared by several paragraphs (repeated titles, or titles that only differ in punctuation)
    gets a short hash of the paragraph, so a page keeps its URL when other paragraphs come or go.
    """
    seen: set[tuple[str, str]] = set()
    unique: list[tuple[str, str]] = []
    for record in records:
        key = (record["title"].strip(), record["text"].strip())
        if key not in seen:
            seen.add(key)
            unique.append(key)
    by_slug: dict[str, int] = {}
    for title, _ in unique:
        slug = slugify(title)
        by_slug[slug] = by_slug.get(slug, 0) + 1
    pages = []
    for title, text in unique:
        slug = slugify(title)
        if by_slug[slug] > 1:
            digest = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:8]
            slug = f"{slug}-{digest}"
        pages.append(CorpusPage(title=title, text=text, slug=slug))
    return pages


def _linkable(title: str) -> bool:
    """Short one-word titles ("Paris" yes, "War" no) would link half the corpus to noise."""
    return len(title.split()) >= 2 or len(title) >= 5


class TitleLinker:
    """Finds whole-word mentions of page titles in text with one Aho-Corasick pass per paragraph."""

    def __init__(self, pages: Sequence[CorpusPage]) -> None:
        self._automaton = ahocorasick.Automaton()
        targets: dict[str, str] = {}
        for page in pages:
            if _linkable(page.title) and page.title not in targets:
                targets[page.title] = page.path
        for title, path in targets.items():
            self._automaton.add_word(title, (len(title), title, path))
        self._empty = not targets
        if targets:
            self._automaton.make_automaton()

    def mentions(self, text: str, exclude_title: str) -> list[tuple[int, int, str]]:
        """Leftmost-longest, non-overlapping whole-word mentions as (start, end, path); each target once."""
        if self._empty:
            return []
        candidates = []
        for end_index, (length, title, path) in self._automaton.iter(text):
            start, end = end_index - length + 1, end_index + 1
            if title == exclude_title or not _is_word_boundary(text, start, end):
                continue
            candidates.append((start, -end, path))
        candidates.sort()
        chosen = []
        linked: set[str] = set()
        cursor = 0
        for start, neg_end, path in candidates:
            if start < cursor or path in linked:
                continue
            chosen.append((start, -neg_end, path))
            linked.add(path)
            cursor = -neg_end
        return chosen


def _is_word_boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_")


def render_corpus_site(records: Sequence[dict], html_dir: Path, site_name: str) -> int:
    """Write article pages, paginated listing pages and the root index; returns the article count."""
    pages = assign_pages(records)
    linker = TitleLinker(pages)
    article_dir = html_dir / ARTICLE_DIR
    listing_dir = html_dir / LISTING_DIR
    article_dir.mkdir(parents=True)
    listing_dir.mkdir(parents=True)
    for page in pages:
        body = _linked_paragraph(page.text, linker.mentions(page.text, page.title))
        (article_dir / f"{page.slug}.html").write_text(
            _document(page.title, f"<h1>{html.escape(page.title)}</h1>\n<p>{body}</p>", site_name),
            encoding="utf-8",
        )
    ordered = sorted(pages, key=lambda p: (p.title.casefold(), p.slug))
    chunks = [ordered[i : i + LISTING_PAGE_SIZE] for i in range(0, len(ordered), LISTING_PAGE_SIZE)]
    for number, chunk in enumerate(chunks, start=1):
        (listing_dir / _listing_name(number)).write_text(
            _listing_page(chunk, number, len(chunks), site_name), encoding="utf-8"
        )
    (html_dir / "index.html").write_text(_root_page(chunks, site_name), encoding="utf-8")
    return len(pages)


def _linked_paragraph(text: str, mentions: list[tuple[int, int, str]]) -> str:
    parts = []
    cursor = 0
    for start, end, path in mentions:
        parts.append(html.escape(text[cursor:start]))
        parts.append(f'<a href="{html.escape(path)}">{html.escape(text[start:end])}</a>')
        cursor = end
    parts.append(html.escape(text[cursor:]))
    return "".join(parts)


def _listing_name(number: int) -> str:
    return f"page-{number:03d}.html"


def _listing_page(chunk: list[CorpusPage], number: int, total: int, site_name: str) -> str:
    items = "\n".join(f'<li><a href="{p.path}">{html.escape(p.title)}</a></li>' for p in chunk)
    nav = []
    if number > 1:
        nav.append(f'<a href="/{LISTING_DIR}/{_listing_name(number - 1)}">Previous</a>')
    if number < total:
        nav.append(f'<a href="/{LISTING_DIR}/{_listing_name(number + 1)}">Next</a>')
    title = f"All pages ({chunk[0].title} to {chunk[-1].title})"
    body = f"<h1>{html.escape(title)}</h1>\n<ul>\n{items}\n</ul>\n<p>{' | '.join(nav)}</p>"
    return _document(title, body, site_name)


def _root_page(chunks: list[list[CorpusPage]], site_name: str) -> str:
    items = "\n".join(
        f'<li><a href="/{LISTING_DIR}/{_listing_name(n)}">{html.escape(c[0].title)} to '
        f"{html.escape(c[-1].title)}</a></li>"
        for n, c in enumerate(chunks, start=1)
    )
    title = f"{site_name}: index of all pages"
    return _document(title, f"<h1>{html.escape(title)}</h1>\n<ul>\n{items}\n</ul>", site_name)


def _document(title: str, body: str, site_name: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f'<nav><a href="/">{html.escape(site_name)} home</a></nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n'
    )
