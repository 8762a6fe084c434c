"""The servers bench/worker.py compares: how each is started, and how one stream is read from each.

Ours (llm-worker-rbee), llama.cpp's llama-server (built on first use from the llama.cpp inside the
installed llama-cpp-python's sdist) and llama-cpp-python's own server, on the same GGUF with the
same threads and matching parallelism.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import CACHE_DIR, BenchError

from rbee import sse

OURS = "llm-worker-rbee"
LLAMA_SERVER = "llama-server"
LCP_SERVER = "llama-cpp-python server"
CTX_PER_SLOT = 2048


# ---------------------------------------------------------------- llama-server, built on first use


def llama_cpp_python_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:  # the package copied without its metadata (bench/gpu.sh)
        import llama_cpp

        return llama_cpp.__version__


def llama_server_source(version: str) -> Path:
    return CACHE_DIR / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"


def ensure_llama_server(version: str) -> Path:
    """The llama-server binary built from the llama.cpp inside the llama-cpp-python sdist of ``version``.

    Built once into CACHE_DIR (about 9 minutes on 2 cores), exactly as shared/BENCHMARKS.md says.
    """
    src = llama_server_source(version)
    binary = src / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is needed to build llama-server (apt-get install -y cmake ninja-build g++), "
                             "or pass --skip-llama-server.")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = CACHE_DIR / "build-llama-server.log"
    started = time.monotonic()
    print(f"building llama-server from the llama-cpp-python {version} sdist (first use, ~9 min on 2 cores); "
          f"log: {log_path}", flush=True)
    with open(log_path, "ab") as log:
        def step(*argv: str | Path, cwd: Path | None = None) -> None:
            rc = subprocess.call([str(a) for a in argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
            if rc != 0:
                raise BenchError(f"`{' '.join(map(str, argv))}` failed (exit {rc}); see {log_path}")

        if not (src / "CMakeLists.txt").is_file():
            sdist_dir = CACHE_DIR / "sdist"
            sdist = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
            if not sdist.is_file():
                step(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                     f"llama-cpp-python=={version}", "-d", sdist_dir)
            with tarfile.open(sdist) as tar:
                tar.extractall(CACHE_DIR, filter="data")
        step("cmake", "-B", "build", "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
             "-DBUILD_SHARED_LIBS=ON", cwd=src)
        step("cmake", "--build", "build", "-j2", "--target", "llama-server", cwd=src)
    print(f"llama-server built in {time.monotonic() - started:.0f} s", flush=True)
    return binary


# ---------------------------------------------------------------- one stream, as each server speaks it


@dataclass
class StreamResult:
    ttft: float | None  # seconds from sending the request to the first token's text
    first: float | None  # perf_counter of the first token
    end: float  # perf_counter when the stream ended
    start: float
    tokens: int
    finish: str


@dataclass
class Target:
    name: str
    argv: Callable[[int, int], list[str]]  # (port, parallel) -> command line
    ready_path: str
    ready_check: Callable[[Any], bool]
    env: dict[str, str] = field(default_factory=dict)
    # A new connection per request: llama_cpp.server (with sse-starlette 3) sometimes takes a reused
    # keep-alive connection for a client disconnect and drops the stream it is serving.
    fresh_connections: bool = False

    async def stream(self, session: aiohttp.ClientSession, base: str, prompt: str, tokens: int,
                     temperature: float | None) -> StreamResult:
        """One streamed request; ``temperature`` None sends none, so the server samples as it does by
        default (bench/worker.py --sampling default)."""
        start = time.perf_counter()
        first: float | None = None
        count = 0
        finish = "?"
        if self.name == OURS:
            # ignore_eos as llama-server is asked to: both run every stream to the full token count.
            # cache_prompt off, as llama-server is asked below: the prompts share their first tokens.
            body = {"prompt": prompt, "max_tokens": tokens, "temperature": temperature, "ignore_eos": True,
                    "cache_prompt": False, "stream": True}
            url = f"{base}/v1/inference"
        elif self.name == LLAMA_SERVER:
            # cache_prompt off, as ours: a decode benchmark, not a cache one (bench/chat.py is that).
            body = {"prompt": prompt, "n_predict": tokens, "ignore_eos": True, "temperature": temperature,
                    "repeat_penalty": 1.0, "cache_prompt": False, "stream": True}
            url = f"{base}/completion"
        else:
            # Its server defaults to repeat_penalty 1.1 (more work per token, and counting then drifts
            # into EOS); the others default to 1.0.
            body = {"prompt": prompt, "max_tokens": tokens, "temperature": temperature, "repeat_penalty": 1.0,
                    "stream": True}
            url = f"{base}/v1/completions"
        if temperature is None:
            del body["temperature"]
        try:
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    finish = f"HTTP {resp.status}"
                    await resp.read()
                else:
                    async for data in sse.aiter_data(resp.content.iter_any()):
                        if data == "[DONE]":
                            break
                        event = json.loads(data)
                        if self.name == OURS:
                            if "token" in event:
                                first = first or time.perf_counter()
                                count += 1  # until the done event says how many tokens these were
                            elif event.get("done"):
                                count, finish = event["total_tokens"], event.get("finish_reason", "?")
                            elif "error" in event:
                                finish = event["error"]["code"]
                        elif self.name == LLAMA_SERVER:
                            if event.get("content"):
                                first = first or time.perf_counter()
                                count += 1
                            if event.get("stop"):
                                count = event.get("tokens_predicted") or event.get("timings", {}).get(
                                    "predicted_n", count)
                                finish = event.get("stop_type", "stop")
                                break
                        else:
                            choice = event["choices"][0]
                            if choice.get("finish_reason") is None:
                                count += 1
                                if choice.get("text"):
                                    first = first or time.perf_counter()
                            else:
                                finish = choice["finish_reason"]
        except aiohttp.ClientError as exc:  # a peer that breaks a stream is counted, not fatal
            finish = f"broken ({exc.__class__.__name__})"
        end = time.perf_counter()
        return StreamResult(ttft=None if first is None else first - start, first=first, end=end, start=start,
                            tokens=count, finish=finish)


def make_targets(args: argparse.Namespace, model: Path, llama_server: Path | None) -> list[Target]:
    worker_bin = Path(sys.executable).parent / "llm-worker-rbee"
    # Without the console script (rbee on PYTHONPATH rather than installed), the module is the same program.
    worker = [str(worker_bin)] if worker_bin.is_file() else [sys.executable, "-m", "rbee.worker"]
    threads, ngl = str(args.threads), str(args.gpu_layers)
    targets = [
        Target(
            OURS,
            lambda port, n: worker + ["--port", str(port), "--slots", str(n), "--model", str(model),
                                      "--threads", threads, "--ctx-size", str(CTX_PER_SLOT), "--n-gpu-layers", ngl],
            "/v1/ready",
            lambda r: r.status_code == 200 and r.json().get("ready") is True,
        )
    ]
    if llama_server is not None:
        targets.append(Target(
            LLAMA_SERVER,
            lambda port, n: [str(llama_server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "-t", threads, "-tb", threads, "--parallel", str(n),
                             "-c", str(n * CTX_PER_SLOT), "-ngl", ngl],
            "/health",
            lambda r: r.status_code == 200,
        ))
    if not args.skip_llama_cpp_python:
        targets.append(Target(
            LCP_SERVER,
            lambda port, n: [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                             "--n_threads", threads, "--n_gpu_layers", ngl, "--host", "127.0.0.1",
                             "--port", str(port)],
            "/v1/models",
            lambda r: r.status_code == 200,
            fresh_connections=True,
        ))
    return targets


def llama_server_version(binary: Path | None) -> str:
    if binary is None:
        return "skipped"
    try:
        out = subprocess.run([str(binary), "--version"], check=False, capture_output=True, text=True, timeout=30)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return " ".join(ln for ln in lines if ln.startswith("version") or "built with" in ln) or lines[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"
