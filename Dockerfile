# The hub image: one image for the web/device processes, the Celery worker and beat.
#   docker build -t nerveshub .
#   docker run -e NERVESHUB_PRODUCTION=true -e SECRET_KEY=… -e DATABASE_URL=… -e REDIS_URL=… \
#              -e ALLOWED_HOSTS=hub.example.com -e PUBLIC_URL=https://hub.example.com -p 4000:4000 nerveshub
# The console page's terminal library (xterm.js), installed from the committed
# npm lock file; only the copied files reach the hub image (`make console-assets`).
FROM node:20-slim AS console-assets
WORKDIR /src
COPY console/static_src/ console/static_src/
RUN npm ci --prefix console/static_src --no-audit --no-fund && npm run --prefix console/static_src build

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DATA_DIR=/data \
    STATIC_ROOT=/app/static \
    HOST=0.0.0.0 \
    PORT=4000

WORKDIR /app
# xdelta3 builds and checks delta updates (docs/firmware.md, "Delta updates");
# without it the hub sends full files only.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends xdelta3 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
COPY --from=console-assets /src/console/static/console/vendor/ console/static/console/vendor/
# collectstatic needs settings but no database or secrets of the real deployment.
RUN SECRET_KEY=build-only DATA_DIR=/tmp/build python manage.py collectstatic --noinput -v 0 \
    && useradd --system --uid 10001 --home-dir /app nerveshub \
    && mkdir -p /data && chown nerveshub /data

USER nerveshub
EXPOSE 4000
CMD ["python", "-m", "nerveshub.serve"]
