"""How `curate train clip|llava` start a job: in this process (the validated config handed to the
trainer as it is), under torchrun on this node (`--nproc N`), or as one node of several (`--nnodes N
--node-rank R --master-addr A`: torchrun's static rendezvous at A's --master-port, the same command
on every node but for its rank).

Importing this module loads no torch, so the commands stay fast to register; their options are
curate.cli.train's `launch_options`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass


class LaunchFailed(RuntimeError):
    """A torchrun job that exited with an error (its ranks printed why)."""


@dataclass(frozen=True)
class Launch:
    """Processes on this node, nodes in the job, this node's rank, and where they meet."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def torchrun(self, module: str, args: list[str]) -> list[str] | None:
        """The torchrun command line that runs `module` with `args`; None for one process on one node."""
        if self.nnodes == 1:
            if self.nproc == 1:
                return None
            where = ["--standalone"]
        else:
            where = [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}", f"--master_addr={self.master_addr}",
                     f"--master_port={self.master_port}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={self.nproc}", "-m", module,
                *args]


def launch(module: str, args: list[str], how: Launch, here: Callable[[], object]) -> None:
    """Run a training job: one process on one node is `here()`, in this process, on the config the
    command validated; more run `module`'s command line `args` under torchrun, one process a rank."""
    command = how.torchrun(module, args)
    if command is None:
        here()
        return
    if subprocess.run(command).returncode != 0:
        where = f" on node {how.node_rank} of {how.nnodes}" if how.nnodes > 1 else ""
        raise LaunchFailed(f"training failed ({how.nproc} processes{where}); see the messages above")
