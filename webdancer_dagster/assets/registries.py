"""The registries the definitions are built from, read once when they load ("Reload definitions" rereads them).

The evaluation registry (`evaluation.yaml`) names the models and benchmarks, the keys of the `benchmark_scores`
partitions; its benchmarks that bring a corpus become benchmark-flagged local sites. The site registry
(`sites.yaml`) names the live sites. Together they give the `crawl_pages` partitions.
"""

from pathlib import Path

import dagster as dg

from webdancer_dagster.evaluation.registry import Registry, default_registry
from webdancer_dagster.paths import DATA_DIR, PYTHON_DOC_DIR
from webdancer_dagster.web.site_registry import SiteRegistry, default_site_registry
from webdancer_dagster.web.sites import SiteSpec, default_site_specs


def site_specs(data_dir: Path, python_doc_dir: Path, registry: Registry) -> list[SiteSpec]:
    """The project's sites plus one benchmark-flagged site per declared benchmark that brings a corpus."""
    specs = default_site_specs(data_dir, python_doc_dir)
    taken = {spec.name for spec in specs}
    for name, source in registry.corpus_benchmarks.items():
        if name in taken:
            raise ValueError(f"declared benchmark {name!r} would replace the site of the same name; rename it")
        description = source.description or f"corpus of the declared benchmark {name}; never read by synthesis"
        specs.append(SiteSpec(name, "corpus", Path(str(source.corpus)), benchmark=True, description=description))
    return specs


REGISTRY = default_registry()
LOCAL_SITE_SPECS = site_specs(DATA_DIR, PYTHON_DOC_DIR, REGISTRY)
LOCAL_SITE_NAMES = [spec.name for spec in LOCAL_SITE_SPECS]
SITE_REGISTRY: SiteRegistry = default_site_registry(taken=LOCAL_SITE_NAMES)
SITE_NAMES = [*LOCAL_SITE_NAMES, *SITE_REGISTRY.sites]
site_partitions = dg.StaticPartitionsDefinition(SITE_NAMES)
