"""maximal texts of units

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

One table, `maximal_texts`: per unit, the token sequence whose text embedding has the largest
dot product with the unit's direction (hill climbing from the best single words), its score,
the word it started from and that word's score, from `microscope precompute maxtext`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('maximal_texts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=128), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('tokens', sa.JSON(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('start_text', sa.Text(), nullable=False),
    sa.Column('start_score', sa.Float(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_maximal_texts_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_maximal_texts_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_maximal_texts')),
    sa.UniqueConstraint('unit_id', name=op.f('uq_maximal_texts_unit_id'))
    )


def downgrade() -> None:
    op.drop_table('maximal_texts')
