# jobs-bridge: `docker run -v ./bridge.yaml:/config/bridge.yaml -p 8787:8787 jobs-bridge`
# (deploy/docker-compose.yml runs it with a Redis; deploy/config.yaml is a config for it).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY bridge ./bridge
# Wheels only, at the pinned versions: no compiler in the image, the same build every time.
RUN pip install --only-binary=:all: -c requirements/constraints.txt '.[rabbitmq,nats]' \
 && useradd --system --uid 10001 --home-dir /var/lib/jobs-bridge --create-home bridge
USER bridge
WORKDIR /var/lib/jobs-bridge
# The config's data_dir (embedded Redis, when redis.url is unset) lives here.
VOLUME ["/var/lib/jobs-bridge"]
# The API and console; the config must listen on it beyond loopback (deploy/config.yaml does).
EXPOSE 8787
ENV JOBS_BRIDGE_HEALTH_URL=http://127.0.0.1:8787/healthz
# /healthz answers 200 while Redis answers; an HTTP error or no answer fails the probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['JOBS_BRIDGE_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["jobs-bridge"]
CMD ["run", "-c", "/config/bridge.yaml"]
