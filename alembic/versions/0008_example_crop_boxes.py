"""dataset examples record the box of their crop, cut when a page asks for it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

`dataset_examples.crop_box` is the region around the unit's maximum, in model-input pixels,
and the side it is shown at (`"left,top,right,bottom,size"`). The web server cuts the crop
from the stored image when a page asks for it, so the examples job no longer writes one PNG
per (image, box). Rows that already have a stored crop (`crop_uri`) keep it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('dataset_examples', schema=None) as batch_op:
        batch_op.add_column(sa.Column('crop_box', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dataset_examples', schema=None) as batch_op:
        batch_op.drop_column('crop_box')
