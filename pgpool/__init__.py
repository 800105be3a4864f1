"""pgpool: a PostgreSQL connection-pool proxy with PgBouncer-compatible settings."""

from ._build import describe_build, install_finder

__version__ = "0.1.0"

# Before any data-plane module loads: compiled extensions only where they match their .py.
install_finder()


def describe_version() -> str:
    """What `pgpool --version`, SHOW VERSION and the startup log say: the version and the build that runs."""
    return f"pgpool {__version__}, {describe_build()}"


__all__ = ["__version__", "describe_build", "describe_version"]
