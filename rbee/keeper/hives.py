"""``hives add|install|start|stop|remove|list`` and ``logs --hive``: hives on other machines, over SSH.

The queen does the work (it holds the node registry and runs ssh; ``/v2/nodes``); this is the front
end. The queen's SSH diagnoses already say what to do next, so they are shown as they come.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import requests

from rbee import __version__
from rbee.client import QueenClient
from rbee.errors import ErrorCode
from rbee.keeper import fleet
from rbee.keeper.failures import EXIT_OK, KeeperError, envelope_of, from_envelope, unreachable
from rbee.keeper.fleet import START_A_QUEEN
from rbee.keeper.output import Output, human_bytes
from rbee.sse import iter_messages
from rbee.versions import compatible

# Answers whose message is its own next step (the SSH diagnoses, the install's checks).
SELF_EXPLAINED = frozenset({
    ErrorCode.SSH_UNREACHABLE, ErrorCode.SSH_AUTH_FAILED, ErrorCode.SSH_HOST_KEY_CHANGED,
    ErrorCode.SSH_HOST_KEY_UNKNOWN, ErrorCode.SSH_FAILED, ErrorCode.HIVE_NOT_INSTALLED,
    ErrorCode.VERSION_MISMATCH, ErrorCode.REMOTE_UNSUPPORTED, ErrorCode.INSTALL_FAILED,
    ErrorCode.HIVE_START_FAILED, ErrorCode.HIVE_ALREADY_EXISTS, ErrorCode.HIVE_NOT_FOUND,
    ErrorCode.HIVE_RUNNING, ErrorCode.INVALID_REQUEST, ErrorCode.NOT_FOUND,
})
ADD_TIMEOUT_S = 180  # 3 connection attempts of 10 s, backoff, and a look around that imports rbee there
START_TIMEOUT_S = 300
STREAM_READ_TIMEOUT_S = 600  # between two lines of an install (a wheel compiling) or of a followed log


def _call(client: QueenClient, method: str, path: str, **kw: Any) -> requests.Response:
    try:
        return getattr(client, method)(path, **kw)
    except requests.RequestException as exc:
        raise unreachable("queen", client.base_url, exc, START_A_QUEEN) from None


def _error(error: dict[str, Any]) -> KeeperError:
    if error.get("code") in SELF_EXPLAINED:
        return KeeperError(str(error.get("message")), code=str(error.get("code")))
    return from_envelope(error)


class NoNodeRoutes(KeeperError):
    """A queen older than ``/v2/nodes``."""


def _ok(r: requests.Response) -> Any:
    if r.status_code == 404 and envelope_of(r)["message"].startswith("No such route"):
        raise NoNodeRoutes(f"the queen at {r.url.split('/v2/')[0]} cannot manage hives over SSH (no /v2/nodes)",
                           f"upgrade it to rbee {__version__}")
    if r.status_code >= 300:
        raise _error(envelope_of(r))
    return r.json() if r.content else None


def warn_if_other_version(client: QueenClient, out: Output) -> None:
    """The keeper and the queen of different lines: say so (what follows may not fit)."""
    try:
        theirs = client.get("/health", timeout=5).json().get("version")
    except (requests.RequestException, ValueError, AttributeError):
        return
    if isinstance(theirs, str) and not compatible(theirs, __version__):
        out.note(f"rbee-keeper: warning: the queen runs rbee {theirs}, this rbee-keeper is {__version__}")


# ---------------------------------------------------------------- add, remove


def add(client: QueenClient, name: str, ssh: str, out: Output, *, identity: str | None = None,
        remote_dir: str | None = None, hive_port: int | None = None, accept_new_host_key: bool = False,
        replace: bool = False) -> int:
    warn_if_other_version(client, out)
    body: dict[str, Any] = {"name": name, "ssh": ssh, "accept_new_host_key": accept_new_host_key, "replace": replace}
    if identity:
        local = Path(identity).expanduser()
        body["identity"] = str(local.resolve()) if local.exists() else identity  # the queen's cwd may differ
    if remote_dir:
        body["remote_dir"] = remote_dir
    if hive_port:
        body["hive_port"] = hive_port
    node = _ok(_call(client, "post", "/v2/nodes", json=body, timeout=ADD_TIMEOUT_S))
    found = f"rbee-hive {node['version']} is installed there" if node.get("installed") and node.get("version") \
        else "rbee-hive is not installed there yet"
    out.say(f"hive {name} added: {node.get('ssh')} ({found})")
    for line in node.get("notes", []):
        out.note(f"rbee-keeper: next: {line}")
    return EXIT_OK


def remove(client: QueenClient, name: str, out: Output) -> int:
    _ok(_call(client, "delete", f"/v2/nodes/{name}"))
    out.say(f"hive {name} removed from the queen's registry (nothing was changed on the machine)")
    return EXIT_OK


# ---------------------------------------------------------------- install


def install(client: QueenClient, name: str, out: Output) -> int:
    """Follow the install's steps (stderr) to its end (stdout), or its error."""
    warn_if_other_version(client, out)
    r = _call(client, "post", f"/v2/nodes/{name}/install", stream=True, timeout=(ADD_TIMEOUT_S, STREAM_READ_TIMEOUT_S))
    with r:
        if r.status_code >= 300 or not r.headers.get("Content-Type", "").startswith("text/event-stream"):
            _ok(r)
        try:
            for kind, data in iter_messages(r.iter_content(chunk_size=None)):
                if kind != "data" or data == "[DONE]":
                    continue
                event = json.loads(data)
                if "error" in event:
                    raise _error(event["error"])
                if event.get("stage") == "complete":
                    out.say(event.get("message", f"installed on {name}"))
                    out.note(f"rbee-keeper: next: start it with `rbee-keeper hives start {name}`")
                    return EXIT_OK
                out.note(f"[{event.get('stage')}] {event.get('message')}")
        except (requests.RequestException, ValueError) as exc:
            raise KeeperError(f"lost the queen's install stream for {name} ({exc.__class__.__name__})",
                              f"run `rbee-keeper hives install {name}` again (what is done is kept)") from None
    raise KeeperError(f"the install on {name} ended before it completed",
                      "check `rbee-keeper logs queen-rbee`, then install again")


