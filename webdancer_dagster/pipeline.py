"""Materialize the whole asset graph in dependency order, one run per partition, recorded in a Dagster instance.

This is what `webdancer materialize` (and the README's main command) runs; the runs show in the UI with
their metadata and lineage because they go to the same DAGSTER_HOME the UI reads.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from webdancer_dagster.assets.jobs import PHASES, PROFILE_TAG, phase_of_group, profile_config, profile_job_name
from webdancer_dagster.concurrency import DAGSTER_YAML, EARLIER_DAGSTER_YAMLS
from webdancer_dagster.config_files import ConfigFileError, Location, YamlDocument, dotted, read_yaml
from webdancer_dagster.evaluation.benchmarks import BenchmarkSource, check_benchmark_files
from webdancer_dagster.files import write_text_atomic
from webdancer_dagster.paths import DATA_DIR

if TYPE_CHECKING:
    from dagster._core.remote_origin import CodeLocationOrigin

log = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
WORKSPACE_YAML = Path(__file__).resolve().parent.parent / "workspace.yaml"
# What a profile may hold; Dagster's other run-config sections (execution, loggers) are not applied.
PROFILE_SECTIONS = {
    "ops": "Dagster run config of each asset's op: `ops: {crawl_pages: {config: {max_pages: 200}}}`",
    "resources": "Dagster run config of a resource, for every run of the profile: "
    "`resources: {web: {config: {search_results_per_query: 5}}}`",
    "partitions": "which partitions of an asset the profile runs: `partitions: {crawl_pages: [python-docs]}`",
}


class ProfileError(ConfigFileError):
    """A profile that cannot run as written: an unknown section, op, field, asset, partition or a value of the wrong
    type. Raised before the first run starts; the message names the file and line of every problem."""


class Profile(dict[str, Any]):
    """A profile's run config (a plain dict to everything that reads it) that remembers its file and the line of
    each entry, so that problems found once the definitions are loaded can still name `file:line`."""

    def __init__(self, data: Mapping[str, Any] | None = None, document: YamlDocument | None = None) -> None:
        super().__init__(data or {})
        self.document = document

    @property
    def name(self) -> str | None:
        """The name of a profile in `profiles/`, whose jobs are `<phase>_<name>`; None for any other file."""
        path = self.document.path if self.document else None
        return path.stem if path is not None and path.resolve().parent == PROFILES_DIR.resolve() else None

    @property
    def about(self) -> str:
        """The comment lines the profile's file opens with: what the profile is for."""
        if self.document is None:
            return ""
        lines = self.document.path.read_text(encoding="utf-8").splitlines()
        opening = itertools.takewhile(lambda line: line.startswith("#"), lines)
        return " ".join(text for text in (line.lstrip("#").strip() for line in opening) if text)


