"""pgpool: a PostgreSQL connection-pool proxy with PgBouncer-compatible settings."""

__version__ = "0.1.0"
