"""What rbee-keeper says when something fails: the service's message plus one next step, and an exit code."""

from __future__ import annotations

from typing import Any

import requests

from rbee.errors import ErrorCode
from rbee.peer import envelope

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130

# One next step per error code; the services' own messages already say what broke.
NEXT_STEPS: dict[str, str] = {
    ErrorCode.NO_WORKERS: "start a worker: `rbee-keeper up` (or spawn one on a hive), then retry",
    ErrorCode.NO_IDLE_WORKERS: "wait and retry, or add capacity: `rbee-keeper up --slots 4`",
    ErrorCode.ALL_SLOTS_BUSY: "wait and retry, or add capacity: `rbee-keeper up --slots 4`",
    ErrorCode.MODEL_NOT_FOUND: "see what is served with `rbee-keeper workers list`, "
                               "or fetch it with `rbee-keeper models download REF`",
    ErrorCode.INVALID_REQUEST: "fix the value named above (see `rbee-keeper --help`)",
    ErrorCode.MISSING_API_KEY: "pass the queen's key with --api-key or RBEE_API_KEY",
    ErrorCode.INVALID_API_KEY: "check the key given with --api-key or RBEE_API_KEY",
    ErrorCode.WORKER_NOT_FOUND: "list the workers with `rbee-keeper workers list`",
    ErrorCode.WORKER_UNAVAILABLE: "check the workers with `rbee-keeper workers health` "
                                  "and their logs with `rbee-keeper logs llm-worker-rbee`",
    ErrorCode.DRAINING: "the worker is shutting down; retry in a few seconds",
    ErrorCode.QUEUE_TIMEOUT: "the fleet is saturated; retry later or add workers",
    ErrorCode.RATE_LIMITED: "slow down and retry",
    ErrorCode.PAYLOAD_TOO_LARGE: "send a shorter prompt",
    ErrorCode.CONTEXT_OVERFLOW: "send a shorter prompt or ask for fewer tokens",
    ErrorCode.HIVE_NOT_FOUND: "see the hives the queen knows with `rbee-keeper hives list`",
    ErrorCode.VERSION_MISMATCH: "install the queen's version there: `rbee-keeper hives install NAME`",
}
DEFAULT_NEXT_STEP = "check the service's log with `rbee-keeper logs queen-rbee`"


class KeeperError(Exception):
    """A failure to report: ``message`` then ``next_step`` on stderr, exit with ``exit_code``."""

    def __init__(self, message: str, next_step: str | None = None, exit_code: int = EXIT_ERROR,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step
        self.exit_code = exit_code
        self.code = code

    def lines(self) -> list[str]:
        head = f"error: {self.message}" + (f" [{self.code}]" if self.code else "")
        return [head] + ([f"next: {self.next_step}"] if self.next_step else [])


def envelope_of(response: requests.Response) -> dict[str, Any]:
    """The ``{"code", "message", "details"}`` of an error answer, or a stand-in for a non-rbee answer."""
    try:
        error = envelope(response.json())
    except ValueError:
        error = None
    if error is not None:
        return error
    text = response.text.strip().replace("\n", " ")[:200] or response.reason or "no body"
    return {"code": f"HTTP_{response.status_code}", "message": f"HTTP {response.status_code}: {text}", "details": {}}


def from_envelope(error: dict[str, Any], next_step: str | None = None) -> KeeperError:
    code = str(error.get("code", "?"))
    return KeeperError(str(error.get("message", "unknown error")), next_step or NEXT_STEPS.get(code, DEFAULT_NEXT_STEP),
                       code=code)


def from_response(response: requests.Response, next_step: str | None = None) -> KeeperError:
    return from_envelope(envelope_of(response), next_step)


def unreachable(what: str, url: str, exc: Exception, next_step: str) -> KeeperError:
    """A service that did not answer at all (refused, timed out, bad address)."""
    return KeeperError(f"no {what} answers at {url} ({reason(exc)})", next_step)


def reason(exc: Exception) -> str:
    if isinstance(exc, requests.ConnectTimeout | requests.ReadTimeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect"
    return exc.__class__.__name__
