# pgpool container image: a slim Python base, a non-root user, `pgpool --config` as entrypoint.
#   docker build -t pgpool .
#   docker run -p 6432:6432 -p 9127:9127 -v $PWD/pgpool.toml:/etc/pgpool/pgpool.toml:ro pgpool
# Configure with a file mounted at /etc/pgpool/pgpool.toml (or another path given as the
# argument), with PGPOOL_<SETTING> environment variables (they win over the file), or with
# `--set key=value` arguments after the path (they win over both). See docs/operating.md ("Containers").

# The build stage is the full image of the same Python and Debian release: it has the C compiler
# and headers that setup.py needs to compile the hot modules with Cython. The image must run the
# compiled build: the build stops here if it did not compile (pgpool/_build.py says which runs).
FROM python:3.11-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pgpool
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pgpool ./pgpool
RUN /opt/pgpool/bin/pip install --no-cache-dir . \
    && /opt/pgpool/bin/python -I -c "import sys, pgpool; b = pgpool.describe_build(); print(b); sys.exit(not b.startswith('compiled'))"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/pgpool/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/pgpool /opt/pgpool
# The image's own defaults: listen on every interface of the container. A mounted file replaces
# this one; PGPOOL_* variables override either.
RUN groupadd --system --gid 10001 pgpool \
    && useradd --system --uid 10001 --gid pgpool --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pgpool \
    && mkdir -p /etc/pgpool \
    && printf '%s\n' '[pgpool]' 'listen_addr = "*"' 'metrics_addr = "*"' > /etc/pgpool/pgpool.toml
USER 10001:10001
# 6432: PostgreSQL clients; 9127: /metrics, /healthz, /readyz (metrics_port).
EXPOSE 6432 9127
# SIGTERM drains clients at transaction boundaries (shutdown_timeout); SIGINT stops at once.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PGPOOL_METRICS_PORT', '9127'), timeout=2)"]
ENTRYPOINT ["pgpool", "--config"]
CMD ["/etc/pgpool/pgpool.toml"]
