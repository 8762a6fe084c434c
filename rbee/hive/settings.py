"""rbee-hive's settings: each declared once here; its flags and RBEE_* variables derive from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, model_validator

from rbee.auth import read_key_file
from rbee.flags import NOT_A_FLAG, Flag
from rbee.hive.address import http_url, local_host
from rbee.server_settings import AuditedSettings, KeyFile, OptionalKey


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rbee"


def _parse_port_range(value: Any) -> Any:
    """``8081-8199`` (or one port, ``8081``) as ``(8081, 8199)``; an empty text is no range."""
    if not isinstance(value, str):
        return value
    if not value:
        return None
    low, _, high = value.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise ValueError("takes FIRST-LAST, e.g. 8081-8199") from None


def _check_port_range(ports: tuple[int, int] | None) -> tuple[int, int] | None:
    if ports is not None and not 1 <= ports[0] <= ports[1] <= 65535:
        raise ValueError("needs 1 <= FIRST <= LAST <= 65535")
    return ports


def _queen_urls(text: str) -> str:
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("needs at least one queen URL")
    return ",".join(urls)


def _logs_beside_models(data: dict[str, Any]) -> Path:
    return Path(data.get("models_dir") or default_data_dir() / "models").parent / "logs"


class HiveSettings(AuditedSettings):
    CONFIG_SECTION: ClassVar[str] = "hive"  # its table in the config files (rbee.config_files)

    port: int = Field(9200, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    queen_url: Annotated[str, AfterValidator(_queen_urls), Flag(metavar="URL[,URL]")] = Field(
        description="queen-rbee URL to register workers with; several, comma-separated, for queens that "
                    "serve one fleet side by side (each is told everything).")
    advertise_host: Annotated[str | None, Flag(metavar="HOST")] = Field(
        None, description="Address other machines reach this hive and its workers by (default: the listen "
                          "address, or with a wildcard --host the address on the route to the queen).")
    node_name: str = Field("local", description="This machine's name in the fleet.")
    models_dir: Annotated[Path, AfterValidator(Path.expanduser), Flag(metavar="DIR")] = Field(
        default_factory=lambda: default_data_dir() / "models",
        description="Where downloaded models and the catalog live.")
    log_dir: Annotated[Path, Flag(metavar="DIR")] = Field(
        default_factory=_logs_beside_models,
        description="Worker log folder, one file per spawned worker (default: <models-dir>/../logs).")
    hf_base_url: str = Field("https://huggingface.co", description="Hugging Face base URL.")
    cluster_key: OptionalKey = Field(None, description="Key shared among queen, hives and workers.")
    cluster_key_file: KeyFile = Field(
        None, description="File holding the cluster key (not on the command line, so no process listing "
                          "shows it); used when --cluster-key is not given. Every key in it is accepted, "
                          "re-read on SIGHUP; the first is the one this hive sends.")
    spawn_timeout: float = Field(120.0, gt=0, description="Seconds a spawned worker gets to become ready.")
    idle_timeout: float = Field(0.0, ge=0, description="Stop a worker that served nothing this long (0 = never).")
    restart: Literal["no", "on-failure"] = Field("no", description="Restart a worker that exits with an error.")
    max_restarts: int = Field(3, ge=0, description="Restarts per worker, at most.")
    keep_workers_on_crash: bool = Field(False, description="Workers outlive a hive that dies abruptly; the "
                                        "restarted hive adopts them.")
    worker_ports: Annotated[tuple[int, int] | None, BeforeValidator(_parse_port_range),
                            AfterValidator(_check_port_range), Flag(metavar="FIRST-LAST")] = Field(
        None, description="Port range for workers, e.g. 8081-8199 (default: any free port).")
    ram_budget_mb: int = Field(0, ge=0, description="Memory all workers of this hive may use (0 = what is free).")
    vram_budget_mb: int = Field(0, ge=0, description="GPU memory the workers of this hive may use on each "
                                "device (0 = what the device has free).")
    min_resident: float = Field(30.0, ge=0, description="Seconds a worker stays before it may be evicted to "
                                "make room for another model.")
    heartbeat_interval: Annotated[float, NOT_A_FLAG] = Field(1.0, gt=0, description="Seconds between heartbeats.")
    stop_grace: Annotated[float, NOT_A_FLAG] = Field(
        10.0, ge=0, description="Seconds a worker gets to drain before SIGKILL.")

    _key_from_file: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _read_key_from_file(self) -> HiveSettings:
        if self.cluster_key is None and self.cluster_key_file is not None:
            self.cluster_key = read_key_file(self.cluster_key_file)[0]
            self._key_from_file = True
        return self

    @property
    def reloadable_key_file(self) -> Path | None:
        """The cluster key file when the keys come from it (not when --cluster-key overrides it)."""
        return self.cluster_key_file if self._key_from_file else None

    @property
    def queen_urls(self) -> list[str]:
        return self.queen_url.split(",")

    @property
    def local_url(self) -> str:
        """How this hive's own workers reach it (their ready callback)."""
        return http_url(local_host(self.host), self.port)

    @property
    def state_path(self) -> Path:
        return self.models_dir / "workers.json"
