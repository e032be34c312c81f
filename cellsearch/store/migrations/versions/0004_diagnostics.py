"""diagnostics: each evaluation's gradient reach, Jacobian spectrum and gate saturation, at
initialisation and after training, when the run asked for them (`diagnose = true`)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 23:20:08.969532
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "diagnostics",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("max_lag", sa.Integer(), nullable=True),
        sa.Column("init_reach", sa.Integer(), nullable=True),
        sa.Column("init_reached", sa.Boolean(), nullable=True),
        sa.Column("init_decay_rate", sa.Float(), nullable=True),
        sa.Column("init_spectral_radius", sa.Float(), nullable=True),
        sa.Column("init_singular_max", sa.Float(), nullable=True),
        sa.Column("init_saturation", sa.Float(), nullable=True),
        sa.Column("trained_reach", sa.Integer(), nullable=True),
        sa.Column("trained_reached", sa.Boolean(), nullable=True),
        sa.Column("trained_decay_rate", sa.Float(), nullable=True),
        sa.Column("trained_spectral_radius", sa.Float(), nullable=True),
        sa.Column("trained_singular_max", sa.Float(), nullable=True),
        sa.Column("trained_saturation", sa.Float(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("rerun", sa.Boolean(), nullable=False),
        sa.Column("rerun_matches", sa.Boolean(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["key"], ["evaluations.key"]),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("diagnostics")
