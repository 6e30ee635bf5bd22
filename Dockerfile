# One image for the three processes (web, voice, worker); docker-compose picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    DATA_DIR=/data BIND_HOST=0.0.0.0
WORKDIR /app

COPY requirements.txt requirements-nodeps.txt ./
RUN pip install -r requirements.txt && pip install --no-deps -r requirements-nodeps.txt

COPY shared ./shared
COPY web ./web
COPY workers ./workers
COPY sql ./sql
COPY scripts ./scripts
COPY alembic.ini Procfile pyproject.toml ./

# The voice worker's frame path compiled with mypyc (shared/native.py); the compiler and
# mypy leave again in the same layer (the compiled modules need neither at run time).
COPY requirements-dev.txt ./
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install "$(grep '^mypy==' requirements-dev.txt)" \
    && python -m scripts.build_native \
    && pip uninstall -y mypy \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* .build requirements-dev.txt

RUN useradd --create-home --uid 1000 switchboard && mkdir -p /data && chown switchboard /data
USER switchboard
EXPOSE 8000 8001 9191
CMD ["gunicorn", "--config", "python:web.api.gunicorn_conf", "web.api.wsgi:app"]
