"""queen-rbee's settings: each declared once here; its flags and RBEE_* variables derive from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from rbee.flags import NOT_A_FLAG, Flag
from rbee.server_settings import ServerSettings


class QueenSettings(ServerSettings):
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    api_keys: Annotated[list[str], Flag("--api-key", metavar="KEY")] = Field(
        default_factory=list, description="Bearer key clients must send (repeatable; none = open).")
    api_key_file: Path | None = Field(None, description="File with one API key per line, added to --api-key.")
    cluster_key: str | None = Field(None, description="Key hives and workers use on the control (/v2) routes.")
    queue_size: int = Field(64, ge=0, description="Requests that may wait for a slot at once.")
    queue_timeout: float = Field(0.0, ge=0, description="Seconds a request may wait for a slot (0 = 503 at once).")
    heartbeat_timeout: float = Field(5.0, gt=0, description="Seconds of silence before a worker leaves routing.")
    remove_after: float = Field(60.0, gt=0, description="Seconds of silence before a worker is removed.")
    stall_timeout: float = Field(30.0, gt=0, description="Seconds without a byte from a streaming worker = failed.")
    rate_limit_rpm: int = Field(0, ge=0, description="Requests per minute per key on /v1 routes (0 = off).")
    rate_limit_concurrent: int = Field(0, ge=0, description="Generations running at once per key (0 = off).")
    log_prompts: bool = Field(False, description="Log prompts and messages (off: they never reach the logs).")
    probe_interval: Annotated[float, NOT_A_FLAG] = Field(
        1.0, gt=0, description="Seconds between health probes of each worker.")
    max_attempts: Annotated[int, NOT_A_FLAG] = Field(
        3, ge=1, le=10, description="Workers tried before the first token, at most.")
