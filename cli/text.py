"""The text side's commands: `microscope textpools ...`, `microscope precompute decompose` and
`microscope precompute maxtext`.

Kept beside cli/main.py, which mounts them, so the text side's options live in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.settings import get_settings
from precompute.errors import MicroscopeError

textpools_app = typer.Typer(help="Text pools that neuron directions are decomposed into.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _sessions():
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(get_settings().database_url)
    return engine, make_sessionmaker(engine)


@textpools_app.command("add")
def textpools_add(
    pool_id: Annotated[str, typer.Argument(help="The pool's id, e.g. common-30k.")],
    words: Annotated[Optional[int], typer.Option(help="The N most common English words (wordfreq; the paper uses 30000).")] = None,
    file: Annotated[Optional[Path], typer.Option(help="A file of yours: one text per line.")] = None,
    imagenet: Annotated[bool, typer.Option("--imagenet", help="ImageNet's class names, embedded with open_clip's 80 prompt templates.")] = False,
    world: Annotated[bool, typer.Option("--world", help="The synthetic world's vocabulary (what the toy models know).")] = False,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="A registered model to embed the pool for now "
                                                       "(repeatable); live zero-shot pages read ImageNet's classes from "
                                                       "these embeddings.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda for --model (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Add a text pool. Its embeddings are computed once per model: for each --model now,
    otherwise on first use."""
    from precompute.text_pools import pool_texts
    from store.text_pools import add_pool

    chosen = [kind for kind, given in (("words", words is not None), ("file", file is not None), ("imagenet", imagenet),
                                       ("world", world)) if given]
    if len(chosen) != 1:
        _fail("choose exactly one of --words N, --file F, --imagenet and --world")
    texts = pool_texts(chosen[0], words=words, path=file)
    engine, sessions = _sessions()
    try:
        with sessions() as session:
            pool, created = add_pool(session, pool_id, texts.texts, texts.source)
            if model:
                from store.loading import require_model

                for model_id in model:
                    require_model(session, model_id)  # an unknown model is refused before the pool is committed
            session.commit()
            state = "added" if created else "already there"
            typer.echo(f"{state}: pool {pool_id} ({len(texts.texts):,} texts: {texts.description})")
            for model_id in dict.fromkeys(model or ()):
                _embed_pool(session, pool, model_id, device, quiet)
    except MicroscopeError as error:
        _fail(str(error))
    finally:
        engine.dispose()


def _embed_pool(session, pool, model_id: str, device: str | None, quiet: bool) -> None:
    """The pool's embeddings under one model, computed and committed unless already stored."""
    from tqdm import tqdm

    from precompute.text_pools import encode_pool
    from store.blobs import BlobStore
    from store.loading import load_registered
    from store.text_pools import pool_embeddings

    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})

    def compute():
        loaded = load_registered(session, model_id, device=settings.resolved_device())
        with tqdm(total=len(pool.texts), desc=f"{pool.id} under {model_id}", unit="text", disable=quiet) as bar:
            return encode_pool(loaded.model, loaded.tokenizer, list(pool.texts), pool.source, device=loaded.device,
                               progress=bar.update).numpy()

    vectors, computed = pool_embeddings(session, BlobStore(settings.blob_url), model_id, pool, compute)
    session.commit()
    state = "embedded" if computed else "already embedded"
    typer.echo(f"{state}: pool {pool.id} under {model_id} ({vectors.shape[0]:,} x {vectors.shape[1]})")


@textpools_app.command("list")
def textpools_list() -> None:
    """The pools: id, size, source."""
    from store.text_pools import list_pools

    engine, sessions = _sessions()
    try:
        with sessions() as session:
            for row in list_pools(session):
                typer.echo(f"{row.id:24s} {len(row.texts):8,d}  {row.source}")
    finally:
        engine.dispose()


@textpools_app.command("remove")
def textpools_remove(pool_id: Annotated[str, typer.Argument(help="The pool's id.")]) -> None:
    """Remove a pool with its cached embeddings and every decomposition drawn from it."""
    from store.text_pools import remove_pool

    engine, sessions = _sessions()
    try:
        with sessions() as session:
            remove_pool(session, pool_id)
            session.commit()
    finally:
        engine.dispose()
    typer.echo(f"removed pool {pool_id}")


def precompute_decompose(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    layer: Annotated[str, typer.Option(help="A layer with neuron directions (`microscope precompute directions`).")],
    pool: Annotated[str, typer.Option(help="A text pool (`microscope textpools add`).")],
    terms: Annotated[int, typer.Option(help="Terms per unit (1 to 128).")] = 32,
    normalisation: Annotated[str, typer.Option(help="unit (atoms of unit length) or per-dimension (the authors' setting).")] = "unit",
    dataset: Annotated[Optional[str], typer.Option(help="Whose directions (default: the layer's most recent set).")] = None,
    units_per_batch: Annotated[int, typer.Option(help="Units decomposed (and committed) together.")] = 256,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (as a Ray task).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address.")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress and recompute.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Each unit's direction as a sparse sum of a pool's texts (orthogonal matching pursuit),
    with the cosine of its reconstruction."""
    from workers.decompose_job import DecomposeRequest, run_decompose
    from workers.engines import StoreConfig

    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    request = DecomposeRequest(model_id=model, layer=layer, pool_id=pool, terms=terms, normalisation=normalisation,
                               dataset_id=dataset, units_per_batch=units_per_batch, engine=engine,
                               ray_address=ray_address, restart=restart, device=settings.resolved_device())
    try:
        summary = run_decompose(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    except MicroscopeError as error:
        _fail(str(error))
    typer.echo(json.dumps(summary))


def precompute_maxtext(
    model: Annotated[str, typer.Argument(help="A registered model id.")],
    layer: Annotated[str, typer.Argument(help="A layer with neuron directions (`microscope precompute directions`).")],
    dataset: Annotated[Optional[str], typer.Option(help="Whose directions (default: the layer's most recent set).")] = None,
    length: Annotated[int, typer.Option(help="Tokens per text.")] = 3,
    steps: Annotated[int, typer.Option(help="Hill-climbing steps at most.")] = 20,
    candidates: Annotated[int, typer.Option(help="Tokens proposed per position and step (by the embedding gradient).")] = 16,
    starts: Annotated[int, typer.Option(help="Best single words the climb starts from.")] = 4,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N units of the layer's direction set.")] = None,
    units_per_batch: Annotated[int, typer.Option(help="Units that climb (and are committed) together.")] = 128,
    shards: Annotated[int, typer.Option(help="Contiguous shards of the units (one job each).")] = 1,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (shards as Ray tasks).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address.")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress and recompute.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Each unit's maximal text: the short token sequence whose text embedding has the largest
    dot product with the unit's direction (hill climbing from the best single words, proposals
    by the embedding gradient), shown on the unit page as its text feature visualization."""
    from workers.engines import StoreConfig
    from workers.maxtext_job import MaxTextRequest, run_maxtext

    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    request = MaxTextRequest(model_id=model, layer=layer, dataset_id=dataset, length=length, steps=steps,
                             candidates=candidates, starts=starts, limit=limit, units_per_batch=units_per_batch,
                             shards=shards, engine=engine, ray_address=ray_address, restart=restart,
                             device=settings.resolved_device())
    try:
        summary = run_maxtext(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    except MicroscopeError as error:
        _fail(str(error))
    typer.echo(json.dumps(summary))
