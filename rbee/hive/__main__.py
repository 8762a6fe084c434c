"""rbee-hive: the node manager (one per machine)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rbee import logs
from rbee.hive.app import HiveSettings, create_app
from rbee.settings import add_flag
from rbee.web import EVENT_LOOPS, run


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rbee"


def _port_range(parser: argparse.ArgumentParser, text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        parser.error(f"--worker-ports takes FIRST-LAST, e.g. 8081-8199 (got {text!r})")
    if not 1 <= first <= last <= 65535:
        parser.error(f"--worker-ports {text}: need 1 <= FIRST <= LAST <= 65535")
    return first, last


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rbee-hive", description="rbee node manager: models and workers.")
    add_flag(p, "--host", default="127.0.0.1", help="address to listen on")
    add_flag(p, "--port", type=int, default=9200, help="port to listen on")
    add_flag(p, "--queen-url", required=True, help="queen-rbee URL to register workers with")
    add_flag(p, "--node-name", default="local", help="this machine's name in the fleet")
    add_flag(p, "--models-dir", default=str(default_data_dir() / "models"), help="model catalog folder")
    add_flag(p, "--log-dir", default=None, help="worker log folder (default: <models-dir>/../logs)")
    add_flag(p, "--hf-base-url", default="https://huggingface.co", help="Hugging Face base URL")
    add_flag(p, "--cluster-key", default=None, help="shared key among queen, hives and workers")
    add_flag(p, "--spawn-timeout", type=float, default=120.0, help="seconds a new worker gets to become ready")
    add_flag(p, "--idle-timeout", type=float, default=0.0,
             help="stop a worker that served no request for this many seconds (0 = never)")
    add_flag(p, "--restart", choices=("no", "on-failure"), default="no",
             help="restart a worker that exits with an error")
    add_flag(p, "--max-restarts", type=int, default=3, help="restarts per worker, at most")
    add_flag(p, "--keep-workers-on-crash", action="store_true", default=False,
             help="workers outlive a hive that dies abruptly; the restarted hive adopts them")
    add_flag(p, "--worker-ports", default=None, help="port range for workers, e.g. 8081-8199 (default: any free)")
    add_flag(p, "--ram-budget-mb", type=int, default=0, help="memory all workers may use (0 = what is free)")
    add_flag(p, "--event-loop", default="auto", choices=EVENT_LOOPS,
             help="event loop (auto: uvloop where installed)")
    add_flag(p, "--log-level", default="INFO", help="logging level")
    a = p.parse_args(argv)
    ports = _port_range(p, a.worker_ports)
    logs.setup("rbee-hive", a.log_level)
    models_dir = Path(a.models_dir).expanduser()
    settings = HiveSettings(
        host=a.host, port=a.port, queen_url=a.queen_url.rstrip("/"), node_name=a.node_name, models_dir=models_dir,
        log_dir=Path(a.log_dir) if a.log_dir else models_dir.parent / "logs", hf_base_url=a.hf_base_url,
        cluster_key=a.cluster_key, spawn_timeout=a.spawn_timeout, idle_timeout=a.idle_timeout, restart=a.restart,
        max_restarts=a.max_restarts, keep_workers_on_crash=a.keep_workers_on_crash, worker_ports=ports,
        ram_budget_mb=a.ram_budget_mb,
    )
    run(create_app(settings), a.host, a.port, a.event_loop)


if __name__ == "__main__":
    main()
