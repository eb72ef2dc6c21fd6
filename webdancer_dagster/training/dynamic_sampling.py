"""DAPO's dynamic sampling: only groups whose rewards differ carry a learning signal, so keep only those.

A group (the rollouts of one prompt) whose answer rewards are all 0 or all 1 (DAPO's accuracy) has no answer signal
and, when the whole rewards are equal too, zero advantage everywhere: it only dilutes the token-level loss. Which
rewards a group is judged by is the caller's choice: the answer rewards (DAPO), or the whole rewards, so that an
all-wrong group in which some rollouts broke the format still teaches the format (verl's `filter_groups.metric`).
`fill_groups` oversamples prompts, drops such groups and draws replacements until the batch holds the requested
number of informative groups or the refill rounds are spent. TRL's GRPOTrainer has no such step; it runs inside the
rollout function, which may return groups for prompts other than the ones the sampler handed it. A batch still short
after the last round is topped up with dropped groups that the caller masks out of the loss, so the batch shape
never changes.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

RolloutT = TypeVar("RolloutT")


@dataclasses.dataclass(frozen=True)
class Group(Generic[RolloutT]):
    """The rollouts of one prompt, the rewards dynamic sampling compares, and the tokens their generation cost."""

    prompt: str
    rollouts: list[RolloutT]
    rewards: list[float]
    generated_tokens: int

    @property
    def informative(self) -> bool:
        """False when every reward is the same: the group teaches nothing by the rewards compared."""
        return len(set(self.rewards)) > 1


@dataclasses.dataclass(frozen=True)
class FilledBatch(Generic[RolloutT]):
    """The groups to train on, in order; `masked[i]` marks a dropped group kept only to fill the batch."""

    groups: list[Group[RolloutT]]
    masked: list[bool]
    rounds: int
    groups_sampled: int
    groups_dropped: int
    tokens_generated: int

    @property
    def dropped_share(self) -> float:
        """Share of sampled groups dropped for all-equal rewards (DAPO logs it per step)."""
        return self.groups_dropped / self.groups_sampled if self.groups_sampled else 0.0

    @property
    def tokens_trained(self) -> int:
        return sum(group.generated_tokens for group, masked in zip(self.groups, self.masked, strict=True) if not masked)

    @property
    def trained_token_share(self) -> float:
        """Share of generated tokens that reach a gradient step (the rest was spent on dropped or surplus groups)."""
        return self.tokens_trained / self.tokens_generated if self.tokens_generated else 0.0


def fill_groups(
    prompts: Sequence[str],
    sample: Callable[[Sequence[str]], list[Group[RolloutT]]],
    draw: Callable[[int, Sequence[str]], list[str]],
    *,
    oversample_factor: float,
    max_refill_rounds: int,
) -> FilledBatch[RolloutT]:
    """Sample groups for `prompts` (plus oversampled extra prompts) and return `len(prompts)` groups.

    `sample` rolls out a group per prompt; `draw(n, exclude)` gives up to n more prompts not in `exclude`.
    Informative groups are kept in sampling order; the requested prompts come first, so with nothing dropped the
    batch is exactly what the trainer's sampler chose.
    """
    needed = len(prompts)
    extra = draw(math.ceil(needed * (oversample_factor - 1.0)), prompts) if needed else []
    candidates = [*prompts, *extra]
    kept: list[Group[RolloutT]] = []
    dropped: list[Group[RolloutT]] = []
    sampled = tokens = rounds = 0
    while candidates:
        groups = sample(candidates)
        sampled += len(groups)
        tokens += sum(group.generated_tokens for group in groups)
        kept += [group for group in groups if group.informative]
        dropped += [group for group in groups if not group.informative]
        missing = needed - len(kept)
        if missing <= 0 or rounds >= max_refill_rounds:
            break
        rounds += 1
        seen = [group.prompt for group in (*kept, *dropped)]
        candidates = draw(math.ceil(missing * oversample_factor), seen)
    fillers = dropped[: max(0, needed - len(kept))]
    return FilledBatch(
        groups=kept[:needed] + fillers,
        masked=[False] * len(kept[:needed]) + [True] * len(fillers),
        rounds=rounds,
        groups_sampled=sampled,
        groups_dropped=len(dropped),
        tokens_generated=tokens,
    )


class PromptDrawer:
    """Draws refill prompts from the pool by measured pass rate, never repeating one the batch already has.

    Every sampled group is `record`ed, so the drawer knows how often the policy answered each prompt right. Refills
    come first from prompts it sometimes answers (pass rate strictly between 0 and 1: their groups are the ones
    dynamic sampling keeps), then from prompts not yet tried, last from those it always or never answered. Within a
    tier the least recently drawn comes first, ties broken by a seeded order, so draws are reproducible and every
    prompt of a tier gets its turn.
    """

    def __init__(self, prompts: Sequence[str], seed: int) -> None:
        self._prompts = list(dict.fromkeys(prompts))
        self._order = {
            prompt: rank for rank, prompt in enumerate(random.Random(seed).sample(self._prompts, len(self._prompts)))
        }
        self._last_drawn: dict[str, int] = {}
        self._draws = 0
        self._outcomes: dict[str, tuple[int, int]] = {}  # prompt -> (rollouts, rollouts answered right)

    def __call__(self, count: int, exclude: Sequence[str]) -> list[str]:
        excluded = set(exclude)
        available = [prompt for prompt in self._prompts if prompt not in excluded]
        drawn = sorted(available, key=lambda p: (self.tier(p), self._last_drawn.get(p, -1), self._order[p]))[:count]
        for prompt in drawn:
            self._draws += 1
            self._last_drawn[prompt] = self._draws
        return drawn

    def record(self, prompt: str, answer_rewards: Sequence[float]) -> None:
        """One sampled group's answer rewards (1 right, 0 not) for `prompt`."""
        rollouts, right = self._outcomes.get(prompt, (0, 0))
        self._outcomes[prompt] = (rollouts + len(answer_rewards), right + sum(r >= 1.0 for r in answer_rewards))

    def tier(self, prompt: str) -> int:
        """0: sometimes answered right; 1: not tried yet; 2: always or never answered right so far."""
        rollouts, right = self._outcomes.get(prompt, (0, 0))
        if rollouts == 0:
            return 1
        return 0 if 0 < right < rollouts else 2

    def pass_rates(self) -> dict[str, int]:
        """How many pool prompts were measured, and how many of them the policy sometimes, never or always answered."""
        measured = [self._outcomes[p] for p in self._prompts if p in self._outcomes]
        return {
            "pool": len(self._prompts),
            "measured": len(measured),
            "sometimes_right": sum(1 for rollouts, right in measured if 0 < right < rollouts),
            "never_right": sum(1 for _, right in measured if right == 0),
            "always_right": sum(1 for rollouts, right in measured if right == rollouts),
        }

    def state(self) -> dict[str, Any]:
        """The seeded order, the draw history and the measured outcomes (JSON-ready), so a resumed run draws what
        this one would."""
        return {
            "order": sorted(self._order, key=self._order.__getitem__),
            "last_drawn": dict(self._last_drawn),
            "draws": self._draws,
            "outcomes": {prompt: list(counts) for prompt, counts in self._outcomes.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        known = set(self._prompts)
        saved = [prompt for prompt in state.get("order", []) if prompt in known]
        unsaved = [prompt for prompt in self._prompts if prompt not in set(saved)]
        self._order = {prompt: rank for rank, prompt in enumerate([*saved, *unsaved])}
        self._last_drawn = {p: int(tick) for p, tick in state.get("last_drawn", {}).items() if p in known}
        self._draws = int(state.get("draws", 0))
        self._outcomes = {p: (int(n), int(right)) for p, (n, right) in state.get("outcomes", {}).items() if p in known}
