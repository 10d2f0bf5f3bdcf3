"""Multi-node launch: two "nodes" on 127.0.0.1 (`curate train clip --nnodes 2 --node-rank R
--master-addr 127.0.0.1`, one process each) train exactly as 2 processes on one node do."""

import json
import os
import socket
import subprocess
import sys

from click.testing import CliRunner

from curate.cli import main
from tests.train.shard_fixtures import write_shards


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_train_as_two_processes_on_one(pool_table, tmp_path):
    data = write_shards(tmp_path / "data", pool_table.slice(0, 96).select(["uid", "url", "text", "image"]), 12)
    config = tmp_path / "c.yaml"
    config.write_text("model: clip-tiny\nbatch_size: 16\nlr: 0.002\nwarmup_steps: 1\nseed: 3\nshuffle_block: 24\n")
    common = [sys.executable, "-m", "curate.cli", "train", "clip", "--config", str(config), "--data", str(data),
              "--samples-seen", str(16 * 4)]
    one = subprocess.run([*common, "--output", str(tmp_path / "one"), "--nproc", "2"], capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(free_port())
    nodes = [subprocess.Popen([*common, "--output", str(tmp_path / "two"), "--nnodes", "2", "--node-rank", str(rank),
                               "--master-addr", "127.0.0.1", "--master-port", port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # as torchrun sets for 2 on a node
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert len(logs[1]) == 4 and [r["loss"] for r in logs[1]] == [r["loss"] for r in logs[0]]


def test_node_rank_must_be_below_nnodes(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: clip-tiny\n")
    result = CliRunner().invoke(main, ["train", "clip", "--config", str(config), "--nnodes", "2", "--node-rank", "2"])
    assert result.exit_code == 2 and "--node-rank: 2 is not below --nnodes 2" in result.output
