"""The streaming loader (train.data): the same micro-batches with 0, 1 or 2 loader workers and on
1 or 2 ranks, from tars, Parquet parts and S3; resume from a saved state reads only the block it
stops in; epochs deal every shard once; memory does not grow with the training set; a 2-process
run killed mid-run and resumed ends with the uninterrupted run's loss curve and weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.io.conftest import bucket, s3_endpoint  # noqa: F401  (moto's S3 server)
from tests.train.shard_fixtures import write_shards
from train.clip.config import ClipTrainConfig
from train.clip.train import train_clip
from train.data import ShardSource, StreamLoader, StreamSettings
from train.data.order import Order

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = StreamSettings(batch_size=16, grad_accum=1, lanes=8, block=24, seed=5)


@pytest.fixture(scope="module")
def shards(pool_table, tmp_path_factory) -> Path:
    """140 pool samples in 10 shards of 14, as Parquet parts and as tars."""
    assert pool_table.num_rows >= 140
    table = pool_table.slice(0, 140).select(["uid", "url", "text", "image"])
    return write_shards(tmp_path_factory.mktemp("stream"), table, 14)


def uid_and_index(pair, g):
    return pair.uid, g


def as_list(items):
    return items


def take(source, settings=SETTINGS, steps=6, start=0, states=None, rank=0, world_size=1):
    """`steps` micro-batches of (uid, global index) from `start` on, and the loader's state after them."""
    loader = StreamLoader(source, settings, rank, world_size, uid_and_index, as_list)
    stream = loader.from_step(start, states)
    return [next(stream) for _ in range(steps)], loader.state()


class Counting(ShardSource):
    """A ShardSource that counts the samples it reads (in this process)."""

    read_count = 0

    def read(self, index, skip=0):
        for pair in super().read(index, skip):
            Counting.read_count += 1
            yield pair


def test_same_batches_with_any_worker_count_and_rank_count(shards):
    source = ShardSource(str(shards / "shards"))
    assert len(source.shards) == 10 and source.shards[0].endswith("part-00000.tar")
    batches, _ = take(source)
    assert [[g for _, g in batch] for batch in batches] == [list(range(16 * i, 16 * (i + 1))) for i in range(6)]
    for workers in (1, 2):
        assert take(source, StreamSettings(**{**SETTINGS.__dict__, "workers": workers}))[0] == batches
    # two ranks: rank 0 serves lanes 0-3 and rank 1 lanes 4-7 of the same global micro-batches
    first = take(source, StreamSettings(**{**SETTINGS.__dict__, "workers": 2}), rank=0, world_size=2)[0]
    second = take(source, rank=1, world_size=2)[0]
    assert [a + b for a, b in zip(first, second)] == batches
    # the Parquet parts hold the same samples in the same order: the same stream
    assert take(ShardSource(str(shards)))[0] == batches  # a curated folder: its parquet/ parts
    assert len({uid for batch in batches for uid, _ in batch}) > 70  # shuffled across shards and lanes


def test_resume_from_a_state_reads_only_the_block_it_stops_in(shards):
    source, small = Counting(str(shards / "parquet")), StreamSettings(**{**SETTINGS.__dict__, "block": 8})
    full, _ = take(source, small, steps=24)
    _, state = take(source, small, steps=20)
    assert set(state["lanes"]) == set(range(8))
    Counting.read_count = 0
    resumed, _ = take(source, small, steps=4, start=20, states=[state])
    assert resumed == full[20:]
    assert Counting.read_count <= 8 * (2 * 8 + 1)  # positions 40-47 of a lane span at most 2 blocks (+ 1 peeked)
    # without a state a lane reads (without decoding) up to its block: the same samples, all read again
    Counting.read_count = 0
    assert take(source, small, steps=4, start=20)[0] == full[20:]
    assert Counting.read_count >= 8 * 40
    # the two ranks' states resume one rank, and the state of another order is refused
    halves = [take(source, small, steps=20, rank=r, world_size=2)[1] for r in (0, 1)]
    assert take(source, small, steps=4, start=20, states=halves)[0] == full[20:]
    with pytest.raises(ValueError, match="data state is for another shard list or order"):
        take(source, StreamSettings(**{**small.__dict__, "seed": 6}), steps=1, start=20, states=[state])


