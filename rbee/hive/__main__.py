"""rbee-hive: the node manager (one per machine)."""

from __future__ import annotations

from rbee import logs
from rbee.audit_web import start_or_exit
from rbee.flags import parse_settings, settings_parser
from rbee.hive.app import create_app
from rbee.hive.settings import HiveSettings
from rbee.server_settings import fail_closed
from rbee.web import run


def main(argv: list[str] | None = None) -> None:
    parser = settings_parser(HiveSettings, prog="rbee-hive", description="rbee node manager: models and workers.")
    settings = parse_settings(parser, HiveSettings, argv)
    logs.setup("rbee-hive", settings.log_level)
    fail_closed(parser, settings)
    run(start_or_exit("rbee-hive", lambda: create_app(settings)), settings.host, settings.port, settings.event_loop, settings.listen_limits())


if __name__ == "__main__":
    main()
