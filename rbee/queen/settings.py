from __future__ import annotations

from pydantic import BaseModel, Field


class QueenSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys clients must send; empty = open.")
    cluster_key: str | None = Field(None, description="Key hives and workers use on the control routes.")
    queue_timeout: float = Field(0.0, ge=0, description="Seconds a request may wait for a free slot; 0 = 503 at once.")
    heartbeat_timeout: float = Field(5.0, gt=0, description="Seconds without a sign of life before a worker leaves routing.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to a worker.")
