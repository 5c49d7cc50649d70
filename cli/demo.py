"""`microscope demo`: everything for the embedded toy models, from nothing, offline."""

from __future__ import annotations

from collections.abc import Iterator

from app.settings import Settings

DEMO_WORLD_SEED = 0
DEMO_MODELS = ("toy-rn", "toy-vit")
DEMO_DATASET = "synthetic-world"
DEMO_WORDS = 10_000


def build_demo(settings: Settings, images: int, words: int = DEMO_WORDS) -> Iterator[str]:
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
        from workers.featureviz_job import render_demo

        yield from render_demo(store, loaded, device=device)
