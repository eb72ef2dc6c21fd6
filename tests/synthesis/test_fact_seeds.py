"""E2HQA seeds read by rules off a page's opening sentence: real 2Wiki pages, the drop, and E2HQA without a teacher."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from synth_helpers import endpoint

from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.crawlqa import ClusterPage
from webdancer_dagster.synthesis.e2hqa import E2HQAConfig, synthesize_e2hqa
from webdancer_dagster.synthesis.fact_seeds import FACT_TEACHER, fact_questions, fact_seed, subject
from webdancer_dagster.synthesis.qa import Drop, is_grounded
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer

CORPUS = {
    item["title"]: item["text"] for item in json.loads((DATA_DIR / "wiki2" / "2wikimultihopqa_corpus.json").read_text())
}


def page(title: str) -> ClusterPage:
    """A wiki page as the crawler stores it: the title heading, then the passage."""
    return ClusterPage(url=f"http://wiki.webdancer.test/wiki/{title}.html", site="wiki", title=title,
                       text=f"{title}\n{CORPUS[title]}")  # fmt: skip


@pytest.mark.parametrize(
    ("title", "facts"),
    [
        ("Eduardo De Filippo", [("When was Eduardo De Filippo born?", "24 May 1900"),
                                ("When did Eduardo De Filippo die?", "31 October 1984")]),
        ("Frank Tuttle", [("When was Frank Tuttle born?", "August 6, 1892"),
                          ("When did Frank Tuttle die?", "January 6, 1963")]),
        ("Hassan Al-Qeed", [("When was Hassan Al-Qeed born?", "13 April 1998")]),
        ("The Tender Years", [("Who directed the 1948 film The Tender Years?", "Harold D. Schuster")]),
        ("Killer: Dead or Alive", [("Who directed the 2006 film Killer: Dead or Alive?", "Scott Shaw")]),
        # A death date without a birth date, and a film without a director, give only what is stated.
        ("Richard Wesley, 1st Baron Mornington", [("When did Richard Wesley, 1st Baron Mornington die?",
                                                   "31 January 1758")]),
        ("Forbidden Ground (2013 film)", []),
    ],
)  # fmt: skip
def test_the_facts_of_real_opening_sentences(title, facts):
    assert fact_questions(page(title)) == facts
    for _question, answer in facts:
        assert is_grounded(answer, [], page(title).text, 4)  # every answer is copied from the page


def test_a_seed_is_one_stated_fact_chosen_stably_or_a_counted_drop():
    seed = fact_seed(page("Eduardo De Filippo"))
    assert isinstance(seed, QAPair) and seed == fact_seed(page("Eduardo De Filippo"))
    assert (seed.question, seed.answer) in fact_questions(page("Eduardo De Filippo"))
    assert (seed.kind, seed.source, seed.difficulty, seed.teacher) == ("e2hqa", "e2hqa", 0, FACT_TEACHER)
    assert seed.source_urls == [page("Eduardo De Filippo").url] and "24 May 1900" in seed.evidence[0]
    drop = fact_seed(page("Forbidden Ground (2013 film)"))
    assert isinstance(drop, Drop) and (drop.stage, drop.reason) == ("e2hqa_seed", "no_fact_sentence")
    assert subject("Forbidden Ground (2013 film)") == "Forbidden Ground"


def test_e2hqa_with_fact_seeds_asks_no_teacher():
    titles = ["Eduardo De Filippo", "The Tender Years", "Forbidden Ground (2013 film)"]
    pages = pd.DataFrame([{"url": p.url, "site": p.site, "title": p.title, "text": p.text} for p in map(page, titles)])
    config = E2HQAConfig(seeds=3, seed_source="facts", rewrites=(0,), min_page_chars=50, max_workers=1)
    with ScriptedLLMServer([]) as server:  # no seed is written and no rewrite is asked for: no search either
        result = synthesize_e2hqa(pages, ["wiki"], endpoint(server), None, [], config)  # type: ignore[arg-type]
        assert server.requests == []
    assert sorted(pair.answer for pair in result.pairs) in (
        sorted(["Harold D. Schuster", "24 May 1900"]), sorted(["Harold D. Schuster", "31 October 1984"])
    )  # fmt: skip
    assert [drop.reason for drop in result.drops] == ["no_fact_sentence"] and result.attempted == 3
