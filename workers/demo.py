"""`microscope demo`: everything for the embedded toy models, from nothing, offline."""

from __future__ import annotations

from collections.abc import Iterator

from app.settings import Settings

DEMO_WORLD_SEED = 0
DEMO_MODELS = ("toy-rn", "toy-vit")


def build_demo(settings: Settings, images: int) -> Iterator[str]:
    from app.store import migrations
    from app.store.session import make_engine, make_sessionmaker
    from precompute.registry import load_embedded
    from precompute.world import WorldConfig, write_dataset
    from workers.models import register

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.database_url, "head")
    yield f"store ready at {settings.database_url}"

    dataset_dir = settings.data_dir / "datasets" / f"synthetic-world-seed{DEMO_WORLD_SEED}"
    write_dataset(dataset_dir, images, DEMO_WORLD_SEED, WorldConfig())
    yield f"synthetic dataset: {images} images in {dataset_dir}"

    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        for arch in DEMO_MODELS:
            loaded = load_embedded(arch, device=settings.resolved_device())
            register(session, loaded, description=f"embedded {arch}, trained on the synthetic world")
            yield f"registered {arch} ({len(loaded.spec.layers)} layers)"
    engine.dispose()
