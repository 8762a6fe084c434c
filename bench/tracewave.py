"""One wave of N simultaneous streams against a step-traced worker; prints how the decode loop ran it.

    python bench/tracewave.py [--streams 4] [--tokens 64] [--model X.gguf] [-- extra worker args]

A diagnostic for admission and per-step overheads (see bench/steptrace.py), not a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import free_port

from rbee.process import ServiceProcess


async def stream(session: aiohttp.ClientSession, base: str, n: int, tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    ttft = -1.0
    count = 0
    body = {"prompt": f"Count: {100 + n * 37}, {101 + n * 37}, {102 + n * 37},", "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    async with session.post(f"{base}/v1/inference", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {\"token\""):
                count += 1
                if ttft < 0:
                    ttft = time.perf_counter() - t0
    return ttft * 1000, count


async def wave(base: str, streams: int, tokens: int) -> None:
    async with aiohttp.ClientSession() as session:
        await stream(session, base, 99, 8)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(stream(session, base, i, tokens) for i in range(streams)))
        wall = time.perf_counter() - t0
    print(f"TTFT ms: {[round(r[0], 1) for r in results]}; {sum(r[1] for r in results) / wall:.1f} tok/s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--model", default=None)
    p.add_argument("--show", type=int, default=40, help="steps to print from the wave's start")
    p.add_argument("rest", nargs="*")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rbee-trace-"))
    trace = tmp / "trace.jsonl"
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("steptrace.py")), str(trace), "--", "--port", str(port),
            "--slots", str(a.streams)] + (["--model", a.model] if a.model else []) + a.rest
    child = ServiceProcess("worker", argv, tmp / "worker.log", f"http://127.0.0.1:{port}/v1/ready",
                           ready_check=lambda r: r.status_code == 200 and r.json().get("ready") is True)
    try:
        child.start()
        child.wait_ready(120)
        asyncio.run(wave(f"http://127.0.0.1:{port}", a.streams, a.tokens))
    finally:
        child.stop()
    events = [json.loads(x) for x in trace.read_text().splitlines()]
    subs = [i for i, e in enumerate(events) if e["ev"] == "submit"]
    start = subs[1] if len(subs) > 1 else 0  # skip the warm-up request
    t0 = events[start]["t"]
    steps = [e for e in events[start:] if e["ev"] == "step"]
    for e in events[start:start + a.show]:
        e = dict(e, t=round(e["t"] - t0, 2))
        print(" ".join(f"{k}={v}" for k, v in e.items()))
    gen = [s for s in steps if s["tokens"] == s["seqs"]]
    if gen:
        def avg(k: str) -> float:
            return sum(s[k] for s in gen) / len(gen)
        print(f"generation-only steps: {len(gen)}; mean ms: decode {avg('decode'):.3f}, pre {avg('pre'):.3f}, "
              f"post {avg('post'):.3f}, gap {avg('gap'):.3f}")
        reused = gen[-1]["reused"] - gen[0]["reused"]
        # A step that cannot reuse the graph before builds a new one first (and, when its sequences
        # split into several ubatches, computes several): worth knowing before reading the times.
        print(f"graph reused by {reused} of the {len(gen) - 1} generation steps after the first")


if __name__ == "__main__":
    main()
