"""The one Definitions object the Dagster UI, the CLI and the tests load."""

import dagster as dg

from webdancer_dagster.assets import corpus, evaluation, qa, training, trajectories
from webdancer_dagster.assets.automation import automation_sensor
from webdancer_dagster.assets.jobs import phase_jobs
from webdancer_dagster.executors import executor_from_environment
from webdancer_dagster.pipeline import load_profiles
from webdancer_dagster.resources.llm import llm_resources
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment

warehouse = Warehouse()
assets = dg.load_assets_from_modules([corpus, qa, trajectories, training, evaluation])

defs = dg.Definitions(
    assets=assets,
    asset_checks=dg.load_asset_checks_from_modules([corpus, qa, trajectories, training, evaluation]),
    jobs=[corpus.recrawl_job, *phase_jobs(assets, load_profiles())],  # a job per phase, and per phase and profile
    schedules=[corpus.daily_recrawl, *corpus.site_schedules],  # one per live site declared in sites.yaml
    sensors=[automation_sensor],
    executor=executor_from_environment(),  # $WEBDANCER_EXECUTOR: Dagster's default, multiprocess, celery or k8s
    resources={
        "warehouse": warehouse,
        "web": WebEnvironment(warehouse=warehouse),
        "torchrun": TorchrunLauncher(),
        **llm_resources(warehouse),
    },
)
