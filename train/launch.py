"""How `curate train clip|llava` start a job: in this process (the validated config handed to the
trainer as it is), under torchrun on this node
(`--nproc N`), or as one node of several (`--nnodes N --node-rank R --master-addr A`: torchrun's
static rendezvous at A's --master-port, the same command on every node but for its rank).

Importing this module loads no torch, so the commands stay fast to register.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click


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
        raise click.ClickException(f"training failed ({how.nproc} processes{where}); see the messages above")


_OPTIONS = [
    click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
                 help="DDP processes on this node (torchrun)."),
    click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Nodes in the job; run the same command on each, with its --node-rank."),
    click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
                 help="This node's rank (0 is the master, which writes the run folder)."),
    click.option("--master-addr", default="127.0.0.1", show_default=True,
                 help="Address of node 0, where the nodes meet (torchrun's static rendezvous)."),
    click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True,
                 help="Port on node 0 for the rendezvous."),
]


def launch_options(command):
    """A click command's --nproc, --nnodes, --node-rank, --master-addr and --master-port, handed to
    it as one `launch_with: Launch`."""

    @functools.wraps(command)
    def wrapper(*args, nproc, nnodes, node_rank, master_addr, master_port, **kwargs):
        if node_rank >= nnodes:
            raise click.BadParameter(f"{node_rank} is not below --nnodes {nnodes}", param_hint="--node-rank")
        return command(*args, launch_with=Launch(nproc, nnodes, node_rank, master_addr, master_port), **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
