"""rbee-hive: the node manager (one per machine)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rbee import logs
from rbee.hive.app import HiveSettings, create_app
from rbee.settings import add_flag
from rbee.web import run


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rbee"


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
    add_flag(p, "--log-level", default="INFO", help="logging level")
    a = p.parse_args(argv)
    logs.setup("rbee-hive", a.log_level)
    models_dir = Path(a.models_dir).expanduser()
    settings = HiveSettings(
        host=a.host, port=a.port, queen_url=a.queen_url.rstrip("/"), node_name=a.node_name, models_dir=models_dir,
        log_dir=Path(a.log_dir) if a.log_dir else models_dir.parent / "logs", hf_base_url=a.hf_base_url,
        cluster_key=a.cluster_key,
    )
    run(create_app(settings), a.host, a.port)


if __name__ == "__main__":
    main()
