"""``workers list|health|shutdown`` and ``hives list``: what the queen knows about the fleet."""

from __future__ import annotations

import json
from typing import Any

import requests

from rbee.client import QueenClient
from rbee.keeper.failures import EXIT_ERROR, EXIT_OK, KeeperError, from_response, unreachable
from rbee.keeper.output import Output, list_reply

START_A_QUEEN = "start one with `rbee-keeper up`, or pass --queen-url (env RBEE_QUEEN_URL)"


def _call(client: QueenClient, method: str, path: str, **kw: Any) -> requests.Response:
    try:
        return getattr(client, method)(path, **kw)
    except requests.RequestException as exc:
        raise unreachable("queen", client.base_url, exc, START_A_QUEEN) from None


def _ok_json(client: QueenClient, method: str, path: str, **kw: Any) -> Any:
    r = _call(client, method, path, **kw)
    if r.status_code >= 300:
        raise from_response(r)
    return r.json()


def worker_rows(workers: list[dict[str, Any]]) -> list[list[Any]]:
    return [[w.get("worker_id"), w.get("node_name"), w.get("model_ref"), w.get("state"),
             f"{w.get('slots_available', '?')}/{w.get('slots_total', '?')}", w.get("url")] for w in workers]


def workers_list(client: QueenClient, out: Output, as_json: bool = False) -> int:
    workers = list_reply(_call(client, "get", "/v2/workers/list"), out, as_json, "workers",
                         f"no workers are registered with the queen at {client.base_url}; start one with "
                         "`rbee-keeper up`")
    if workers:
        out.table(["id", "node", "model", "state", "slots", "url"], worker_rows(workers))
    return EXIT_OK


def workers_health(client: QueenClient, out: Output, as_json: bool = False) -> int:
    data = _ok_json(client, "get", "/v2/workers/health")
    workers = data.get("workers", [])
    if as_json:
        out.say(json.dumps(data))
    elif not workers:
        out.say("no workers are registered, so none to check; start one with `rbee-keeper up`")
    else:
        out.table(["id", "state", "health", "url"],
                  [[w.get("worker_id"), w.get("state"), "healthy" if w.get("healthy") else "NOT ANSWERING",
                    w.get("url")] for w in workers])
    sick = [w.get("worker_id") for w in workers if not w.get("healthy")]
    if sick:
        raise KeeperError(f"{len(sick)} worker(s) not answering: {', '.join(map(str, sick))}",
                          "read their logs with `rbee-keeper logs llm-worker-rbee`; "
                          "remove one with `rbee-keeper workers shutdown --id ID`")
    return EXIT_OK


def workers_shutdown(client: QueenClient, worker_id: str, out: Output) -> int:
    data = _ok_json(client, "post", "/v2/workers/shutdown", json={"worker_id": worker_id})
    drained = "it is draining and will exit" if data.get("shutdown_requested") else "it did not answer the request"
    out.say(f"worker {worker_id}: removed from the queen; {drained}")
    return EXIT_OK


def hives_list(client: QueenClient, out: Output, as_json: bool = False) -> int:
    r = _call(client, "get", "/v2/hives/list")
    if r.status_code == 404:
        out.note(f"rbee-keeper: the queen at {client.base_url} does not list hives (this version has no "
                 "GET /v2/hives/list)")
        out.note("rbee-keeper: next: `rbee-keeper workers list` shows each worker's node")
        return EXIT_ERROR
    hives = list_reply(r, out, as_json, "hives", "no hives are known to the queen")
    if hives:
        columns = list(dict.fromkeys(k for h in hives for k in h))  # whatever the queen reports, in its order
        out.table(columns, [[_cell(h.get(c)) for c in columns] for h in hives])
    return EXIT_OK


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)
