"""telephony billing learning

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 22:11:00.280742
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column(
            "done_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("task", "key", name=op.f("pk_job_runs")),
    )
    op.create_table(
        "ab_tests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_ab_tests_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_ab_tests_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_tests")),
    )
    op.create_index(
        op.f("ix_ab_tests_organization_id"), "ab_tests", ["organization_id"], unique=False
    )
    op.create_table(
        "outcome_stats",
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("outcome", sa.String(length=100), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_outcome_stats_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_outcome_stats_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "outcome", name=op.f("pk_outcome_stats")),
    )
    op.create_index(
        op.f("ix_outcome_stats_organization_id"), "outcome_stats", ["organization_id"], unique=False
    )
    op.create_table(
        "ab_variants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("test_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("persona", sa.Text(), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["test_id"],
            ["ab_tests.id"],
            name=op.f("fk_ab_variants_test_id_ab_tests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_variants")),
    )
    op.create_index(op.f("ix_ab_variants_test_id"), "ab_variants", ["test_id"], unique=False)
    op.create_table(
        "memories",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("call_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("embedding", Vector(384), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_memories_call_id_calls"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_memories_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_memories_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memories")),
        sa.UniqueConstraint("call_id", "kind", name="uq_memories_call_kind"),
    )
    op.create_index(
        "ix_memories_embedding_hnsw",
        "memories",
        ["embedding"],
        unique=False,
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index(
        "ix_memories_org_customer",
        "memories",
        ["organization_id", "customer_id", "created_at"],
        unique=False,
    )
    op.add_column("calls", sa.Column("recording_url", sa.Text(), nullable=True))
    op.add_column("calls", sa.Column("machine_detection", sa.String(length=40), nullable=True))
    op.add_column("calls", sa.Column("summary", sa.Text(), nullable=True))
    op.add_column(
        "calls", sa.Column("analysis", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.add_column("calls", sa.Column("crm_engagement_id", sa.String(length=100), nullable=True))
    op.add_column("calls", sa.Column("ab_variant_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_calls_ab_variant_id_ab_variants"),
        "calls",
        "ab_variants",
        ["ab_variant_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.add_column("customers", sa.Column("crm_contact_id", sa.String(length=100), nullable=True))
    op.add_column(
        "organizations", sa.Column("stripe_customer_id", sa.String(length=100), nullable=True)
    )
    op.add_column(
        "organizations", sa.Column("subscription_status", sa.String(length=40), nullable=True)
    )
    op.add_column(
        "organizations", sa.Column("past_due_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_unique_constraint(
        op.f("uq_organizations_stripe_customer_id"), "organizations", ["stripe_customer_id"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_organizations_stripe_customer_id"), "organizations", type_="unique")
    op.drop_column("organizations", "past_due_since")
    op.drop_column("organizations", "subscription_status")
    op.drop_column("organizations", "stripe_customer_id")
    op.drop_column("customers", "crm_contact_id")
    op.drop_constraint(op.f("fk_calls_ab_variant_id_ab_variants"), "calls", type_="foreignkey")
    op.drop_column("calls", "ab_variant_id")
    op.drop_column("calls", "crm_engagement_id")
    op.drop_column("calls", "analysis")
    op.drop_column("calls", "summary")
    op.drop_column("calls", "machine_detection")
    op.drop_column("calls", "recording_url")
    op.drop_index("ix_memories_org_customer", table_name="memories")
    op.drop_index(
        "ix_memories_embedding_hnsw",
        table_name="memories",
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.drop_table("memories")
    op.drop_index(op.f("ix_ab_variants_test_id"), table_name="ab_variants")
    op.drop_table("ab_variants")
    op.drop_index(op.f("ix_outcome_stats_organization_id"), table_name="outcome_stats")
    op.drop_table("outcome_stats")
    op.drop_index(op.f("ix_ab_tests_organization_id"), table_name="ab_tests")
    op.drop_table("ab_tests")
    op.drop_table("job_runs")
