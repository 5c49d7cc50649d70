"""`microscope demo`: everything for the embedded toy models, from nothing, offline."""

from __future__ import annotations

from collections.abc import Iterator

from app.settings import Settings

DEMO_WORLD_SEED = 0
DEMO_MODELS = ("toy-rn", "toy-vit")
DEMO_DATASET = "synthetic-world"
DEMO_WORDS = 10_000
DEMO_HELD_OUT_DATASET = "world-objects-held-out"
DEMO_HELD_OUT = 48  # single-object pictures the typographic evaluation attacks
DEMO_HELD_OUT_SEED = 1  # another seed than the dataset's, so the pictures are new to every job
DEMO_ATTACK_POOL = ("love", "pizza", "sale", "red", "one")  # words the attack search tries beside class names


def build_demo(settings: Settings, images: int, words: int = DEMO_WORDS,
               featureviz_steps: int | None = None, maxtext_units: int | None = None) -> Iterator[str]:
    """Each step is idempotent and resumable, so running the demo again only fills gaps."""
    from store import migrations
    from store.blobs import BlobStore
    from store.session import make_engine, make_sessionmaker
    from precompute.registry import load_embedded
    from precompute.words import WORLD_VOCABULARY_SOURCE, common_words, common_words_source, world_vocabulary
    from precompute.world import WorldConfig, write_dataset
    from workers.datasets import DatasetSource, register_dataset
    from workers.engines import StoreConfig
    from workers.examples_job import request_from_options, run_examples
    from store.loading import register
    from workers.words_job import WordsRequest, run_words
    from precompute.typographic import write_held_out_objects
    from workers.decompose_job import decompose_layers
    from workers.directions_job import demo_layers, run_demo_directions
    from workers.featureviz_job import DEMO_STEPS, render_demo
    from workers.maxtext_job import maxtext_layers
    from workers.typographic_job import TypographicRequest, run_typographic

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.database_url, "head")
    yield f"store ready at {settings.database_url}"

    # The dataset as files too, for `microscope capture` and for looking at.
    dataset_dir = settings.data_dir / "datasets" / f"synthetic-world-seed{DEMO_WORLD_SEED}"
    write_dataset(dataset_dir, images, DEMO_WORLD_SEED, WorldConfig())
    yield f"synthetic dataset: {images} images in {dataset_dir}"

    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    try:
        report = register_dataset(sessions, BlobStore(settings.blob_url), DEMO_DATASET,
                                  DatasetSource("folder", str(dataset_dir)))
        yield report.summary()
        device = settings.resolved_device()
        loaded_models = {}
        with sessions() as session:
            for arch in DEMO_MODELS:
                loaded_models[arch] = load_embedded(arch, device=device)
                register(session, loaded_models[arch], description=f"embedded {arch}, trained on the synthetic world")
                yield f"registered {arch} ({len(loaded_models[arch].spec.layers)} layers)"
    finally:
        engine.dispose()

    store = StoreConfig.from_settings(settings)
    # The world's vocabulary is what the toy models know (their pages show it first); the
    # common English words are the list a real CLIP is read with, kept for comparison.
    word_lists = ((tuple(world_vocabulary()), WORLD_VOCABULARY_SOURCE, "the synthetic world's vocabulary"),
                  (tuple(common_words(words)), common_words_source(words), "common English words"))
    for arch, loaded in loaded_models.items():
        layer = loaded.spec.final_layer.name
        request = request_from_options(model_id=arch, dataset_id=DEMO_DATASET, layers=(layer,), device=device)
        summary = run_examples(store, request, loaded=loaded)
        yield f"{arch} {layer}: dataset examples, statistics and buckets ({summary})"
        for word_list, source, name in word_lists:
            summary = run_words(store, WordsRequest(model_id=arch, layers=(layer,), words=word_list, source=source,
                                                    device=device), loaded=loaded)
            yield f"{arch} {layer}: top rastered words of {len(word_list)} words, {name} ({summary})"
        # Feature visualizations: the first grid page and the figures' units (with diversity
        # and the world's text/object facets for the latter), at DEMO_STEPS steps.
        yield from render_demo(store, loaded, steps=featureviz_steps or DEMO_STEPS, device=device, show_progress=False)

    # The text side: each neuron's direction in the joint space (toy-rn's layer4, every MLP
    # layer of toy-vit), then its sparse decomposition over the world's vocabulary.
    yield from run_demo_directions(store, loaded_models, DEMO_DATASET, device=device, show_progress=False)
    yield from decompose_layers(store, {arch: demo_layers(loaded) for arch, loaded in loaded_models.items()},
                                loaded=loaded_models, device=device, show_progress=False)
    # Each final layer's maximal texts (the unit pages' text feature visualization); all units
    # unless `maxtext_units` names how many.
    yield from maxtext_layers(store, {arch: [loaded.spec.final_layer.name] for arch, loaded in loaded_models.items()},
                              loaded=loaded_models, limit=maxtext_units, device=device, show_progress=False)

    # Typographic attacks on held-out pictures of single objects, in the article's automated setup.
    held_out = settings.data_dir / "datasets" / f"world-objects-held-out-seed{DEMO_HELD_OUT_SEED}"
    write_held_out_objects(held_out, DEMO_HELD_OUT, seed=DEMO_HELD_OUT_SEED)
    engine = make_engine(settings.database_url)
    try:
        yield register_dataset(make_sessionmaker(engine), BlobStore(settings.blob_url), DEMO_HELD_OUT_DATASET,
                               DatasetSource("folder", str(held_out))).summary()
    finally:
        engine.dispose()
    for arch, loaded in loaded_models.items():
        request = TypographicRequest(arch, DEMO_HELD_OUT_DATASET, limit=DEMO_HELD_OUT, device=device,
                                     search_pool=DEMO_ATTACK_POOL)
        summary = run_typographic(store, request, loaded=loaded, show_progress=False)
        yield f"{arch}: typographic attacks evaluated on {DEMO_HELD_OUT} held-out pictures ({summary})"
