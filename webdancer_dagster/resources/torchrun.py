"""Run a training entry point under `torchrun` through Dagster Pipes, so one asset serves a laptop and a cluster.

The resource config is the cluster shape (nodes, processes per node, rendezvous); the asset only names the module
and its arguments. The command is torchrun (`training/loopback_torchrun.py`, which wraps
`torch.distributed.run` so it dies with the Dagster step and, on one node, listens on 127.0.0.1 only) from
Dagster's own interpreter, so workers see the same packages. Workers' output is teed to the run's compute logs and
to per-rank files; when a worker dies, the asset fails with the tail of those files, so the traceback is in the
error itself, not three clicks away.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from webdancer_dagster.training.loopback_torchrun import LOOPBACK_FLAG, PARENT_PID_ENV

DEVICES = ("auto", "cpu", "cuda")
TORCHRUN_MODULE = "webdancer_dagster.training.loopback_torchrun"
# Collective libraries' own sockets on one node: the loopback interface (a user's extra_env overrides).
LOOPBACK_SOCKET_ENV = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
# glibc hands every freed block above 32 MiB back to the kernel, so a CPU training step maps its activations, logits
# and gradients afresh and page-faults them in, every step. Served from a heap that is never trimmed, a SmolLM2-135M
# step at 1,536 tokens on 2 cores fell from 7.1 to 5.0 s (peak memory +5 to 8%); glibc ignores unknown tunables and
# other C libraries ignore the variable.
CPU_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


@dataclass(frozen=True)
class TorchrunTopology:
    """How many processes run where and how they find each other.

    Single node: a c10d rendezvous on a free port of 127.0.0.1. Several nodes: either a c10d rendezvous endpoint
    (elastic; every node runs the same command with the same `rdzv_id`) or a static `master_addr:master_port` with
    an explicit `node_rank` per node.
    """

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    master_addr: str | None = None
    master_port: int | None = None
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError("nproc_per_node and nnodes must be >= 1")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.rdzv_endpoint and self.master_addr:
            raise ValueError("set rdzv_endpoint (elastic rendezvous) or master_addr (static), not both")
        if self.master_addr and self.master_port is None:
            raise ValueError("master_addr needs master_port")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is outside 0..{self.nnodes - 1}")
        if self.nnodes > 1 and not (self.rdzv_endpoint or self.master_addr):
            raise ValueError("several nodes need a rendezvous: set rdzv_endpoint or master_addr/master_port")
        if self.rdzv_endpoint and not self.rdzv_id:
            raise ValueError("a rendezvous endpoint needs an rdzv_id that every node shares")


def build_torchrun_command(
    module: str,
    module_args: Sequence[str],
    topology: TorchrunTopology,
    log_dir: Path,
    python: str = sys.executable,
) -> list[str]:
    """The full `torchrun` argv: rendezvous flags from the topology, per-rank logs teed into `log_dir`."""
    command = [
        python,
        "-m",
        TORCHRUN_MODULE,
        f"--nnodes={topology.nnodes}",
        f"--nproc-per-node={topology.nproc_per_node}",
    ]
    if topology.master_addr:
        command += [
            f"--node-rank={topology.node_rank}",
            f"--master-addr={topology.master_addr}",
            f"--master-port={topology.master_port}",
        ]
    elif topology.rdzv_endpoint:
        command += [
            f"--rdzv-backend={topology.rdzv_backend}",
            f"--rdzv-endpoint={topology.rdzv_endpoint}",
            f"--rdzv-id={topology.rdzv_id}",
        ]
    else:  # one node: what `--standalone` does, but with nothing listening beyond 127.0.0.1
        command += [
            LOOPBACK_FLAG,
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=127.0.0.1:0",
            f"--rdzv-id={topology.rdzv_id or 'local'}",
            "--local-addr=127.0.0.1",
        ]
    command += [
        f"--max-restarts={topology.max_restarts}",
        f"--log-dir={log_dir}",
        # 3 = stdout and stderr: both go to the console (Dagster's compute logs) and to per-rank files.
        "--tee=3",
        "-m",
        module,
        *module_args,
    ]
    return command


def worker_log_tail(log_dir: Path, lines: int) -> str:
    """The last `lines` of each failed rank's stderr (every rank's when none shows a traceback).

    Ranks usually fail alike (a missing file fails all of them), so identical tails are shown once.
    """
    attempts = sorted(log_dir.glob("*/attempt_*"), key=lambda path: int(path.name.split("_")[1]))
    if not attempts:
        return f"(no worker logs under {log_dir}: torchrun stopped before starting workers)"
    rank_dirs = sorted((path for path in attempts[-1].iterdir() if path.is_dir()), key=lambda path: int(path.name))
    tails = {int(path.name): _tail(path / "stderr.log", lines) for path in rank_dirs}
    shown = {rank: tail for rank, tail in tails.items() if "Traceback" in tail} or tails
    ranks_by_tail: dict[str, list[int]] = {}
    for rank, tail in shown.items():
        ranks_by_tail.setdefault(tail, []).append(rank)
    return "\n".join(
        f"--- local rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} stderr ---\n{tail}"
        for tail, ranks in ranks_by_tail.items()
    )


class TorchrunLauncher(dg.ConfigurableResource):
    """Launches `python -m torch.distributed.run -m <module>` for this node through Dagster Pipes.

    CPU: gloo, one process unless told otherwise, GPUs hidden. GPU: nccl, one process per visible GPU.
    """

    nnodes: int = Field(default=1, description="Nodes in the job; above 1 needs rdzv_endpoint or master_addr.")
    nproc_per_node: int | None = Field(
        default=None, description="Processes on this node; empty: one per visible GPU, or 1 on CPU."
    )
    node_rank: int = Field(default=0, description="This node's rank (static rendezvous with master_addr only).")
    rdzv_backend: str = Field(default="c10d", description="torchrun rendezvous backend for rdzv_endpoint.")
    rdzv_endpoint: str | None = Field(
        default=None, description="host:port of the elastic rendezvous shared by all nodes; empty on one node."
    )
    rdzv_id: str | None = Field(
        default=None, description="Rendezvous id every node must share; empty: this Dagster run's id."
    )
    master_addr: str | None = Field(default=None, description="Static rendezvous: address of node 0.")
    master_port: int | None = Field(default=None, description="Static rendezvous: port on node 0.")
    max_restarts: int = Field(default=0, description="torchrun restarts of the whole worker group on failure.")
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu' or 'cuda'.")
    extra_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for the workers (e.g. NCCL_* or OMP_NUM_THREADS)."
    )
    log_tail_lines: int = Field(default=60, description="Lines of each failed rank's log put into the error.")
    cpu_malloc_tunables: str = Field(
        default=CPU_MALLOC_TUNABLES,
        description="GLIBC_TUNABLES for CPU workers: keep freed memory for the next step instead of returning it to "
        "the kernel (much faster steps, memory held at its peak); empty: glibc's defaults. A GLIBC_TUNABLES already "
        "in the environment or in extra_env wins.",
    )

    def resolved_device(self) -> str:
        """'cuda' or 'cpu'; 'auto' asks torch, imported here so loading the definitions stays light."""
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def topology(self, device: str, default_rdzv_id: str) -> TorchrunTopology:
        """The process layout for this node; the default process count follows the device."""
        nproc = self.nproc_per_node
        if nproc is None:
            if device == "cuda":
                import torch

                nproc = torch.cuda.device_count()
            else:
                nproc = 1
        return TorchrunTopology(
            nproc_per_node=nproc,
            nnodes=self.nnodes,
            node_rank=self.node_rank,
            rdzv_backend=self.rdzv_backend,
            rdzv_endpoint=self.rdzv_endpoint,
            rdzv_id=self.rdzv_id or default_rdzv_id,
            master_addr=self.master_addr,
            master_port=self.master_port,
            max_restarts=self.max_restarts,
        )

    def worker_env(self, device: str) -> dict[str, str]:
        """Environment for the workers: on CPU the GPUs are hidden so every rank agrees on gloo and fp32, and glibc
        keeps freed memory (`cpu_malloc_tunables`); on one node gloo and NCCL talk over loopback; torchrun learns its
        parent, whose death it follows."""
        env = {PARENT_PID_ENV: str(os.getpid())}
        if self.nnodes == 1:
            env.update(LOOPBACK_SOCKET_ENV)
        env.update(self.extra_env)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            if self.cpu_malloc_tunables and "GLIBC_TUNABLES" not in os.environ:
                env.setdefault("GLIBC_TUNABLES", self.cpu_malloc_tunables)
        return env

    def run(
        self,
        context: dg.AssetExecutionContext,
        module: str,
        args: Sequence[str],
        log_root: Path,
        extras: Mapping[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        """Run `module` with `args` on this node and return what rank 0 reported through Pipes.

        Per-rank logs go into a fresh folder under `log_root`; a failed launch raises `dg.Failure` carrying
        their tail.
        """
        device = self.resolved_device()
        log_root.mkdir(parents=True, exist_ok=True)
        log_dir = Path(tempfile.mkdtemp(prefix=time.strftime("torchrun-%Y%m%d-%H%M%S-"), dir=log_root))
        command = build_torchrun_command(module, args, self.topology(device, context.run.run_id), log_dir)
        context.log.info(f"launching on {device}: {shlex.join(command)}")
        client = dg.PipesSubprocessClient(env=self.worker_env(device))
        try:
            return client.run(context=context, command=command, extras=dict(extras or {}))
        except Exception as error:
            tail = worker_log_tail(log_dir, self.log_tail_lines)
            raise dg.Failure(
                description=f"torchrun -m {module} failed: {error}\n{tail}",
                metadata={
                    "log_dir": dg.MetadataValue.path(str(log_dir)),
                    "log_tail": dg.MetadataValue.md(f"```\n{tail}\n```"),
                },
            ) from error


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return "(no log file)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
