"""Storage: SQLAlchemy tables (``models``), engines and sessions (``session``), and Alembic
migrations run programmatically (``migrate``). The schema itself is owned by ``migrations/``."""
