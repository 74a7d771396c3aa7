"""The request path's shortcuts answer exactly as the plain path would.

- :func:`~services.gateway.routes.lean.lean` routes against FastAPI's own handling of the
  same endpoint, over real HTTP, for valid and invalid input alike;
- :class:`~services.gateway.server._Corked`: a response's writes leave in one send.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Route

from services.gateway.routes.lean import lean
from services.gateway.schemas import JSONBytes, TopK, UidPath
from services.gateway.server import _Corked
from shared.settings import Settings
from tests.services.gateway.conftest import LiveGateway

router = APIRouter()


@router.get("/echo/{uid}")
async def echo(uid: UidPath, request: Request, top_k: TopK = 10) -> JSONBytes:
    return JSONBytes({"uid": uid, "top_k": top_k, "path": request.url.path})


@router.get("/needs/{uid}")
async def needs(uid: UidPath, n: Annotated[int, Query(ge=0)]) -> JSONBytes:
    return JSONBytes({"uid": uid, "n": n})


def _app(lean_routes: bool) -> FastAPI:
    routes = list(router.routes)
    app = FastAPI(routes=[lean(r) for r in routes] + routes if lean_routes else routes)
    app.state.settings = Settings()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors()}, status_code=422)

    return app


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[LiveGateway, LiveGateway]]:
    plain, fast = LiveGateway(_app(False)).start(), LiveGateway(_app(True)).start()
    yield plain, fast
    plain.stop()
    fast.stop()


CASES = [
    "/echo/u1", "/echo/u1?top_k=7", "/echo/u1?top_k=0", "/echo/u1?top_k=201",
    "/echo/u1?top_k=abc", "/echo/u1?top_k=", "/echo/u1?top_k=1.0", "/echo/u1?top_k=5&top_k=7",
    "/echo/u1?top_k=%20", "/echo/u1?TOP_K=3", "/echo/" + "a" * 129, "/echo/a%00b",
    "/echo/%E2%80%8B?top_k=0", "/echo/a%20b", "/echo/u1?top_k=10000000000000000000000",
    "/needs/u1", "/needs/u1?n=-1", "/needs/%00?n=x", "/needs/u1?n=3",
]  # fmt: skip


@pytest.mark.parametrize("path", CASES)
def test_lean_routes_answer_as_fastapi_does(
    both: tuple[LiveGateway, LiveGateway], path: str
) -> None:
    plain, fast = (g.get(path) for g in both)
    assert (fast.status_code, fast.json()) == (plain.status_code, plain.json())


def test_lean_routes_serve_the_requests_and_keep_other_methods_refused(
    both: tuple[LiveGateway, LiveGateway],
) -> None:
    _, fast = both
    assert isinstance(fast.app.routes[0], Route) and not isinstance(fast.app.routes[0], APIRoute)
    response = fast.post("/echo/u1")
    assert response.status_code == 405 and response.json() == {"detail": "Method Not Allowed"}


async def dependency() -> int:
    return 1


def test_lean_refuses_an_endpoint_it_cannot_serve_alike() -> None:
    other = APIRouter()

    @other.get("/dep/{uid}")
    async def with_dependency(uid: UidPath, value: Annotated[int, Depends(dependency)]) -> Any:
        return value

    with pytest.raises(TypeError, match="'value' is not a Path, Query or Request"):
        lean(other.routes[0])  # type: ignore[arg-type]


class _Counting(asyncio.Transport):
    """A real transport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


def test_writes_of_one_loop_pass_leave_as_one_send() -> None:
    async def go() -> tuple[list[bytes], bytes]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        counting = _Counting(transport)  # type: ignore[arg-type]
        corked = _Corked(counting, loop)  # type: ignore[arg-type]
        corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        corked.write(b"{}")
        assert counting.writes == []  # held until the pass ends
        await asyncio.sleep(0)
        corked.write(b"tail")
        corked.close()  # sends what it holds before closing
        await asyncio.sleep(0.05)
        theirs.setblocking(False)
        received = theirs.recv(1 << 16)
        theirs.close()
        return counting.writes, received

    writes, received = asyncio.run(go())
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"tail"]
    assert received == b"".join(writes)