# ---------------------------------------------------------------- start, stop


def start(client: QueenClient, name: str, out: Output) -> int:
    warn_if_other_version(client, out)
    started = _ok(_call(client, "post", f"/v2/nodes/{name}/start", timeout=START_TIMEOUT_S))
    node = started["node"]
    how = "was already running" if started.get("already_running") else f"started in {started.get('seconds', 0):.1f} s"
    out.say(f"hive {name} is {node.get('state')}: {how} (pid {started.get('pid')}), at {node.get('url')}, "
            f"registered with the queen at {started.get('queen_url')}")
    return EXIT_OK


def stop(client: QueenClient, name: str, out: Output) -> int:
    stopped = _ok(_call(client, "post", f"/v2/nodes/{name}/stop", timeout=START_TIMEOUT_S))
    outcome = stopped.get("outcome")
    workers = stopped.get("workers_removed", 0)
    said = {"stopped": "stopped (its workers drained and exited with it)",
            "killed": "did not exit in time and was killed, with its process group",
            "not-running": "was not running"}.get(outcome, str(outcome))
    out.say(f"hive {name} {said}; {workers} worker(s) left the queen's routing")
    return EXIT_OK


# ---------------------------------------------------------------- list


def ago(seconds: float | None) -> str:
    """``3 s ago``, ``4 min ago``, ``2 h ago``; ``never`` for no heartbeat at all."""
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{max(0, seconds):.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def node_rows(nodes: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for n in nodes:
        ram = n.get("ram_free_bytes")
        rows.append([n.get("hive_id"), n.get("ssh") or n.get("url") or "", n.get("state"), n.get("version") or "",
                     n.get("workers", 0), human_bytes(ram) if isinstance(ram, int) else "",
                     memory_cell(n.get("memory") or []), ago(n.get("seconds_since_heartbeat"))])
    return rows


def memory_cell(devices: list[dict[str, Any]]) -> str:
    """Per device: headroom for another worker, of the total, and what this hive's workers reserve."""
    parts = []
    for d in devices:
        where = "host" if d.get("backend") == "cpu" else f"{d.get('backend')}:{d.get('index')}"
        room, total = d.get("headroom_bytes"), d.get("total_bytes")
        text = f"{where} {human_bytes(room) if isinstance(room, int) else '?'} free"
        if isinstance(total, int) and total:
            text += f" of {human_bytes(total)}"
        text += f", {human_bytes(d.get('reserved_bytes') or 0)} reserved"
        if isinstance(d.get("budget_bytes"), int):
            text += f" (budget {human_bytes(d['budget_bytes'])})"
        parts.append(text)
    return "; ".join(parts)


def list_nodes(client: QueenClient, out: Output, as_json: bool = False) -> int:
    try:
        data = _ok(_call(client, "get", "/v2/nodes"))
    except NoNodeRoutes:
        return fleet.hives_list(client, out, as_json)  # an older queen: its hives as it lists them
    if as_json:
        out.say(json.dumps(data))
        return EXIT_OK
    nodes = data.get("hives", [])
    if not nodes:
        out.say("no hives are known to the queen; add one with `rbee-keeper hives add NAME --ssh USER@HOST`")
        return EXIT_OK
    out.table(["name", "host", "state", "version", "workers", "free RAM", "memory", "last heartbeat"],
              node_rows(nodes))
    for n in nodes:
        for line in n.get("notes", []):
            out.note(f"{n.get('hive_id')}: {line}")
    return EXIT_OK


# ---------------------------------------------------------------- logs


def logs(client: QueenClient, name: str, program: str | None, lines: int, follow: bool, stdout: TextIO) -> int:
    params: dict[str, Any] = {"lines": lines, "follow": "true" if follow else "false"}
    if program:
        params["program"] = program
    r = _call(client, "get", f"/v2/nodes/{name}/logs", params=params, stream=follow,
              timeout=(ADD_TIMEOUT_S, None if follow else ADD_TIMEOUT_S))
    with r:
        if r.status_code >= 300:
            _ok(r)
        try:
            for chunk in r.iter_content(chunk_size=None):
                stdout.write(chunk.decode(errors="replace"))
                stdout.flush()
        except KeyboardInterrupt:  # the end of a --follow, as with tail -f
            return EXIT_OK
        except requests.RequestException as exc:
            raise KeeperError(f"lost the log stream of {name} ({exc.__class__.__name__})",
                              f"run `rbee-keeper logs --hive {name}` again") from None
    return EXIT_OK
