"""E2HQA: seed questions from pages, rewrites through real local search, and every reason a chain is dropped."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from synth_helpers import ADA, BABBAGE, BENCH_PAGE, ENGINE, PAGE_TEXT, STUB, TITLES, endpoint, user_prompt

from webdancer_dagster.synthesis.e2hqa import (
    SEED_FORMAT,
    E2HQAConfig,
    rewrite_count,
    sample_seed_pages,
    synthesize_e2hqa,
)
from webdancer_dagster.synthesis.qa import LeakageGuard
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer, ScriptedReply
from webdancer_dagster.web.search import LocalSearch, build_search_index

BENCH_HOST = "musique.webdancer.test"
SEED = {"question": "In which year was Ada Lovelace born?", "answer": "1815", "evidence": "born in London in 1815"}
FIRST = {
    "description": "the English mathematician and writer who worked with Charles Babbage",
    "question": "In which year was the English mathematician and writer who worked with Charles Babbage born?",
}
SECOND = {
    "description": "the English polymath who designed the Analytical Engine",
    "question": "In which year was the English mathematician and writer who worked with the English polymath who "
    "designed the Analytical Engine born?",
}


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> LocalSearch:
    docs = pd.DataFrame(
        [
            {"url": url, "title": TITLES.get(url, "Ada Lovelace"), "text": text, "site": "x"}
            for url, text in PAGE_TEXT.items()
            if url != STUB
        ]
    )
    index_dir = tmp_path_factory.mktemp("e2hqa") / "index"
    build_search_index(docs, index_dir)
    return LocalSearch(index_dir)


@pytest.fixture
def seed_pages(pages) -> pd.DataFrame:
    """Ada's page, plus the benchmark copy that must never become a seed."""
    return pages[pages["url"].isin([ADA, BENCH_PAGE])]


class Teacher:
    """Answers each of the three E2HQA prompts from its own queue."""

    def __init__(self, seeds=(), entities=(), rewrites=(), checks=()) -> None:
        self.queues = {"seed": list(seeds), "entity": list(entities), "rewrite": list(rewrites), "check": list(checks)}
        self.prompts: dict[str, list[str]] = {kind: [] for kind in self.queues}

    def __call__(self, request):
        prompt = user_prompt(request)
        if prompt.startswith("Write one simple factual question"):
            kind = "seed"
        elif "Pick one named entity" in prompt:
            kind = "entity"
        elif prompt.startswith("Check a rewritten question"):
            kind = "check"
        else:
            kind = "rewrite"
        self.prompts[kind].append(prompt)
        if not self.queues[kind]:
            raise StopIteration
        reply = self.queues[kind].pop(0)
        return reply if isinstance(reply, ScriptedReply | str) else json.dumps(reply)


def config(**overrides) -> E2HQAConfig:
    values = {"seeds": 3, "rewrites": (1,), "min_page_chars": 50, "attempts_per_rewrite": 1, "max_workers": 1}
    values.update(overrides)
    return E2HQAConfig(**values)


def run(teacher: Teacher, seed_pages, search, cfg: E2HQAConfig, blocked=(BENCH_HOST,), **kwargs):
    with ScriptedLLMServer(teacher) as server:
        if cfg.answer_check:
            kwargs.setdefault("checker", endpoint(server, "judge"))
        return synthesize_e2hqa(seed_pages, ["wiki"], endpoint(server), search, blocked, cfg, **kwargs)


def test_two_rewrites_keep_the_answer_and_store_the_whole_chain(seed_pages, search):
    teacher = Teacher([SEED], [{"entity": "Ada Lovelace"}, {"entity": "Charles Babbage"}], [FIRST, SECOND])
    result = run(teacher, seed_pages, search, config(rewrites=(2,)))
    assert result.drops == [] and result.attempted == 1
    (pair,) = result.pairs
    assert (pair.kind, pair.source, pair.answer, pair.difficulty) == ("e2hqa", "e2hqa", "1815", 2)
    assert (pair.question, pair.source_urls, pair.evidence) == (SECOND["question"], [ADA], [SEED["evidence"]])
    first, second = pair.rewrite_chain
    assert (first.question_before, first.entity, first.question_after) == (
        SEED["question"],
        "Ada Lovelace",
        FIRST["question"],
    )
    assert (second.question_before, second.entity, second.description) == (
        FIRST["question"],
        "Charles Babbage",
        SECOND["description"],
    )
    assert first.query == "Ada Lovelace" and ADA in [r.url for r in first.results]
    assert {BABBAGE, ENGINE} <= {r.url for r in second.results}
    # The benchmark copy of Ada's page matches the search but never reaches the teacher or the chain.
    assert all(BENCH_PAGE not in [r.url for r in step.results] for step in pair.rewrite_chain)
    assert all(BENCH_PAGE not in prompt and "benchmark" not in prompt for prompt in teacher.prompts["rewrite"])
    assert LeakageGuard(["an unrelated benchmark question"]).check(result.pairs, [BENCH_HOST]) == []
    assert PAGE_TEXT[ADA] in teacher.prompts["seed"][0]
    assert teacher.prompts["check"] == [] and first.answer_check == second.answer_check == ""  # the check is off


