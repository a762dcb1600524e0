"""A real S3-compatible server (moto) on 127.0.0.1 for the S3 store tests, started and stopped by PID.

One moto server per test session; every test gets its own bucket, AWS environment and cache dir.
`TcpProxy` stands between a server under test and moto, so a test can take the bucket away and
give it back without losing moto's in-memory content.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.server.conftest import free_port, start_server  # noqa: F401 (a fixture, used by the serving tests)

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`moto.server` on a free loopback port for the whole session; stopped by its PID."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint + "/moto-api/")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@dataclass
class Bucket:
    """A fresh bucket on the moto server, and the environment that reaches it."""

    name: str
    endpoint: str
    env: dict[str, str]
    client: Any

    def url(self, prefix: str = "models") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def objects(self, prefix: str = "") -> dict[str, int]:
        found: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            found |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
        return found

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def delete(self, prefix: str) -> None:
        for key in self.objects(prefix):
            self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def bucket(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A new bucket; the AWS environment of this process (and of servers it starts) points at it."""
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": moto_endpoint,
        # Nothing from a developer's own AWS setup or proxies may leak in.
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.session.Session().client("s3")
    name = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, moto_endpoint, env, client)


class TcpProxy:
    """127.0.0.1:port -> target, in threads; `cut()` refuses and drops connections, `restore()` listens again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self.restore()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.1)
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._accept, args=(sock, self._stop), daemon=True)
        self._listener.start()

    def cut(self) -> None:
        """Close the listening socket (new connections are refused) and every open connection."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, sock: socket.socket, stop: threading.Event) -> None:
        with sock:
            while not stop.is_set():
                try:
                    client, _ = sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    client.close()
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._conns += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[TcpProxy]:
    p = TcpProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    yield p
    p.cut()


def env_for(bucket: Bucket, endpoint: str | None = None) -> dict[str, str]:
    """The AWS environment for a server process (optionally through another endpoint)."""
    return {**bucket.env, "AWS_ENDPOINT_URL": endpoint or bucket.endpoint}
