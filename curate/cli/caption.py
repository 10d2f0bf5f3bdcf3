"""`curate caption`: caption images with a LLaVA checkpoint. torch and transformers load when it
runs, so registering it keeps `curate` fast to start."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import click

from curate.cli.errors import UserError, user_errors


def image_seed(uid: str, seed: int) -> int:
    """A sample's sampling seed: a function of its uid and the run's seed only."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:4], "little")


@click.command("caption")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A `curate train llava` checkpoint.")
@click.option("--input", "inputs", multiple=True, required=True, help="Curated output folder(s) or shard files.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("captions"),
              show_default=True, help="Folder for captions.parquet (or .jsonl).")
@click.option("--num-captions", type=click.IntRange(min=1), default=1, show_default=True, help="Captions per image.")
@click.option("--strategy", type=click.Choice(["greedy", "beam", "nucleus"]), default="greedy", show_default=True)
@click.option("--prompt", help="Question to answer [default: the stage-1 caption prompt].")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--num-beams", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Nucleus: each image samples with a seed of "
                                                                     "its uid and this.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True)
@click.option("--device", help="torch device [default: cuda when available, else cpu].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def caption_command(checkpoint, inputs, output, num_captions, strategy, prompt, top_p, temperature, num_beams,
                    max_new_tokens, batch_size, seed, fmt, device, quiet):
    """Caption every image of INPUT shards with a LLaVA checkpoint: uid, caption_index, text per caption."""
    import pyarrow as pa
    from PIL import Image
    from tqdm import tqdm

    from curate.io.writers import atomic, write_table_atomic
    from curate.models.llava.generate import Captioner
    from train.data import ShardSource

    try:
        captioner = Captioner.load(checkpoint, device)
        sources = [ShardSource(path) for path in inputs]
        if strategy == "beam" and num_captions > num_beams:
            raise ValueError(f"--num-captions {num_captions} is more than --num-beams {num_beams}")
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    rows: dict[str, list] = {"uid": [], "caption_index": [], "text": []}
    chunk = batch_size * 4
    sizes = [task.rows for source in sources for task in source.tasks]  # Parquet's are known, a tar's are not
    with tqdm(total=None if None in sizes else sum(sizes), unit="image", disable=quiet) as bar:
        for table in (table for source in sources for table in source.tables()):  # streamed, shard by shard
            for start in range(0, table.num_rows, chunk):
                part = table.slice(start, chunk)
                uids = part["uid"].to_pylist()
                images = [Image.open(io.BytesIO(b)) for b in part["image"].to_pylist()]
                texts = captioner.generate(images, prompt, num_return=num_captions, strategy=strategy, top_p=top_p,
                                           temperature=temperature, num_beams=num_beams,
                                           max_new_tokens=max_new_tokens, seeds=[image_seed(u, seed) for u in uids],
                                           batch_size=batch_size)
                for uid, captions in zip(uids, texts):
                    rows["uid"] += [uid] * len(captions)
                    rows["caption_index"] += list(range(len(captions)))
                    rows["text"] += captions
                bar.update(len(uids))
    if not rows["uid"]:
        raise UserError(f"{', '.join(inputs)}: no samples with an image and a caption to caption")
    target = output / f"captions.{fmt}"
    if fmt == "parquet":
        write_table_atomic(pa.table({"uid": pa.array(rows["uid"], pa.string()),
                                     "caption_index": pa.array(rows["caption_index"], pa.int32()),
                                     "text": pa.array(rows["text"], pa.string())}), target)
    else:
        with atomic(target) as tmp:
            tmp.write_text("".join(json.dumps(dict(zip(rows, values))) + "\n" for values in zip(*rows.values())))
    click.echo(f"{len(rows['text'])} captions of {len(set(rows['uid']))} images ({strategy}, model "
               f"{captioner.fingerprint}): {target}")
