"""CRAWLQA: cluster sampling from the crawl graph, and every way a teacher reply is kept or dropped."""

from __future__ import annotations

import json

import jsonschema
import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf
from synth_helpers import ADA, BABBAGE, BENCH_PAGE, ENGINE, PAGE_TEXT, STUB, WIKI, endpoint, user_prompt

from webdancer_dagster.synthesis.crawlqa import (
    ANSWER_PLACEHOLDER,
    EVIDENCE_PLACEHOLDER,
    QUESTION_PLACEHOLDER,
    CrawlQAConfig,
    reply_schema,
    resolve_citation,
    sample_clusters,
    synthesize_crawlqa,
)
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer, ScriptedReply

MULTI_HOP = {
    "question": "Which English polymath born in 1791 designed the machine that Ada Lovelace wrote an algorithm for?",
    "answer": "Charles Babbage",
    "source_urls": [ADA, BABBAGE],
    "evidence": [],
}


def config(**overrides) -> CrawlQAConfig:
    values = {"clusters": 1, "subpages": 2, "kinds": ("multi_hop",), "min_page_chars": 50, "max_workers": 1}
    values.update(overrides)
    return CrawlQAConfig(**values)


def reply(**changes) -> str:
    return json.dumps({**MULTI_HOP, **changes})


def test_clusters_hold_only_allowed_sites_and_pages_with_text(pages, links):
    clusters = sample_clusters(pages, links, ["wiki"], clusters=10, subpages=5, min_page_chars=50)
    assert sorted(c.pages[0].url for c in clusters) == [ADA, BABBAGE]  # the only pages linking to others
    for cluster in clusters:
        assert cluster.site == "wiki"
        assert set(cluster.urls) == {ADA, BABBAGE, ENGINE}  # never the stub (too short) or the benchmark page
        assert len(set(cluster.urls)) == len(cluster.urls)


def test_clusters_follow_clicks_up_to_max_depth(pages, links):
    (shallow,) = [
        c
        for c in sample_clusters(pages, links, ["wiki"], clusters=2, subpages=3, max_depth=1, min_page_chars=50)
        if c.pages[0].url == ADA
    ]
    assert shallow.urls == [ADA, BABBAGE]  # the engine is two clicks away
    (deep,) = [
        c
        for c in sample_clusters(pages, links, ["wiki"], clusters=2, subpages=3, max_depth=2, min_page_chars=50)
        if c.pages[0].url == ADA
    ]
    assert deep.urls == [ADA, BABBAGE, ENGINE]


def test_clusters_resolve_fragment_links(pages, links):
    every = sample_clusters(pages, links, ["wiki"], clusters=2, subpages=5, max_depth=1, min_page_chars=0)
    assert STUB in next(c for c in every if c.pages[0].url == ADA).urls  # linked only as "stub.html#top"


def test_clusters_are_seeded_and_independent_of_row_order(pages, links):
    def sample(p, lk, seed):
        return sample_clusters(p, lk, ["wiki"], clusters=2, subpages=1, seed=seed, min_page_chars=50)

    first = sample(pages, links, 7)
    assert sample(pages.iloc[::-1], links.sample(frac=1, random_state=1), 7) == first
    orders = {tuple(c.pages[0].url for c in sample(pages, links, seed)) for seed in range(20)}
    assert len(orders) == 2  # different seeds do pick different orders


def test_no_cluster_when_no_allowed_site_has_linked_pages(pages, links):
    assert sample_clusters(pages, links, ["python-docs"], clusters=3, subpages=2) == []
    with ScriptedLLMServer([]) as server:
        result = synthesize_crawlqa(pages, links, ["python-docs"], endpoint(server), config())
    assert (result.pairs, result.drops, result.attempted, server.requests) == ([], [], 0, [])


def test_a_grounded_multi_hop_question_is_kept_with_its_citations(pages, links):
    with ScriptedLLMServer([reply()]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config())
    (pair,) = result.pairs
    assert (pair.kind, pair.source, pair.answer, pair.difficulty) == ("multi_hop", "crawlqa", "Charles Babbage", 2)
    assert pair.source_urls == [ADA, BABBAGE]
    assert pair.teacher == "scripted-teacher_short"
    assert result.drops == [] and result.attempted == 1
    request = server.requests[0]
    assert request["response_format"] == {"type": "json_object"}
    prompt = user_prompt(request)
    assert "MULTI-HOP" in prompt and PAGE_TEXT[BABBAGE] in prompt
    assert BENCH_PAGE not in prompt and "benchmark" not in prompt


