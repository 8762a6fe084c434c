"""queen-rbee's settings: each declared once here; its flags and RBEE_* variables derive from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field

from rbee.auth import strong_key
from rbee.flags import NOT_A_FLAG, Flag
from rbee.listener import OPEN_FILES_HEADROOM, ListenLimits
from rbee.server_settings import AuditedSettings, KeyFile, OptionalKey


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rbee"  # the same folder as rbee-keeper's (its logs, its record of `up`)


def _wheelhouse_in_state_dir(data: dict[str, Any]) -> Path:
    return Path(data.get("state_dir") or default_state_dir()) / "wheelhouse"


CONNS_BESIDE_STREAMS = 256  # a client's other connections (health, metrics, keep-alive) beside its streams


class QueenSettings(AuditedSettings):
    KEY_FLAG: ClassVar[str] = "--api-key"
    CONFIG_SECTION: ClassVar[str] = "queen"  # its table in the config files (rbee.config_files)

    def keyed(self) -> bool:
        return bool(self.api_keys or self.api_key_file)

    def listen_limits(self) -> ListenLimits:
        """The servers' limits, with room for --max-streams: two files a stream (client, worker) and the rest."""
        limits = super().listen_limits()
        if self.max_conns_per_client is None:  # one client (a gateway in front) may use the whole stream bound
            limits.max_conns_per_client = self.max_streams + CONNS_BESIDE_STREAMS
        limits.open_files = max(limits.open_files, 2 * self.max_streams + OPEN_FILES_HEADROOM)
        limits.open_files_why = f"--max-streams {self.max_streams}"
        return limits

    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    max_conns_per_client: int | None = Field(None, ge=0, description="Connections one client address may hold "
                                             "open at once, loopback included (0 = no cap; default: --max-streams + "
                                             "256, so a gateway in front may relay all of them and still make its "
                                             "other calls); one more is answered "
                                             "503 TOO_MANY_CONNECTIONS. Slow ones are cut at --header-timeout.")
    api_keys: Annotated[list[Annotated[str, AfterValidator(strong_key)]], Flag("--api-key", metavar="KEY")] = Field(
        default_factory=list, description="Bearer key clients must send (repeatable; none = open).")
    api_key_file: KeyFile = Field(None, description="File with one API key per line, added to --api-key; "
                                  "re-read on SIGHUP and POST /v2/admin/reload.")
    admin_key_file: KeyFile = Field(None, description="File with the keys (one a line) that may call "
                                    "/v2/admin/... (key reload); none = those routes are off.")
    cluster_key: OptionalKey = Field(None, description="Key hives and workers use on the control (/v2) routes.")
    queue_size: int = Field(64, ge=0, description="Requests that may wait for a slot at once.")
    queue_timeout: float = Field(0.0, ge=0, description="Seconds a request may wait for a slot (0 = 503 at once).")
    default_timeout: float = Field(0.0, ge=0, le=86_400, description="Seconds a request may take in all (queue, "
                                   "cold start, generation) when it gives no deadline of its own (0 = none).")
    swap_after: float = Field(30.0, ge=0, description="Seconds a cold start waits for busy workers of other "
                              "models to go idle (so a hive can evict them) before no new requests go to them.")
    heartbeat_timeout: float = Field(5.0, gt=0, description="Seconds of silence before a worker leaves routing.")
    remove_after: float = Field(60.0, gt=0, description="Seconds of silence before a worker is removed.")
    max_streams: int = Field(4096, ge=1, le=1_000_000, description="Requests the queen relays (or holds "
                             "in its queue) at once; one more is answered 503 TOO_MANY_STREAMS. Each takes two "
                             "open files: the limit is raised to fit at start.")
    stall_timeout: float = Field(30.0, gt=0, description="Seconds without a byte from a streaming worker = failed.")
    max_resumes: int = Field(1, ge=0, le=16, description="Times a stream whose worker died or stalled after "
                             "tokens went out may move to another worker of the model and go on (0 = never).")
    rate_limit_rpm: int = Field(0, ge=0, description="Requests per minute per key on /v1 routes (0 = off).")
    rate_limit_concurrent: int = Field(0, ge=0, description="Generations running at once per key (0 = off).")
    events_queue: int = Field(256, ge=1, le=65536, description="Events a /v2/events subscriber may fall behind "
                              "by before it is dropped (it never slows the token path).")
    log_prompts: bool = Field(False, description="Log prompts and messages (off: they never reach the logs).")
    cache_routing: bool = Field(True, description="Send a request to the worker that most likely holds its "
                                "prompt's prefix in its cache (learnt from routing history), within --max-load-gap.")
    max_load_gap: int = Field(2, ge=0, le=1024, description="How many fewer free slots than the least loaded "
                              "worker a cache match may have and still be chosen.")
    cache_wait: float = Field(10.0, ge=0, le=60, description="The most seconds a request that may queue "
                              "(--queue-timeout) waits for the busy worker holding its prompt's prefix rather than "
                              "take a free slot that holds little of it; each waits no longer than computing its "
                              "prefix again would take, as the workers' prefill speed shows (0 = never wait).")
    state_dir: Annotated[Path, AfterValidator(Path.expanduser), Flag(metavar="DIR")] = Field(
        default_factory=default_state_dir,
        description="Where the queen keeps what must survive a restart: the node registry (nodes.json) and "
                    "the wheelhouse.")
    wheelhouse_dir: Annotated[Path, AfterValidator(Path.expanduser), Flag(metavar="DIR")] = Field(
        default_factory=_wheelhouse_in_state_dir,
        description="Cache of the wheels `hives install` copies to machines without internet access "
                    "(default: <state-dir>/wheelhouse).")
    advertise_url: Annotated[str | None, Flag(metavar="URL")] = Field(
        None, description="The queen's URL as hives reach it (default: per host, this machine's address on "
                          "the SSH connection to it, and --port).")
    ssh_config: Annotated[Path | None, Flag(metavar="FILE")] = Field(
        None, description="ssh_config for every ssh the queen runs (default: ssh's own, ~/.ssh/config).")
    ssh_connect_timeout: float = Field(10.0, gt=0, le=300, description="Seconds an SSH connection may take.")
    ssh_attempts: int = Field(3, ge=1, le=10, description="Tries of an SSH connection that fails to connect.")
    node_probe_interval: float = Field(
        10.0, ge=0, description="Seconds between the queen's checks of added machines whose hive is not online "
        "(one TCP connect to their SSH port), so `hives list` shows them unreachable or not (0 = off).")
    hive_start_timeout: float = Field(
        60.0, gt=0, description="Seconds `hives start` waits for the hive to register.")
    probe_interval: Annotated[float, NOT_A_FLAG] = Field(
        1.0, gt=0, description="Seconds between health probes of each worker.")
    max_attempts: Annotated[int, NOT_A_FLAG] = Field(
        3, ge=1, le=10, description="Workers tried before the first token, at most.")
