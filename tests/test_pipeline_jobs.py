"""`webdancer materialize` runs the phase jobs the UI launches: its runs carry their names and the UI's code location
(so they show on the Overview timeline and the job's Runs tab), a profile from `profiles/` runs its own jobs, and each
run is as large as the phase allows."""

import dagster as dg
import pytest

from webdancer_dagster.assets.jobs import PROFILE_TAG, phase_jobs, profile_job_name
from webdancer_dagster.definitions import defs
from webdancer_dagster.pipeline import PROFILES_DIR, Profile, load_profile, materialize_all, plan_runs

sites = dg.StaticPartitionsDefinition(["a", "b"])


class Pages(dg.Config):
    max_pages: int = 1


@dg.asset(group_name="corpus")
def toy_sites() -> None:
    return None


@dg.asset(group_name="corpus", deps=[toy_sites], partitions_def=sites)
def toy_crawl(config: Pages) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"max_pages": config.max_pages})


@dg.asset(group_name="corpus", deps=[toy_crawl])
def toy_index() -> None:
    return None


@dg.asset(group_name="qa", deps=[toy_index])
def toy_pairs() -> None:
    return None


@dg.asset(group_name="trajectories", deps=[toy_pairs])
def toy_trajectories() -> None:
    return None


TOY_ASSETS = [toy_sites, toy_crawl, toy_index, toy_pairs, toy_trajectories]


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def test_the_runs_carry_the_phase_jobs_names(instance):
    toy = dg.Definitions(assets=TOY_ASSETS, jobs=phase_jobs(TOY_ASSETS, {}))

    results = materialize_all(toy, instance, run_config={"ops": {"toy_crawl": {"config": {"max_pages": 7}}}})

    runs = [
        (r.dagster_run.job_name, sorted(k.to_user_string() for k in r.dagster_run.asset_selection)) for r in results
    ]
    assert runs == [
        ("crawl", ["toy_sites"]),
        ("crawl", ["toy_crawl"]),
        ("crawl", ["toy_crawl"]),
        ("crawl", ["toy_index"]),
        ("synthesize", ["toy_pairs", "toy_trajectories"]),  # one run: the second follows the first inside it
    ]
    assert [r.dagster_run.tags.get("dagster/partition") for r in results] == [None, "a", "b", None, None]
    [crawled] = results[1].asset_materializations_for_node("toy_crawl")
    assert crawled.metadata["max_pages"].value == 7
    assert all(record.dagster_run.job_name != "__ephemeral_asset_job__" for record in instance.get_run_records())
    # Toy definitions are not the code location the UI loads: their runs are filed under none.
    assert all(record.dagster_run.remote_job_origin is None for record in instance.get_run_records())


def test_cli_runs_are_filed_under_the_code_location_the_ui_loads(instance):
    """Without it the UI leaves an in-process run off the Overview timeline and the job's Runs tab."""
    [result] = materialize_all(defs, instance, selection=["web_sites"])

    run = instance.get_run_by_id(result.run_id)
    origin = run.remote_job_origin
    assert origin is not None and origin.job_name == run.job_name == "crawl"
    assert origin.repository_origin.code_location_origin.location_name == "webdancer_dagster"  # workspace.yaml's
    assert origin.repository_origin.repository_name == "__repository__"
    label = "__repository__@webdancer_dagster"
    assert run.tags[".dagster/repository"] == label
    # The query behind a job's Runs tab in the UI: the job's name and the repository tag.
    filtered = instance.get_runs(filters=dg.RunsFilter(job_name="crawl", tags={".dagster/repository": label}))
    assert [found.run_id for found in filtered] == [result.run_id]
    assert run.is_success


def test_a_shipped_profile_runs_its_own_jobs_phase_by_phase():
    runs = plan_runs(defs, load_profile("smoke"))

    assert [(run.job, sorted(k.to_user_string() for k in run.keys), run.partition_key) for run in runs] == [
        ("crawl_smoke", ["web_sites"], None),
        ("crawl_smoke", ["crawl_pages"], "python-docs"),
        ("crawl_smoke", ["crawl_pages"], "wiki"),
        ("crawl_smoke", ["crawl_pages"], "musique"),
        ("crawl_smoke", ["search_index"], None),
        (
            "synthesize_smoke",
            ["crawlqa_pairs", "e2hqa_pairs", "reference_qa_pairs", "rl_pool", "sft_dataset", "trajectories"],
            None,
        ),
        ("train_smoke", ["base_model", "rl_checkpoint", "sft_checkpoint"], None),
        ("evaluate_smoke", ["benchmark_scores"], "musique|base"),
        ("evaluate_smoke", ["benchmark_scores"], "musique|sft"),
        ("evaluate_smoke", ["benchmark_scores"], "musique|rl"),
    ]


