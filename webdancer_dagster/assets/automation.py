"""What runs by itself, crawl to score: the named automation conditions of the stages and the sensor that
evaluates them.

Every condition is keyed on upstream *data versions* (content hashes), not on materializations: a re-crawl that
changed no page, or a rerun that rewrote the same rows, requests nothing downstream. Each stage follows the stage
before it one sensor tick later, once that stage's new data version is recorded. Training is expensive, so it
follows its inputs only when `WEBDANCER_AUTOMATE_TRAINING=1` was set when the definitions loaded; otherwise its
condition says how to turn it on. Nothing here runs without the Dagster daemon (`webdancer ui` starts it).
"""

from __future__ import annotations

import functools
import operator
import os
import warnings
from collections.abc import Iterable, Mapping

import dagster as dg

AUTOMATE_TRAINING_ENV = "WEBDANCER_AUTOMATE_TRAINING"
_ON = {"1", "true", "yes", "on"}
_OFF = {"", "0", "false", "no", "off"}


def automate_training(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether training follows its inputs by itself: `$WEBDANCER_AUTOMATE_TRAINING` is 1, true, yes or on."""
    value = environ.get(AUTOMATE_TRAINING_ENV, "").strip().lower()
    if value not in _ON | _OFF:
        raise ValueError(f"${AUTOMATE_TRAINING_ENV} is {value!r}: set it to 1 (training follows its inputs) or 0")
    return value in _ON


def when_inputs_change(label: str) -> dg.AutomationCondition:
    """Like `AutomationCondition.eager()`, but keyed on upstream data versions: true once some dependency has a new
    data version (from a run that did not also run this asset), or when this asset goes missing; never while a
    dependency is missing or in progress, or while this asset runs."""
    changed = dg.AutomationCondition.data_version_changed() & ~dg.AutomationCondition.executed_with_root_target()
    return (
        dg.AutomationCondition.in_latest_time_window()
        & (
            dg.AutomationCondition.newly_missing()
            | dg.AutomationCondition.any_deps_match(changed.with_label("new_data_version"))
        ).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(label)


class Disabled(dg.AutomationCondition):
    """Never true; its label tells the user in the UI what would turn the automation on."""

    def __init__(self, label: str) -> None:
        self._label = label

    @property
    def name(self) -> str:
        return "disabled"

    @property
    def description(self) -> str:
        return self._label

    def get_label(self) -> str | None:
        return self._label

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        return dg.AutomationResult(context, true_subset=context.get_empty_subset())


class PartitionsOf(dg.AutomationCondition):
    """True for the partitions of a multi-partitioned asset whose key in each named dimension is one of the values
    given for it (`model=["sft"], benchmark=["musique"]`); a dimension not named: any key."""

    def __init__(self, label: str, **keys: Iterable[str]) -> None:
        self._label = label
        self._keys = {dimension: frozenset(values) for dimension, values in keys.items()}

    @property
    def name(self) -> str:
        return "partitions_of"

    @property
    def description(self) -> str:
        return "; ".join(f"{dimension} in {sorted(values)}" for dimension, values in self._keys.items())

    def get_label(self) -> str | None:
        return self._label

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        partitions_def = context.partitions_def
        if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
            return dg.AutomationResult(context, true_subset=context.get_empty_subset())
        wanted = {
            key
            for key in partitions_def.get_partition_keys()
            if all(key.keys_by_dimension.get(dim) in values for dim, values in self._keys.items())
        }
        return dg.AutomationResult(
            context, true_subset=context.candidate_subset.compute_intersection_with_partition_keys(wanted)
        )


TRAINING_OFF = Disabled(f"training automation off: set {AUTOMATE_TRAINING_ENV}=1 where the UI starts to turn it on")


def training_condition(enabled: bool) -> dg.AutomationCondition:
    """`train_when_inputs_change` when training automation is on, else a condition that says how to turn it on."""
    return when_inputs_change("train_when_inputs_change") if enabled else TRAINING_OFF


def score_new_checkpoints(checkpoints: Mapping[str, str], benchmarks: Iterable[str]) -> dg.AutomationCondition:
    """For `benchmark_scores` (model x benchmark): a checkpoint with a new data version requests the partitions of
    its model (`checkpoints`: model -> checkpoint asset) on `benchmarks`; nothing else does."""
    benchmarks = sorted(benchmarks)
    triggers = [
        PartitionsOf(f"{model} on {', '.join(benchmarks)}", model=[model], benchmark=benchmarks)
        & dg.AutomationCondition.any_deps_match(
            dg.AutomationCondition.data_version_changed().with_label(f"new {asset} data version")
        ).allow(dg.AssetSelection.assets(asset))
        for model, asset in checkpoints.items()
    ]
    new_checkpoint = functools.reduce(operator.or_, triggers)
    return (
        new_checkpoint.since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("score_new_checkpoints")


# Evaluated in the code server (the partition filter and the switch are plain Python, which the daemon cannot
# evaluate; the parameter saying so is beta in Dagster 1.13), every 30 s while the daemon runs. Running by default:
# automation is the point of the conditions above, and each of them does nothing until some data version changes;
# training stays behind its own switch.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "webdancer_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        use_user_code_server=True,
        description="Evaluates every asset's automation condition (see the asset's page): each stage follows a new "
        f"data version of the stage before it; training only with {AUTOMATE_TRAINING_ENV}=1.",
    )