def load_profile(name_or_path: str) -> Profile:
    """Run config of a profile: `smoke`, `full`, or a path to a YAML file of the same shape.

    Checked here: the file reads as UTF-8 YAML, a mapping of the `PROFILE_SECTIONS`, with no key twice. The ops,
    fields, types and partitions are checked against the definitions by `validate_profile`.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(f"profile {name_or_path!r} not found ({path}); known profiles: {known}")
    document = read_yaml(path, "profile", ProfileError)
    if document.data is not None and not isinstance(document.data, dict):
        raise ProfileError(
            f"{document.at()}: a profile is a mapping with `ops:` and `partitions:`, got {type(document.data).__name__}"
        )
    profile = Profile(document.data, document)
    problems = _section_problems(profile)
    if problems:
        raise ProfileError(_report(profile, problems))
    return profile


def load_profiles(directory: Path = PROFILES_DIR) -> dict[str, Profile]:
    """Every profile in `profiles/` by name (each becomes one job per phase, selectable in the launchpad)."""
    return {path.stem: load_profile(str(path)) for path in sorted(directory.glob("*.yaml"))}


def validate_profile(
    defs: dg.Definitions, run_config: Mapping[str, Any], selection: Sequence[str] | None = None
) -> None:
    """Check a whole profile against the definitions before anything runs; raises `ProfileError` listing every
    problem with its file and line.

    Checked: the sections; every op named under `ops:` exists (Dagster's asset-job config accepts unknown op names,
    so a misspelt one would otherwise be ignored); every op's config against its schema (unknown fields, wrong
    types), all at once rather than when that asset's level runs; the `resources:` config against the resources'
    schemas; every asset, dimension and key under `partitions:`; every `selection` name.
    """
    problems = _section_problems(run_config)
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    ops = run_config.get("ops") or {}
    if isinstance(ops, Mapping):
        op_names = set(job.graph.node_names())
        known = {name: config for name, config in ops.items() if name in op_names}
        problems += [(("ops", name), _unknown_op(defs, name, op_names)) for name in ops if name not in op_names]
        problems += _config_problems(job, {"ops": known})
    resources = run_config.get("resources") or {}
    if isinstance(resources, Mapping) and resources:
        names = sorted(defs.resources or {})
        unknown = [name for name in resources if name not in names]
        problems += [
            (
                ("resources", name),
                f"no resource named {name!r}{_did_you_mean(name, names)}; resources: {', '.join(names)}",
            )
            for name in unknown
        ]
        problems += _config_problems(job, {"resources": {k: v for k, v in resources.items() if k not in unknown}})
    partitions = run_config.get("partitions") or {}
    if isinstance(partitions, Mapping):
        asset_names = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
        for name, wanted in partitions.items():
            key = dg.AssetKey.from_user_string(str(name))
            if not graph.has(key):
                problems.append((("partitions", name), f"no asset named {name!r}{_did_you_mean(name, asset_names)}"))
            elif graph.get(key).partitions_def is None:
                problems.append((("partitions", name), f"asset {name!r} is not partitioned"))
            elif wanted is not None:
                choice = _partition_choice_problems(graph.get(key).partitions_def, wanted)
                problems += [(("partitions", name, *where), message) for where, message in choice]
    if problems:
        raise ProfileError(_report(run_config, problems))
    if selection:
        asset_names = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
        unknown = [name for name in selection if not graph.has(dg.AssetKey.from_user_string(name))]
        if unknown:
            hints = "".join(_did_you_mean(name, asset_names) for name in unknown)
            raise ProfileError(f"--select: no asset named {', '.join(map(repr, unknown))}{hints}")


def ensure_dagster_home(dagster_home: Path) -> Path:
    """A DAGSTER_HOME the CLI's runs and `dagster dev` share: its `dagster.yaml` (telemetry off, the run queue, the
    pools' limit: `concurrency.DAGSTER_YAML`) is written when missing, or when it still holds exactly what an
    earlier version wrote; a file the user edited is never touched."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text() in EARLIER_DAGSTER_YAMLS:
        write_text_atomic(config, DAGSTER_YAML)
    return dagster_home


def partition_keys(partitions_def: dg.PartitionsDefinition, wanted: Any = None) -> list[str]:
    """Every key, or the profile's choice: a list of keys, or for a multi-partitioned asset one list per
    dimension (`{model: [base, sft], benchmark: [musique]}`, a missing dimension meaning all of its keys)."""
    keys = list(partitions_def.get_partition_keys())
    if wanted is None:
        return keys
    problems = _partition_choice_problems(partitions_def, wanted)
    if problems:
        raise ValueError(problems[0][1])
    if isinstance(partitions_def, dg.MultiPartitionsDefinition) and isinstance(wanted, Mapping):
        return [
            key
            for key in keys
            if all(value in wanted[dim] for dim, value in key.keys_by_dimension.items() if dim in wanted)  # type: ignore[attr-defined]
        ]
    return [key for key in keys if key in wanted]


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None = None,
    selection: list[str] | None = None,
    *,
    benchmarks: Mapping[str, BenchmarkSource] | None = None,
    data_dir: Path = DATA_DIR,
) -> list[dg.ExecuteInProcessResult]:
    """Run every asset (or `selection`) through the phase jobs (`assets/jobs.py`), phase by phase: each run is
    as large as its job and the dependencies allow, a partitioned asset once per partition key, or per key of the
    run config's `partitions:` section (not Dagster run config: it picks which partitions a profile runs). A
    profile from `profiles/` runs its own jobs (`train_smoke`), any other run config the plain ones (`train`), so
    the runs carry the names the UI launches and show on its Overview timeline. Assets in no phase job (a test's
    toy definitions) run level by level as ephemeral runs.

    Before the first run: `validate_profile`, then every benchmark file (and declared corpus) of `benchmarks`
    (default: the registry the definitions were built from) is read as a run would, so a config mistake stops
    the command with its file and line before anything is materialized. Raises on the first failed run, so a
    broken stage never feeds the next one.
    """
    run_config = run_config or {}
    validate_profile(defs, run_config, selection)
    if benchmarks is None:
        from webdancer_dagster.assets.registries import REGISTRY

        benchmarks = REGISTRY.benchmarks
    check_benchmark_files(benchmarks, data_dir)
    results = []
    for planned in plan_runs(defs, run_config, selection):
        names = sorted(key.to_user_string() for key in planned.keys)
        where = f" [{planned.partition_key}]" if planned.partition_key else ""
        log.info("materializing %s%s (job %s)", names, where, planned.job or "__ephemeral_asset_job__")
        result = _execute(defs, instance, planned, run_config)
        _log_failed_checks(result)
        results.append(result)
    return results


