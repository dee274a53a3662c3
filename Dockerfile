# One image for the api (daphne), the Celery workers and beat; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VAR_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends gcc libgomp1 && rm -rf /var/lib/apt/lists/*
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
RUN python -c "import compileall; compileall.compile_dir('.', quiet=1)" && mkdir -p /data
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "config.asgi:application"]
