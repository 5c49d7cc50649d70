"""feature visualization thumbnails and facet probes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

`featureviz.thumbnail_uri`: a small copy of each visualization for the layer grid (the full
image stays in `blob_uri`). `facet_probes`: the linear probes of faceted feature
visualization, one per (layer, facet), weights as a blob.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('featureviz') as batch:
        batch.add_column(sa.Column('thumbnail_uri', sa.Text(), nullable=True))
    op.create_table('facet_probes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('facet', sa.String(length=64), nullable=False),
    sa.Column('weights_uri', sa.Text(), nullable=False),
    sa.Column('bias', sa.Float(), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], name=op.f('fk_facet_probes_layer_id_layers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_facet_probes')),
    sa.UniqueConstraint('layer_id', 'facet', name=op.f('uq_facet_probes_layer_id_facet'))
    )


def downgrade() -> None:
    op.drop_table('facet_probes')
    with op.batch_alter_table('featureviz') as batch:
        batch.drop_column('thumbnail_uri')