def test_epochs_deal_every_shard_once_and_a_whole_block_is_a_permutation(shards):
    order = Order(num_shards=10, lanes=8, block=24, seed=5)
    sequence = [order.shard(element % 8, element // 8) for element in range(30)]
    assert all(sorted(sequence[e * 10:(e + 1) * 10]) == list(range(10)) for e in range(3))
    assert sequence[:10] != sequence[10:20]  # a new permutation each epoch
    resampled = Order(num_shards=10, lanes=8, block=24, seed=5, resampled=True)
    draws = [resampled.shard(element % 8, element // 8) for element in range(40)]
    assert len(set(draws[:10])) < 10 and set(draws) <= set(range(10))  # with replacement
    # one lane whose block holds the whole set: the first 140 samples are every sample once
    source = ShardSource(str(shards / "shards"))
    one_lane = StreamSettings(batch_size=14, grad_accum=1, lanes=1, block=140, seed=5)
    seen = [uid for batch in take(source, one_lane, steps=10)[0] for uid, _ in batch]
    in_order = [pair.uid for i in range(10) for pair in source.read(i)]
    assert sorted(seen) == sorted(in_order) and seen != in_order  # each once, shuffled


def test_config_and_loader_refuse_lanes_that_do_not_divide(shards):
    with pytest.raises(ValueError, match="multiple of lanes 8"):
        ClipTrainConfig(batch_size=12, data="x")
    source = ShardSource(str(shards / "shards"))
    with pytest.raises(ValueError, match="3 loader workers per rank but only 2 lanes per rank"):
        StreamLoader(source, StreamSettings(**{**SETTINGS.__dict__, "workers": 3}), 0, 4, uid_and_index, as_list)
    with pytest.raises(ValueError, match="lanes 8 is not a multiple of the number of ranks 3"):
        StreamLoader(source, SETTINGS, 0, 3, uid_and_index, as_list)
    (shards / "meta").mkdir(exist_ok=True)
    pq.write_table(pa.table({"uid": ["a"], "url": ["http://x"], "text": ["t"]}), shards / "meta" / "m.parquet")
    with pytest.raises(ValueError, match="m.parquet: has no images to train on"):
        ShardSource(str(shards / "meta"))


def test_streams_shards_from_s3(shards, bucket):  # noqa: F811
    from curate.io.paths import write_bytes

    for tar in sorted((shards / "shards").glob("*.tar")):
        write_bytes(f"{bucket}/curated/shards/{tar.name}", tar.read_bytes())
    remote = ShardSource(f"{bucket}/curated/shards/part-{{00000..00009}}.tar")
    assert remote.shards[0] == f"{bucket}/curated/shards/part-00000.tar"
    local, _ = take(ShardSource(str(shards / "shards")), steps=4)
    assert take(remote, StreamSettings(**{**SETTINGS.__dict__, "workers": 2}), steps=4)[0] == local


def test_clip_trains_from_s3_as_from_local_files(shards, bucket, tmp_path):  # noqa: F811
    from curate.io.paths import write_bytes

    for tar in sorted((shards / "shards").glob("*.tar")):
        write_bytes(f"{bucket}/run/shards/{tar.name}", tar.read_bytes())
    common = {"model": "clip-tiny", "batch_size": 16, "samples_seen": 16 * 3, "warmup_steps": 1, "shuffle_block": 24}
    train_clip(ClipTrainConfig(**common, data=f"{bucket}/run"), tmp_path / "s3", progress=False)  # a curated folder
    train_clip(ClipTrainConfig(**common, data=str(shards / "shards")), tmp_path / "local", progress=False)
    remote, local = (read_log(tmp_path / name) for name in ("s3", "local"))
    assert len(remote) == 3 and [r["loss"] for r in remote] == [r["loss"] for r in local]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


MEMORY_PROBE = """
import sys
import psutil
from train.data import ShardSource, StreamLoader, StreamSettings
source = ShardSource(sys.argv[1])
settings = StreamSettings(batch_size=32, grad_accum=1, lanes=4, block=32, seed=0, workers=int(sys.argv[3]))
stream = StreamLoader(source, settings, 0, 1, lambda pair, g: len(pair.image), lambda items: sum(items)).from_step(0)
read, workers = 0, 0
for _ in range(int(sys.argv[2]) // 32):  # one epoch's worth of samples
    read += next(stream)
    workers = max(workers, sum(child.memory_full_info().uss for child in psutil.Process().children()))
# the peak RSS of this process since it started (VmHWM: ru_maxrss would count the forking parent's too)
own = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(read, own, workers)
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_does_not_grow_with_the_training_set(pool_table, tmp_path, workers):
    """1,200 and 4,800 samples of ~40 kB (48 and 192 MB of tars) through a 4 x 32-sample shuffle
    buffer: the peak memory of the loader (and of its workers) grows by less than a tenth of what
    holding the extra 3,600 samples would add (144 MB). With workers: the process's peak RSS plus
    the largest sum of its workers' unique memory (USS; their RSS counts the shared torch pages
    of each again and moves by +-5 MB from run to run)."""
    image = pool_table["image"][0].as_py()
    peaks = []
    for count in (1200, 4800):
        payloads = [image + os.urandom(40_000) for _ in range(count)]  # a JPEG with an incompressible tail
        table = pa.table({"uid": [f"s{count}-{i}" for i in range(count)], "url": [None] * count,
                          "text": [f"sample {i}" for i in range(count)], "image": pa.array(payloads, pa.binary())})
        folder = write_shards(tmp_path / str(count), table, 100)
        del payloads, table
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder / "shards"), str(count), str(workers)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        read, own, children = map(int, out.stdout.split())
        assert read >= count * 40_000  # it did read a whole epoch's worth of image bytes
        peaks.append(own + children if workers else own)
    assert peaks[1] - peaks[0] < 0.1 * 3600 * 40_000, peaks


def test_two_processes_killed_mid_run_resume_the_uninterrupted_curve(shards, tmp_path):
    """2 DDP processes: uninterrupted with 0 loader workers; with 2 workers, killed (SIGKILL) once
    the step-4 checkpoint is last.pt, then resumed with 1: the same loss at every step and the same weights."""
    config = tmp_path / "c.yaml"
    config.write_text("model: clip-tiny\nbatch_size: 16\nlr: 0.002\nwarmup_steps: 2\nseed: 3\nshuffle_block: 24\n"
                      "checkpoint_every: 4\n")

    def command(run: str, workers: int) -> list[str]:
        return [sys.executable, "-m", "curate.cli", "train", "clip", "--config", str(config), "--data",
                str(shards), "--samples-seen", str(16 * 24), "--output", str(tmp_path / run), "--nproc", "2",
                "--set", f"workers={workers}"]

    full = subprocess.run(command("full", 0), capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = subprocess.Popen(command("killed", 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    # last.pt (the resume point) is copied from step-000004.pt after that file appears: wait for it,
    # not for step-000004.pt, or the kill may fall between the two and leave nothing to resume from
    deadline = time.monotonic() + 600
    while not (tmp_path / "killed" / "last.pt").exists() and killed.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint at step 4"
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before its first checkpoint"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    stopped = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["step"]
    assert stopped < 24, "the run finished before it was killed"
    again = subprocess.run(command("killed", 1), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["loss"] for r in read_log(tmp_path / "killed")] == [r["loss"] for r in read_log(tmp_path / "full")]
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"] for run in ("full", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
