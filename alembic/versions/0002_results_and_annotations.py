"""precompute results, annotations, collections, tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Tables for what the precompute jobs produce (dataset examples, bucket samples, rastered
words, feature visualizations, decompositions) and what users write (annotations,
collections, API tokens); resumption columns on jobs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('collections',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_collections'))
    )
    op.create_table('text_pools',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('texts', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_text_pools'))
    )
    op.create_table('word_lists',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('words', sa.JSON(), nullable=False),
    sa.Column('font', sa.Text(), nullable=False),
    sa.Column('font_size', sa.Integer(), nullable=True),
    sa.Column('image_size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_word_lists'))
    )
    op.create_table('word_embeddings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('word_list_id', sa.String(length=128), nullable=False),
    sa.Column('vectors_uri', sa.Text(), nullable=False),
    sa.Column('mean_uri', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], name=op.f('fk_word_embeddings_layer_id_layers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['word_list_id'], ['word_lists.id'], name=op.f('fk_word_embeddings_word_list_id_word_lists'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_word_embeddings')),
    sa.UniqueConstraint('layer_id', 'word_list_id', name=op.f('uq_word_embeddings_layer_id_word_list_id'))
    )
    op.create_table('annotations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('label', 'note')", name=op.f('ck_annotations_kind')),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_annotations_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotations'))
    )
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotations_unit_id'), ['unit_id'], unique=False)

    op.create_table('bucket_samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=128), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('activation', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_bucket_samples_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_bucket_samples_image_id_images'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_bucket_samples_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bucket_samples')),
    sa.UniqueConstraint('unit_id', 'dataset_id', 'bucket', 'slot', name=op.f('uq_bucket_samples_unit_id_dataset_id_bucket_slot'))
    )
    op.create_table('collection_units',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('collection_id', sa.String(length=128), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['collection_id'], ['collections.id'], name=op.f('fk_collection_units_collection_id_collections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_collection_units_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_collection_units')),
    sa.UniqueConstraint('collection_id', 'unit_id', name=op.f('uq_collection_units_collection_id_unit_id'))
    )
    op.create_table('dataset_examples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=128), nullable=False),
    sa.Column('sign', sa.String(length=8), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('activation', sa.Float(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=True),
    sa.Column('crop_uri', sa.Text(), nullable=True),
    sa.CheckConstraint("sign IN ('top', 'bottom')", name=op.f('ck_dataset_examples_sign')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_examples_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_dataset_examples_image_id_images'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_dataset_examples_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_examples')),
    sa.UniqueConstraint('unit_id', 'dataset_id', 'sign', 'rank', name=op.f('uq_dataset_examples_unit_id_dataset_id_sign_rank'))
    )
    op.create_table('decompositions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('pool_id', sa.String(length=128), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('coefficient', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['text_pools.id'], name=op.f('fk_decompositions_pool_id_text_pools'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_decompositions_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decompositions')),
    sa.UniqueConstraint('unit_id', 'pool_id', 'rank', name=op.f('uq_decompositions_unit_id_pool_id_rank'))
    )
    op.create_table('featureviz',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('variant', sa.String(length=64), nullable=False),
    sa.Column('blob_uri', sa.Text(), nullable=False),
    sa.Column('final_activation', sa.Float(), nullable=True),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_featureviz_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_featureviz')),
    sa.UniqueConstraint('unit_id', 'kind', 'variant', name=op.f('uq_featureviz_unit_id_kind_variant'))
    )
    op.create_table('word_activations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('word_list_id', sa.String(length=128), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('word', sa.Text(), nullable=False),
    sa.Column('activation', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_word_activations_unit_id_units'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['word_list_id'], ['word_lists.id'], name=op.f('fk_word_activations_word_list_id_word_lists'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_word_activations')),
    sa.UniqueConstraint('unit_id', 'word_list_id', 'rank', name=op.f('uq_word_activations_unit_id_word_list_id_rank'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cursor', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('state_uri', sa.Text(), nullable=True))

    with op.batch_alter_table('units', schema=None) as batch_op:
        batch_op.add_column(sa.Column('direction_uri', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('units', schema=None) as batch_op:
        batch_op.drop_column('direction_uri')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('state_uri')
        batch_op.drop_column('cursor')

    op.drop_table('word_activations')
    op.drop_table('featureviz')
    op.drop_table('decompositions')
    op.drop_table('dataset_examples')
    op.drop_table('collection_units')
    op.drop_table('bucket_samples')
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotations_unit_id'))

    op.drop_table('annotations')
    op.drop_table('word_embeddings')
    op.drop_table('word_lists')
    op.drop_table('text_pools')
    op.drop_table('collections')
    op.drop_table('api_tokens')
