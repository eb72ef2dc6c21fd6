"""What the "green over empty" checks share: a non-blocking result that says in words what a stage produced nothing
of (or trained on nothing) and where to look, and the metadata of an asset's latest materialization they read.

Each such check is a warning (`severity=WARN`, never blocking), so a weak offline teacher does not stop the
pipeline, yet a stage that made nothing no longer reads as a plain green.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg


def warn_unless(problems: Sequence[str], fine: str, metadata: Mapping[str, Any] | None = None) -> dg.AssetCheckResult:
    """Passed, described by `fine`, when there are no `problems`; else a warning described by the problems. The
    words go both into the result's description and into its `summary` metadata, which the UI shows."""
    summary = " ".join(problems) if problems else fine
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description=summary,
        metadata={"summary": dg.MetadataValue.text(summary), **(metadata or {})},
    )


def latest_metadata(context: dg.AssetCheckExecutionContext, asset: str) -> dict[str, Any] | None:
    """The plain values of the metadata of `asset`'s latest materialization; None when it was never materialized."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return None
    return {key: value.value for key, value in materialization.metadata.items()}


def check_latest_metadata(
    context: dg.AssetCheckExecutionContext,
    asset: str,
    verdict: Callable[[Mapping[str, Any]], tuple[Sequence[str], str, Mapping[str, Any]]],
) -> dg.AssetCheckResult:
    """`warn_unless` over what `verdict` makes of the metadata of `asset`'s latest materialization (its problems, the
    words when there are none, the check's metadata); a warning when there is none yet."""
    record = latest_metadata(context, asset)
    if record is None:
        return never_materialized(asset)
    return warn_unless(*verdict(record))


def never_materialized(asset: str) -> dg.AssetCheckResult:
    """The warning of a check that reads the metadata of an asset with no materialization yet."""
    return warn_unless([f"{asset} has no materialization yet: materialize it, and this check reads what it did."], "")


def counts_text(counts: Mapping[str, int], top: int = 3) -> str:
    """`{"not_json": 5, "ungrounded": 2}` as "not_json 5, ungrounded 2", the `top` largest first."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{name} {count}" for name, count in ranked[:top])
    return shown + (f" and {len(ranked) - top} more" if len(ranked) > top else "")
