"""typographic evaluation results

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

One table, `typographic_results`: per model, dataset and label set, an attack text, its
target class, its success rate and mean pixel cover (the Distill article's Figure 16), from
`microscope precompute typographic-eval`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('typographic_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.String(length=128), nullable=False),
    sa.Column('dataset_id', sa.String(length=128), nullable=False),
    sa.Column('label_set', sa.String(length=64), nullable=False),
    sa.Column('setup', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('text', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=256), nullable=False),
    sa.Column('success', sa.Float(), nullable=True),
    sa.Column('pixel_cover', sa.Float(), nullable=False),
    sa.Column('images', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('attack', 'search')", name=op.f('ck_typographic_results_kind')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_typographic_results_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_typographic_results_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_typographic_results')),
    sa.UniqueConstraint('model_id', 'dataset_id', 'label_set', 'kind', 'text', name=op.f('uq_typographic_results_model_id_dataset_id_label_set_kind_text'))
    )


def downgrade() -> None:
    op.drop_table('typographic_results')
