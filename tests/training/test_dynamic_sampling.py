"""Dynamic sampling: all-0 and all-1 groups are dropped and refilled; a batch never changes size."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from webdancer_dagster.training.dynamic_sampling import Group, PromptDrawer, fill_groups

# Each prompt's answer rewards for a group of 4: "mixed" prompts teach something, "zero" and "one" do not.
OUTCOMES = {"zero": [0.0] * 4, "one": [1.0] * 4, "mixed": [1.0, 0.0, 0.0, 1.0]}


class Sampler:
    """Rolls out groups whose rewards are fixed by the prompt's name, recording every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: Sequence[str]) -> list[Group[str]]:
        self.calls.append(list(prompts))
        return [Group(p, [f"{p}#{i}" for i in range(4)], OUTCOMES[p.split("-")[0]], 10) for p in prompts]


def drawer_of(prompts: list[str]):
    queue = list(prompts)

    def draw(count: int, exclude: Sequence[str]) -> list[str]:
        drawn = [prompt for prompt in queue if prompt not in exclude][:count]
        for prompt in drawn:
            queue.remove(prompt)
        return drawn

    return draw


def test_informative_groups_are_kept_in_order_without_refill() -> None:
    sampler = Sampler()

    batch = fill_groups(
        ["mixed-a", "mixed-b"], sampler, drawer_of(["mixed-c"]), oversample_factor=1.0, max_refill_rounds=2
    )

    assert [group.prompt for group in batch.groups] == ["mixed-a", "mixed-b"]
    assert batch.masked == [False, False]
    assert sampler.calls == [["mixed-a", "mixed-b"]]
    assert (batch.rounds, batch.groups_dropped, batch.dropped_share, batch.trained_token_share) == (0, 0, 0.0, 1.0)


def test_all_zero_and_all_one_groups_are_dropped_and_refilled() -> None:
    sampler = Sampler()

    batch = fill_groups(
        ["zero-a", "mixed-a", "one-a"],
        sampler,
        drawer_of(["zero-b", "mixed-b", "mixed-c", "mixed-d"]),
        oversample_factor=1.5,
        max_refill_rounds=2,
    )

    # Round 0 oversamples ceil(3 x 0.5) = 2 extra prompts; both replacements are needed after "zero-b" fails.
    assert sampler.calls[0] == ["zero-a", "mixed-a", "one-a", "zero-b", "mixed-b"]
    assert [group.prompt for group in batch.groups] == ["mixed-a", "mixed-b", "mixed-c"]
    assert batch.masked == [False, False, False]
    assert all(group.informative for group in batch.groups)
    assert batch.groups_dropped == 3 and batch.groups_sampled == 5 + len(sampler.calls[1])
    assert batch.dropped_share == pytest.approx(3 / batch.groups_sampled)


def test_a_batch_still_short_after_the_last_round_is_filled_with_masked_dropped_groups() -> None:
    sampler = Sampler()

    batch = fill_groups(
        ["zero-a", "one-a"], sampler, drawer_of(["zero-b", "mixed-b"]), oversample_factor=1.0, max_refill_rounds=1
    )

    assert len(sampler.calls) == 2 and sampler.calls[1] == ["zero-b", "mixed-b"]
    assert [group.prompt for group in batch.groups] == ["mixed-b", "zero-a"]
    assert batch.masked == [False, True]
    assert (batch.groups_sampled, batch.groups_dropped, batch.rounds) == (4, 3, 1)
    assert batch.trained_token_share == pytest.approx(10 / 40)


def test_surplus_informative_groups_cost_tokens_but_are_not_trained() -> None:
    batch = fill_groups(["mixed-a"], Sampler(), drawer_of(["mixed-b"]), oversample_factor=2.0, max_refill_rounds=0)

    assert [group.prompt for group in batch.groups] == ["mixed-a"]
    assert (batch.tokens_generated, batch.tokens_trained) == (20, 10)


def test_prompt_drawer_is_seeded_and_never_repeats_or_returns_excluded_prompts() -> None:
    pool = [f"q{i}" for i in range(6)]

    first = PromptDrawer(pool, seed=3)(4, exclude=["q0", "q1"])
    again = PromptDrawer(pool, seed=3)(4, exclude=["q0", "q1"])

    assert first == again
    assert sorted(first) == ["q2", "q3", "q4", "q5"]
    assert PromptDrawer(pool, seed=3)(10, exclude=pool[:5]) == ["q5"]


def test_a_restored_drawer_draws_what_the_saved_one_would_have_drawn() -> None:
    pool = [f"q{i}" for i in range(7)]
    running = PromptDrawer(pool, seed=5)
    running(3, exclude=[])
    saved = json.loads(json.dumps(running.state()))  # as it travels through a checkpoint file

    restored, unrestored = PromptDrawer(pool, seed=99), PromptDrawer(pool, seed=99)
    restored.restore(saved)

    expected = [running(2, exclude=["q0"]) for _ in range(5)]
    assert [restored(2, exclude=["q0"]) for _ in range(5)] == expected
    assert [unrestored(2, exclude=["q0"]) for _ in range(5)] != expected


def test_refills_come_first_from_prompts_the_policy_sometimes_answers_then_untried_then_the_rest() -> None:
    pool = [f"q{i}" for i in range(6)]
    drawer = PromptDrawer(pool, seed=1)
    drawer.record("q0", [0.0, 0.0, 0.0, 0.0])  # never right
    drawer.record("q1", [1.0, 1.0, 1.0, 1.0])  # always right
    drawer.record("q2", [0.0, 1.0, 0.0, 0.0])  # sometimes: the only kind whose groups dynamic sampling keeps
    drawer.record("q3", [0.0, 0.0, 0.0, 0.0])
    drawer.record("q3", [1.0, 1.0, 1.0, 1.0])  # all wrong once and all right once is sometimes, too

    first = drawer(4, exclude=[])

    assert set(first[:2]) == {"q2", "q3"} and set(first[2:]) == {"q4", "q5"}
    for prompt in ("q4", "q5"):  # what sampling their groups would record
        drawer.record(prompt, [0.0, 0.0, 0.0, 0.0])
    assert set(drawer(2, exclude=["q2", "q3"])) == {"q0", "q1"}, "among the rest, the least recently drawn first"
    assert drawer(1, exclude=[])[0] in {"q2", "q3"}
    assert drawer.pass_rates() == {"pool": 6, "measured": 6, "sometimes_right": 2, "never_right": 3, "always_right": 1}
