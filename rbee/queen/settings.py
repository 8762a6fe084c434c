from __future__ import annotations

from pydantic import BaseModel, Field


class QueenSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys clients must send; empty = open.")
    cluster_key: str | None = Field(None, description="Key hives and workers use on the control routes.")
    queue_size: int = Field(64, ge=0, description="Requests that may wait for a slot at once.")
    queue_timeout: float = Field(0.0, ge=0, description="Seconds a request may wait for a slot; 0 = 503 at once.")
    heartbeat_timeout: float = Field(5.0, gt=0, description="Seconds of silence before a worker leaves routing.")
    remove_after: float = Field(60.0, gt=0, description="Seconds of silence before a worker is removed.")
    probe_interval: float = Field(1.0, gt=0, description="Seconds between health probes of each worker.")
    stall_timeout: float = Field(30.0, gt=0, description="Seconds without a byte from a streaming worker = failed.")
    max_attempts: int = Field(3, ge=1, le=10, description="Workers tried before the first token, at most.")
    rate_limit_rpm: int = Field(0, ge=0, description="Requests per minute per key on /v1 routes; 0 = off.")
    rate_limit_concurrent: int = Field(0, ge=0, description="Generations running at once per key; 0 = off.")
    log_prompts: bool = Field(False, description="Log prompts and messages (off: they never reach the logs).")
    event_loop: str = Field("auto", description="Event loop: auto (uvloop where installed), uvloop or asyncio.")
