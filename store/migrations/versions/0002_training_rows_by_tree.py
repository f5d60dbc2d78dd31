"""Index sft_examples and ppm_pairs by tree_id: the explorer's "trained on" lookups.

A tree's page asks which SFT examples and PPM pairs came from it (``store.queries.get_tree``);
their unique constraints begin with ``round``, so without these indexes each lookup scans the
table, which grows by a round's selection every round.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sft_examples_tree_id", "sft_examples", ["tree_id"])
    op.create_index("ix_ppm_pairs_tree_id", "ppm_pairs", ["tree_id"])


def downgrade() -> None:
    op.drop_index("ix_ppm_pairs_tree_id", table_name="ppm_pairs")
    op.drop_index("ix_sft_examples_tree_id", table_name="sft_examples")
