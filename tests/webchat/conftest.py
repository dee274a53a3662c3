"""Web chat fixtures: channels, tokens, and real daphne servers against the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connection

from channels_app.adapters.webchat import WebchatAdapter
from channels_app.models import Channel, new_widget_key
from tenants.models import Tenant

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "https://shop.example"


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Iterator[None]:
    """Each test drives its sockets in an event loop of its own (async_to_sync), while the Redis
    channel layer object is process-wide: its per-channel asyncio locks, taken by a backup cleaner
    that a finished loop cancelled, would be awaited from the next test's loop ("bound to a different
    event loop"). daphne runs one loop per process, so this only concerns tests: a fresh layer each."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def make_webchat_channel() -> Callable[..., Channel]:
    def make(tenant: Tenant, origins: list[str] | None = None, **config: Any) -> Channel:
        return Channel.objects.create(
            tenant=tenant,
            type=Channel.Type.WEBCHAT,
            name=f"{tenant.name} site",
            external_id=new_widget_key(),
            config={"allowed_origins": origins if origins is not None else [ORIGIN], **config},
        )

    return make


@pytest.fixture
def webchat_channel(tenant: Tenant, make_webchat_channel: Callable[..., Channel]) -> Channel:
    return make_webchat_channel(tenant)


@pytest.fixture
def adapter() -> WebchatAdapter:
    return WebchatAdapter()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict[str, str]:
    """The test process's environment, pointed at the test database (which the servers must share)."""
    env = dict(os.environ)
    url = urlparse(settings.DATABASE_URL)
    env["DATABASE_URL"] = url._replace(path="/" + connection.settings_dict["NAME"]).geturl()
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class DaphneServer:
    def __init__(self, port: int, process: subprocess.Popen, log_path: Path):
        self.port = port
        self.process = process
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_daphne(port: int, log_dir: Path, env: dict[str, str] | None = None) -> DaphneServer:
    """daphne as ``make run`` starts it (config.serve.daphne_command, on an inherited socket)."""
    from config.serve import daphne_command, listening_socket

    log_path = log_dir / f"daphne-{port}.log"
    log = log_path.open("wb")
    server_env_ = {**server_env(), **(env or {})}
    with listening_socket("127.0.0.1", port) as sock:
        process = subprocess.Popen(
            daphne_command(sock, server_env_),
            cwd=ROOT,
            env=server_env_,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"daphne did not listen on {port} in time: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.1)
    return DaphneServer(port, process, log_path)


@pytest.fixture
def daphne_servers(transactional_db: Any, tmp_path: Path) -> Iterator[Callable[..., DaphneServer]]:
    """``start(port=None, env=None)``: a real daphne process serving config.asgi against the test database."""
    started: list[DaphneServer] = []

    def start(port: int | None = None, env: dict[str, str] | None = None) -> DaphneServer:
        server = start_daphne(port or free_port(), tmp_path, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
