"""The torchrun launcher: command building (pure), and real launches through Dagster Pipes on 2 CPU processes."""

import json
import os
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from webdancer_dagster.resources.torchrun import (
    CPU_MALLOC_TUNABLES,
    TorchrunLauncher,
    TorchrunTopology,
    build_torchrun_command,
    worker_log_tail,
)
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.training.config import SFTHyperparameters, to_cli_args
from webdancer_dagster.training.sft import LOSS_HISTORY_FILE

SFT_MODULE = "webdancer_dagster.training.sft"


def _flags(command: list[str]) -> list[str]:
    """The torchrun flags: everything between `torch.distributed.run` and `-m <module>`."""
    return command[3 : command.index("-m", 3)]


def test_single_node_rendezvous_is_on_loopback(tmp_path: Path) -> None:
    command = build_torchrun_command(
        SFT_MODULE, ["--max_steps", "1"], TorchrunTopology(nproc_per_node=2, rdzv_id="run-1"), tmp_path / "logs"
    )

    assert command[:3] == [sys.executable, "-m", "webdancer_dagster.training.loopback_torchrun"]
    assert _flags(command) == [
        "--nnodes=1",
        "--nproc-per-node=2",
        "--loopback-only",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        "--rdzv-id=run-1",
        "--local-addr=127.0.0.1",
        "--max-restarts=0",
        f"--log-dir={tmp_path / 'logs'}",
        "--tee=3",
    ]
    assert command[-4:] == ["-m", SFT_MODULE, "--max_steps", "1"]


def test_elastic_multi_node_rendezvous(tmp_path: Path) -> None:
    topology = TorchrunTopology(
        nproc_per_node=8, nnodes=4, rdzv_endpoint="head:29400", rdzv_id="sft-42", max_restarts=3
    )

    flags = _flags(build_torchrun_command(SFT_MODULE, [], topology, tmp_path))

    assert flags[:5] == [
        "--nnodes=4",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=head:29400",
        "--rdzv-id=sft-42",
    ]
    assert "--max-restarts=3" in flags and "--loopback-only" not in flags


