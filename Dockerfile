# syntax=docker/dockerfile:1
# The Talkstack server. Migrations are a separate step (see docs/deployment.md):
#   docker run --rm -v talkstack-data:/data talkstack alembic upgrade head
FROM python:3.11-slim

# The same uv as scripts/bootstrap, from the official image.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app

# Dependencies first, from the lock alone: this layer is rebuilt only when they change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself (hatchling needs README.md: pyproject names it as the readme).
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

# An unprivileged user; the code stays owned by root (read-only to the server), and the only
# writable place is /data (the generated secret key, SQLite by default).
RUN groupadd --system --gid 10001 talkstack \
    && useradd --system --uid 10001 --gid talkstack --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin talkstack \
    && mkdir -p /data \
    && chown talkstack:talkstack /data

ENV PATH=/app/.venv/bin:$PATH \
    DATA_DIR=/data \
    DATABASE_URL=sqlite:////data/talkstack.db

VOLUME ["/data"]
USER talkstack
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# --proxy-headers trusts X-Forwarded-For only from FORWARDED_ALLOW_IPS (default 127.0.0.1):
# behind a proxy, run with -e FORWARDED_ALLOW_IPS=<proxy ip>.
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--ws", "websockets-sansio"]
