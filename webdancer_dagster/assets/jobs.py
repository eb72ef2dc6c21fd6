"""The operator's entry points: one job per phase of the graph, and one more per profile in `profiles/` with that
profile's run config as its default config (what the launchpad opens with; Dagster has no presets any more).

A job may hold unpartitioned assets and assets of one partitions definition, not two; each phase has at most one:
`crawl` is partitioned by site (a run for one site also rebuilds `web_sites` and `search_index`, a crawl from
scratch), `evaluate` by model x benchmark, `synthesize` and `train` not at all. The whole graph has both, so no
single job can run it: in the UI, "Materialize all" on the asset graph (an asset backfill) does; in a terminal,
`webdancer materialize` runs these jobs phase by phase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from webdancer_dagster.pipeline import Profile

# Phase -> the asset groups it runs, in the order the phases depend on each other.
PHASES: dict[str, tuple[str, ...]] = {
    "crawl": ("corpus",),
    "synthesize": ("qa", "trajectories", "sft"),
    "train": ("training",),
    "evaluate": ("evaluation",),
}
PHASE_DESCRIPTIONS = {
    "crawl": "Build the local sites, crawl one site (the partition), rebuild the search index.",
    "synthesize": "QA pairs (CRAWLQA, E2HQA, the released ones), trajectories by rejection sampling, the funnel into "
    "the SFT set and the RL pool.",
    "train": "The base model, SFT, then DAPO (one training step at a time: the `training` pool).",
    "evaluate": "One model on one benchmark (the partition): Pass@1, Pass@k, Cons@k.",
}
PROFILE_TAG = "webdancer/profile"


def phase_of_group(group: str | None) -> str | None:
    return next((phase for phase, groups in PHASES.items() if group in groups), None)


def profile_job_name(phase: str, profile: str) -> str:
    """`train_smoke`: the job of `phase` whose default config is the profile's (any other character becomes `_`)."""
    return f"{phase}_{re.sub(r'[^A-Za-z0-9_]', '_', profile)}"


def phase_selection(phase: str) -> dg.AssetSelection:
    return dg.AssetSelection.groups(*PHASES[phase])


def profile_config(profile: Mapping[str, Any], op_names: Iterable[str]) -> dict[str, Any]:
    """A profile's run config for the ops in one job or run, and for the resources: the same environment for every
    run of the profile (a profile's `partitions:` section is not run config)."""
    names = set(op_names)
    ops = {name: config for name, config in (profile.get("ops") or {}).items() if name in names}
    resources = dict(profile.get("resources") or {})
    return {key: value for key, value in (("ops", ops), ("resources", resources)) if value}


def phase_jobs(
    assets: Sequence[dg.AssetsDefinition], profiles: Mapping[str, Profile]
) -> list[dg.UnresolvedAssetJobDefinition]:
    """The phase jobs, then for each profile one job per phase with the profile's config as its default."""
    jobs = []
    for phase, groups in PHASES.items():
        in_phase = [a for a in assets if set(a.group_names_by_key.values()) & set(groups)]
        op_names = {a.node_def.name for a in in_phase}
        jobs.append(dg.define_asset_job(phase, selection=phase_selection(phase), description=PHASE_DESCRIPTIONS[phase]))
        for name, profile in profiles.items():
            about = [PHASE_DESCRIPTIONS[phase], f"Default config: profiles/{name}.yaml.", profile.about]
            asset_names = {key.to_user_string() for a in in_phase for key in a.keys}
            about += [
                f"The profile runs these {asset} partitions: {_partitions_text(chosen)}."
                for asset, chosen in (profile.get("partitions") or {}).items()
                if asset in asset_names and chosen is not None
            ]
            jobs.append(
                dg.define_asset_job(
                    profile_job_name(phase, name),
                    selection=phase_selection(phase),
                    config=profile_config(profile, op_names) or None,
                    tags={PROFILE_TAG: name},
                    description=" ".join(part for part in about if part),
                )
            )
    return jobs


def _partitions_text(chosen: Any) -> str:
    if isinstance(chosen, Mapping):
        return ", ".join(f"{dimension} {list(keys)}" for dimension, keys in chosen.items())
    return str(list(chosen))