SAME = {"same_answer": True}


def test_the_answer_check_confirms_every_rewrite_and_is_stored(seed_pages, search):
    teacher = Teacher([SEED], [{"entity": "Ada Lovelace"}, {"entity": "Charles Babbage"}], [FIRST, SECOND])
    checker = Teacher(checks=[SAME, SAME])
    with ScriptedLLMServer(teacher) as server, ScriptedLLMServer(checker) as judge:
        result = synthesize_e2hqa(
            seed_pages, ["wiki"], endpoint(server), search, [BENCH_HOST], config(rewrites=(2,), answer_check=True),
            checker=endpoint(judge, "judge"),
        )  # fmt: skip
    assert result.drops == []
    (pair,) = result.pairs
    assert [step.answer_check for step in pair.rewrite_chain] == [json.dumps(SAME)] * 2
    assert teacher.prompts["check"] == []  # the checker, not the teacher, answers the check
    first, second = checker.prompts["check"]
    assert SEED["question"] in first and FIRST["question"] in first and "'1815'" in first
    assert FIRST["question"] in second and SECOND["question"] in second and "'Charles Babbage'" in second
    assert judge.requests[0]["model"] == "scripted-judge"


@pytest.mark.parametrize(
    ("check_reply", "reason"),
    [
        ({"same_answer": False}, "answer_changed"),
        ('{"same_answer": "no"}', "answer_changed"),
        ("I think so.", "answer_check_failed"),
        ({"same_answer": "maybe"}, "answer_check_failed"),
        ("", "answer_check_failed"),
        (ScriptedReply(status=400), "answer_check_failed"),
    ],
)
def test_a_rewrite_the_checker_rejects_is_a_counted_drop(seed_pages, search, check_reply, reason):
    teacher = Teacher([SEED], [{"entity": "Ada Lovelace"}], [FIRST], [check_reply])
    result = run(teacher, seed_pages, search, config(answer_check=True))
    assert result.pairs == []
    (drop,) = result.drops
    assert (drop.stage, drop.reason, drop.kind) == ("e2hqa_rewrite", reason, "e2hqa")
    assert drop.detail.startswith("rewrite 1/1, attempt 1: ")


def test_a_rejected_rewrite_is_retried_with_another_sample(seed_pages, search):
    entities = [{"entity": "Ada Lovelace"}] * 2
    teacher = Teacher([SEED], entities, [FIRST, FIRST], [{"same_answer": False}, SAME])
    result = run(teacher, seed_pages, search, config(answer_check=True, attempts_per_rewrite=2))
    assert [p.question for p in result.pairs] == [FIRST["question"]] and result.drops == []
    assert len(teacher.prompts["check"]) == 2


def test_the_answer_check_needs_a_checker(seed_pages, search):
    with pytest.raises(ValueError, match="checker"):
        synthesize_e2hqa(seed_pages, ["wiki"], None, search, [BENCH_HOST], config(answer_check=True))


def test_seeds_come_only_from_allowed_sites_and_rewrite_counts_are_seeded(pages):
    seeds = sample_seed_pages(pages, ["wiki"], seeds=10, min_page_chars=50)
    assert sorted(p.url for p in seeds) == sorted([ADA, BABBAGE, ENGINE])
    assert sample_seed_pages(pages.iloc[::-1], ["wiki"], seeds=10, min_page_chars=50) == seeds
    cfg = E2HQAConfig(rewrites=(1, 2, 3), seed=5)
    counts = [rewrite_count(f"http://wiki.webdancer.test/wiki/{n}.html", cfg) for n in range(60)]
    assert set(counts) == {1, 2, 3}
    assert counts == [rewrite_count(f"http://wiki.webdancer.test/wiki/{n}.html", cfg) for n in range(60)]


@pytest.mark.parametrize(
    ("seed_reply", "reason"),
    [
        ("Ada Lovelace was born in 1815.", "not_json"),
        ("", "empty"),
        ({"question": "When was Ada Lovelace born?"}, "wrong_schema"),
        ({**SEED, "answer": "in the year of our lord eighteen fifteen"}, "answer_too_long"),
        ({**SEED, "question": "The question you wrote."}, "copied_prompt_example"),
        ({**SEED, "question": "..."}, "copied_prompt_example"),
        ({**SEED, "answer": "its short answer"}, "copied_prompt_example"),
        ({**SEED, "question": "Was Ada Lovelace born in 1815?"}, "answer_in_question"),
        ({**SEED, "question": "Ada Lovelace's year of birth"}, "not_a_question"),
        ({**SEED, "answer": "1820", "evidence": ""}, "ungrounded"),
        ({**SEED, "answer": "1820", "evidence": "she was born in 1820 in Paris"}, "ungrounded"),
        (ScriptedReply(status=400), "request_rejected"),
    ],
)
def test_bad_seeds_are_counted_drops(seed_pages, search, seed_reply, reason):
    teacher = Teacher([seed_reply])
    result = run(teacher, seed_pages, search, config())
    assert result.pairs == []
    (drop,) = result.drops
    assert (drop.stage, drop.reason, drop.item, drop.kind) == ("e2hqa_seed", reason, ADA, "e2hqa")
    assert teacher.prompts["entity"] == []  # a bad seed is never rewritten


