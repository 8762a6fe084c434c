"""queen-rbee: the orchestrator."""

from __future__ import annotations

import argparse
import pathlib

from rbee import logs
from rbee.queen.app import create_app
from rbee.queen.settings import QueenSettings
from rbee.settings import add_flag
from rbee.web import EVENT_LOOPS, run


def parse_args(argv: list[str] | None = None) -> QueenSettings:
    p = argparse.ArgumentParser(prog="queen-rbee", description="rbee orchestrator: registry, routing, SSE relay.")
    add_flag(p, "--host", default="127.0.0.1", help="address to listen on")
    add_flag(p, "--port", type=int, default=8080, help="port to listen on")
    add_flag(p, "--api-key", action="append", default=[], help="client bearer key (repeatable)")
    add_flag(p, "--api-key-file", default=None, help="file with one API key per line")
    add_flag(p, "--cluster-key", default=None, help="key hives and workers use on /v2 routes")
    add_flag(p, "--queue-size", type=int, default=64, help="requests that may wait for a slot at once")
    add_flag(p, "--queue-timeout", type=float, default=0.0, help="seconds to wait for a free slot (0 = 503 at once)")
    add_flag(p, "--heartbeat-timeout", type=float, default=5.0, help="seconds of silence before a worker leaves routing")
    add_flag(p, "--remove-after", type=float, default=60.0, help="seconds of silence before a worker is removed")
    add_flag(p, "--stall-timeout", type=float, default=30.0, help="seconds without a token before a stream fails")
    add_flag(p, "--rate-limit-rpm", type=int, default=0, help="requests per minute per API key (0 = off)")
    add_flag(p, "--rate-limit-concurrent", type=int, default=0, help="generations at once per API key (0 = off)")
    add_flag(p, "--log-prompts", action="store_true", default=False, help="log prompts (off by default)")
    add_flag(p, "--event-loop", default="auto", choices=EVENT_LOOPS,
             help="event loop (auto: uvloop where installed)")
    add_flag(p, "--log-level", default="INFO", help="logging level")
    a = p.parse_args(argv)
    keys = list(a.api_key)
    if a.api_key_file:
        keys += [ln.strip() for ln in pathlib.Path(a.api_key_file).read_text().splitlines() if ln.strip()]
    logs.setup("queen-rbee", a.log_level)
    return QueenSettings(
        host=a.host, port=a.port, api_keys=keys, cluster_key=a.cluster_key,
        queue_size=a.queue_size, queue_timeout=a.queue_timeout, heartbeat_timeout=a.heartbeat_timeout,
        remove_after=a.remove_after, stall_timeout=a.stall_timeout,
        rate_limit_rpm=a.rate_limit_rpm, rate_limit_concurrent=a.rate_limit_concurrent, log_prompts=a.log_prompts,
        event_loop=a.event_loop,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    run(create_app(settings), settings.host, settings.port, settings.event_loop)


if __name__ == "__main__":
    main()