@dataclass(frozen=True)
class PlannedRun:
    job: str | None  # None: no phase job holds these assets
    keys: list[dg.AssetKey]
    partition_key: str | None = None


def plan_runs(
    defs: dg.Definitions, run_config: Mapping[str, Any] | None = None, selection: Sequence[str] | None = None
) -> list[PlannedRun]:
    """The runs `materialize_all` makes, in order: the phases in turn; in a phase, every unpartitioned asset whose
    upstream is done or in the same run goes into one run of the phase's job, a partitioned one gets a run per key.
    A selected asset brings the other outputs of a multi-asset that only runs whole (`funnel`: `sft_dataset` and
    `rl_pool`)."""
    run_config = run_config or {}
    graph = defs.resolve_asset_graph()
    job_names = {job.name for job in defs.jobs or []}
    profile = run_config.name if isinstance(run_config, Profile) else None
    wanted = (
        dg.AssetSelection.assets(*map(dg.AssetKey.from_user_string, selection))
        .required_multi_asset_neighbors()
        .resolve(graph)
        if selection
        else None
    )
    topo = [key for level in graph.toposorted_asset_keys_by_level for key in level]
    pending = [key for key in topo if (wanted is None or key in wanted) and graph.get(key).is_materializable]

    def job_of(key: dg.AssetKey) -> str | None:
        phase = phase_of_group(graph.get(key).group_name)
        names = [profile_job_name(phase, profile)] if phase and profile else []
        return next((name for name in [*names, phase] if name in job_names), None)

    def phase_rank(key: dg.AssetKey) -> int:
        phase = phase_of_group(graph.get(key).group_name)
        return list(PHASES).index(phase) if phase else len(PHASES)

    by_phase = sorted(pending, key=lambda key: (phase_rank(key), topo.index(key)))
    if all(_upstream_first(graph, by_phase, key) for key in by_phase):
        pending = by_phase
    runs: list[PlannedRun] = []
    done: set[dg.AssetKey] = {key for key in topo if key not in pending}
    while pending:
        first, job = pending[0], job_of(pending[0])
        partitions_def = graph.get(first).partitions_def
        batch = [first]
        if partitions_def is not None:
            chosen = (run_config.get("partitions") or {}).get(first.to_user_string())
            runs += [PlannedRun(job, [first], key) for key in partition_keys(partitions_def, chosen)]
        else:
            for key in pending[1:]:
                ready = done | set(batch) if job else done  # an ephemeral run holds one level, as before
                if graph.get(key).partitions_def is None and job_of(key) == job and graph.get(key).parent_keys <= ready:
                    batch.append(key)
            runs.append(PlannedRun(job, batch))
        done.update(batch)
        pending = [key for key in pending if key not in batch]
    return runs


def _upstream_first(graph: Any, order: list[dg.AssetKey], key: dg.AssetKey) -> bool:
    position = order.index(key)
    return all(parent not in order or order.index(parent) < position for parent in graph.get(key).parent_keys)


def _execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, planned: PlannedRun, run_config: Mapping[str, Any]
) -> dg.ExecuteInProcessResult:
    op_names = {defs.get_assets_def(key).node_def.name for key in planned.keys}
    config = profile_config(run_config, op_names)  # a multi-asset's op is named after its function
    if planned.job is None:
        return dg.materialize(
            assets=[a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)] + list(defs.asset_checks or []),
            selection=planned.keys,
            instance=instance,
            resources=defs.resources or {},
            partition_key=planned.partition_key,
            run_config=config,
            raise_on_error=True,
        )
    document = run_config.document if isinstance(run_config, Profile) else None
    tags = {PROFILE_TAG: str(document.path)} if document and not run_config.name else {}  # type: ignore[attr-defined]
    return run_job_in_process(
        defs,
        planned.job,
        instance,
        run_config=config,
        partition_key=planned.partition_key,
        asset_selection=planned.keys,
        tags=tags,
    )


