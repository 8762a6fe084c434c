"""The fleet on a GPU, end to end: a queen and a hive, the hive's devices, a worker spawned with
``--backend cuda``, a streamed answer through the queen, and what the worker and the GPU say.

    python bench/gpu_smoke.py MODEL.gguf        (bench/gpu.sh --exec runs it on the H200 with shared/gpu)

A check to run by hand where a GPU is lent, not part of CI. Exits non-zero when a step fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from rbee.testing.cluster import Cluster


def gpu_memory_used() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"], check=False,
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> None:
    model = Path(sys.argv[1]).resolve()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="rbee-gpu-smoke-")))
    try:
        cluster.start_queen()
        hive = cluster.start_hive()
        devices = hive.get("/v1/devices", timeout=120).json()["devices"]
        print("hive devices:", json.dumps(devices))
        gpus = [d for d in devices if d["backend"] != "cpu"]
        assert gpus, "the hive sees no GPU"
        print("GPU memory used before:", gpu_memory_used())
        backend, index = gpus[0]["backend"], gpus[0]["index"]
        worker_id = cluster.spawn_on_hive(model_ref=f"file://{model}", backend=backend, device=index, slots=4)
        worker = cluster.queen.worker(worker_id)
        print(f"worker {worker_id} on {backend}:{index}, backend reported to the queen: {worker.backend}")
        print("GPU memory used with the worker:", gpu_memory_used())
        started = time.perf_counter()
        result = cluster.queen.infer({"prompt": "Hello", "max_tokens": 256, "temperature": 0, "ignore_eos": True})
        wall = time.perf_counter() - started
        assert result.done is not None, result.error
        print(f"one stream through the queen: {result.done['total_tokens']} tokens in {wall:.3f} s "
              f"({result.done['total_tokens'] / wall:.0f} tok/s, TTFT {result.done.get('ttft_ms')} ms)")
        settings = requests.get(f"{worker.url}/v1/info", timeout=10).json()["settings"]
        print("worker settings:", json.dumps(settings))
        assert settings["n_gpu_layers"] > 0, "the worker offloaded no layers"
    finally:
        cluster.stop_all()
    print("gpu smoke: ok")


if __name__ == "__main__":
    main()