def test_a_count_question_is_grounded_by_its_evidence(pages, links):
    count = {
        "question": "How many of these people were born in England or in Walworth and worked on mechanical computers?",
        "answer": 2,
        "source_urls": [ADA, BABBAGE],
        "evidence": ["was an English mathematician and writer", "an English polymath and mechanical engineer"],
    }
    with ScriptedLLMServer([json.dumps(count)]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config(kinds=("count",)))
    (pair,) = result.pairs
    assert (pair.kind, pair.answer, pair.evidence) == ("count", "2", count["evidence"])
    assert "COUNT" in user_prompt(server.requests[0])


@pytest.mark.parametrize(("answer", "kept"), [("2", True), ("two", True), ("2 people", True), ("Ada", False)])
def test_a_count_answer_must_be_a_number(pages, links, answer, kept):
    count = {
        "question": "How many of these people were born in England and worked on mechanical computers?",
        "answer": answer,
        "source_pages": ["Page 1", "Page 2"],
        "evidence": ["was an English mathematician and writer", "an English polymath and mechanical engineer"],
    }
    with ScriptedLLMServer([json.dumps(count)]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config(kinds=("count",)))
    assert [pair.answer for pair in result.pairs] == ([answer] if kept else [])
    assert [drop.reason for drop in result.drops] == ([] if kept else ["count_not_a_number"])


@pytest.mark.parametrize(
    ("teacher_reply", "reason"),
    [
        ("I am sorry, I cannot write a question about these pages.", "not_json"),
        ("", "empty"),
        ('{"question": "", "answer": "", "source_urls": []}', "empty"),
        ('{"question": "Who designed the engine?", "answer": "Charles Babbage"}', "wrong_schema"),
        (reply(source_urls=[ADA, f"{WIKI}/nowhere.html"]), "cites_unknown_page"),
        (reply(source_urls=[ADA, BENCH_PAGE]), "cites_unknown_page"),
        (reply(source_urls=["Page 1", "Page 4"]), "cites_unknown_page"),  # the cluster has three pages
        (reply(source_urls=["Page 0", "Page 1"]), "cites_unknown_page"),
        (reply(source_urls=["the URLs of the pages that support the answer"]), "cites_unknown_page"),
        (reply(source_urls=["see Page 2", "Page 1"]), "cites_unknown_page"),
        (reply(question=QUESTION_PLACEHOLDER), "copied_prompt_example"),
        (reply(question="..."), "copied_prompt_example"),
        (reply(answer=ANSWER_PLACEHOLDER.upper() + "."), "copied_prompt_example"),
        (reply(source_urls=[BABBAGE]), "needs_two_pages"),
        (reply(question="Question 1"), "not_a_question"),  # both written by the offline teacher
        (reply(question="How to fix a Python bug"), "not_a_question"),
        (
            reply(answer="Charles Babbage the English polymath and mechanical engineer born in Walworth"),
            "answer_too_long",
        ),
        (reply(question="Did Charles Babbage design the machine Ada Lovelace wrote for?"), "answer_in_question"),
        (reply(answer="Alan Turing"), "ungrounded"),
        (reply(answer="Alan Turing", evidence=["Alan Turing designed the Analytical Engine in 1837"]), "ungrounded"),
        (ScriptedReply(status=400), "request_rejected"),
    ],
)
def test_every_bad_reply_is_a_counted_drop_with_its_reason(pages, links, teacher_reply, reason):
    with ScriptedLLMServer([teacher_reply]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config())
    assert result.pairs == []
    (drop,) = result.drops
    assert (drop.stage, drop.reason, drop.kind) == ("crawlqa", reason, "multi_hop")
    assert drop.item.startswith("cluster-") and drop.detail
    assert drop.raw == (teacher_reply if isinstance(teacher_reply, str) else "")
    assert result.drop_counts() == {reason: 1}
    assert list(result.drops_table["reason"]) == [reason]


