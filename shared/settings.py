"""Runtime settings, read once from ``RECSYS_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "masked"]


def masked(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Settings(BaseSettings):
    """Every knob an operator sets; a bad value fails at start-up, naming the variable."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="forbid")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis the worker publishes to and the gateway reads",
    )
    redis_cluster: bool = Field(
        False,
        description="redis_url names a node of a Redis Cluster: the worker and the gateway "
        "use the cluster clients (keys are spread over the nodes by hash slot)",
    )
    key_prefix: str = Field(
        "recsys:", pattern=r"^[^{}]*$", description="prefix of every Redis key (no braces)"
    )
    artifacts_dir: Path = Field(Path("artifacts"), description="where bundles are written and read")
    api_host: str = Field("127.0.0.1", description="gateway bind address")
    api_port: int = Field(8000, ge=1, le=65535, description="gateway port")
    ranker: str = Field(
        "dcn", pattern="^(dcn|deepfm)$", description="which trained ranker the gateway serves"
    )
    exclude_seen: bool = Field(
        True, description="never recommend items the user already interacted with"
    )
    reload_interval_s: float = Field(
        2.0, gt=0, description="how often the gateway checks recsys:active"
    )
    redis_timeout_s: float = Field(
        0.25,
        gt=0,
        description="timeout of each gateway Redis call: a stalled call waits this long "
        "in all (only a connection found broken is retried, at once)",
    )
    workers: int = Field(
        1, ge=1, le=64, description="gateway worker processes (each serves every route)"
    )
    torch_threads: int = Field(1, ge=1, description="intra-op threads of the gateway's ranker")
    log_level: str = Field("INFO", description="Python logging level")
    rank_candidates: int = Field(
        100, ge=1, le=1000, description="recalled candidates /recommend scores per request"
    )
    scorer: Literal["process", "inline"] = Field(
        "process",
        description="where the ranker runs: a scoring process per worker, on another core "
        "than the event loop, or inline on the event loop",
    )
    model_runtime: Literal["onnx", "torch"] = Field(
        "onnx",
        description="what runs the ranker: onnxruntime on the worker's ONNX export (torch "
        "when the bundle has none), or torch",
    )
    access_log: bool = Field(False, description="log every request (uvicorn's access log)")
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="largest request body; a longer one is refused with 413 "
        "as soon as its header or its first bytes over the limit arrive",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection that has not sent a whole request (headers and "
        "body) this long after opening or after its previous response is closed",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, description="idle keep-alive connections are closed after this"
    )
    max_concurrency: int = Field(
        1024,
        ge=1,
        description="open connections or requests in flight per worker past which "
        "new requests get 503 at once",
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM: /readyz answers 503 while every request is still "
        "served this long, then the worker stops (0: stop at once)",
    )
    events_dir: Path = Field(
        Path("events"), description="where `python -m offline ingest` writes the event log"
    )
    events_stream_max: int = Field(
        1_000_000, ge=1000, description="events the Redis stream keeps (approximately) for ingest"
    )
    events_dedupe_ttl_s: int = Field(
        7 * 86_400, ge=60, description="how long a written event_id is remembered as a duplicate"
    )
    recent_items: int = Field(
        50, ge=1, le=1000, description="recent positive items kept per user for fresh answers"
    )
    recent_ttl_s: int = Field(
        30 * 86_400, ge=60, description="a user's recent items expire this long after the last"
    )
    trending_bucket_s: int = Field(300, ge=10, description="width of a trending time bucket")
    trending_half_life_s: float = Field(
        1800.0, gt=0, description="a trending bucket counts half as much this much later"
    )
    trending_window_s: int = Field(
        4 * 3600, ge=60, description="trending counts only the buckets of this last stretch"
    )
    trending_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of trending items in a cold user's recall (the "
        "rest from the published hot list)",
    )
    anchor_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of an anchor item's nearest items in the recall of a request "
        "with `anchor=ITEM` (the rest from the user's own recall)",
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="comma-separated keys; when set, /rerank and /events need one in the "
        "X-API-Key header",
    )

    @property
    def api_key_set(self) -> frozenset[str]:
        """The accepted API keys (empty: no key needed)."""
        return frozenset(
            k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()
        )
