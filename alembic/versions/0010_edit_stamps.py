"""a stamp counting edits

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

One table, `edit_stamps`, with one row: how many edits (labels, notes, collections) the store
has taken. Pages that show edits are reused while it and the jobs' results are unchanged.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | Sequence[str] | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    stamps = op.create_table('edit_stamps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('edits', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_edit_stamps'))
    )
    op.bulk_insert(stamps, [{'id': 1, 'edits': 0}])


def downgrade() -> None:
    op.drop_table('edit_stamps')