def test_another_run_config_runs_the_plain_jobs(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("ops:\n  crawl_pages:\n    config:\n      max_pages: 5\n")

    runs = plan_runs(defs, load_profile(str(path)), selection=["search_index", "crawlqa_pairs"])

    assert [(run.job, [k.to_user_string() for k in run.keys]) for run in runs] == [
        ("crawl", ["search_index"]),
        ("synthesize", ["crawlqa_pairs"]),
    ]


def test_selecting_one_output_of_a_multi_asset_runs_the_whole_multi_asset():
    """`funnel` writes `sft_dataset` and `rl_pool` in one step: selecting one of them failed with Dagster's
    DagsterInvalidSubsetError when its run was built."""
    runs = plan_runs(defs, load_profile("learn"), selection=["trajectories", "sft_dataset"])

    assert [(run.job, sorted(k.to_user_string() for k in run.keys)) for run in runs] == [
        ("synthesize_learn", ["rl_pool", "sft_dataset", "trajectories"]),
    ]


def test_every_profile_is_a_job_per_phase_with_its_config_and_tag():
    job_names = {job.name for job in defs.jobs or []}
    assert {"crawl", "synthesize", "train", "evaluate", "recrawl_sites"} <= job_names
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        profile = load_profile(str(path))
        for phase in ("crawl", "synthesize", "train", "evaluate"):
            job = defs.resolve_job_def(profile_job_name(phase, path.stem))
            assert job.tags[PROFILE_TAG] == path.stem
            assert f"profiles/{path.stem}.yaml" in (job.description or "")
            expected = {op: cfg for op, cfg in (profile.get("ops") or {}).items() if op in job.graph.node_names()}
            assert _default_config(job).get("ops", {}) == expected
            # A profile's resources (the learning profile's search setting) hold for every phase: the same web.
            assert _default_config(job).get("resources", {}) == (profile.get("resources") or {})


def _default_config(job: dg.JobDefinition) -> dict:
    """What the launchpad opens with (for a partitioned job: once a partition is picked, the same for every one)."""
    if job.partitioned_config is not None:
        configs = [
            job.partitioned_config.get_run_config_for_partition_key(key)
            for key in job.partitions_def.get_partition_keys()
        ]
        assert all(config == configs[0] for config in configs)
        return dict(configs[0])
    return dict(job.run_config or {})


class ToySearch(dg.ConfigurableResource):
    results_per_query: int = 10


@dg.asset(group_name="corpus")
def toy_search_sample(toy_search: ToySearch) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"results_per_query": toy_search.results_per_query})


@dg.asset(group_name="trajectories", deps=[toy_search_sample])
def toy_rollouts(toy_search: ToySearch) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"results_per_query": toy_search.results_per_query})


def test_a_profiles_resources_hold_in_every_phase(instance):
    assets = [toy_search_sample, toy_rollouts]
    toy = dg.Definitions(assets=assets, jobs=phase_jobs(assets, {}), resources={"toy_search": ToySearch()})

    results = materialize_all(
        toy, instance, run_config={"resources": {"toy_search": {"config": {"results_per_query": 5}}}}, benchmarks={}
    )

    assert [result.dagster_run.job_name for result in results] == ["crawl", "synthesize"]
    [sampled] = results[0].asset_materializations_for_node("toy_search_sample")
    [rolled_out] = results[1].asset_materializations_for_node("toy_rollouts")
    assert sampled.metadata["results_per_query"].value == rolled_out.metadata["results_per_query"].value == 5


def test_a_phase_job_holds_at_most_one_partitions_definition():
    assert (
        defs.resolve_job_def("crawl").partitions_def
        == defs.resolve_asset_graph().get(dg.AssetKey("crawl_pages")).partitions_def
    )
    assert defs.resolve_job_def("synthesize").partitions_def is None
    assert defs.resolve_job_def("train").partitions_def is None
    assert isinstance(defs.resolve_job_def("evaluate").partitions_def, dg.MultiPartitionsDefinition)


def test_a_profile_outside_profiles_has_no_name(tmp_path):
    assert load_profile("smoke").name == "smoke"
    path = tmp_path / "smoke.yaml"
    path.write_text("ops: {}\n")
    assert load_profile(str(path)).name is None
    assert Profile({}).name is None
