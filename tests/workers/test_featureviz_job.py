"""The featureviz job on the real toy models and a real store (SQLite and Postgres)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from precompute.errors import MicroscopeError, UnknownLayerError
from store import migrations
from store.blobs import BlobStore
from store.models import FacetProbe, FeatureViz, Layer, Unit
from store.session import make_engine, make_sessionmaker
from tests.workers.precompute_helpers import single_thread
from workers.engines import StoreConfig
from workers.featureviz_job import FacetRequest, FeatureVizRequest, parse_units, run_featureviz, train_facet

RN_LAYER = "layer4"


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def toy_rn():
    from precompute.registry import load_embedded

    return load_embedded("toy-rn")


@pytest.fixture
def store(database_url, tmp_path, toy_rn):
    from store.loading import register

    migrations.upgrade(database_url)
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        register(session, toy_rn)
    engine.dispose()
    return StoreConfig(database_url, str(tmp_path / "blobs"))


def rows(store: StoreConfig) -> list[tuple]:
    engine = make_engine(store.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            stmt = (select(Layer.name, Unit.index, FeatureViz.kind, FeatureViz.variant, FeatureViz.blob_uri,
                           FeatureViz.thumbnail_uri, FeatureViz.final_activation, FeatureViz.parameters)
                    .join(Unit, Unit.id == FeatureViz.unit_id).join(Layer, Layer.id == Unit.layer_id)
                    .order_by(Unit.index, FeatureViz.kind, FeatureViz.variant))
            return [tuple(r) for r in session.execute(stmt).all()]
    finally:
        engine.dispose()


def test_parse_units():
    assert parse_units("0-3,7,2", 10) == (0, 1, 2, 3, 7)
    assert parse_units(None, 3) == (0, 1, 2)
    with pytest.raises(MicroscopeError, match="no unit 10"):
        parse_units("9-10", 10)
    with pytest.raises(MicroscopeError, match="not a unit"):
        parse_units("a", 10)


def test_job_renders_units_into_blobs_and_rows(store, toy_rn):
    request = FeatureVizRequest("toy-rn", RN_LAYER, units=(254, 365, 178), kinds=("channel", "neuron"), steps=6, batch_size=4)
    summary = run_featureviz(store, request, show_progress=False, loaded=toy_rn)
    assert summary["status"] == "done" and summary["units_per_batch"] == 2
    got = rows(store)
    assert [(r[1], r[2]) for r in got] == [(178, "channel"), (178, "neuron"), (254, "channel"), (254, "neuron"),
                                          (365, "channel"), (365, "neuron")]
    blobs = BlobStore(store.blob_url)
    from precompute.featureviz.render import rgb_batch_to_model, unit_values

    for layer, unit, kind, variant, uri, thumb, final, parameters in got:
        image = Image.open(io.BytesIO(blobs.get(uri)))
        assert image.size == (64, 64) and image.mode == "RGB"
        assert blobs.exists(thumb)
        assert parameters["steps"] == 6 and isinstance(parameters["seed"], int) and parameters["param"]["param"] == "fourier"
        assert parameters["image_size"] == 64 and parameters["transforms"]["pad"] == 3
        if kind == "channel":  # the stored value is the unit's own value on the stored image
            value = unit_values(toy_rn, layer, rgb_batch_to_model(toy_rn, np.asarray(image)[None]), [unit])[0, 0]
            assert final == pytest.approx(float(value), rel=0.05, abs=0.05)
    again = run_featureviz(store, request, show_progress=False, loaded=toy_rn)
    assert again["status"] == "already done"
    assert rows(store) == got


def test_bad_input_is_refused_with_a_reason(store, toy_rn):
    def run(**changes):
        base = dict(model_id="toy-rn", layer=RN_LAYER, units=(0,), steps=2)
        run_featureviz(store, FeatureVizRequest(**(base | changes)), show_progress=False, loaded=toy_rn)

    with pytest.raises(MicroscopeError, match="no unit 768"):
        run(units=(768,))
    with pytest.raises(UnknownLayerError, match="no layer 'layer9'"):
        run(layer="layer9")
    with pytest.raises(MicroscopeError, match="no positions"):
        run(layer="attnpool", kinds=("neuron",))
    with pytest.raises(MicroscopeError, match="--steps must be at least 1"):
        run(steps=0)
    with pytest.raises(MicroscopeError, match="not registered"):
        run(model_id="nope")
    with pytest.raises(MicroscopeError, match="no facet probe 'text'"):
        run(kinds=("facet",), facets=("text",))
    with pytest.raises(MicroscopeError, match="unknown --kinds"):
        run(kinds=("colour",))


def test_facet_probes_train_store_and_steer(store, toy_rn):
    summary = train_facet(store, FacetRequest("toy-rn", None, "text", world=True, count=30), loaded=toy_rn)
    assert summary["layer"] == "layer3" and summary["train_accuracy"] >= 0.95
    engine = make_engine(store.database_url)
    with make_sessionmaker(engine)() as session:
        probe = session.execute(select(FacetProbe)).scalar_one()
        assert probe.facet == "text" and probe.parameters["positives"] == 30
    engine.dispose()
    # a probe on another layer than the one the faceted objective reads is refused
    with pytest.raises(MicroscopeError, match="trained on layer3, not on layer2"):
        run_featureviz(store, FeatureVizRequest("toy-rn", RN_LAYER, units=(1,), kinds=("facet",), facets=("text",),
                                                facet_layer="layer2", steps=2), show_progress=False, loaded=toy_rn)
    request = FeatureVizRequest("toy-rn", RN_LAYER, units=(254,), kinds=("channel", "facet", "diversity"), facets=("text",),
                                diversity=2, steps=4)
    assert run_featureviz(store, request, show_progress=False, loaded=toy_rn)["status"] == "done"
    got = {(r[2], r[3]): r for r in rows(store)}
    assert set(got) == {("channel", ""), ("facet", "text"), ("diversity", "0"), ("diversity", "1")}
    assert got[("facet", "text")][7]["facet_layer"] == "layer3" and "probe_score" in got[("facet", "text")][7]
    assert got[("diversity", "0")][7]["diversity_layer"] == "layer3"


def test_a_probe_of_another_model_is_refused(toy_rn):
    from precompute.featureviz.objectives import FacetProbe as Probe
    from precompute.featureviz.render import RenderItem, RenderSettings, render

    probe = Probe("toy-other", "layer3", "text", tuple([0.0] * 384), 0.0)
    with pytest.raises(MicroscopeError, match="trained on model 'toy-other'"):
        render(toy_rn, RN_LAYER, [RenderItem(0, "facet", "text")], RenderSettings(steps=1), probes={"text": probe})


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer,size", [("RN50x4", "layer4", 288), ("ViT-B-32", "transformer.resblocks.11.mlp", 224)])
def test_real_architectures_render_end_to_end(tmp_path, arch, layer, size):
    from precompute.registry import load_model
    from tests.workers.precompute_helpers import register_random

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrations.upgrade(url)
    loaded = register_random(url, arch.lower(), arch, load_model(arch.lower(), arch))
    store = StoreConfig(url, str(tmp_path / "blobs"))
    request = FeatureVizRequest(arch.lower(), layer, units=(0, 5), kinds=("channel", "neuron"), steps=2, batch_size=4)
    assert run_featureviz(store, request, show_progress=False, loaded=loaded)["status"] == "done"
    got = rows(store)
    assert [(r[1], r[2]) for r in got] == [(0, "channel"), (0, "neuron"), (5, "channel"), (5, "neuron")]
    blobs = BlobStore(store.blob_url)
    for *_, uri, thumb, final, parameters in got:
        assert Image.open(io.BytesIO(blobs.get(uri))).size == (size, size)
        assert Image.open(io.BytesIO(blobs.get(thumb))).size == (96, 96)
        assert np.isfinite(final) and parameters["image_size"] == size
    spec = loaded.spec.layer(layer)
    assert got[1][7]["position"] == (spec.spatial[0] // 2) * spec.spatial[1] + spec.spatial[1] // 2
