"""neuron directions per layer

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

One row per (layer, dataset) naming the blob that holds the layer's neuron directions, mean
effects and significance thresholds (the second-order lens), so a live page reads a layer's
directions in one blob read.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('direction_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=128), nullable=False),
    sa.Column('blob_uri', sa.Text(), nullable=False),
    sa.Column('paths', sa.String(length=64), nullable=False),
    sa.Column('dimension', sa.Integer(), nullable=False),
    sa.Column('image_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_direction_sets_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], name=op.f('fk_direction_sets_layer_id_layers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_direction_sets')),
    sa.UniqueConstraint('layer_id', 'dataset_id', name=op.f('uq_direction_sets_layer_id_dataset_id'))
    )


def downgrade() -> None:
    op.drop_table('direction_sets')
