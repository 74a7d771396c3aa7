"""Gateway apps under test: served by uvicorn on a loopback port, real Redis, real bundle.

Each app runs in its own thread and event loop, with its lifespan (bundle load, scorer,
hot-reload poller); tests talk to it over real HTTP with ``httpx.Client``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.server import server_config
from shared.redis_server import free_port
from shared.settings import Settings
from tests.services.conftest import PINNED, BuiltBundle


class LiveGateway:
    """A gateway app served by uvicorn in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        settings = app.state.settings.model_copy(update={"api_port": self.port})
        config = server_config(app, settings, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def start(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=15)

    # the few httpx.Client methods tests use
    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, **kwargs)


MakeGateway = Callable[..., LiveGateway]


def settings_for(built: BuiltBundle, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "artifacts_dir": built.artifacts,
        "reload_interval_s": 0.1,
        "scorer": "inline",  # a scoring process per test gateway: only where tested
    }
    return Settings(**(values | overrides))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def make_gateway(built: BuiltBundle) -> Iterator[MakeGateway]:
    """``make_gateway(redis_url, **settings)``: a started gateway, clock pinned to PINNED."""
    started: list[LiveGateway] = []

    def make(redis_url: str, **overrides: Any) -> LiveGateway:
        app = create_app(settings_for(built, redis_url, **overrides), clock=lambda: PINNED)
        gateway = LiveGateway(app).start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def api(built: BuiltBundle, store_url: str) -> Iterator[LiveGateway]:
    """One gateway on the untouched published store, shared by read-only tests."""
    app = create_app(settings_for(built, store_url), clock=lambda: PINNED)
    gateway = LiveGateway(app).start()
    yield gateway
    gateway.stop()
