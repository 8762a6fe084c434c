"""queen-rbee: the orchestrator."""

from __future__ import annotations

from rbee import logs
from rbee.flags import parse_settings, settings_parser
from rbee.queen.app import create_app
from rbee.queen.settings import QueenSettings
from rbee.web import run


def parse_args(argv: list[str] | None = None) -> QueenSettings:
    parser = settings_parser(QueenSettings, prog="queen-rbee",
                             description="rbee orchestrator: registry, routing, SSE relay.")
    settings = parse_settings(parser, QueenSettings, argv)
    if settings.api_key_file:
        try:
            text = settings.api_key_file.read_text()
        except OSError as err:
            parser.error(f"argument --api-key-file: cannot read {settings.api_key_file} ({err.strerror})")
        keys = [ln.strip() for ln in text.splitlines() if ln.strip()]
        settings = settings.model_copy(update={"api_keys": [*settings.api_keys, *keys]})
    logs.setup("queen-rbee", settings.log_level)
    return settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    run(create_app(settings), settings.host, settings.port, settings.event_loop)


if __name__ == "__main__":
    main()
