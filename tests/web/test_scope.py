"""Which hosts each stage's agent may reach, read from the `sites` table: the local sites through the proxy, the
declared live sites directly, benchmark sites never in synthesis."""

import pandas as pd

from webdancer_dagster.training.config import RolloutEnvironment
from webdancer_dagster.web.scope import LocalSites, WebScope

PROXY = "http://127.0.0.1:8899"


def _sites() -> pd.DataFrame:
    rows = [
        ("wiki", "wiki.webdancer.test", False, "local", False),
        ("musique", "musique.webdancer.test", True, "local", False),
        ("ehaweb", "ehaweb.org", False, "live", False),
        ("intranet", "127.0.0.1", False, "live", True),
        ("benchmark-live", "webwalker.example", True, "live", False),
    ]
    columns = ["name", "host", "benchmark", "kind", "allow_private_network"]
    return pd.DataFrame(rows, columns=columns)


def test_synthesis_fetches_the_live_sites_directly_and_never_a_benchmark_site() -> None:
    scope = WebScope.synthesis(LocalSites.from_table(_sites()), PROXY)

    assert scope.fetch.allowed_hosts == {"wiki.webdancer.test", "ehaweb.org", "127.0.0.1"}
    assert scope.fetch.direct_hosts == {"ehaweb.org", "127.0.0.1"}
    assert scope.fetch.private_network_hosts == {"127.0.0.1"}, "only the entry that allows it"
    assert scope.blocked_hosts == {"musique.webdancer.test", "webwalker.example"}


def test_evaluation_reaches_every_site_and_a_benchmark_live_site_directly() -> None:
    scope = WebScope.every_local_site(LocalSites.from_table(_sites()), PROXY)

    assert "webwalker.example" in scope.fetch.allowed_hosts and "webwalker.example" in scope.fetch.direct_hosts
    assert "musique.webdancer.test" not in scope.fetch.direct_hosts and scope.fetch.proxy_url == PROXY


def test_a_sites_table_from_before_live_sites_reads_as_all_local() -> None:
    old = _sites().drop(columns=["kind", "allow_private_network"])

    scope = WebScope.synthesis(LocalSites.from_table(old), PROXY)

    assert scope.fetch.direct_hosts == frozenset() and scope.fetch.private_network_hosts == frozenset()


def test_the_rollout_environment_file_rebuilds_the_same_scope() -> None:
    scope = WebScope.synthesis(LocalSites.from_table(_sites()), PROXY)

    environment = RolloutEnvironment.of_scope(
        scope, search_index="/index", summarizer={"role": "summarizer", "base_url": PROXY, "model": "s"}
    )

    assert RolloutEnvironment.model_validate_json(environment.model_dump_json()).scope() == scope
