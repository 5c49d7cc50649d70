"""The `microscope` command.

Heavy imports (torch, open_clip) happen inside the commands that need them, so `--help` and
the database commands stay fast. Errors a user can act on print one line and exit with 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.settings import get_settings
from precompute.errors import MicroscopeError, Problem

app = typer.Typer(
    help="clip-microscope: see what every neuron of a CLIP vision tower responds to.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Create and migrate the store's schema (Alembic).", no_args_is_help=True)
models_app = typer.Typer(help="Register open_clip models and inspect their layers.", no_args_is_help=True)
toy_app = typer.Typer(help="The embedded synthetic world and toy CLIP models.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(toy_app, name="toy")
tokens_app = typer.Typer(help="API tokens for writing labels, notes and collections.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
datasets_app = typer.Typer(help="Register image datasets (folders, URLs, tar shards, the synthetic world).", no_args_is_help=True)
precompute_app = typer.Typer(help="Precompute dataset examples, statistics, rastered words and neuron directions (resumable jobs).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(precompute_app, name="precompute")
featureviz_app = typer.Typer(help="Feature visualization: facet probes (the images come from `precompute featureviz`).", no_args_is_help=True)
app.add_typer(featureviz_app, name="featureviz")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _session():
    from store.session import make_engine, make_sessionmaker

    engine = make_engine(get_settings().database_url)
    return make_sessionmaker(engine)()


def _device(device: Optional[str]) -> str:
    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    return settings.resolved_device()


# --- db -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    from store import migrations

    url = get_settings().database_url
    migrations.upgrade(url, revision)
    typer.echo(f"database at revision {migrations.current(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. 'base'.")]) -> None:
    """Migrate the database down to REVISION."""
    from store import migrations

    url = get_settings().database_url
    migrations.downgrade(url, revision)
    typer.echo(f"database at revision {migrations.current(url) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's current revision."""
    from store import migrations

    typer.echo(migrations.current(get_settings().database_url) or "base")


# --- models ---------------------------------------------------------------------------