def test_static_multi_node_rendezvous(tmp_path: Path) -> None:
    topology = TorchrunTopology(nproc_per_node=1, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500)

    flags = _flags(build_torchrun_command(SFT_MODULE, [], topology, tmp_path))

    assert flags[:5] == [
        "--nnodes=2",
        "--nproc-per-node=1",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29500",
    ]
    assert not any(flag.startswith("--rdzv") or flag == "--loopback-only" for flag in flags)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"nproc_per_node": 0}, ">= 1"),
        ({"nproc_per_node": 1, "nnodes": 2}, "need a rendezvous"),
        ({"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": "h:1", "master_addr": "h", "master_port": 1}, "not both"),
        ({"nproc_per_node": 1, "nnodes": 2, "master_addr": "h"}, "master_port"),
        ({"nproc_per_node": 1, "nnodes": 2, "node_rank": 2, "master_addr": "h", "master_port": 1}, "node_rank 2"),
        ({"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": "h:1"}, "rdzv_id"),
        ({"nproc_per_node": 1, "max_restarts": -1}, "max_restarts"),
    ],
)
def test_inconsistent_topologies_are_rejected(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TorchrunTopology(**fields)


def test_resource_defaults_to_one_cpu_process_with_gpus_hidden(monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    launcher = TorchrunLauncher(device="cpu", extra_env={"OMP_NUM_THREADS": "2"})

    topology = launcher.topology("cpu", default_rdzv_id="run-1")

    assert (topology.nproc_per_node, topology.nnodes, topology.rdzv_id) == (1, 1, "run-1")
    assert launcher.worker_env("cpu") == {
        "OMP_NUM_THREADS": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "GLIBC_TUNABLES": CPU_MALLOC_TUNABLES,
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
        "WEBDANCER_PARENT_PID": str(os.getpid()),
    }
    cluster = TorchrunLauncher(
        device="cuda", nnodes=2, rdzv_endpoint="head:29400", extra_env={"NCCL_SOCKET_IFNAME": "eth1"}
    )
    assert cluster.worker_env("cuda") == {"NCCL_SOCKET_IFNAME": "eth1", "WEBDANCER_PARENT_PID": str(os.getpid())}
    assert launcher.resolved_device() == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        TorchrunLauncher(device="tpu").resolved_device()


def test_a_glibc_tunables_setting_of_the_users_wins_and_an_empty_field_keeps_glibcs_defaults(monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert "GLIBC_TUNABLES" not in TorchrunLauncher(cpu_malloc_tunables="").worker_env("cpu")
    assert "GLIBC_TUNABLES" not in TorchrunLauncher().worker_env("cuda")
    own = "glibc.malloc.arena_max=2"
    assert TorchrunLauncher(extra_env={"GLIBC_TUNABLES": own}).worker_env("cpu")["GLIBC_TUNABLES"] == own
    monkeypatch.setenv("GLIBC_TUNABLES", own)
    assert "GLIBC_TUNABLES" not in TorchrunLauncher().worker_env("cpu")  # the worker inherits the user's own


def _write_rank_logs(log_dir: Path, attempt: int, stderr_by_rank: dict[int, str]) -> None:
    for rank, text in stderr_by_rank.items():
        folder = log_dir / "run_x" / f"attempt_{attempt}" / str(rank)
        folder.mkdir(parents=True)
        (folder / "stderr.log").write_text(text)


def test_log_tail_shows_the_last_attempts_failed_ranks_once_per_distinct_error(tmp_path: Path) -> None:
    boom = "step\nTraceback (most recent call last):\nValueError: boom"
    _write_rank_logs(tmp_path, 0, {0: "Traceback (most recent call last):\nOSError: first attempt"})
    _write_rank_logs(tmp_path, 1, {0: "loading\nfine", 1: boom, 2: "Traceback\nKeyError: x", 3: boom})

    tail = worker_log_tail(tmp_path, lines=2)

    assert tail == (
        "--- local ranks 1, 3 stderr ---\nTraceback (most recent call last):\nValueError: boom\n"
        "--- local rank 2 stderr ---\nTraceback\nKeyError: x"
    )


def test_log_tail_without_a_traceback_shows_every_rank(tmp_path: Path) -> None:
    _write_rank_logs(tmp_path, 0, {0: "killed by signal", 1: "waiting"})

    assert worker_log_tail(tmp_path, lines=5) == (
        "--- local rank 0 stderr ---\nkilled by signal\n--- local rank 1 stderr ---\nwaiting"
    )
    assert "no worker logs" in worker_log_tail(tmp_path / "missing", lines=2)


class TinySFTConfig(dg.Config):
    train_file: str
    model_dir: str
    output_dir: str


@dg.asset
def tiny_sft_checkpoint(
    context: dg.AssetExecutionContext, config: TinySFTConfig, launcher: TorchrunLauncher
) -> dg.MaterializeResult:
    """Test-only: what `sft_checkpoint` will do, reduced to the launch."""
    hparams = SFTHyperparameters(max_steps=1, max_length=256, warmup_ratio=0.0, learning_rate=1e-3)
    args = ["--train_file", config.train_file, "--model_dir", config.model_dir, "--output_dir", config.output_dir]
    invocation = launcher.run(context, SFT_MODULE, [*args, *to_cli_args(hparams)], Path(config.output_dir) / "logs")
    return invocation.get_materialize_result()


def _materialize(
    launcher: TorchrunLauncher, train_file: Path, model: BaseModel, output_dir: Path, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    config = {"train_file": str(train_file), "model_dir": str(model.path), "output_dir": str(output_dir)}
    return dg.materialize(
        [tiny_sft_checkpoint],
        resources={"launcher": launcher},
        run_config={"ops": {"tiny_sft_checkpoint": {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )


def test_one_sft_step_on_two_cpu_processes_reports_through_pipes(
    tmp_path: Path, tiny_model: BaseModel, short_chats_file: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    output_dir = tmp_path / "sft"

    result = _materialize(
        TorchrunLauncher(nproc_per_node=2, device="cpu"), short_chats_file, tiny_model, output_dir, instance
    )

    assert result.success
    metadata = result.asset_materializations_for_node("tiny_sft_checkpoint")[0].metadata
    assert metadata["steps"].value == 1
    curve = metadata["loss_curve"].value
    assert [entry["step"] for entry in curve] == [1]
    assert 0 < metadata["final_loss"].value == curve[0]["loss"] < 20
    assert metadata["tokens_seen"].value > 0 and 0 < metadata["masked_token_share"].value < 1
    streamed = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any("step 1/1 loss" in message for message in streamed), "rank 0 did not stream its loss"
    checkpoint = Path(metadata["checkpoint_path"].value)
    assert metadata["checkpoint_sha256"].value == folder_sha256(checkpoint)
    assert (output_dir / LOSS_HISTORY_FILE).is_file()
    before, after = load_file(tiny_model.path / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert all(not torch.equal(before[name], after[name]) for name in before), "a weight did not move"
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True)
    torch.testing.assert_close(loaded.get_input_embeddings().weight, after["model.embed_tokens.weight"])


def test_crashed_worker_fails_the_asset_with_the_log_tail(tmp_path: Path, tiny_model: BaseModel) -> None:
    missing = tmp_path / "no-such-trajectories.jsonl"

    result = _materialize(
        TorchrunLauncher(nproc_per_node=1, device="cpu"),
        missing,
        tiny_model,
        tmp_path / "sft",
        dg.DagsterInstance.ephemeral(),
    )

    assert not result.success
    failure = result.failure_data_for_node("tiny_sft_checkpoint")
    description = failure.user_failure_data.description
    assert f"torchrun -m {SFT_MODULE} failed" in description
    assert "--- local rank 0 stderr ---" in description
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'" in description
    assert Path(failure.user_failure_data.metadata["log_dir"].value).is_dir()


LISTENERS_MODULE = """
import json, os, re, subprocess, sys
import torch.distributed as dist

dist.init_process_group("gloo")
dist.barrier()
if dist.get_rank() == 0:
    agent = os.getppid()
    family = {agent, *map(int, open(f"/proc/{agent}/task/{agent}/children").read().split())}
    listening = []
    for line in subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines():
        pids = {int(pid) for pid in re.findall(r"pid=(\\d+)", line)}
        if pids & family:
            listening.append(line.split()[3])
    open(sys.argv[1], "w").write(json.dumps(listening))
dist.barrier()
dist.destroy_process_group()
"""


@dg.asset
def report_listeners(context: dg.AssetExecutionContext, launcher: TorchrunLauncher) -> dg.MaterializeResult:
    """Test-only: two ranks that write every address their torchrun agent and its workers listen on."""
    out = Path(os.environ["LISTENERS_DIR"])
    launcher.run(context, "listeners", [str(out / "listening.json")], out / "logs")
    return dg.MaterializeResult()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ss")
def test_nothing_a_single_node_run_listens_on_is_off_loopback(tmp_path: Path, monkeypatch) -> None:
    """torch's stores bind every interface by default; on one node the rendezvous, the workers' store and gloo
    must listen on 127.0.0.1 only (an unauthenticated store on the network is a remote-control port)."""
    (tmp_path / "listeners.py").write_text(textwrap.dedent(LISTENERS_MODULE))
    monkeypatch.setenv("LISTENERS_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))

    result = dg.materialize(
        [report_listeners],
        resources={"launcher": TorchrunLauncher(nproc_per_node=2, device="cpu")},
        instance=dg.DagsterInstance.ephemeral(),
    )

    assert result.success
    listening = json.loads((tmp_path / "listening.json").read_text())
    assert len(listening) >= 3, listening  # the rendezvous store, the workers' store, a gloo socket per rank
    assert all(address.rsplit(":", 1)[0] == "127.0.0.1" for address in listening), listening


PAGE_FAULTS_MODULE = """
import json, resource, sys

SIZE = 256 << 20


def page_faults_to_fill(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(size)  # malloc'd, then zeroed: every page is written
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


page_faults_to_fill(SIZE)  # the first fill maps the memory in either way
open(sys.argv[1], "w").write(json.dumps(page_faults_to_fill(SIZE)))
"""


@dg.asset
def refill_freed_memory(context: dg.AssetExecutionContext, launcher: TorchrunLauncher) -> dg.MaterializeResult:
    """Test-only: one rank that frees a 256 MiB block and counts the page faults of filling one again."""
    out = Path(os.environ["PAGE_FAULTS_FILE"])
    launcher.run(context, "page_faults", [str(out)], out.parent / "logs")
    return dg.MaterializeResult()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts glibc's page faults")
def test_cpu_workers_refill_freed_memory_without_mapping_it_in_again(tmp_path: Path, monkeypatch) -> None:
    """What `cpu_malloc_tunables` is for: glibc's defaults return a freed 256 MiB block to the kernel, so filling
    one again page-faults it back in (a training step's activations and logits, every step); the launcher's
    default keeps it."""
    (tmp_path / "page_faults.py").write_text(textwrap.dedent(PAGE_FAULTS_MODULE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    faults = {}
    for name, launcher in {
        "default": TorchrunLauncher(device="cpu"),
        "glibc": TorchrunLauncher(device="cpu", cpu_malloc_tunables=""),
    }.items():
        monkeypatch.setenv("PAGE_FAULTS_FILE", str(tmp_path / name / "faults.json"))
        (tmp_path / name).mkdir()
        result = dg.materialize(
            [refill_freed_memory], resources={"launcher": launcher}, instance=dg.DagsterInstance.ephemeral()
        )
        assert result.success
        faults[name] = json.loads((tmp_path / name / "faults.json").read_text())

    huge_pages = (256 << 20) // (2 << 20)  # the fewest faults a fresh mapping can take, with transparent huge pages
    assert faults["glibc"] >= huge_pages, faults
    assert faults["default"] < huge_pages // 8, faults
