"""Catalog: bases, skills, packs, lineage, jobs, model states, eval results, promotions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 12:22:14.892364+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('base_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('architecture', sa.String(length=128), nullable=False),
    sa.Column('tokenizer_fingerprint', sa.String(length=80), nullable=True),
    sa.Column('fingerprint', sa.String(length=80), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_models')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_base_models_fingerprint')),
    sa.UniqueConstraint('name', name=op.f('uq_base_models_name'))
    )
    op.create_table('skills',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('data_uri', sa.Text(), nullable=True),
    sa.Column('data_sha256', sa.String(length=80), nullable=True),
    sa.Column('suite', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_skills')),
    sa.UniqueConstraint('name', name=op.f('uq_skills_name'))
    )
    op.create_table('model_states',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=80), nullable=False),
    sa.Column('base_id', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('router', sa.String(length=32), nullable=False),
    sa.Column('router_config', sa.JSON(), nullable=False),
    sa.Column('router_blob_digest', sa.String(length=80), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ['base_id'], ['base_models.id'], name=op.f('fk_model_states_base_id_base_models'),
        ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(
        ['parent_id'], ['model_states.id'], name=op.f('fk_model_states_parent_id_model_states'),
        ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_states')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_model_states_fingerprint'))
    )
    op.create_index(op.f('ix_model_states_base_id'), 'model_states', ['base_id'], unique=False)
    op.create_table('skill_packs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('skill_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('base_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum(
        'candidate', 'promoted', 'rejected', 'retired', name='pack_status', native_enum=False,
        create_constraint=True, length=24), nullable=False),
    sa.Column('blob_digest', sa.String(length=80), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('format_version', sa.Integer(), nullable=False),
    sa.Column('compression_ratio', sa.Double(), nullable=True),
    sa.Column('codecs', sa.JSON(), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('source_id', sa.Integer(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('size_bytes >= 0', name=op.f('ck_skill_packs_size_nonnegative')),
    sa.CheckConstraint('version >= 1', name=op.f('ck_skill_packs_version_positive')),
    sa.ForeignKeyConstraint(
        ['base_id'], ['base_models.id'], name=op.f('fk_skill_packs_base_id_base_models'),
        ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(
        ['skill_id'], ['skills.id'], name=op.f('fk_skill_packs_skill_id_skills'),
        ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(
        ['source_id'], ['base_models.id'], name=op.f('fk_skill_packs_source_id_base_models'),
        ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_skill_packs')),
    sa.UniqueConstraint('skill_id', 'version', name=op.f('uq_skill_packs_skill_id_version'))
    )
    op.create_index('ix_skill_packs_base_id', 'skill_packs', ['base_id'], unique=False)
    op.create_index(
        op.f('ix_skill_packs_blob_digest'), 'skill_packs', ['blob_digest'], unique=False)
    op.create_index(
        'ix_skill_packs_skill_status_id', 'skill_packs', ['skill_id', 'status', 'id'], unique=False)
    op.create_index('ix_skill_packs_status_id', 'skill_packs', ['status', 'id'], unique=False)
    op.create_table('base_heads',
    sa.Column('base_id', sa.Integer(), nullable=False),
    sa.Column('state_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ['base_id'], ['base_models.id'], name=op.f('fk_base_heads_base_id_base_models'),
        ondelete='CASCADE'),
    sa.ForeignKeyConstraint(
        ['state_id'], ['model_states.id'], name=op.f('fk_base_heads_state_id_model_states'),
        ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('base_id', name=op.f('pk_base_heads'))
    )
    op.create_table('eval_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('state_id', sa.Integer(), nullable=False),
    sa.Column('skill_id', sa.Integer(), nullable=True),
    sa.Column('suite', sa.String(length=256), nullable=False),
    sa.Column('suite_version', sa.String(length=80), nullable=False),
    sa.Column('task', sa.String(length=256), nullable=False),
    sa.Column('metric', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.Column('stderr', sa.Double(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('lm_eval_version', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ['skill_id'], ['skills.id'], name=op.f('fk_eval_results_skill_id_skills'),
        ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(
        ['state_id'], ['model_states.id'], name=op.f('fk_eval_results_state_id_model_states'),
        ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_eval_results')),
    sa.UniqueConstraint(
        'state_id', 'suite', 'suite_version', 'task', 'metric',
        name=op.f('uq_eval_results_state_id_suite_suite_version_task_metric'))
    )
    op.create_index(op.f('ix_eval_results_skill_id'), 'eval_results', ['skill_id'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.Enum(
        'queued', 'running', 'succeeded', 'failed', 'cancelled', name='job_status',
        native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('celery_task_id', sa.String(length=255), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('base_id', sa.Integer(), nullable=True),
    sa.Column('skill_id', sa.Integer(), nullable=True),
    sa.Column('stage', sa.String(length=64), nullable=True),
    sa.Column('progress', sa.Double(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('pack_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('progress >= 0 AND progress <= 1', name=op.f('ck_jobs_progress_fraction')),
    sa.ForeignKeyConstraint(
        ['base_id'], ['base_models.id'], name=op.f('fk_jobs_base_id_base_models'),
        ondelete='SET NULL'),
    sa.ForeignKeyConstraint(
        ['pack_id'], ['skill_packs.id'], name=op.f('fk_jobs_pack_id_skill_packs'),
        ondelete='SET NULL'),
    sa.ForeignKeyConstraint(
        ['skill_id'], ['skills.id'], name=op.f('fk_jobs_skill_id_skills'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_base_id_status', 'jobs', ['base_id', 'status'], unique=False)
    op.create_index(op.f('ix_jobs_celery_task_id'), 'jobs', ['celery_task_id'], unique=False)
    op.create_index('ix_jobs_status_id', 'jobs', ['status', 'id'], unique=False)
    op.create_table('lineage_edges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('child_id', sa.Integer(), nullable=False),
    sa.Column('parent_pack_id', sa.Integer(), nullable=True),
    sa.Column('parent_base_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.Enum(
        'trained_on', 'distilled_from', 'fused_from', 'recompressed_from', name='edge_kind',
        native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(
        '(parent_pack_id IS NULL) <> (parent_base_id IS NULL)',
        name=op.f('ck_lineage_edges_one_parent')),
    sa.CheckConstraint('child_id <> parent_pack_id', name=op.f('ck_lineage_edges_no_self_loop')),
    sa.ForeignKeyConstraint(
        ['child_id'], ['skill_packs.id'], name=op.f('fk_lineage_edges_child_id_skill_packs'),
        ondelete='CASCADE'),
    sa.ForeignKeyConstraint(
        ['parent_base_id'], ['base_models.id'],
        name=op.f('fk_lineage_edges_parent_base_id_base_models'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(
        ['parent_pack_id'], ['skill_packs.id'],
        name=op.f('fk_lineage_edges_parent_pack_id_skill_packs'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lineage_edges'))
    )
    op.create_index(op.f('ix_lineage_edges_child_id'), 'lineage_edges', ['child_id'], unique=False)
    op.create_index(
        'ix_lineage_edges_parent_base_id', 'lineage_edges', ['parent_base_id'], unique=False)
    op.create_index(
        'ix_lineage_edges_parent_pack_id', 'lineage_edges', ['parent_pack_id'], unique=False)
    op.create_index(
        'uq_lineage_edges_base_parent', 'lineage_edges', ['child_id', 'parent_base_id', 'kind'],
        unique=True, sqlite_where=sa.text('parent_base_id IS NOT NULL'),
        postgresql_where=sa.text('parent_base_id IS NOT NULL'))
    op.create_index(
        'uq_lineage_edges_pack_parent', 'lineage_edges', ['child_id', 'parent_pack_id', 'kind'],
        unique=True, sqlite_where=sa.text('parent_pack_id IS NOT NULL'),
        postgresql_where=sa.text('parent_pack_id IS NOT NULL'))
    op.create_table('promotions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pack_id', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.Enum(
        'candidate', 'promoted', 'rejected', 'retired', name='from_status', native_enum=False,
        create_constraint=True, length=24), nullable=True),
    sa.Column('to_status', sa.Enum(
        'candidate', 'promoted', 'rejected', 'retired', name='to_status', native_enum=False,
        create_constraint=True, length=24), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('report_ref', sa.Text(), nullable=True),
    sa.Column('state_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ['pack_id'], ['skill_packs.id'], name=op.f('fk_promotions_pack_id_skill_packs'),
        ondelete='CASCADE'),
    sa.ForeignKeyConstraint(
        ['state_id'], ['model_states.id'], name=op.f('fk_promotions_state_id_model_states'),
        ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_promotions'))
    )
    op.create_index(op.f('ix_promotions_pack_id'), 'promotions', ['pack_id'], unique=False)
    op.create_table('state_packs',
    sa.Column('state_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('pack_id', sa.Integer(), nullable=False),
    sa.Column('scale', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(
        ['pack_id'], ['skill_packs.id'], name=op.f('fk_state_packs_pack_id_skill_packs'),
        ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(
        ['state_id'], ['model_states.id'], name=op.f('fk_state_packs_state_id_model_states'),
        ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state_id', 'position', name=op.f('pk_state_packs')),
    sa.UniqueConstraint('state_id', 'pack_id', name=op.f('uq_state_packs_state_id_pack_id'))
    )
    op.create_index(op.f('ix_state_packs_pack_id'), 'state_packs', ['pack_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_state_packs_pack_id'), table_name='state_packs')
    op.drop_table('state_packs')
    op.drop_index(op.f('ix_promotions_pack_id'), table_name='promotions')
    op.drop_table('promotions')
    op.drop_index('uq_lineage_edges_pack_parent', table_name='lineage_edges')
    op.drop_index('uq_lineage_edges_base_parent', table_name='lineage_edges')
    op.drop_index('ix_lineage_edges_parent_pack_id', table_name='lineage_edges')
    op.drop_index('ix_lineage_edges_parent_base_id', table_name='lineage_edges')
    op.drop_index(op.f('ix_lineage_edges_child_id'), table_name='lineage_edges')
    op.drop_table('lineage_edges')
    op.drop_index('ix_jobs_status_id', table_name='jobs')
    op.drop_index(op.f('ix_jobs_celery_task_id'), table_name='jobs')
    op.drop_index('ix_jobs_base_id_status', table_name='jobs')
    op.drop_table('jobs')
    op.drop_index(op.f('ix_eval_results_skill_id'), table_name='eval_results')
    op.drop_table('eval_results')
    op.drop_table('base_heads')
    op.drop_index('ix_skill_packs_status_id', table_name='skill_packs')
    op.drop_index('ix_skill_packs_skill_status_id', table_name='skill_packs')
    op.drop_index(op.f('ix_skill_packs_blob_digest'), table_name='skill_packs')
    op.drop_index('ix_skill_packs_base_id', table_name='skill_packs')
    op.drop_table('skill_packs')
    op.drop_index(op.f('ix_model_states_base_id'), table_name='model_states')
    op.drop_table('model_states')
    op.drop_table('skills')
    op.drop_table('base_models')