@models_app.command("arches")
def models_arches(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The supported architectures with their layers, unit counts and spatial shapes."""
    from precompute.architectures import architecture_table

    table = architecture_table()
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    for row in table:
        final = [layer for layer in row["layers"] if layer["kind"] != "pooled"]
        typer.echo(f"{row['architecture']:10s} {row['family']:6s} {row['image_size']:4d}px  {len(row['layers'])} layers, "
                   f"last: {final[-1]['name'] if row['family'] == 'vit' else 'layer4'}")


@models_app.command("register")
def models_register(
    model_id: Annotated[str, typer.Argument(help="Your id for the model, e.g. rn50x4-openai.")],
    arch: Annotated[str, typer.Option(help="open_clip architecture name, e.g. RN50x4 or ViT-B-32.")],
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag (downloads).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Local checkpoint (.safetensors, .pt, .bin).")] = None,
    embedded: Annotated[bool, typer.Option(help="Use the checkpoint shipped for toy-rn/toy-vit.")] = False,
    random: Annotated[bool, typer.Option(help="Random-initialised weights (shapes and speed only).")] = False,
    description: str = "",
) -> None:
    """Load a model once (to check it) and record it in the store."""
    from precompute.registry import load_embedded, load_model
    from store.loading import register

    chosen = sum(bool(x) for x in (pretrained, checkpoint, embedded, random))
    if chosen != 1:
        _fail("choose exactly one of --pretrained, --checkpoint, --embedded or --random")
    if embedded:
        loaded = load_embedded(arch, model_id=model_id)
    else:
        loaded = load_model(model_id, arch, pretrained=pretrained, checkpoint=checkpoint)
    with _session() as session:
        register(session, loaded, description)
    layers = loaded.spec.layers
    typer.echo(f"registered {model_id}: {arch}, {len(layers)} layers, {sum(l.units for l in layers)} units")


@models_app.command("list")
def models_list() -> None:
    """The registered models."""
    from store import repository

    with _session() as session:
        for row in repository.list_models(session):
            typer.echo(f"{row.id:24s} {row.arch:10s} {row.source:10s} {row.pretrained_tag or row.checkpoint_path or ''}")


@models_app.command("layers")
def models_layers(model_id: str) -> None:
    """The layers of a registered model (or of an architecture name)."""
    from precompute.architectures import architecture

    from store import repository

    with _session() as session:
        row = repository.get_model(session, model_id)
    spec = architecture(row.arch if row else model_id)
    for layer in spec.layers:
        shape = "x".join(map(str, layer.spatial)) if layer.spatial else "-"
        typer.echo(f"{layer.name:32s} {layer.kind:7s} {layer.units:6d} units  spatial {shape}")


@models_app.command("make-checkpoint")
def models_make_checkpoint(
    arch: Annotated[str, typer.Option(help="open_clip architecture name.")],
    out: Annotated[Path, typer.Option(help="Where to write the .safetensors file.")],
    seed: int = 0,
) -> None:
    """Save a random-initialised model of ARCH (seeded) as a checkpoint file."""
    import open_clip
    import torch

    from precompute.architectures import architecture
    from precompute.checkpoints import write_checkpoint

    architecture(arch)  # a clear error for unknown names
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    path = write_checkpoint(model, out, metadata={"random_init_seed": str(seed)})
    typer.echo(f"wrote {path}")


# --- capture --------------------------------------------------------------------------


@app.command("capture")
def capture_command(
    model_id: Annotated[str, typer.Argument(help="A registered model id.")],
    images: Annotated[Path, typer.Option(help="A folder of images (searched recursively).")],
    layers: Annotated[list[str], typer.Option("--layer", help="Layer name; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Output .npz with each unit's per-image maxima.")],
    batch_size: int = 64,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
) -> None:
    """Capture each unit's maximum activation per image for the named layers."""
    from workers.capture_job import capture_folder
    from store.loading import load_registered

    with _session() as session:
        loaded = load_registered(session, model_id, device=_device(device))
    result = capture_folder(loaded, images, layers, out, batch_size=batch_size)
    typer.echo(json.dumps(result))


# --- toy ------------------------------------------------------------------------------


@toy_app.command("world")
def toy_world(
    out: Annotated[Path, typer.Option(help="Folder to write images/ and captions.jsonl into.")],
    count: int = 10_000,
    seed: int = 0,
) -> None:
    """Write COUNT images of the synthetic world (resumable)."""
    from precompute.world import WorldConfig, write_dataset

    if count < 1:
        _fail("--count must be at least 1")
    path = write_dataset(out, count, seed, WorldConfig())
    typer.echo(f"wrote {count} images to {path}")


@toy_app.command("train")
def toy_train(
    arch: Annotated[str, typer.Option(help="rn or vit.")],
    seed: int = 0,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default: the shipped recipe).")] = None,
    train_images: Annotated[Optional[int], typer.Option(help="Size of the generated training set.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads (the recipe pins 2; another count trains as well but not bit for bit alike).")] = None,
    compile_model: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="Train through torch.compile (the recipe does).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    teacher: Annotated[Optional[str], typer.Option(
        help="The shipped toy model to learn from (rn or vit), or 'none' (default: the recipe's; "
             "toy-vit's learns from rn).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Checkpoint path (default: the package's).")] = None,
    work_dir: Annotated[Optional[Path], typer.Option(help="Where resumable training state goes.")] = None,
) -> None:
    """Train a toy CLIP model on the synthetic world, reproducibly (seeded), resumable."""
    from tqdm import tqdm

    from precompute.toy import TOY_ARCHITECTURES, embedded_checkpoint
    from precompute.toy.train import recipe, train

    if arch not in TOY_ARCHITECTURES:
        _fail(f"--arch must be one of {', '.join(TOY_ARCHITECTURES)}")
    name = TOY_ARCHITECTURES[arch]
    config = recipe(name, seed)
    for field, value in (("steps", steps), ("train_images", train_images), ("batch_size", batch_size)):
        if value is not None:
            if value < 1:
                _fail(f"--{field.replace('_', '-')} must be at least 1")
            setattr(config, field, value)
    if config.train_images < config.batch_size:
        _fail("--train-images must be at least --batch-size")
    if threads is not None:
        if threads < 0:
            _fail("--threads must be 0 (torch's default) or more")
        config.threads = threads
    if compile_model is not None:
        config.compile = compile_model
    if teacher is not None:
        if teacher != "none" and teacher not in TOY_ARCHITECTURES:
            _fail(f"--teacher must be one of {', '.join(TOY_ARCHITECTURES)} or none")
        if teacher == arch:
            _fail("--teacher must be another model than --arch")
        config.teacher = None if teacher == "none" else TOY_ARCHITECTURES[teacher]
        if config.teacher is None:
            config.hints = []  # hints are the teacher's maps
    if config.teacher and not embedded_checkpoint(config.teacher).is_file():
        _fail(f"--teacher: the shipped {config.teacher} checkpoint is missing; train it first")
    config.device = _training_device(device)
    target = out or embedded_checkpoint(name)
    state_dir = work_dir or get_settings().data_dir / "training"
    data_bar = tqdm(total=config.train_images, desc=f"{name} data", unit="img")
    teacher_bar = tqdm(total=config.train_images, desc=f"{name} teacher {config.teacher}", unit="img",
                       disable=not config.teacher)
    step_bar = tqdm(total=config.steps, desc=f"{name} train", unit="step")

    def on_data(n: int) -> None:
        data_bar.update(n)

    def on_teacher(n: int) -> None:
        teacher_bar.update(n)

    def on_step(step: int, loss: float) -> None:
        step_bar.n = step
        step_bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        step_bar.refresh()

    summary = train(config, target, state_dir, on_step=on_step, on_data=on_data, on_teacher=on_teacher)
    for bar in (data_bar, teacher_bar, step_bar):
        bar.close()
    typer.echo(json.dumps(summary))
    typer.echo(f"wrote {target}")


