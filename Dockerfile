# Multi-stage image: dependencies built in the first stage, a slim runtime
# in the second, running as an unprivileged user.
# NOTE: not built on the development machines (they have no Docker engine).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY mta ./mta
COPY loadtest ./loadtest
COPY queue ./queue
RUN python -m venv /opt/mta && /opt/mta/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --home-dir /var/lib/mta --create-home mta
COPY --from=build /opt/mta /opt/mta
COPY queue /opt/mta/queue
COPY config /etc/mta/examples
ENV PATH=/opt/mta/bin:$PATH MTA_MIGRATIONS_DIR=/opt/mta/queue
USER mta
WORKDIR /var/lib/mta
EXPOSE 2525 5870 8025
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8025/health').status != 200)"
ENTRYPOINT ["mta"]
CMD ["serve"]
