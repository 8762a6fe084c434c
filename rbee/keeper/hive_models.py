"""``models list`` and ``models download REF``: a hive's model catalog, and a download followed live."""

from __future__ import annotations

import json
from typing import Any

import requests

from rbee.client import HiveClient
from rbee.errors import ErrorCode
from rbee.keeper.failures import EXIT_OK, KeeperError, envelope_of, from_envelope, from_response, unreachable
from rbee.keeper.output import Output, human_bytes, list_reply
from rbee.sse import iter_messages

START_A_HIVE = "start one with `rbee-keeper up`, or pass --hive-url (env RBEE_HIVE_URL)"
HIVE_KEY = "pass the hive's cluster key with --cluster-key (env RBEE_CLUSTER_KEY)"


def _call(client: HiveClient, method: str, path: str, **kw: Any) -> requests.Response:
    try:
        return getattr(client, method)(path, **kw)
    except requests.RequestException as exc:
        raise unreachable("hive", client.base_url, exc, START_A_HIVE) from None


def models_list(client: HiveClient, out: Output, as_json: bool = False) -> int:
    entries = list_reply(_call(client, "get", "/v1/models"), out, as_json, "models",
                         "this hive has no models; fetch one with `rbee-keeper models download REF`")
    if entries:
        out.table(["model", "provider", "size", "path"],
                  [[m.get("model_ref"), m.get("provider"), _size(m.get("size_bytes")), m.get("local_path")]
                   for m in entries])
    return EXIT_OK


def _size(n: Any) -> str:
    return human_bytes(n) if isinstance(n, int | float) else ""


def download(client: HiveClient, ref: str, out: Output) -> int:
    r = _call(client, "post", "/v1/models/download", json={"model_ref": ref})
    if r.status_code == 404 and envelope_of(r)["code"] == ErrorCode.NOT_FOUND:  # the route, not the model
        raise KeeperError(f"the hive at {client.base_url} cannot download models (no /v1/models/download)",
                          "upgrade the hive, or give workers a local file: --model file:///path/model.gguf")
    if r.status_code >= 300:
        error = envelope_of(r)
        raise from_envelope(error, HIVE_KEY if error["code"] in (ErrorCode.MISSING_API_KEY, ErrorCode.INVALID_API_KEY)
                            else None)
    started = r.json()
    if started.get("status") == "present":
        out.say(f"{ref} is already on the hive: {started.get('local_path', '')}")
        return EXIT_OK
    stream = _call(client, "get", "/v1/models/download/progress", params={"model_ref": ref}, stream=True,
                   timeout=(client.timeout, 120))
    with stream:
        if stream.status_code >= 300:
            raise from_response(stream)
        local_path = follow(stream, ref, out)
    out.say(f"{ref} is ready: {local_path}")
    return EXIT_OK


def follow(stream: requests.Response, ref: str, out: Output) -> str:
    """Show the progress events until ``complete`` (its local path) or an error (raised)."""
    with out.download_progress(ref) as bar:
        try:
            for kind, data in iter_messages(stream.iter_content(chunk_size=None)):
                if kind == "comment":
                    continue
                if data == "[DONE]":
                    break
                event = json.loads(data)
                stage = event.get("stage")
                if stage == "downloading":
                    bar.update(int(event.get("bytes_downloaded", 0)), event.get("bytes_total"),
                               event.get("speed_mbps"))
                elif stage == "complete":
                    return str(event.get("local_path", ""))
                elif stage == "error" or "error" in event:
                    raise from_envelope(event.get("error") or {"message": str(event)},
                                        "fix what the message says, then run the same download again "
                                        "(it resumes where it stopped)")
        except (requests.RequestException, ValueError) as exc:
            raise KeeperError(f"lost the hive's progress stream for {ref} ({exc.__class__.__name__})",
                              "run the same download again; it resumes where it stopped") from None
    raise KeeperError(f"the hive's progress stream for {ref} ended before the download completed",
                      "check `rbee-keeper logs rbee-hive`, then run the same download again")
