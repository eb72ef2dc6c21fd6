"""The one Definitions object the Dagster UI, the CLI and the tests load."""

import dagster as dg

from webdancer_dagster.assets import corpus, evaluation, qa, training, trajectories
from webdancer_dagster.resources.llm import llm_resources
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment

warehouse = Warehouse()

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([corpus, qa, trajectories, training, evaluation]),
    asset_checks=dg.load_asset_checks_from_modules([corpus, qa, trajectories, training, evaluation]),
    jobs=[corpus.recrawl_job],
    schedules=[corpus.daily_recrawl, *corpus.site_schedules],  # one per live site declared in sites.yaml
    resources={
        "warehouse": warehouse,
        "web": WebEnvironment(warehouse=warehouse),
        "torchrun": TorchrunLauncher(),
        **llm_resources(warehouse),
    },
)
