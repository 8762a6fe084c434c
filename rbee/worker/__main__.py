"""llm-worker-rbee: one GGUF model on llama.cpp, N slots, tokens streamed as SSE."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from rbee import logs, models
from rbee.errors import RbeeError
from rbee.flags import parse_settings, settings_parser
from rbee.server_settings import fail_closed
from rbee.web import run
from rbee.worker.app import LIFECYCLE, create_app
from rbee.worker.engine import EngineConfig, list_devices
from rbee.worker.settings import WorkerSettings


def engine_config(settings: WorkerSettings, model_path: Path) -> EngineConfig:
    return EngineConfig(model_path=model_path, slots=settings.slots, ctx_size=settings.ctx_size,
                        threads=settings.threads, batch_size=settings.batch_size,
                        n_gpu_layers=settings.n_gpu_layers,
                        main_gpu=settings.device if settings.backend != "cpu" else 0, poll=settings.poll,
                        cache_ram_mb=settings.cache_ram_mb, batch_invariant=settings.batch_invariant,
                        embeddings=settings.embeddings, pooling=settings.pooling)


def main(argv: list[str] | None = None) -> None:
    p = settings_parser(WorkerSettings, prog="llm-worker-rbee", description="Serve one GGUF model with llama.cpp.")
    settings = parse_settings(p, WorkerSettings, argv)
    logs.setup("llm-worker-rbee", settings.log_level)
    fail_closed(p, settings)
    if settings.list_devices:
        print(json.dumps({"devices": [dataclasses.asdict(d) for d in list_devices()]}))
        return
    if settings.port is None:
        p.error("--port is required")
    if settings.pooling and not settings.embeddings:
        p.error("--pooling applies only with --embeddings: add --embeddings, or drop --pooling")
    try:
        path = models.local_path(settings.model_ref)
    except RbeeError as err:
        print(f"llm-worker-rbee: {err.message}", file=sys.stderr)
        sys.exit(2)
    if path is None or not path.is_file():
        print(f"llm-worker-rbee: model file not found for '{settings.model_ref}'. Pass a local .gguf path or a "
              "file:// ref (download hf: refs with `rbee-keeper models download`).", file=sys.stderr)
        sys.exit(2)
    if settings.backend != "cpu":
        devices = list_devices()
        if not any(d.backend == settings.backend and d.index == settings.device for d in devices):
            have = ", ".join(f"{d.backend}:{d.index}" for d in devices)
            print(f"llm-worker-rbee: no device {settings.backend}:{settings.device} in this llama.cpp build "
                  f"(it has {have}). Use --backend cpu, or install llama-cpp-python built for that backend.",
                  file=sys.stderr)
            sys.exit(2)
    app = create_app(settings, engine_config(settings, path))
    # handler_cancellation: a client that hangs up cancels its handler, which frees its slot at once,
    # even when nothing is being written to it (a long prompt, a non-streamed answer).
    run(app, settings.host, settings.port, settings.event_loop, settings.listen_limits(),
        handler_cancellation=True)
    if app[LIFECYCLE].error:
        print(f"llm-worker-rbee: {app[LIFECYCLE].error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
