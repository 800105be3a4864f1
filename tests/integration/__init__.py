"""Tests against real servers: a throwaway Postgres, pgpool and PgBouncer processes."""
