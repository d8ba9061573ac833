# jobs-bridge: `docker run -v ./bridge.yaml:/config/bridge.yaml jobs-bridge`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install '.[rabbitmq,nats]' \
 && useradd --system --uid 10001 --home-dir /var/lib/jobs-bridge --create-home bridge
USER bridge
WORKDIR /var/lib/jobs-bridge
# The config's data_dir (embedded Redis, when redis.url is unset) lives here.
VOLUME ["/var/lib/jobs-bridge"]
ENTRYPOINT ["jobs-bridge"]
CMD ["run", "-c", "/config/bridge.yaml"]
