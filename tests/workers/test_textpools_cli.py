"""`microscope textpools` as a user runs it: add, refuse a conflicting add in one line, list.
(Three processes: each costs a torch import.)"""

from __future__ import annotations

import pytest

from tests.test_cli import microscope, one_line_error


@pytest.mark.slow
def test_add_refuse_and_list(migrated_url, tmp_path):
    from tests.world_words import cli_env

    env = cli_env(migrated_url, tmp_path)
    added = microscope("textpools", "add", "world", "--world", env=env)
    assert added.returncode == 0 and "added: pool world" in added.stdout, added.stderr
    file = tmp_path / "colours.txt"
    file.write_text("red\ngreen\n")
    assert "exists with other texts" in one_line_error(microscope("textpools", "add", "world", "--file", str(file), env=env))
    listed = microscope("textpools", "list", env=env)
    assert listed.returncode == 0 and listed.stdout.split()[0] == "world" and "synthetic-world:vocabulary" in listed.stdout


@pytest.mark.slow
def test_add_with_a_model_stores_its_embeddings_once(migrated_url, tmp_path):
    """--model embeds the pool under the model now, through the store's cache: a second run
    reuses the row, and an unknown model is one line before anything is written."""
    import io

    import numpy as np

    from precompute.registry import load_embedded
    from precompute.text_pools import encode_pool, pool_texts
    from store.blobs import BlobStore
    from store.loading import register
    from store.models import TextEmbedding, TextPool
    from store.session import make_engine, make_sessionmaker
    from tests.world_words import cli_env

    env = cli_env(migrated_url, tmp_path)
    engine = make_engine(migrated_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            register(session, load_embedded("toy-rn"))
        refused = one_line_error(microscope("textpools", "add", "world", "--world", "--model", "nope", env=env))
        assert "nope" in refused and "not registered" in refused
        with sessions() as session:
            assert session.get(TextPool, "world") is None
        added = microscope("textpools", "add", "world", "--world", "--model", "toy-rn", "--quiet", env=env)
        assert added.returncode == 0, added.stderr
        assert "added: pool world" in added.stdout and "embedded: pool world under toy-rn" in added.stdout
        again = microscope("textpools", "add", "world", "--world", "--model", "toy-rn", "--quiet", env=env)
        assert "already there" in again.stdout and "already embedded: pool world under toy-rn" in again.stdout
        with sessions() as session:
            rows = session.query(TextEmbedding).filter_by(model_id="toy-rn", pool_id="world").all()
            assert len(rows) == 1
            stored = np.load(io.BytesIO(BlobStore(str(tmp_path / "blobs")).get(rows[0].blob_uri)))
    finally:
        engine.dispose()
    loaded = load_embedded("toy-rn")
    texts = pool_texts("world")
    expected = encode_pool(loaded.model, loaded.tokenizer, list(texts.texts), texts.source).numpy()
    assert stored.shape == expected.shape and np.allclose(stored, expected, atol=1e-5)
