"""A store filled by the real precompute jobs, as `microscope demo` fills one: both toy models
registered, a small synthetic dataset registered, and the examples and words jobs run on
each model's final layer. Page tests on it check what the jobs really wrote, against
activations the tests compute themselves.

Small on purpose (200 images, the world's vocabulary, k = 8) so that building it takes
seconds per database.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.sample_store import TOY_MODELS, register_toy

DATASET = "world-200"
IMAGES = 200
WORLD_SEED = 0
FINAL_LAYERS = {"toy-rn": "layer4", "toy-vit": "transformer.resblocks.5.mlp"}
TOP_K = 8
TOP_WORDS = 10
WORD_SOURCE = "precompute.world vocabulary"


@dataclass
class JobStore:
    backend: str
    database_url: str
    blob_url: str
    words: tuple[str, ...]


def world_words() -> tuple[str, ...]:
    from precompute.world import WORDS

    return tuple(dict.fromkeys(WORDS))


def fill_with_jobs(backend: str, database_url: str, blob_url: str) -> JobStore:
    """Migrate an empty database and run the real jobs into it."""
    from store import migrations
    from store.blobs import BlobStore
    from store.session import make_engine, make_sessionmaker
    from workers.datasets import DatasetSource, register_dataset
    from workers.engines import StoreConfig
    from workers.examples_job import request_from_options, run_examples
    from workers.words_job import WordsRequest, run_words

    migrations.upgrade(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            for model_id in TOY_MODELS:
                register_toy(session, model_id)
            session.commit()
        register_dataset(sessions, BlobStore(blob_url), DATASET, DatasetSource("synthetic", "", count=IMAGES, seed=WORLD_SEED))
    finally:
        engine.dispose()
    store = StoreConfig(database_url, blob_url)
    words = world_words()
    for model_id, layer in FINAL_LAYERS.items():
        request = request_from_options(model_id=model_id, dataset_id=DATASET, layers=(layer,), k=TOP_K, hist_bins=16, buckets=4,
                                       per_bucket=2, batch_size=100)
        run_examples(store, request, show_progress=False)
        run_words(store, WordsRequest(model_id=model_id, layers=(layer,), words=words, source=WORD_SOURCE, top=TOP_WORDS,
                                      batch_size=128), show_progress=False)
    return JobStore(backend, database_url, blob_url, words)