def run_job_in_process(
    defs: dg.Definitions, job_name: str, instance: dg.DagsterInstance, **execute_args: Any
) -> dg.ExecuteInProcessResult:
    """Run a job of `defs` in this process (`execute_in_process`, raising on a failed step) and, when `defs` are the
    project's definitions, file the run under the code location the UI loads from `workspace.yaml`, as a run launched
    from the UI is. Dagster files an in-process run under no code location, and the UI then leaves it off the
    Overview timeline and the job's Runs tab (dagster-io/dagster#17707)."""
    from webdancer_dagster.definitions import defs as project_defs

    run_id = str(uuid.uuid4())
    try:
        return defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_id=run_id, raise_on_error=True, **execute_args
        )
    finally:
        location = _ui_code_location() if defs is project_defs else None  # a test's toy definitions are filed nowhere
        if location is not None:
            _file_run_under_location(instance, run_id, job_name, location)


def _file_run_under_location(
    instance: dg.DagsterInstance, run_id: str, job_name: str, location: CodeLocationOrigin
) -> None:
    """Record `location` as the origin of a stored run of `job_name`, with the repository tag the UI filters a job's
    runs by. Run storage's own call for moving runs between locations does the writing."""
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    run = instance.get_run_by_id(run_id)
    if run is None or run.remote_job_origin is not None:
        return
    repository = RemoteRepositoryOrigin(code_location_origin=location, repository_name=SINGLETON_REPOSITORY_NAME)
    instance.add_run_tags(run_id, {REPOSITORY_LABEL_TAG: repository.get_label()})
    tagged = instance.get_run_by_id(run_id)
    instance.run_storage.replace_job_origin(tagged, RemoteJobOrigin(repository_origin=repository, job_name=job_name))


@functools.cache
def _ui_code_location() -> CodeLocationOrigin | None:
    """The code location origin `workspace.yaml` gives the project's definitions (what `dagster dev` loads), read once
    a process; None where the file is missing."""
    from dagster._core.workspace.load_target import location_origins_from_yaml_paths

    if not WORKSPACE_YAML.exists():
        return None
    [location] = location_origins_from_yaml_paths([str(WORKSPACE_YAML)])
    return location


def _log_failed_checks(result: dg.ExecuteInProcessResult) -> None:
    """A warning in the terminal for each check that did not pass, in its own words: a non-blocking check (a stage
    that produced nothing) does not stop the run, so this is where a CLI user reads it."""
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            log.warning(
                "check %s of %s: %s",
                evaluation.check_name,
                evaluation.asset_key.to_user_string(),
                evaluation.description or "failed (see its metadata in the UI)",
            )


def _section_problems(run_config: Mapping[str, Any]) -> list[tuple[Location, str]]:
    problems: list[tuple[Location, str]] = []
    for section, value in run_config.items():
        if section not in PROFILE_SECTIONS:
            sections = "; ".join(f"`{name}:` {what}" for name, what in PROFILE_SECTIONS.items())
            problems.append(((section,), f"unknown section (a profile has {sections})"))
        elif value is not None and not isinstance(value, Mapping):
            problems.append(((section,), f"expected a mapping, got {type(value).__name__}"))
    return problems


def _report(run_config: Mapping[str, Any], problems: list[tuple[Location, str]]) -> str:
    document = run_config.document if isinstance(run_config, Profile) else None
    source = str(document.path) if document else "run config"
    lines = [
        f"{document.at(*where) if document else source}: {dotted(where)}: {message}" for where, message in problems
    ]
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"{source}: {count}, found before any run started:\n  " + "\n  ".join(lines)