def the_cluster(pages, links):
    (cluster,) = sample_clusters(pages, links, ["wiki"], clusters=1, subpages=2, min_page_chars=50)
    return cluster


@pytest.mark.parametrize(
    "labels",
    [
        ["Page {ada}", "Page {babbage}"],
        ["[Page {ada}]", "[Page {babbage}]"],
        ["page #{ada}", " PAGE {babbage} "],
        ["{ada}", "[{babbage}]"],
        [None, "Page {babbage}"],  # None: Ada's URL, so labels and URLs mix
        ["Page {ada}", "Page {babbage}", "Page {ada}", BABBAGE],  # one page cited twice counts once
    ],
)
def test_pages_are_cited_by_their_label_in_the_prompt(pages, links, labels):
    cluster = the_cluster(pages, links)
    numbers = {"ada": cluster.urls.index(ADA) + 1, "babbage": cluster.urls.index(BABBAGE) + 1}
    citations = [ADA if label is None else label.format(**numbers) for label in labels]
    fields = {key: value for key, value in MULTI_HOP.items() if key != "source_urls"}
    teacher_reply = json.dumps({**fields, "source_pages": citations})
    with ScriptedLLMServer([teacher_reply]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config())
    assert result.drops == []
    (pair,) = result.pairs
    assert pair.source_urls == [ADA, BABBAGE] and pair.difficulty == 2


def test_numbers_cite_pages_by_label_too(pages, links):
    cluster = the_cluster(pages, links)
    numbers = [cluster.urls.index(ADA) + 1, cluster.urls.index(BABBAGE) + 1]
    with ScriptedLLMServer([json.dumps({**MULTI_HOP, "source_urls": numbers})]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config())
    assert [p.source_urls for p in result.pairs] == [[ADA, BABBAGE]]


def test_resolve_citation(pages, links):
    cluster = the_cluster(pages, links)
    assert [resolve_citation(f"Page {n}", cluster) for n in range(1, 4)] == cluster.urls
    assert resolve_citation(f"{ENGINE}#History", cluster) == ENGINE
    for citation in ("Page 4", "Page -1", "Page 1 and Page 2", STUB, BENCH_PAGE, "", "Ada Lovelace"):
        assert resolve_citation(citation, cluster) is None


def test_the_prompt_labels_pages_and_asks_for_labels(pages, links):
    with ScriptedLLMServer([reply()]) as server:
        synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config())
    prompt = user_prompt(server.requests[0])
    cluster = the_cluster(pages, links)
    for number, url in enumerate(cluster.urls, start=1):
        assert f"[Page {number}]\nURL: {url}\n" in prompt
    assert '"source_pages" (the labels of the pages the answer needs, such as "Page 2")' in prompt


def test_a_copied_evidence_placeholder_is_no_evidence(pages, links):
    evidence = [EVIDENCE_PLACEHOLDER, "", "worked with Charles Babbage on his"]
    with ScriptedLLMServer([reply(evidence=evidence)]) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config())
    assert [p.evidence for p in result.pairs] == [["worked with Charles Babbage on his"]]


def test_near_duplicate_questions_are_dropped_in_task_order(pages, links):
    same = reply()
    variant = reply(question=MULTI_HOP["question"].replace("Which", "Which famous"))
    with ScriptedLLMServer(lambda request: same if "MULTI-HOP" in user_prompt(request) else variant) as server:
        result = synthesize_crawlqa(
            pages, links, ["wiki"], endpoint(server), config(kinds=("multi_hop", "intersection"), max_workers=2)
        )
    assert [(p.kind, p.question) for p in result.pairs] == [("multi_hop", MULTI_HOP["question"])]
    (drop,) = result.drops
    assert (drop.reason, drop.kind, drop.item) == ("duplicate", "intersection", result.drops[0].item)
    assert result.pairs[0].id in drop.detail


def test_questions_already_stored_count_as_duplicates(pages, links):
    with ScriptedLLMServer([reply()]) as server:
        result = synthesize_crawlqa(
            pages, links, ["wiki"], endpoint(server), config(), existing_questions=[MULTI_HOP["question"]]
        )
    assert result.pairs == [] and [d.reason for d in result.drops] == ["duplicate"]


