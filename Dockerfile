# One image for every role of the StreamForge Queue Manager; the command picks the role:
#   web | worker | beat | consume-queue-control | consume-queue-events | flower | migrate | metrics
# (see deploy/entrypoint.sh). Runs as an unprivileged user; static files are collected at build
# time and served by whitenoise.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000

WORKDIR /app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependencies first: this layer is rebuilt only when requirements.txt changes. Runtime only, no dev tools.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=root:root . ./

# The dummy SECRET_KEY, DATABASE_URL and ALLOWED_HOSTS exist only for this step (settings refuse to load
# without them); collectstatic opens no database connection.
RUN SECRET_KEY=collectstatic-only-not-a-real-key \
    DATABASE_URL=postgresql://build@127.0.0.1:5432/build \
    ALLOWED_HOSTS=collectstatic.invalid \
    DEBUG=0 STATIC_MANIFEST=1 \
    python manage.py collectstatic --noinput \
    && chmod 0755 deploy/entrypoint.sh

USER 10001:10001

EXPOSE 8000 9100

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck"]

ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["web"]