def _did_you_mean(name: Any, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _unknown_op(defs: dg.Definitions, name: str, op_names: set[str]) -> str:
    key = dg.AssetKey.from_user_string(str(name))
    graph = defs.resolve_asset_graph()
    if graph.has(key) and graph.get(key).is_materializable:
        op = defs.get_assets_def(key).node_def.name
        return f"{name!r} is an asset made by the op {op!r}: put its config under ops.{op}"
    return f"no op named {name!r}{_did_you_mean(name, sorted(op_names))}; it would be ignored"


def _config_problems(job: dg.JobDefinition, run_config: Mapping[str, Any]) -> list[tuple[Location, str]]:
    """Every way `run_config` (ops or resources) breaks the job's config schema (Dagster reports them all at once)."""
    try:
        dg.validate_run_config(job, dict(run_config))
    except dg.DagsterInvalidConfigError as invalid:
        return [problem for error in invalid.errors for problem in _describe_config_error(job, error)]
    return []


def _describe_config_error(job: dg.JobDefinition, error: Any) -> list[tuple[Location, str]]:
    location: Location = tuple(
        part if isinstance(part, int) else str(part)
        for entry in getattr(error.stack, "entries", [])  # fields, list items and map keys, from the root
        for part in [
            next((getattr(entry, a) for a in ("field_name", "list_index", "map_key") if hasattr(entry, a)), None)
        ]
        if part is not None
    )
    data = error.error_data
    undefined = getattr(data, "field_names", None) or ([data.field_name] if hasattr(data, "field_name") else [])
    reason = getattr(error.reason, "name", "")
    if reason.startswith("FIELD") and undefined:  # FIELD_NOT_DEFINED, FIELDS_NOT_DEFINED
        fields = _schema_fields(job, location)
        listing = f"; fields: {', '.join(fields)}" if fields else ""
        return [((*location, name), f"unknown field{_did_you_mean(name, fields)}{listing}") for name in undefined]
    if reason.startswith("MISSING_REQUIRED") and undefined:
        return [(location, f"missing required field {', '.join(map(repr, undefined))}")]
    snap = getattr(data, "config_type_snap", None)
    if reason == "RUNTIME_TYPE_MISMATCH" and snap is not None and hasattr(data, "value_rep"):
        kind = getattr(snap.kind, "name", "")
        expected = "a list" if kind == "ARRAY" else "a mapping" if kind.endswith(("SHAPE", "MAP", "SELECTOR")) else None
        return [(location, f"expected {expected or snap.given_name or snap.key}, got {data.value_rep}")]
    message = re.sub(r" at (path root(:\S+?)*(?=[.\s])|the root)", "", str(error.message).split(". Expected:")[0])
    return [(location, message)]


def _schema_fields(job: dg.JobDefinition, location: Location) -> list[str]:
    """The field names the job's config schema allows at `location` (empty where that cannot be told)."""
    config_type: Any = job.run_config_schema.config_type
    try:
        for part in location:
            config_type = getattr(config_type, "inner_type", config_type)  # Noneable
            config_type = config_type.fields[part].config_type
        config_type = getattr(config_type, "inner_type", config_type)
        return sorted(config_type.fields)
    except (AttributeError, KeyError, TypeError):
        return []


def _partition_choice_problems(partitions_def: dg.PartitionsDefinition, wanted: Any) -> list[tuple[Location, str]]:
    """What is wrong with a profile's choice of partitions: a list of keys, or for a multi-partitioned asset a
    mapping of dimension to a list of its keys. Locations are relative to the asset's entry."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition) and isinstance(wanted, Mapping):
        dimensions = {
            dimension.name: list(dimension.partitions_def.get_partition_keys())
            for dimension in partitions_def.partitions_defs
        }
        unknown = [dim for dim in wanted if dim not in dimensions]
        if unknown:
            return [((unknown[0],), f"unknown partition dimensions {unknown}; dimensions: {sorted(dimensions)}")]
        problems: list[tuple[Location, str]] = []
        for dim, values in wanted.items():
            if not isinstance(values, list):
                example = dimensions[dim][0] if dimensions[dim] else "key"
                problems.append(((dim,), f"expected a list of {dim} keys, e.g. [{example}], got {values!r}"))
                continue
            missing = [value for value in values if value not in dimensions[dim]]
            if missing:
                hint = _did_you_mean(missing[0], dimensions[dim])
                problems.append(
                    ((dim, values.index(missing[0])), f"{dim} {missing} do not exist{hint}; known: {dimensions[dim]}")
                )
        return problems
    keys = list(partitions_def.get_partition_keys())
    if not isinstance(wanted, list):
        shape = "a list of keys" + (
            " or a mapping of dimension to a list of keys"
            if isinstance(partitions_def, dg.MultiPartitionsDefinition)
            else ""
        )
        return [((), f"expected {shape}, got {wanted!r}")]
    missing = [key for key in wanted if key not in keys]
    if missing:
        hint = _did_you_mean(missing[0], keys)
        return [((wanted.index(missing[0]),), f"partitions {missing} do not exist{hint}; known: {keys}")]
    return []
