"""`curate embeddings`: embedding stores, the vectors the embedding stages read."""

from __future__ import annotations

import click

from curate.cli.errors import UserError, user_errors


@click.group()
def embeddings():
    """Embedding stores: vectors the embedding stages read."""


@embeddings.command("import")
@click.argument("metadata", type=click.Path(file_okay=False, exists=True))
@click.option("--store", required=True, type=click.Path(file_okay=False),
              help="Embedding store folder to fill (one per pair of arrays: l14 and b32 go to different stores).")
@click.option("--image-key", default="l14_img", show_default=True, help="The .npz array of image vectors.")
@click.option("--text-key", help="The .npz array of text vectors [default: the image key's _txt twin].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Files imported at once.")
@user_errors
def embeddings_import(metadata, store, image_key, text_key, workers):
    """Import DataComp .npz vectors (beside each metadata Parquet, in its row order) into an embedding
    store keyed by uid."""
    from curate.io.datacomp import import_embeddings

    try:
        summary = import_embeddings(metadata, store, image_key, text_key, workers)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"{summary['rows']:,} vectors ({summary['dim']} wide) from {summary['files']} file(s) -> {store} "
               f"({summary['model']}); read it with checkpoint: null, store: {store}")
