"""queen-rbee: the orchestrator."""

from __future__ import annotations

from rbee import logs
from rbee.audit_web import start_or_exit
from rbee.flags import parse_settings, settings_parser
from rbee.queen.app import create_app
from rbee.queen.settings import QueenSettings
from rbee.server_settings import fail_closed
from rbee.web import run


def parse_args(argv: list[str] | None = None) -> QueenSettings:
    parser = settings_parser(QueenSettings, prog="queen-rbee",
                             description="rbee orchestrator: registry, routing, SSE relay.")
    settings = parse_settings(parser, QueenSettings, argv)
    logs.setup("queen-rbee", settings.log_level)
    return fail_closed(parser, settings)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    run(start_or_exit("queen-rbee", lambda: create_app(settings)), settings.host, settings.port, settings.event_loop, settings.listen_limits())


if __name__ == "__main__":
    main()
