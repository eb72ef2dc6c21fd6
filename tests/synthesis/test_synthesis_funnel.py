"""The funnel stage by stage, rejection sampling (`rejection.py`), the RL pool, and the funnel over WebDancer's real
samples."""

from __future__ import annotations

import json
import threading

import pytest
from synth_helpers import answer_turn, endpoint, make_trajectory, search_turn, user_prompt

from webdancer_dagster.agent.trajectory import ChatMessage
from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion
from webdancer_dagster.evaluation.run import run_row
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.shared.judge import RETRY_SEPARATOR, judge_answer
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.funnel import (
    FunnelConfig,
    FunnelRecord,
    FunnelResult,
    StageVerdict,
    answer_support,
    check_correctness,
    check_quality,
    check_quality_rules,
    check_validity,
    grade_quality,
    is_held_out,
    render_for_grading,
    run_funnel,
    select_rl_pool,
    sft_records,
)
from webdancer_dagster.synthesis.reference import load_reference_trajectories
from webdancer_dagster.synthesis.rejection import Attempt, attempts_frame, attempts_from_frame, rejection_sample
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer, ScriptedReply
from webdancer_dagster.training.rollout import score_rollout

QUESTION = "In which year was the English mathematician who worked with Charles Babbage born?"
OBSERVATION = "1. [Ada Lovelace](http://wiki.webdancer.test/wiki/ada.html)\nAda Lovelace was born in London in 1815."
QA = QAPair(question=QUESTION, answer="1815", kind="e2hqa", source="e2hqa")
GOOD_GRADE = {"information_redundancy": 4, "goal_consistency": 5, "logical_reasoning": 4, "accuracy": 5}


def good(answer: str = "1815", **kwargs):
    return make_trajectory(
        QUESTION,
        [(search_turn("Babbage collaborator mathematician"), OBSERVATION), (answer_turn(answer), None)],
        **kwargs,
    )


def tool_call(name: str, arguments: dict) -> str:
    return f"<think>Next step.</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


@pytest.fixture(scope="module")
def references():
    return load_reference_trajectories(DATA_DIR / "webdancer_samples" / "sample_traj.jsonl")


# --- (a) validity ---------------------------------------------------------------------------------------------


def test_every_released_webdancer_trajectory_is_valid(references):
    verdicts = [check_validity(r.trajectory) for r in references]
    assert [v.reason for v in verdicts if not v.passed] == []


def test_a_clean_trajectory_is_valid():
    assert check_validity(good()) == StageVerdict("validity", True)


def _with_messages(trajectory, change):
    messages = [m.model_dump() for m in trajectory.messages]
    change(messages)
    return trajectory.model_copy(update={"messages": [ChatMessage(**m) for m in messages]})


