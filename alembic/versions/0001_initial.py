"""initial schema: models, layers, units, datasets, images, dataset_images, jobs

Revision ID: 0001
Revises:
Create Date: 2025-11-22

Written by hand, then checked against store.models with alembic's compare_metadata
(tests/app/test_migrations.py). Constraint names are spelled out rather than derived from the
naming convention at run time, so this file produces the same schema even if the convention
in models.py changes later.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("arch", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("pretrained_tag", sa.String(128), nullable=True),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=True),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("preprocess", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.CheckConstraint(
            "source IN ('pretrained', 'checkpoint', 'embedded', 'random')", name=op.f("ck_models_source")
        ),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("blob_uri", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("sha256", name=op.f("uq_images_sha256")),
    )
    op.create_table(
        "layers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("spatial_h", sa.Integer(), nullable=True),
        sa.Column("spatial_w", sa.Integer(), nullable=True),
        sa.Column("has_class_token", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layers")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_layers_model_id_models"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("model_id", "name", name=op.f("uq_layers_model_id_name")),
    )
    op.create_table(
        "units",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("layer_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("mean", sa.Float(), nullable=True),
        sa.Column("std", sa.Float(), nullable=True),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("fraction_active", sa.Float(), nullable=True),
        sa.Column("histogram", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_units")),
        sa.ForeignKeyConstraint(
            ["layer_id"], ["layers.id"], name=op.f("fk_units_layer_id_layers"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("layer_id", "index", name=op.f("uq_units_layer_id_index")),
    )
    op.create_table(
        "dataset_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_images")),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_images_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_dataset_images_image_id_images"),
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("dataset_id", "position", name=op.f("uq_dataset_images_dataset_id_position")),
    )
    op.create_index(op.f("ix_dataset_images_image_id"), "dataset_images", ["image_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("layer", sa.String(256), nullable=True),
        sa.Column("dataset_id", sa.String(128), nullable=True),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("done_items", sa.Integer(), nullable=False),
        sa.Column("total_items", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_jobs_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_jobs_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "kind", "model_id", "layer", "dataset_id", "shard", name=op.f("uq_jobs_kind_model_id_layer_dataset_id_shard")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'done', 'failed')", name=op.f("ck_jobs_state")
        ),
    )
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])


def downgrade() -> None:
    # Children before parents, so foreign keys never point at a dropped table.
    op.drop_index(op.f("ix_jobs_state"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_dataset_images_image_id"), table_name="dataset_images")
    op.drop_table("dataset_images")
    op.drop_table("units")
    op.drop_table("layers")
    op.drop_table("images")
    op.drop_table("datasets")
    op.drop_table("models")
