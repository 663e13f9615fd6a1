# Multi-stage image: the first stage builds a virtualenv, the second is a
# slim runtime with that virtualenv, running as an unprivileged user on
# config/container.toml. compose.yaml runs it with PostgreSQL.
# NOTE: not built on the development machines (they have no container engine);
# the structure is checked by tests/test_container.py and hadolint.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml ./
COPY mta ./mta
COPY loadtest ./loadtest
RUN python -m venv /opt/mta \
    && /opt/mta/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
# A fixed UID, so that secret files and volumes can be given to it on the host.
RUN useradd --system --uid 10025 --user-group --home-dir /var/lib/mta --no-create-home mta \
    && install -d -o mta -g mta -m 0700 /var/lib/mta
COPY --from=build /opt/mta /opt/mta
COPY queue /opt/mta/queue
COPY config/container.toml /etc/mta/mta.toml
COPY config/default.toml config/production.example.toml /etc/mta/examples/
ENV PATH=/opt/mta/bin:$PATH \
    MTA_MIGRATIONS_DIR=/opt/mta/queue \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10025:10025
WORKDIR /var/lib/mta
VOLUME ["/var/lib/mta"]
# MX, submission, submissions (implicit TLS) and HTTP (/health, /metrics), as in config/container.toml.
EXPOSE 2525 5870 4650 8025
# /health also returns 503 while the backlog is over http.backlog_threshold,
# so a long backlog marks the container unhealthy too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8025/health', timeout=4).status != 200)"]
# A worker finishes sessions and deliveries in flight for up to 20 s after
# SIGTERM: give `docker stop` a longer timeout (compose.yaml sets 45 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["mta"]
CMD ["--config", "/etc/mta/mta.toml", "serve"]
