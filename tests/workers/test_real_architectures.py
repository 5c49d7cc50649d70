"""Random-initialised RN50x4 and ViT-B-32 with a folder of generated images: every unit of
the final layer gets its examples, statistics, buckets and words (SQLite and Postgres).
Kept small (RN50x4 at 288 px is slow on CPU): 6 images, k = 3, 6 words."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store.blobs import BlobStore
from store.models import BucketSample, DatasetExample, Layer, Unit, WordActivation, WordEmbedding
from store.session import make_engine, make_sessionmaker
from precompute.examples import ExampleParams
from tests.workers.precompute_helpers import register_random, single_thread, store_config, write_world_folder
from workers.datasets import DatasetSource, register_dataset
from workers.examples_job import ExamplesRequest, run_examples
from workers.words_job import WordsRequest, run_words

ARCHES = {"RN50x4": "layer4", "ViT-B-32": "transformer.resblocks.11.mlp"}


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def towers():
    from precompute.registry import load_model

    return {arch: load_model(arch.lower(), arch) for arch in ARCHES}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHES))
def test_final_layer_of_a_real_architecture(arch, migrated_url, tmp_path, towers):
    loaded = towers[arch]
    layer = ARCHES[arch]
    units = loaded.spec.layer(layer).units
    register_random(migrated_url, loaded.model_id, arch, loaded)
    engine = make_engine(migrated_url)
    sessions = make_sessionmaker(engine)
    folder = write_world_folder(tmp_path / "images", 6)
    register_dataset(sessions, BlobStore(str(tmp_path / "blobs")), "generated", DatasetSource("folder", str(folder)))
    store = store_config(migrated_url, tmp_path)
    params = ExampleParams(k=3, hist_bins=16, sample_bins=4, buckets=3, per_bucket=2)
    request = ExamplesRequest(model_id=loaded.model_id, dataset_id="generated", layers=(layer,), params=params, batch_size=3, crop_size=32)
    assert run_examples(store, request, show_progress=False, loaded=loaded)["status"] == "done"
    words = WordsRequest(model_id=loaded.model_id, layers=(layer,), words=("red", "apple", "king", "queen", "man", "woman"),
                         source="test", top=3, batch_size=6)
    assert run_words(store, words, show_progress=False, loaded=loaded)["status"] == "done"

    with sessions() as session:
        layer_id = session.scalar(select(Layer.id).where(Layer.model_id == loaded.model_id, Layer.name == layer))

        def per_unit(table, *where):
            stmt = (select(func.count(func.distinct(table.unit_id))).join(Unit, Unit.id == table.unit_id)
                    .where(Unit.layer_id == layer_id, *where))
            return session.scalar(stmt)

        assert per_unit(DatasetExample, DatasetExample.sign == "top", DatasetExample.rank == 2) == units
        assert per_unit(DatasetExample, DatasetExample.sign == "bottom", DatasetExample.rank == 2) == units
        assert per_unit(BucketSample) == units
        assert per_unit(WordActivation, WordActivation.rank == 2) == units
        assert session.scalar(select(func.count()).select_from(Unit).where(Unit.layer_id == layer_id, Unit.histogram.is_not(None))) == units
        assert session.scalar(select(func.count()).select_from(WordEmbedding).where(WordEmbedding.layer_id == layer_id)) == 1
        crops = session.scalar(select(func.count(DatasetExample.crop_box)).join(Unit, Unit.id == DatasetExample.unit_id)
                               .where(Unit.layer_id == layer_id))
        assert crops == units * 6
    engine.dispose()
