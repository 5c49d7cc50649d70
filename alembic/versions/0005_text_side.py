"""text side: cached text embeddings per (model, pool), decomposition reconstruction scores

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

A pool's text embeddings under a model are computed once and kept as a blob named by one
`text_embeddings` row per (model, pool). Each decomposition term carries the reconstruction
score of its decomposition (cosine between the unit's direction and the m-term sum).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('text_embeddings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.String(length=128), nullable=False),
    sa.Column('pool_id', sa.String(length=128), nullable=False),
    sa.Column('blob_uri', sa.Text(), nullable=False),
    sa.Column('texts_sha256', sa.String(length=64), nullable=False),
    sa.Column('dimension', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_text_embeddings_model_id_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pool_id'], ['text_pools.id'], name=op.f('fk_text_embeddings_pool_id_text_pools'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_text_embeddings')),
    sa.UniqueConstraint('model_id', 'pool_id', name=op.f('uq_text_embeddings_model_id_pool_id'))
    )
    with op.batch_alter_table('decompositions') as batch:
        batch.add_column(sa.Column('score', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('decompositions') as batch:
        batch.drop_column('score')
    op.drop_table('text_embeddings')
