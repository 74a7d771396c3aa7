"""``python -m services.gateway``: serve the gateway with uvicorn, configured by ``RECSYS_*``."""

from __future__ import annotations

import logging

import uvicorn

from services.gateway.app import create_app
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