INVALID = {
    "unknown_tool": lambda: make_trajectory(
        QUESTION,
        [(tool_call("browse", {"url": "http://x"}), "Error: Tool browse not found"), (answer_turn("1815"), None)],
    ),
    "invalid_arguments": lambda: make_trajectory(
        QUESTION, [(tool_call("visit", {"url": ["http://x"]}), "Error: Invalid arguments"), (answer_turn("1815"), None)]
    ),
    "format_error/missing think": lambda: make_trajectory(
        QUESTION,
        [
            ('<tool_call>{"name": "search", "arguments": {"query": ["a"]}}</tool_call>', OBSERVATION),
            (answer_turn("1815"), None),
        ],
    ),
    "format_error/repaired json": lambda: make_trajectory(
        QUESTION,
        [
            ('<think>x</think><tool_call>{"name": "search", "arguments": {"query": ["a"]}</tool_call>', OBSERVATION),
            (answer_turn("1815"), None),
        ],
    ),
    "format_error/no action": lambda: make_trajectory(QUESTION, [("<think>So it is 1815.</think> 1815", None)]),
    "format_error/empty turn": lambda: make_trajectory(QUESTION, [("", None)]),
    "no_answer/ends with an observation": lambda: make_trajectory(QUESTION, [(search_turn("ada"), OBSERVATION)]),
    "no_answer/ends with a tool call": lambda: _with_messages(
        good(), lambda m: m.__setitem__(-1, {**m[-1], "content": search_turn("x")})
    ),
    "no_answer/empty answer": lambda: make_trajectory(
        QUESTION, [(search_turn("ada"), OBSERVATION), ("<think>x</think><answer> </answer>", None)]
    ),
    "bad_structure/answer mid-way": lambda: make_trajectory(
        QUESTION, [(answer_turn("1815"), OBSERVATION), (answer_turn("1815"), None)]
    ),
    "bad_structure/bare observation": lambda: _with_messages(
        good(), lambda m: m.__setitem__(3, {"role": "user", "content": OBSERVATION})
    ),
    "bad_structure/no system prompt": lambda: _with_messages(good(), lambda m: m.pop(0)),
    "bad_structure/two assistant turns in a row": lambda: _with_messages(good(), lambda m: m.pop(3)),
    "forced_answer": lambda: good().model_copy(
        update={"termination": "context_limit_forced_answer", "forced_at_tokens": 900}
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_trajectories_are_dropped_with_their_reason(case):
    verdict = check_validity(INVALID[case]())
    assert (verdict.stage, verdict.passed, verdict.reason) == ("validity", False, case.split("/")[0])
    assert verdict.detail


@pytest.mark.parametrize("case", ["valid", *sorted(INVALID)])
def test_the_funnel_the_rl_reward_and_evaluation_agree_on_validity(case):
    """One meaning of valid: SFT data, the RL format reward and evaluation's format-valid rate."""
    trajectory = good() if case == "valid" else INVALID[case]()
    funnel = check_validity(trajectory).passed
    reward = score_rollout(QUESTION, ["1815"], trajectory, judge=None).format
    item = BenchmarkQuestion(id="q", question=QUESTION, answers=["1815"])
    evaluation = run_row(item, 0, trajectory, judge_answer(QUESTION, trajectory.answer, ["1815"], None))
    assert funnel == bool(reward) == evaluation["format_valid"] == (case == "valid")
    assert evaluation["format_reason"] == check_validity(trajectory).reason


def test_the_three_agree_on_every_released_trajectory(references):
    for reference in references[:50]:
        trajectory = reference.trajectory
        row = run_row(
            BenchmarkQuestion(id="q", question="q", answers=["a"]),
            0,
            trajectory,
            judge_answer("q", "x", ["a"], None),
        )
        assert check_validity(trajectory).passed and score_rollout("q", ["a"], trajectory, None).format == 1.0
        assert row["format_valid"] and row["answered"]


# --- (b) correctness ------------------------------------------------------------------------------------------


def test_exact_match_short_circuits_the_judge():
    qa = QA.model_copy(update={"answer_aliases": ["eighteen fifteen"]})
    with ScriptedLLMServer([]) as server:
        judge = endpoint(server, "judge")
        assert check_correctness(qa, good("The 1815."), judge) == StageVerdict("correctness", True, method="exact")
        assert check_correctness(qa, good("Eighteen-fifteen"), judge).method == "exact"
    assert server.requests == []


@pytest.mark.parametrize(
    ("replies", "passed", "reason"),
    [
        (["Correct"], True, ""),
        (["correct."], True, ""),
        (["Incorrect"], False, "incorrect"),
        (["<think>At first sight this looks correct, but the years differ.</think>\nIncorrect"], False, "incorrect"),
        (["I cannot tell.", "Incorrect"], False, "incorrect"),
        (["I cannot tell.", "I cannot tell."], False, "judge_unreadable"),
        (["", ""], False, "judge_unreadable"),
    ],
)
def test_the_judge_decides_otherwise_and_its_raw_replies_are_kept(replies, passed, reason):
    """A reply without a verdict is asked once more (the one judge's retry); both replies are kept."""
    with ScriptedLLMServer(replies) as server:
        verdict = check_correctness(QA, good("the year of the Battle of Waterloo"), endpoint(server, "judge"))
    raw = RETRY_SEPARATOR.join(replies)
    assert (verdict.passed, verdict.reason, verdict.raw, verdict.method) == (passed, reason, raw, "llm")
    assert len(server.requests) == len(replies)
    prompt = user_prompt(server.requests[0])
    assert QUESTION in prompt and "Labeled answer: 1815" in prompt and "the year of the Battle of Waterloo" in prompt


def test_without_a_capable_judge_the_rules_decide_alone():
    assert check_correctness(QA, good("in 1815"), None) == StageVerdict("correctness", True, method="contains")
    verdict = check_correctness(QA, good("the year of the Battle of Waterloo"), None)
    assert (verdict.passed, verdict.reason, verdict.method, verdict.raw) == (False, "incorrect", "unmatched", "")


def test_a_judge_request_the_server_rejects_is_a_counted_drop():
    with ScriptedLLMServer([ScriptedReply(status=400)]) as server:
        verdict = check_correctness(QA, good("the year of Waterloo"), endpoint(server, "judge"))
    assert (verdict.passed, verdict.reason) == (False, "judge_rejected") and "400" in verdict.detail


def test_a_trajectory_without_an_answer_is_not_judged():
    with ScriptedLLMServer([]) as server:
        verdict = check_correctness(QA, INVALID["no_answer/ends with an observation"](), endpoint(server, "judge"))
    assert (verdict.passed, verdict.reason, server.requests) == (False, "no_answer", [])


# --- (c) quality ----------------------------------------------------------------------------------------------


def test_quality_rules_pass_a_focused_supported_trajectory():
    verdict = check_quality_rules(QA, good(), FunnelConfig())
    assert (verdict.passed, verdict.method) == (True, "rules")


@pytest.mark.parametrize(
    ("turns", "overrides", "reason"),
    [
        ([(answer_turn("1815"), None)], {}, "too_few_actions"),
        (
            [(search_turn("a"), OBSERVATION), (search_turn("b"), OBSERVATION), (answer_turn("1815"), None)],
            {"max_actions": 1},
            "too_many_actions",
        ),
        (
            [
                (search_turn("Ada  Lovelace"), OBSERVATION),
                (search_turn("ada lovelace"), OBSERVATION),
                (answer_turn("1815"), None),
            ],
            {},
            "repeated_call",
        ),
        (
            [(search_turn("ada"), "Ada Lovelace was a mathematician."), (answer_turn("1815"), None)],
            {},
            "unsupported_answer",
        ),
    ],
)
def test_quality_rules_drop_with_their_reason(turns, overrides, reason):
    verdict = check_quality_rules(QA, make_trajectory(QUESTION, turns), FunnelConfig(**overrides))
    assert (verdict.stage, verdict.passed, verdict.reason) == ("quality", False, reason)


def test_answer_support_ignores_question_words_and_accepts_yes_no():
    observations = ["The Analytical Engine was designed by Charles Babbage in 1837."]
    assert answer_support("Who designed it?", "Charles Babbage", ["Babbage"], observations) == 1.0
    assert answer_support("Who designed the Analytical Engine?", "Alan Turing", ["Alan Turing"], observations) == 0.0
    assert answer_support("Who designed the Analytical Engine?", "The Analytical Engine", ["x y"], []) == 1.0
    assert answer_support("Was it designed in 1837?", "Yes, in 1837", ["Yes."], []) == 1.0
    assert answer_support("q?", "Babbage and Turing", ["Turing"], observations) == 0.5


@pytest.mark.parametrize(
    ("reply", "passed", "reason"),
    [
        (json.dumps(GOOD_GRADE), True, ""),
        (json.dumps(dict.fromkeys(GOOD_GRADE, 2.5)), False, "low_grade"),
        (json.dumps({**GOOD_GRADE, "accuracy": 1}), False, "low_grade"),
        ("A fine trajectory overall.", False, "grade_not_json"),
        ("", False, "grade_empty"),
        (json.dumps({**GOOD_GRADE, "accuracy": 7}), False, "grade_wrong_schema"),
        (ScriptedReply(status=400), False, "grade_request_rejected"),
    ],
)
def test_the_llm_grade_keeps_or_drops_and_stores_scores(reply, passed, reason):
    with ScriptedLLMServer([reply]) as server:
        verdict = grade_quality(QA, good(), endpoint(server, "judge"), FunnelConfig())
    assert (verdict.stage, verdict.passed, verdict.reason, verdict.method) == ("quality", passed, reason, "llm")
    if reason in ("", "low_grade"):
        assert verdict.scores == json.loads(reply) and verdict.raw == reply
    prompt = user_prompt(server.requests[0])
    assert "Gold answer: 1815" in prompt and "Action: search" in prompt and "born in London in 1815" in prompt


def test_the_grade_request_can_carry_the_score_schema():
    with ScriptedLLMServer([json.dumps(GOOD_GRADE)]) as server:
        grade_quality(QA, good(), endpoint(server, "judge"), FunnelConfig(json_format="object_with_schema"))
    response_format = server.requests[0]["response_format"]
    assert response_format["type"] == "json_object"
    assert set(response_format["schema"]["properties"]) == set(GOOD_GRADE)


def test_rules_run_before_the_grade_and_the_grade_is_optional():
    with ScriptedLLMServer([]) as server:
        dropped = check_quality(
            QA, make_trajectory(QUESTION, [(answer_turn("1815"), None)]), endpoint(server), FunnelConfig()
        )
    assert dropped.reason == "too_few_actions" and server.requests == []
    assert check_quality(QA, good(), None, FunnelConfig()).method == "rules"


def test_the_grader_sees_clipped_observations():
    text = render_for_grading(QA, good(), FunnelConfig(observation_chars=50))
    assert "Observation: 1. [Ada Lovelace](http://wiki.webdancer.test/wiki/ada.html)"[:50] in text
    assert "[...]" in text and "Final answer: 1815" in text


# --- rejection sampling, the funnel and the RL pool -------------------------------------------------------------


def test_rejection_sampling_stops_at_the_first_valid_correct_attempt():
    calls = []
    samples = {
        0: INVALID["format_error/no action"](),
        1: good("It was 1820"),
        2: good("1815"),
        3: good("1815"),
    }

    def run_agent(question: str, sample_index: int):
        calls.append((question, sample_index))
        return samples[sample_index].model_copy(update={"sample_index": sample_index})

    with ScriptedLLMServer(["Incorrect"]) as server:
        attempts = rejection_sample([QA], run_agent, endpoint(server, "judge"), k=4)
    assert calls == [(QUESTION, 0), (QUESTION, 1), (QUESTION, 2)]
    assert [(a.trajectory.sample_index, a.accepted) for a in attempts] == [(0, False), (1, False), (2, True)]
    assert attempts[0].correctness is None  # invalid attempts are never judged
    assert attempts[1].correctness.reason == "incorrect" and attempts[2].correctness.method == "exact"
    assert len(server.requests) == 1
    assert len({a.id for a in attempts}) == 3


def test_rejection_sampling_keeps_all_k_failures_and_runs_pairs_in_parallel_in_order():
    other = QAPair(
        question="Who designed the Analytical Engine?", answer="Charles Babbage", kind="e2hqa", source="e2hqa"
    )
    threads = set()

    def run_agent(question: str, sample_index: int):
        threads.add(threading.current_thread().name)
        trajectory = good("Alan Turing") if question == other.question else good("1820")
        return trajectory.model_copy(update={"sample_index": sample_index, "question": question})

    with ScriptedLLMServer(lambda request: "Incorrect") as server:
        attempts = rejection_sample([QA, other], run_agent, endpoint(server, "judge"), k=2, max_workers=2)
    assert [(a.qa.id, a.trajectory.sample_index) for a in attempts] == [
        (QA.id, 0),
        (QA.id, 1),
        (other.id, 0),
        (other.id, 1),
    ]
    assert not any(a.accepted for a in attempts) and len(server.requests) == 4
    assert len(threads) == 2
    with pytest.raises(ValueError, match="k >= 1"):
        rejection_sample([QA], run_agent, endpoint(server, "judge"), k=0)


def _accepted(qa: QAPair, answer: str = "1815") -> Attempt:
    passed = StageVerdict("correctness", True, method="exact")
    return Attempt(qa, good(answer), StageVerdict("validity", True), passed)


def test_the_funnel_counts_in_kept_and_dropped_per_stage_and_reason():
    second = QAPair(
        question="Who designed the Analytical Engine?", answer="Charles Babbage", kind="count", source="crawlqa"
    )
    attempts = [
        Attempt(QA, INVALID["unknown_tool"](), check_validity(INVALID["unknown_tool"]())),
        Attempt(
            QA,
            good("1820"),
            StageVerdict("validity", True),
            StageVerdict("correctness", False, "incorrect", raw="Incorrect"),
        ),
        _accepted(QA),
        Attempt(
            second,
            make_trajectory(
                second.question,
                [
                    (search_turn("engine designer"), "Charles Babbage designed it."),
                    (answer_turn("Charles Babbage"), None),
                ],
                sample_index=1,
            ),
            StageVerdict("validity", True),
            StageVerdict("correctness", True, method="llm", raw="Correct"),
        ),
    ]
    replies = {QA.question: json.dumps(GOOD_GRADE), second.question: json.dumps(dict.fromkeys(GOOD_GRADE, 2))}
    with ScriptedLLMServer(lambda r: next(v for k, v in replies.items() if k in user_prompt(r))) as server:
        result = run_funnel(attempts, endpoint(server, "judge"), max_workers=2)
    assert len(server.requests) == 2  # only accepted attempts are graded
    assert result.stage_table().to_dict("records") == [
        {"stage": "validity", "in": 4, "kept": 3, "dropped": 1},
        {"stage": "correctness", "in": 3, "kept": 2, "dropped": 1},
        {"stage": "quality", "in": 2, "kept": 1, "dropped": 1},
    ]
    assert result.drop_table().to_dict("records") == [
        {"stage": "validity", "reason": "unknown_tool", "count": 1},
        {"stage": "correctness", "reason": "incorrect", "count": 1},
        {"stage": "quality", "reason": "low_grade", "count": 1},
    ]
    frame = result.records_frame()
    assert list(frame["kept"]) == [False, False, True, False]
    assert list(frame["reason"]) == ["unknown_tool", "incorrect", "", "low_grade"]
    assert frame.loc[1, "judge_raw"] == "Incorrect" and json.loads(frame.loc[2, "grade_scores"]) == GOOD_GRADE
    (record,) = sft_records(result)
    assert record["qa_id"] == QA.id and record["id"] == attempts[2].id
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert record["cot_mode"] == "short" and sft_records(result, cot_modes=("long",)) == []
    with pytest.raises(ValueError, match="CoT modes are short, long; got"):
        sft_records(result, cot_modes=("medium",))  # type: ignore[arg-type]


def test_the_rl_pool_takes_unsolved_pairs_and_a_stable_held_out_share():
    pairs = [
        QAPair(question=f"Question number {n}?", answer=str(n), kind="count", source="crawlqa") for n in range(400)
    ]
    solved = [FunnelRecord(_accepted(p), StageVerdict("quality", True)) for p in pairs[:300]]
    failed = [FunnelRecord(Attempt(p, good(), StageVerdict("validity", False, "format_error"))) for p in pairs[300:350]]
    result = FunnelResult(solved + failed)
    pool = select_rl_pool(pairs, result, held_out_share=0.2, seed=1)
    unsolved = [p.id for p in pool.pairs if pool.reasons[p.id] == "unsolved"]
    assert unsolved == [p.id for p in pairs[300:]]  # failed funnel or never sampled
    held_out = pool.held_out_ids
    assert 30 <= len(held_out) <= 90 and held_out <= {p.id for p in pairs[:300]}
    assert select_rl_pool(list(reversed(pairs)), result, held_out_share=0.2, seed=1).held_out_ids == held_out
    assert select_rl_pool(pairs, result, held_out_share=0.2, seed=2).held_out_ids != held_out
    sft_ids = {r["qa_id"] for r in sft_records(result, held_out)}
    assert sft_ids == {p.id for p in pairs[:300]} - held_out
    assert select_rl_pool(pairs, result).held_out_ids == frozenset()
    # A question known only from its attempt (a released trajectory) joins the pool when the funnel drops it.
    only_attempted = select_rl_pool(pairs[:300], result)
    assert [p.id for p in only_attempted.pairs] == [p.id for p in pairs[300:350]]
    assert not is_held_out("qa-x", 0.0)
    with pytest.raises(ValueError, match="held_out_share"):
        select_rl_pool(pairs, result, held_out_share=1.0)


def test_attempts_round_trip_through_the_trajectories_table():
    attempts = [
        Attempt(QA, INVALID["unknown_tool"](), check_validity(INVALID["unknown_tool"]())),
        Attempt(
            QA,
            good("1820", sample_index=1),
            StageVerdict("validity", True),
            StageVerdict("correctness", False, "incorrect", raw="Incorrect", method="llm"),
        ),
    ]
    frame = attempts_frame(attempts)
    assert list(frame["accepted"]) == [False, False] and list(frame["validity_reason"]) == ["unknown_tool", ""]
    # The stored verdict's field names are the table's: rows written before stay readable.
    assert set(json.loads(frame.loc[1, "correctness"])) == {"stage", "passed", "reason", "detail", "raw", "method",
                                                            "scores"}  # fmt: skip
    assert attempts_from_frame(frame, {QA.id: QA}) == attempts


def test_the_funnel_over_webdancer_samples(references):
    """The released trajectories, judged by a permissive judge: all valid and correct, rules keep nearly all."""
    by_question = {r.qa.question: r for r in references}
    with ScriptedLLMServer(lambda request: "Correct") as server:
        attempts = rejection_sample(
            [r.qa for r in references],
            lambda question, index: by_question[question].trajectory,
            endpoint(server, "judge", max_concurrency=8),
            k=3,
            max_workers=8,
        )
    assert len(attempts) == 200 and all(a.accepted for a in attempts)
    result = run_funnel(attempts, None)
    stages = result.stage_table().set_index("stage")
    assert stages.loc["validity", "kept"] == 200 and stages.loc["correctness", "kept"] == 200
    assert stages.loc["quality", "kept"] >= 190
    assert set(result.drop_table()["reason"]) <= {"unsupported_answer", "too_many_actions", "repeated_call"}
