# One image for the api (daphne), the Celery workers, beat and the migrations; docker-compose.yml and
# deploy/kubernetes/ pick the command. It runs as an unprivileged user (uid/gid 10001, numeric so that
# Kubernetes' runAsNonRoot can check it); the only place it writes is VAR_DIR (/data) and /tmp.
FROM python:3.11-slim

# PYTHONPATH: the daphne and celery scripts import the code in /app (with its templates/ and static/),
# not the copy pip installed into site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VAR_DIR=/data HOME=/tmp PYTHONPATH=/app
RUN apt-get update && apt-get install -y --no-install-recommends gcc libgomp1 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 metachat \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin metachat
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY tenants ./tenants
COPY events ./events
COPY channels_app ./channels_app
COPY knowledge ./knowledge
COPY conversations ./conversations
RUN pip install '.[s3]'
COPY . .
# Bytecode compiled at build time (the code is read-only at run time); /data belongs to the app user,
# so a fresh named volume mounted there inherits that ownership.
RUN python -c "import compileall; compileall.compile_dir('.', quiet=1)" \
 && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
EXPOSE 8000
CMD ["python", "-m", "config.procfile", "web"]
