"""llm-worker-rbee: one GGUF model on llama.cpp, N slots, tokens streamed as SSE."""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys

from rbee import logs, models
from rbee.errors import RbeeError
from rbee.settings import add_flag
from rbee.web import EVENT_LOOPS, run
from rbee.worker.app import LIFECYCLE, WorkerSettings, create_app
from rbee.worker.engine import EngineConfig, list_devices


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="llm-worker-rbee", description="Serve one GGUF model with llama.cpp.")
    add_flag(p, "--model", default=None, help="GGUF path, file:// ref, or omit for the default model")
    add_flag(p, "--host", default="127.0.0.1", help="address to listen on")
    add_flag(p, "--port", type=int, default=None, help="port to listen on (required to serve)")
    add_flag(p, "--worker-id", default=None, help="id to register under (default: <host>-<port>)")
    add_flag(p, "--backend", default="cpu", help="compute backend: cpu, or a GPU backend of this llama.cpp build "
             "(cuda, metal, vulkan…; see --list-devices)")
    add_flag(p, "--device", type=int, default=0, help="device index for the backend")
    add_flag(p, "--list-devices", action="store_true", default=False,
             help="print the devices this llama.cpp build can use, as JSON, and exit")
    add_flag(p, "--slots", type=int, default=1, help="concurrent sequences decoded together")
    add_flag(p, "--ctx-size", type=int, default=2048, help="context length per slot, in tokens")
    add_flag(p, "--threads", type=int, default=0, help="CPU threads (0 = one per core)")
    add_flag(p, "--n-gpu-layers", type=int, default=None,
             help="layers to offload to the GPU (default: all with a GPU --backend, none with cpu)")
    add_flag(p, "--poll", type=int, default=50,
             help="how hard llama.cpp's threads spin-wait for work, 0-100 (llama-server's --poll); -1 = no threadpool")
    add_flag(p, "--callback-url", default=None, help="hive URL to tell when ready")
    add_flag(p, "--cluster-key", default=None,
             help="shared key: sent with the ready callback; required on inference, cancel and shutdown")
    add_flag(p, "--drain-timeout", type=float, default=30.0, help="seconds running requests get on shutdown")
    add_flag(p, "--event-loop", default="auto", choices=EVENT_LOOPS,
             help="event loop (auto: uvloop where installed)")
    add_flag(p, "--log-level", default="INFO", help="logging level")
    a = p.parse_args(argv)
    logs.setup("llm-worker-rbee", a.log_level)
    if a.list_devices:
        print(json.dumps({"devices": [dataclasses.asdict(d) for d in list_devices()]}))
        return
    if a.port is None:
        p.error("--port is required")
    if not 1 <= a.slots <= 64:
        p.error("--slots must be between 1 and 64")
    if not -1 <= a.poll <= 100:
        p.error("--poll must be between 0 and 100, or -1 for no threadpool")
    try:
        path = models.local_path(a.model)
    except RbeeError as err:
        print(f"llm-worker-rbee: {err.message}", file=sys.stderr)
        sys.exit(2)
    if path is None or not path.is_file():
        print(f"llm-worker-rbee: model file not found for '{a.model}'. Pass a local .gguf path or a "
              "file:// ref (download hf: refs with `rbee-keeper models download`).", file=sys.stderr)
        sys.exit(2)
    if a.backend != "cpu":
        devices = list_devices()
        if not any(d.backend == a.backend and d.index == a.device for d in devices):
            have = ", ".join(f"{d.backend}:{d.index}" for d in devices)
            print(f"llm-worker-rbee: no device {a.backend}:{a.device} in this llama.cpp build (it has {have}). "
                  "Use --backend cpu, or install llama-cpp-python built for that backend.", file=sys.stderr)
            sys.exit(2)
    n_gpu_layers = a.n_gpu_layers if a.n_gpu_layers is not None else (0 if a.backend == "cpu" else 999)
    model_ref = a.model or models.DEFAULT_MODEL_REF
    worker_id = a.worker_id or f"{socket.gethostname().split('.')[0]}-{a.port}"
    settings = WorkerSettings(
        worker_id=worker_id, model_ref=model_ref, host=a.host, port=a.port, backend=a.backend,
        device=a.device, callback_url=a.callback_url, cluster_key=a.cluster_key, drain_timeout=a.drain_timeout,
    )
    config = EngineConfig(model_path=path, slots=a.slots, ctx_size=a.ctx_size, threads=a.threads,
                          n_gpu_layers=n_gpu_layers, main_gpu=a.device if a.backend != "cpu" else 0, poll=a.poll)
    app = create_app(settings, config)
    # handler_cancellation: a client that hangs up cancels its handler, which frees its slot at once,
    # even when nothing is being written to it (a long prompt, a non-streamed answer).
    run(app, a.host, a.port, a.event_loop, handler_cancellation=True)
    if app[LIFECYCLE].error:
        print(f"llm-worker-rbee: {app[LIFECYCLE].error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
