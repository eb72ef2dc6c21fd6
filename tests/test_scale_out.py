"""Every setting the README's "Scale out" section names is loaded here, so a renamed field or a config that Dagster
would refuse fails a test instead of a user's first cluster run. The Kubernetes and Celery files are checked against
those packages' own schemas where they are installed (the `cluster` extra)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config

from webdancer_dagster.assets.training import sft_checkpoint
from webdancer_dagster.definitions import defs
from webdancer_dagster.executors import EXECUTOR_ENV, executor_from_environment
from webdancer_dagster.llm.server import ModelServerConfig, server_command
from webdancer_dagster.paths import REPO_ROOT
from webdancer_dagster.resources.torchrun import TorchrunLauncher, build_torchrun_command

DEPLOY = REPO_ROOT / "deploy"


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


def _training_job(executor: dg.ExecutorDefinition | None = None) -> dg.JobDefinition:
    """A job over `sft_checkpoint` with the project's resources: what the launchpad validates a run config against."""
    job = dg.define_asset_job("scale_out_check", selection=[sft_checkpoint.key])
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    return dg.Definitions(assets=assets, jobs=[job], resources=defs.resources, executor=executor).resolve_job_def(
        "scale_out_check"
    )


def _validate(job: dg.JobDefinition, run_config: dict) -> None:
    result = dg.validate_run_config(job, run_config)
    assert isinstance(result, dict)


def test_every_deploy_file_is_covered_here() -> None:
    assert sorted(path.name for path in DEPLOY.glob("*.yaml")) == [
        "celery.yaml",
        "dagster-k8s.yaml",
        "gpu-node.yaml",
        "multi-node.yaml",
        "multiprocess.yaml",
    ]


def test_the_multiprocess_executor_config_is_valid_run_config() -> None:
    _validate(_training_job(), _load("multiprocess.yaml"))
    with pytest.raises(dg.DagsterInvalidConfigError):
        _validate(_training_job(), {"execution": {"config": {"multiprocess": {"max_concurent": 4}}}})


def test_a_gpu_node_trains_on_every_gpu_and_serves_the_roles_with_vllm() -> None:
    config = _load("gpu-node.yaml")
    _validate(_training_job(), config)

    launcher = TorchrunLauncher(**config["resources"]["torchrun"]["config"])
    topology = launcher.topology(launcher.resolved_device(), default_rdzv_id="run-1")
    assert topology.nproc_per_node == 8 and launcher.worker_env("cuda").get("CUDA_VISIBLE_DEVICES") is None
    server = ModelServerConfig(**config["resources"]["llm_server"]["config"])
    command = server_command(server, port=8011)
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert {"--max-num-seqs", "64", "--max-model-len", "32768", "--tensor-parallel-size", "2"} <= set(command)
    assert "127.0.0.1" in command, "a served model listens on this machine only"


def test_several_nodes_share_one_elastic_rendezvous(tmp_path: Path) -> None:
    config = _load("multi-node.yaml")
    _validate(_training_job(), config)

    launcher = TorchrunLauncher(**config["resources"]["torchrun"]["config"])
    command = build_torchrun_command("webdancer_dagster.training.sft", ["--x", "1"], launcher.topology("cuda", "run-1"),
                                     tmp_path)  # fmt: skip
    joined = " ".join(command)
    assert "--nnodes=2" in joined and "--nproc-per-node=8" in joined
    assert "--rdzv-endpoint=train-node-0.cluster.internal:29400" in joined and "--rdzv-id=webdancer-sft-1" in joined
    assert "--local-addr=127.0.0.1" not in joined, "several nodes need the cluster network, not loopback"
    env = launcher.worker_env("cuda")
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"


def test_the_kubernetes_run_launcher_config_fits_dagster_k8s() -> None:
    k8s = pytest.importorskip("dagster_k8s", reason="the cluster extra is not installed: pip install -e '.[cluster]'")
    launcher = _load("dagster-k8s.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    processed = process_config(k8s.K8sRunLauncher.config_type(), launcher["config"])
    assert processed.success, processed.errors
    assert executor_from_environment("k8s") is k8s.k8s_job_executor


def test_the_celery_executor_config_fits_dagster_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    celery = pytest.importorskip(
        "dagster_celery", reason="the cluster extra is not installed: pip install -e '.[cluster]'"
    )
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    executor = executor_from_environment()
    assert executor is celery.celery_executor
    _validate(_training_job(executor), _load("celery.yaml"))


def test_an_unknown_executor_name_is_refused_with_the_choices() -> None:
    assert (
        executor_from_environment("") is None and executor_from_environment("multiprocess") is dg.multiprocess_executor
    )
    with pytest.raises(ValueError, match="WEBDANCER_EXECUTOR='slurm': expected one of default, multiprocess, celery"):
        executor_from_environment("slurm")