def test_the_seed_prompt_states_the_word_limit_and_describes_the_keys(seed_pages, search):
    copied = "the sentence of the page that states the answer, copied word for word"
    teacher = Teacher([{**SEED, "evidence": copied}], [{"entity": "Ada Lovelace"}], [FIRST])
    result = run(teacher, seed_pages, search, config(max_answer_words=3))
    (prompt,) = teacher.prompts["seed"]
    assert "at most 3 words" in prompt and prompt.endswith(SEED_FORMAT) and "{" not in SEED_FORMAT
    assert [p.evidence for p in result.pairs] == [[]]  # a copied description quotes nothing; the answer grounds it


REWRITE_CASES = [
    ("Ada Lovelace", None, "not_json"),
    ({"entity": ""}, None, "empty"),
    ({"entity": "1815"}, None, "entity_is_answer"),
    ({"entity": "Alan Turing"}, None, "entity_not_in_question"),
    ({"entity": "Ada Lovelace"}, "", "empty"),
    ({"entity": "Ada Lovelace"}, {"description": "a mathematician"}, "wrong_schema"),
    (
        {"entity": "Ada Lovelace"},
        {**FIRST, "question": FIRST["question"].replace("born", "born in 1815")},
        "answer_in_question",
    ),
    ({"entity": "Ada Lovelace"}, {**FIRST, "question": SEED["question"] + " "}, "no_change"),
    ({"entity": "Ada Lovelace"}, {**FIRST, "question": FIRST["question"].rstrip("?")}, "not_a_question"),
    (
        {"entity": "Ada Lovelace"},
        {
            **FIRST,
            "question": "In which year was Ada Lovelace, the English mathematician and writer who worked "
            "with Charles Babbage, born?",
        },
        "entity_not_replaced",
    ),
    ({"entity": "Ada Lovelace"}, {**FIRST, "question": "In which year was she born?"}, "lost_entity"),
]


@pytest.mark.parametrize(("entity_reply", "rewrite_reply", "reason"), REWRITE_CASES)
def test_bad_rewrites_drop_the_pair_with_their_reason(seed_pages, search, entity_reply, rewrite_reply, reason):
    teacher = Teacher([SEED], [entity_reply], [] if rewrite_reply is None else [rewrite_reply])
    result = run(teacher, seed_pages, search, config())
    assert result.pairs == []
    (drop,) = result.drops
    assert (drop.stage, drop.reason, drop.kind) == ("e2hqa_rewrite", reason, "e2hqa")
    assert drop.item.startswith("qa-") and drop.detail.startswith("rewrite 1/1, attempt 1: ")
    assert len(teacher.prompts["rewrite"]) == (0 if rewrite_reply is None else 1)


def test_a_rewrite_whose_search_finds_only_blocked_hosts_is_dropped(seed_pages, search):
    teacher = Teacher([SEED], [{"entity": "Ada Lovelace"}])
    result = run(teacher, seed_pages, search, config(), blocked=(BENCH_HOST, "wiki.webdancer.test:80"))
    assert [(d.stage, d.reason) for d in result.drops] == [("e2hqa_rewrite", "no_search_results")]
    assert teacher.prompts["rewrite"] == []


def test_a_failed_attempt_is_retried_with_another_sample(seed_pages, search):
    unchanged = {**FIRST, "question": SEED["question"]}
    teacher = Teacher([SEED], [{"entity": "Ada Lovelace"}, {"entity": "Ada Lovelace"}], [unchanged, FIRST])
    with ScriptedLLMServer(teacher) as server:
        result = synthesize_e2hqa(
            seed_pages, ["wiki"], endpoint(server), search, [BENCH_HOST], config(attempts_per_rewrite=2)
        )
    assert [p.question for p in result.pairs] == [FIRST["question"]] and result.drops == []
    assert [p.difficulty for p in result.pairs] == [1]
    assert len(server.requests) == 5  # seed, then entity + rewrite twice


def test_final_questions_already_stored_are_duplicates(seed_pages, search):
    teacher = Teacher([SEED], [{"entity": "Ada Lovelace"}], [FIRST])
    result = run(teacher, seed_pages, search, config(), existing_questions=[FIRST["question"]])
    assert result.pairs == [] and [(d.stage, d.reason) for d in result.drops] == [("e2hqa", "duplicate")]


def test_rewrite_counts_must_not_be_negative():
    with pytest.raises(ValueError):
        E2HQAConfig(rewrites=(1, -1))