def test_each_cluster_gets_one_request_per_kind_and_output_follows_task_order(pages, links):
    roots = {ADA: "first", BABBAGE: "second"}

    def answer(request):
        prompt = user_prompt(request)
        kind = "COUNT" if "COUNT" in prompt else "INTERSECTION"
        root = roots[prompt.split("URL: ", 1)[1].split("\n", 1)[0]]
        question = f"{kind} question about the {root} root?"
        delay = 0.05 if kind == "COUNT" else 0.0  # replies finish out of order
        return ScriptedReply(reply(question=question, answer="1837", source_urls=[ADA, ENGINE]), delay_s=delay)

    cfg = config(clusters=2, kinds=("count", "intersection"), max_workers=4)
    with ScriptedLLMServer(answer) as server:
        result = synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), cfg)
    assert len(server.requests) == 4 and result.attempted == 4 and result.drops == []
    clusters = sample_clusters(pages, links, ["wiki"], clusters=2, subpages=2, min_page_chars=50)
    expected = [
        f"{k} question about the {roots[c.pages[0].url]} root?" for c in clusters for k in ("COUNT", "INTERSECTION")
    ]
    assert [p.question for p in result.pairs] == expected


def test_pages_without_a_title_still_form_clusters(pages, links):
    clusters = sample_clusters(pages.assign(title=None), links, ["wiki"], clusters=2, subpages=2, min_page_chars=50)
    assert len(clusters) == 2 and {p.title for c in clusters for p in c.pages} == {""}


def test_the_schema_sent_allows_only_the_clusters_page_labels(pages, links):
    """With a schema format, a server that enforces it cannot cite a page outside the prompt, one page for two, or
    a COUNT answer that is not a number."""
    cluster = the_cluster(pages, links)
    assert len(cluster.pages) == 3
    kinds = ("multi_hop", "count")
    with ScriptedLLMServer([reply(), reply()]) as server:
        synthesize_crawlqa(pages, links, ["wiki"], endpoint(server), config(kinds=kinds, json_format="json_schema"))
    multi_hop, count = (request["response_format"]["json_schema"]["schema"] for request in server.requests)

    def allowed(schema: dict, answer: str, cited: list[str]) -> bool:
        candidate = {"question": "Which page says so?", "answer": answer, "source_pages": cited}
        return jsonschema.Draft202012Validator(schema).is_valid(candidate)

    assert allowed(multi_hop, "Charles Babbage", ["Page 1", "Page 3"])
    assert allowed(multi_hop, "Charles Babbage", ["Page 2", "Page 3"])
    assert not allowed(multi_hop, "Charles Babbage", ["Page 2", "Page 2"])  # one page cited twice
    assert not allowed(multi_hop, "Charles Babbage", ["Page 2"])
    assert not allowed(multi_hop, "Charles Babbage", ["Page 1", "Page 4"])  # no fourth page in the prompt
    assert not allowed(multi_hop, "Charles Babbage", [ADA, BABBAGE])
    assert allowed(count, "2", ["Page 1"]) and allowed(count, "12", ["Page 1", "Page 2"])
    assert not allowed(count, "two", ["Page 1"]) and not allowed(count, "2", ["Page 4"])
    assert not allowed(count, "2", [])
    assert multi_hop["required"] == count["required"] == ["question", "answer", "source_pages"]


def test_the_schema_compiles_to_a_llama_cpp_grammar(pages, links):
    """llama.cpp's server turns the schema into a grammar (one it cannot convert is a 400): two-page kinds may
    cite only the three pairs of different pages, and a COUNT answer only digits."""
    cluster = the_cluster(pages, links)

    def rules(kind: str) -> dict[str, str]:
        grammar = json_schema_to_gbnf(json.dumps(reply_schema(cluster, kind)))
        return dict(line.split(" ::= ", 1) for line in grammar.splitlines() if " ::= " in line)

    for kind in ("multi_hop", "intersection"):
        assert rules(kind)["source-pages"] == "source-pages-0 | source-pages-1 | source-pages-2"
    count = rules("count")
    assert count["source-pages-item"] == '"\\"Page 1\\"" | "\\"Page 2\\"" | "\\"Page 3\\""'
    assert count["answer"] == '"\\"" [0-9]+ "\\"" space'
