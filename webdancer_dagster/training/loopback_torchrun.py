"""`python -m torch.distributed.run` that dies with the process that launched it, and on one node listens on
127.0.0.1 only.

torch's TCPStore server (the rendezvous store and the store the workers share) binds every interface and has no
option to do otherwise, so `torchrun --standalone` exposes an unauthenticated key-value store to the network for
the whole run. The store does accept a listening socket (`master_listen_fd`): with `--loopback-only` (this entry
point's own flag, taken off before torchrun reads the rest) it hands every store it hosts one bound to 127.0.0.1.
The launcher pairs that with `--rdzv-endpoint=127.0.0.1:0 --local-addr=127.0.0.1`, and `GLOO_SOCKET_IFNAME=lo` for
gloo's own sockets. Several nodes need the network: there the stores listen as torch makes them.

The parent-death signal (parent named by `WEBDANCER_PARENT_PID`) means a killed Dagster step leaves no training
behind: torchrun passes the SIGTERM on to its workers.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from webdancer_dagster.processes import die_with_parent

PARENT_PID_ENV = "WEBDANCER_PARENT_PID"
LOOPBACK_FLAG = "--loopback-only"


def loopback_store_class() -> type:
    """torch's TCPStore, but a server this process hosts listens on 127.0.0.1 alone (torch imported only here, so
    the launcher that reads this module's constants stays light)."""
    import torch.distributed as dist

    class LoopbackTCPStore(dist.TCPStore):
        def __init__(self, host_name: str, port: int, *args: Any, **kwargs: Any) -> None:
            hosting = kwargs.get("is_master", args[1] if len(args) > 1 else False)
            self._listener: socket.socket | None = None
            if hosting and kwargs.get("master_listen_fd") is None:
                self._listener = socket.create_server(("127.0.0.1", port), backlog=4096)
                port = self._listener.getsockname()[1]
                kwargs["master_listen_fd"] = self._listener.fileno()
            super().__init__(host_name, port, *args, **kwargs)

    return LoopbackTCPStore


def main() -> None:
    die_with_parent()
    if os.environ.get(PARENT_PID_ENV) and os.getppid() != int(os.environ[PARENT_PID_ENV]):
        sys.exit("the process that launched this torchrun has already exited")
    if LOOPBACK_FLAG in sys.argv:
        sys.argv.remove(LOOPBACK_FLAG)
        import torch.distributed as dist

        dist.TCPStore = loopback_store_class()  # before torch's elastic modules import the name
    from torch.distributed.run import main as torchrun

    torchrun()


if __name__ == "__main__":
    main()