def _training_device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        _fail(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N, mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is visible here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        _fail("--device mps: no MPS device is visible here")
    if device.type not in ("cpu", "cuda", "mps"):
        _fail(f"--device {name!r}: training runs on cpu, cuda or mps")
    return str(device)


@toy_app.command("eval")
def toy_eval(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object keyed by model id.")] = False,
    arch: Annotated[list[str], typer.Option(help="rn and/or vit (default: both).")] = [],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Evaluate this checkpoint instead (one --arch).")] = None,
    seed: Annotated[int, typer.Option(help="World seed of the held-out images.")] = 1,
) -> None:
    """Zero-shot accuracy, typographic-attack success and multimodal units of the toy models."""
    from precompute.registry import load_embedded, load_model
    from precompute.toy import TOY_ARCHITECTURES
    from precompute.toy.evaluate import EvalConfig, evaluate

    chosen = arch or list(TOY_ARCHITECTURES)
    unknown = [a for a in chosen if a not in TOY_ARCHITECTURES]
    if unknown:
        _fail(f"--arch must be among {', '.join(TOY_ARCHITECTURES)}")
    if checkpoint and len(chosen) != 1:
        _fail("--checkpoint needs exactly one --arch")
    results = {}
    for short in chosen:
        name = TOY_ARCHITECTURES[short]
        loaded = load_model(name, name, checkpoint=checkpoint) if checkpoint else load_embedded(name)
        results[name] = evaluate(loaded, EvalConfig(seed=seed))
    if as_json:
        typer.echo(json.dumps(results))
        return
    typer.echo(f"{'model':10s} {'zero-shot':>10s} {'(1 prompt)':>11s} {'typo shape':>11s} {'typo colour':>12s} "
               f"{'multimodal':>11s}")
    for name, r in results.items():
        typer.echo(f"{name:10s} {r['zero_shot_accuracy']:10.3f} {r['zero_shot_accuracy_single_prompt']:11.3f} "
                   f"{r['typographic_success_shape']:11.3f} {r['typographic_success_color']:12.3f} "
                   f"{r['multimodal_colors']:>9d}/8")
    for name, r in results.items():
        typer.echo(f"\n{name} multimodal units ({r['layer']}):")
        for color, unit in r["multimodal_units"].items():
            mark = "yes" if unit["meets_bar"] else "no "
            typer.echo(f"  {color:7s} {mark} unit {unit['unit']:4d}  purity {unit['image_purity']:.2f}  "
                       f"word rank {unit['word_rank']:3d}  top words: {', '.join(unit['top_words'])}")


# --- serve and demo -------------------------------------------------------------------


@app.command("serve")
def serve(
    host: Annotated[Optional[str], typer.Option(help="Interface to bind (default: settings).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: settings).")] = None,
    workers: Annotated[int, typer.Option(help="Server processes sharing the port; about one per CPU core.")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
) -> None:
    """Start the web server (FastAPI under uvicorn)."""
    from app.server import run

    if workers < 1:
        _fail("--workers must be at least 1")
    updates = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    run(get_settings().model_copy(update=updates), workers=workers, access_log=access_log)


@app.command("demo")
def demo(
    images: Annotated[int, typer.Option(help="Size of the generated synthetic dataset.")] = 10_000,
    words: Annotated[int, typer.Option(help="How many common English words to raster.")] = 10_000,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the result when done.")] = True,
    featureviz_steps: Annotated[Optional[int], typer.Option(help="Optimisation steps of each feature visualization (default: the demo's 96).")] = None,
    maxtext_units: Annotated[Optional[int], typer.Option(help="Units of each final layer given a maximal text (default: all).")] = None,
) -> None:
    """Build everything for the embedded toy models on a generated dataset, then serve it."""
    from cli.demo import build_demo

    if images < 1:
        _fail("--images must be at least 1")
    if words < 1:
        _fail("--words must be at least 1")
    if featureviz_steps is not None and featureviz_steps < 1:
        _fail("--featureviz-steps must be at least 1")
    if maxtext_units is not None and maxtext_units < 1:
        _fail("--maxtext-units must be at least 1")
    for line in build_demo(get_settings(), images, words, featureviz_steps, maxtext_units):
        typer.echo(line)
    if serve_after:
        serve()


# --- datasets -------------------------------------------------------------------------


@datasets_app.command("register")
def datasets_register(
    dataset_id: Annotated[str, typer.Argument(help="Your id for the dataset, e.g. imagenet-val.")],
    path: Annotated[Optional[Path], typer.Option(help="A local folder, searched recursively (JPEG, PNG, WebP).")] = None,
    url: Annotated[Optional[str], typer.Option(help="An fsspec URL of a folder, e.g. s3://bucket/images/.")] = None,
    tar: Annotated[Optional[str], typer.Option(help="Tar shards: a path or glob, local or fsspec, e.g. 'shards/*.tar'.")] = None,
    synthetic: Annotated[Optional[int], typer.Option(help="Generate this many images of the synthetic world.")] = None,
    seed: Annotated[int, typer.Option(help="World seed for --synthetic.")] = 0,
) -> None:
    """Read, check and store every image of a source as a dataset (idempotent, resumable)."""
    from store.blobs import BlobStore
    from workers.datasets import DatasetSource, register_dataset

    given = [(kind, value) for kind, value in (("folder", path), ("url", url), ("tar", tar), ("synthetic", synthetic))
             if value is not None]
    if len(given) != 1:
        _fail("give exactly one of --path, --url, --tar or --synthetic")
    kind, value = given[0]
    if kind == "synthetic":
        source = DatasetSource("synthetic", "", count=int(value), seed=seed)
    else:
        source = DatasetSource(kind, str(value))
    settings = get_settings()
    from tqdm import tqdm

    from store.session import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    bars = []  # the bar appears with the first image, so bad input stays a one-line error

    def on_image() -> None:
        if not bars:
            bars.append(tqdm(desc=f"register {dataset_id}", unit="img", total=source.count or None))
        bars[0].update(1)

    try:
        report = register_dataset(make_sessionmaker(engine), BlobStore(settings.blob_url), dataset_id, source,
                                  on_image=on_image)
    finally:
        for bar in bars:
            bar.close()
        engine.dispose()
    for name, reason in report.skipped[:20]:
        typer.echo(f"skipped {name}: {reason}", err=True)
    if len(report.skipped) > 20:
        typer.echo(f"... and {len(report.skipped) - 20} more unreadable images", err=True)
    typer.echo(report.summary())


@datasets_app.command("list")
def datasets_list() -> None:
    """The registered datasets."""
    from store import repository

    with _session() as session:
        for row in repository.list_datasets(session):
            typer.echo(f"{row.id:24s} {row.kind:10s} {row.image_count:8d} images  {row.source_uri}")


# --- precompute -----------------------------------------------------------------------


@precompute_app.command("examples")
def precompute_examples(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    layers: Annotated[list[str], typer.Option("--layer", help="Layer name; repeat for several (one pass serves all).")],
    dataset: Annotated[str, typer.Option(help="A registered dataset id.")],
    k: Annotated[int, typer.Option(help="Top-k and bottom-k images per unit.")] = 64,
    buckets: Annotated[int, typer.Option(help="Activation buckets for the conditional-probability samples.")] = 10,
    per_bucket: Annotated[int, typer.Option(help="Images sampled per bucket.")] = 8,
    hist_bins: Annotated[int, typer.Option(help="Histogram bins (fixed before the pass).")] = 128,
    shards: Annotated[int, typer.Option(help="Contiguous dataset shards (jobs) per layer.")] = 1,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (shards as Ray tasks).")] = "local",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    checkpoint_every: Annotated[int, typer.Option(help="Batches between checkpoints (at most).")] = 50,
    checkpoint_seconds: Annotated[float, typer.Option(help="Seconds between checkpoints (at most).")] = 60.0,
    crop_size: Annotated[int, typer.Option(help="Side in pixels of the crops around each maximum (the web server cuts them from the stored image).")] = 128,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: $MICROSCOPE_RAY_ADDRESS, $RAY_ADDRESS or a local Ray).")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress of these layers and recompute.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Dataset examples (top/bottom k with crops), statistics and bucket samples of every unit."""
    from workers.engines import StoreConfig
    from workers.examples_job import request_from_options, run_examples

    request = request_from_options(
        model_id=model, dataset_id=dataset, layers=tuple(layers), k=k, buckets=buckets, per_bucket=per_bucket,
        hist_bins=hist_bins, shards=shards, engine=engine, batch_size=batch_size, checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds, crop_size=crop_size, ray_address=ray_address, restart=restart,
        device=_device(device),
    )
    summary = run_examples(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    typer.echo(json.dumps(summary))


@precompute_app.command("words")
def precompute_words(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    layers: Annotated[list[str], typer.Option("--layer", help="Layer name; repeat for several (one pass serves all).")],
    words: Annotated[Optional[int], typer.Option(help="How many of the most common English words (wordfreq; default 10000).")] = None,
    word_file: Annotated[Optional[Path], typer.Option(help="A custom list instead: one word per line.")] = None,
    world_vocabulary: Annotated[bool, typer.Option(
        "--world-vocabulary", help="The synthetic world's vocabulary instead (what the toy models know); by default rendered as `microscope toy eval` renders it.")] = False,
    font: Annotated[Optional[str], typer.Option(help="Font file name or path (default DejaVuSans-Bold.ttf).")] = None,
    font_size: Annotated[Optional[int], typer.Option(help="Font size in pixels (default: fit the image).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Raster size (default: the model's input size).")] = None,
    top: Annotated[int, typer.Option(help="Top words stored per unit.")] = 32,
    list_id: Annotated[Optional[str], typer.Option(help="Id of the word list (default: from source, font and size).")] = None,
    batch_size: Annotated[int, typer.Option(help="Words per forward pass.")] = 64,
    checkpoint_every: Annotated[int, typer.Option(help="Batches between checkpoints (at most).")] = 20,
    checkpoint_seconds: Annotated[float, typer.Option(help="Seconds between checkpoints (at most).")] = 60.0,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (the pass as a Ray task).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: $MICROSCOPE_RAY_ADDRESS, $RAY_ADDRESS or a local Ray).")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress of these layers and recompute.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Each unit's top rastered words and each layer's image-based word embedding.

    The word list is the most common English words (the default), a file of yours, or the
    synthetic world's vocabulary, which is what the toy models know."""
    if sum((words is not None, word_file is not None, world_vocabulary)) > 1:  # refused before torch is imported
        _fail("choose one of --words, --word-file and --world-vocabulary")
    from precompute.words import (DEFAULT_WORD_COUNT, WORLD_VOCABULARY_SOURCE, common_words, common_words_source,
                                  read_word_file)
    from precompute.words import world_vocabulary as world_words
    from workers.engines import StoreConfig
    from workers.words_job import WordsRequest, run_words

    if word_file is not None:
        chosen, source = read_word_file(word_file), str(word_file.expanduser().resolve())
    elif world_vocabulary:
        chosen, source = world_words(), WORLD_VOCABULARY_SOURCE
    else:
        count = DEFAULT_WORD_COUNT if words is None else words
        chosen, source = common_words(count), common_words_source(count)
    request = WordsRequest(
        model_id=model, layers=tuple(layers), words=tuple(chosen), source=source, font=font, font_size=font_size,
        image_size=image_size, top=top, list_id=list_id, batch_size=batch_size, checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds, engine=engine, ray_address=ray_address, restart=restart,
        device=_device(device),
    )
    summary = run_words(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    typer.echo(json.dumps(summary))


@precompute_app.command("directions")
def precompute_directions(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    layers: Annotated[list[str], typer.Option("--layer", help="Layer name; repeat for several (one pass serves all).")],
    dataset: Annotated[str, typer.Option(help="A registered dataset id.")],
    top: Annotated[int, typer.Option(help="Images with the largest effects kept per neuron for its direction.")] = 100,
    limit: Annotated[Optional[int], typer.Option(help="Use only the dataset's first N images.")] = None,
    shards: Annotated[int, typer.Option(help="Contiguous dataset shards (jobs) per layer and pass.")] = 1,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (shards as Ray tasks).")] = "local",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    checkpoint_every: Annotated[int, typer.Option(help="Batches between checkpoints (at most).")] = 20,
    checkpoint_seconds: Annotated[float, typer.Option(help="Seconds between checkpoints (at most).")] = 60.0,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: $MICROSCOPE_RAY_ADDRESS, $RAY_ADDRESS or a local Ray).")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress of these layers and recompute.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Each neuron's direction in the joint image-text space (the second-order lens), its mean
    effect and significance threshold, over a dataset: two resumable passes."""
    from workers.directions_job import DirectionsRequest, run_directions
    from workers.engines import StoreConfig

    request = DirectionsRequest(
        model_id=model, dataset_id=dataset, layers=tuple(layers), top=top, limit=limit, shards=shards, engine=engine,
        batch_size=batch_size, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
        ray_address=ray_address, restart=restart, device=_device(device),
    )
    summary = run_directions(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    typer.echo(json.dumps(summary))


@precompute_app.command("typographic-eval")
def precompute_typographic_eval(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    dataset: Annotated[str, typer.Option(help="A registered dataset id (held-out pictures).")],
    labels: Annotated[str, typer.Option(help="Label set: world-shapes, world-colors, world, imagenet.")] = "world-shapes",
    label_file: Annotated[Optional[Path], typer.Option(help="Your own labels instead, one a line.")] = None,
    attacks: Annotated[Optional[Path], typer.Option(help="Attacks to evaluate, one 'target<TAB>text' a line (default: every class named by itself).")] = None,
    search: Annotated[bool, typer.Option(help="Also search short class names and pool words for the most effective attacks.")] = True,
    search_pool: Annotated[Optional[str], typer.Option(help="Words the search tries: 'world' (the toy vocabulary; default for the world's label sets), 'none', or a file, one a line.")] = None,
    limit: Annotated[int, typer.Option(help="Pictures of the dataset to attack.")] = 1000,
    attacks_per_batch: Annotated[int, typer.Option(help="Attacks per checkpoint batch.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Pictures per forward pass.")] = 256,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress and recompute.")] = False,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (the pass as a Ray task).")] = "local",
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Typographic attacks in the Distill article's automated setup: success rate and pixel cover
    of each attack (Figure 16), and a search for the most effective short texts."""
    from precompute.typographic import read_attacks
    from precompute.zeroshot import WORLD_SETS
    from workers.engines import StoreConfig
    from workers.typographic_job import TypographicRequest, run_typographic

    def lines(path: Path) -> list[str]:
        try:
            return [line.strip() for line in path.expanduser().read_text().splitlines() if line.strip()]
        except OSError as error:
            raise MicroscopeError(f"cannot read {path}: {error.strerror}") from None

    custom = tuple(lines(label_file)) if label_file else ()
    specs = ()
    if attacks is not None:
        try:
            specs = tuple(read_attacks("\n".join(lines(attacks))))
        except Problem as error:
            raise MicroscopeError(f"{attacks}: {error.detail}") from None
    pool_choice = search_pool or ("world" if labels in WORLD_SETS and not custom else "none")
    if pool_choice == "world":
        from precompute.world import COLORS, COMMON_WORDS, NUMBER_WORDS

        pool = (*COLORS, *NUMBER_WORDS, *COMMON_WORDS)
    elif pool_choice == "none":
        pool = ()
    else:
        pool = tuple(lines(Path(pool_choice)))
    request = TypographicRequest(
        model_id=model, dataset_id=dataset, labels=labels, custom_labels=custom, attacks=specs, search_pool=pool,
        search=search, limit=limit, attacks_per_batch=attacks_per_batch, batch_size=batch_size, device=_device(device),
        engine=engine, restart=restart,
    )
    summary = run_typographic(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    typer.echo(json.dumps(summary))


@precompute_app.command("featureviz")
def precompute_featureviz(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    layer: Annotated[str, typer.Option(help="Layer name, e.g. layer4 or transformer.resblocks.11.mlp.")],
    units: Annotated[Optional[str], typer.Option(help="Units and ranges, e.g. 0-47,254 (default: every unit).")] = None,
    kinds: Annotated[str, typer.Option(help="Comma-separated: channel, neuron, diversity, facet.")] = "channel",
    steps: Annotated[int, typer.Option(help="Optimisation steps per image.")] = 512,
    diversity: Annotated[int, typer.Option(help="Images per unit for the diversity kind.")] = 4,
    facets: Annotated[Optional[str], typer.Option(help="Facet probes for the facet kind, e.g. text,object.")] = None,
    facet_layer: Annotated[Optional[str], typer.Option(help="Layer of the facet probes (default: the layer below).")] = None,
    facet_filter: Annotated[str, typer.Option(help="The facet term's gradient filter: positive (its excitatory part) or signed (the article's exact form).")] = "positive",
    seed: Annotated[int, typer.Option(help="Seed of the starting images and transformations.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per optimisation (default: what the device's memory holds).")] = None,
    engine: Annotated[str, typer.Option(help="local (in this process) or ray (the pass as a Ray task).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address.")] = None,
    restart: Annotated[bool, typer.Option(help="Discard earlier progress of this layer and render again.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Feature visualizations of a layer's units, rendered many units per optimisation (resumable)."""
    from workers.engines import StoreConfig
    from workers.featureviz_job import FeatureVizRequest, run_featureviz

    request = FeatureVizRequest(
        model_id=model, layer=layer, units=_unit_list(units), kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        steps=steps, diversity=diversity, facets=tuple(f.strip() for f in (facets or "").split(",") if f.strip()),
        facet_layer=facet_layer, facet_filter=facet_filter, seed=seed, batch_size=batch_size, engine=engine, ray_address=ray_address,
        restart=restart, device=_device(device),
    )
    summary = run_featureviz(StoreConfig.from_settings(get_settings()), request, show_progress=not quiet)
    typer.echo(json.dumps(summary))


def _unit_list(text: Optional[str]):
    """'0-47,254' as a tuple of units (checked against the layer by the job), None for all."""
    from workers.featureviz_job import parse_units

    if text is None or text.strip() in ("", "all"):
        return None
    return parse_units(text, 1 << 30)


@featureviz_app.command("train-facet")
def featureviz_train_facet(
    model: Annotated[str, typer.Option(help="A registered model id.")],
    facet: Annotated[str, typer.Option(help="The facet's name, e.g. text, face, logo.")],
    layer: Annotated[Optional[str], typer.Option(help="The (lower) layer the probe reads (default: the layer below the final one).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="A folder of the facet's images.")] = None,
    generic: Annotated[Optional[Path], typer.Option(help="A folder of generic images to tell them from.")] = None,
    world: Annotated[bool, typer.Option("--world", help="The synthetic world's built-in facet (text or object) instead of folders.")] = False,
    count: Annotated[int, typer.Option(help="World pictures per side.")] = 200,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: settings).")] = None,
) -> None:
    """Train a facet probe (logistic regression on a layer's mean activations) and store it."""
    from workers.engines import StoreConfig
    from workers.featureviz_job import FacetRequest, train_facet

    request = FacetRequest(model_id=model, layer=layer, facet=facet, images=str(images) if images else None,
                           generic=str(generic) if generic else None, world=world, count=count, device=_device(device))
    typer.echo(json.dumps(train_facet(StoreConfig.from_settings(get_settings()), request)))


# --- tokens ---------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(name: Annotated[str, typer.Argument(help="Who holds the token; recorded as the author of their writes.")]) -> None:
    """Create a write token for NAME and print it (once: only its hash is stored)."""
    from store.annotations import create_token

    with _session() as session:
        try:
            row, token = create_token(session, name)
        except Problem as error:
            _fail(error.detail)
        session.commit()
    typer.echo(token)
    typer.secho(f"token {row.id} for {row.name} (prefix {row.prefix}); it is shown only now", err=True)


@tokens_app.command("list")
def tokens_list() -> None:
    """The tokens: id, prefix, holder, created, last used, revoked."""
    from store.annotations import list_tokens

    with _session() as session:
        for row in list_tokens(session):
            used = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
            state = f"revoked {row.revoked_at.isoformat(timespec='seconds')}" if row.revoked_at else "live"
            typer.echo(f"{row.id:4d} {row.prefix:14s} {row.name:24s} created {row.created_at.isoformat(timespec='seconds')}  "
                       f"used {used}  {state}")


@tokens_app.command("revoke")
def tokens_revoke(prefix_or_id: Annotated[str, typer.Argument(help="The token's id, or the start of its prefix (6+ characters).")]) -> None:
    """Revoke a token; writes with it are refused from now on."""
    from store.annotations import revoke_token

    with _session() as session:
        try:
            rows = revoke_token(session, prefix_or_id)
        except Problem as error:
            _fail(error.detail)
        if not rows:
            _fail(f"no live token matches {prefix_or_id!r}")
        if len(rows) > 1:
            _fail(f"{len(rows)} tokens match {prefix_or_id!r}; give more of the prefix or the id")
        session.commit()
    typer.echo(f"revoked token {rows[0].id} of {rows[0].name}")


# --- text pools and decompositions (cli/text.py) ----------------------------------------
from cli import text as _text  # noqa: E402

app.add_typer(_text.textpools_app, name="textpools")
precompute_app.command("decompose")(_text.precompute_decompose)
precompute_app.command("maxtext")(_text.precompute_maxtext)


def main() -> None:
    try:
        app()
    except MicroscopeError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
