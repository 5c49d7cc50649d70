"""`microscope demo --no-serve`, the command the compose worker runs, end to end on a small dataset."""

import json
import os
import subprocess
import sys

from sqlalchemy import func, select

from store.models import (DatasetExample, Decomposition, DirectionSet, FeatureViz, Layer, Model, Unit, WordActivation,
                          WordEmbedding, WordList)
from store.models import MaximalText, TypographicResult
from store.session import make_engine, make_sessionmaker


def test_demo_builds_store_dataset_and_models(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSCOPE_")}
    env["MICROSCOPE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--no-serve", "--images", "40", "--words", "120", "--featureviz-steps", "4", "--maxtext-units", "16"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    dataset = tmp_path / "data" / "datasets" / "synthetic-world-seed0"
    lines = (dataset / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len(list((dataset / "images").glob("*.png"))) == 40
    assert all(json.loads(line)["caption"] for line in lines)

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'microscope.db'}")
    with make_sessionmaker(engine)() as session:
        models = {m.id: m for m in session.scalars(select(Model))}
        assert set(models) >= {"toy-rn", "toy-vit"}
        assert models["toy-rn"].source == "embedded" and models["toy-rn"].checkpoint_sha256
        layer4 = session.scalar(select(Layer).where(Layer.model_id == "toy-rn", Layer.name == "layer4"))
        assert layer4.units == 768 and layer4.spatial == (2, 2)
        assert session.scalar(select(func.count()).select_from(Unit).where(Unit.layer_id == layer4.id)) == 768
        # Every unit of each model's final layer has its dataset examples and top words.
        for model_id in ("toy-rn", "toy-vit"):
            final = session.scalar(select(Layer).where(Layer.model_id == model_id).order_by(Layer.position.desc())
                                   .where(Layer.name.in_(("layer4", "transformer.resblocks.5.mlp"))))
            units = select(Unit.id).where(Unit.layer_id == final.id)
            with_examples = session.scalar(select(func.count(func.distinct(DatasetExample.unit_id)))
                                           .where(DatasetExample.unit_id.in_(units), DatasetExample.sign == "top"))
            with_words = session.scalar(select(func.count(func.distinct(WordActivation.unit_id)))
                                        .where(WordActivation.unit_id.in_(units)))
            assert with_examples == with_words == final.units
            # Both word lists: the world's vocabulary the toy models know, and common English words.
            lists = set(session.scalars(select(WordEmbedding.word_list_id).where(WordEmbedding.layer_id == final.id)))
            sources = {session.get(WordList, list_id).source for list_id in lists}
            assert sources == {"synthetic-world:vocabulary", "wordfreq:en:120"}
            assert session.scalar(select(func.count()).select_from(Unit)
                                  .where(Unit.layer_id == final.id, Unit.max.is_(None))) == 0
            # Channel visualizations of the grid's first page; directions and world-pool decompositions.
            channel = session.scalar(select(func.count(func.distinct(FeatureViz.unit_id)))
                                     .where(FeatureViz.unit_id.in_(units), FeatureViz.kind == "channel"))
            assert channel >= 48
            assert session.scalar(select(func.count()).select_from(DirectionSet).where(DirectionSet.layer_id == final.id)) == 1
            decomposed = session.scalar(select(func.count(func.distinct(Decomposition.unit_id)))
                                        .where(Decomposition.unit_id.in_(units), Decomposition.pool_id == "world"))
            assert decomposed > final.units // 2
            # Maximal texts of the first units with a direction, at most 16 asked for.
            maximal = session.scalar(select(func.count()).select_from(MaximalText).where(MaximalText.unit_id.in_(units)))
            assert 0 < maximal <= 16
            assert session.scalar(select(func.count()).select_from(TypographicResult)
                                  .where(TypographicResult.model_id == model_id)) > 0
    engine.dispose()

    again = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--no-serve", "--images", "40", "--words", "120", "--featureviz-steps", "4", "--maxtext-units", "16"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr
    word_lines = [line for line in again.stdout.splitlines() if "top rastered words" in line]
    assert len(word_lines) == 4 and all("'already done'" in line for line in word_lines), again.stdout
    assert len((dataset / "captions.jsonl").read_text().splitlines()) == 40
