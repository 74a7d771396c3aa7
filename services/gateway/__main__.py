"""``python -m services.gateway``: serve the gateway with uvicorn, configured by ``RECSYS_*``.

``RECSYS_WORKERS=N`` (N > 1) starts N worker processes on the same port, each with
the bundle (its large arrays memory-mapped, so the workers share one copy in RAM) and
its own hot-reload poller; their metrics are collected in a fresh
``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`services.gateway.metrics`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.supervisors import Multiprocess

from services.gateway.server import server_config
from shared.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["main", "worker_app"]

_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory when there are several)."""
    from services.gateway.app import create_app  # noqa: PLC0415  (the workers', not the supervisor's)

    settings = Settings()
    _logging(settings)
    return create_app(settings)


def main() -> None:
    settings = Settings()  # fails here, naming the variable, before any worker starts
    _logging(settings)
    if settings.workers == 1:
        from services.gateway.app import create_app  # noqa: PLC0415

        uvicorn.Server(server_config(create_app(settings), settings)).run()
        return
    folder = os.environ.get(_MULTIPROC)
    if folder:  # the operator's folder: values of an earlier run must not be added in
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    else:
        os.environ[_MULTIPROC] = tempfile.mkdtemp(prefix="recsys-metrics-")
    config = server_config(
        "services.gateway.__main__:worker_app", settings, factory=True, workers=settings.workers
    )
    # what uvicorn.run does for workers > 1, with the gateway's own config
    Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    main()
