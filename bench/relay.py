"""Benchmark the queen's token path against a direct connection and against nginx.

A scripted SSE token source (no model; a tiny aiohttp server this script starts as a child of its
own) is reached (1) directly, (2) through queen-rbee, with the source registered as a worker, and
(3) through nginx as a reverse proxy with ``proxy_buffering off``, and (4) through the least relay
that can be written on aiohttp (``aiohttp floor``: read the body, post it on with one pooled
ClientSession, copy the bytes back; no auth, admission, routing or records): what aiohttp's server and
client cost a hop on this machine, so the queen's own share of its added TTFT shows apart from its
framework's. Prints the TTFT each relay adds at 1 stream and the aggregate events/s at 1, 16 and 64
concurrent streams, with ratios.

With ``--dashboard``, also (4) through a queen that has a dashboard subscribed to its
``GET /v2/events`` (a child process reading and parsing every event, as the page does), measured
interleaved with the plain queen: the live view's cost on the token path (target: within 5 %). Two
queens run; the subscriber moves from one to the other between TTFT blocks and throughput waves, so
whatever differs between the two processes cancels out and only the subscriber's cost is left.
Then ``--dashboard-pairs`` back-to-back pairs of short waves at the top concurrency, plain queen and
queen+dashboard in alternating order, give the paired ratios of events/s and of the relay's CPU per
event with a bootstrap 95 % interval of their median: the machine's drift between pairs (large on a
shared 2-core host) lands on both halves of a pair, and the interval says how sure the number is.

    python bench/relay.py [--ttft-samples 300] [--concurrency 1,16,64] [--skip-nginx] [--skip-floor] [--dashboard]

See bench/README.md. This is a script, not a test: nothing under tests/ or features/ runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import requests
from aiohttp import web
from common import (
    BenchError,
    QuietGate,
    add_gate_args,
    environment,
    exit_on_sigterm,
    free_port,
    gate_from_args,
    group_cpu_seconds,
    median,
    median_ci,
    percentile,
    print_table,
    ratio,
    rbee_revision,
    run_script,
    warn_if_busy,
)

from rbee.process import ServiceProcess

SOURCE_ID = "bench-source"
SOURCE_MODEL = "bench-source-model"
SOURCE_SLOTS = 1000
MIN_LANE_EVENTS = 2000  # per concurrent stream in a throughput wave
MAX_STREAM_EVENTS = 32000  # the queen's max_tokens bound is 32768
PACE_TICK = 0.005  # a paced source sleeps only when it is this far ahead (timers per event would cost more than
# the relays it measures)
PACED_ID, PACED_MODEL = "bench-source-paced", "bench-source-paced-model"  # the A/B's source at --pair-rate

# ---------------------------------------------------------------- the scripted token source (child process)


def source_app(rate: float) -> web.Application:
    """Streams ``max_tokens`` token events, then done and [DONE]: as fast as it can, or ``rate`` events/s."""
    sse_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    interval = 1.0 / rate if rate > 0 else 0.0

    async def inference(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens", 100))
        response = web.StreamResponse(headers=sse_headers)
        await response.prepare(request)
        started = time.perf_counter()
        for i in range(n):
            if interval:
                delay = started + i * interval - time.perf_counter()
                if delay > PACE_TICK:  # pacing, not a readiness wait: events due within a tick go out together,
                    await asyncio.sleep(delay)  # as a worker's slots' tokens do after each decode step
            # One write per event, as a worker does: the relays see one event per chunk.
            await response.write(b'data: {"token":"x","index":%d}\n\n' % i)
        await response.write(b'data: {"done":true,"total_tokens":%d,"finish_reason":"length"}\n\n' % n)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "state": "idle", "slots_total": SOURCE_SLOTS,
                                  "slots_available": SOURCE_SLOTS})

    async def cancel(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([
        web.post("/v1/inference", inference),
        web.delete("/v1/inference/{request_id}", cancel),
        web.get("/v1/health", health),
        web.get("/v1/ready", ready),
    ])
    return app


def serve_source(port: int, rate: float) -> None:
    web.run_app(source_app(rate), host="127.0.0.1", port=port, print=None, access_log=None)


FLOOR = "aiohttp floor"


def floor_app(source_url: str) -> web.Application:
    """The least a relay on aiohttp does: the body posted on as it came, the answer's bytes copied back
    as they come (on uvloop, as the queen runs)."""
    sse_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    session: list[aiohttp.ClientSession] = []

    async def inference(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session[0].post(f"{source_url}/v1/inference", data=body,
                                   headers={"Content-Type": "application/json"}) as upstream:
            first = await upstream.content.readany()
            response = web.StreamResponse(headers=sse_headers)
            await response.prepare(request)
            await response.write(first)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        await response.write_eof()
        return response

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def client(_app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            session.append(s)
            yield

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.add_routes([web.post("/v1/inference", inference), web.get("/health", health)])
    return app


def serve_floor(port: int, source_url: str) -> None:
    import uvloop

    uvloop.install()
    web.run_app(floor_app(source_url), host="127.0.0.1", port=port, print=None, access_log=None)


def subscribe(queen_url: str) -> None:
    """The dashboard's side (child process): read and parse every event of the queen's /v2/events,
    reconnecting when dropped, until stopped; says how many it read and how often it was dropped."""
    import json

    from rbee import sse

    events = drops = 0
    try:
        while True:
            with requests.get(f"{queen_url}/v2/events", stream=True, timeout=(5, 60)) as r:
                r.raise_for_status()
                for kind, data in sse.iter_messages(r.iter_content(chunk_size=None)):
                    if kind == "data":
                        events += 1
                        drops += json.loads(data).get("type") == "dropped"
    except KeyboardInterrupt:
        pass
    finally:
        print(f"dashboard subscriber: {events} events read, dropped {drops}×", flush=True)


def subscribers(queen_url: str) -> float:
    """The queen's rbee_queen_event_subscribers gauge."""
    text = requests.get(f"{queen_url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("rbee_queen_event_subscribers "))


# ---------------------------------------------------------------- the paths under test


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream token_source {{
        server 127.0.0.1:{source_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://token_source;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("nginx not found: installing Debian's nginx (apt-get install -y nginx)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.call(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        subprocess.call(["apt-get", "install", "-y", "-qq", "nginx"], env=env, stdout=subprocess.DEVNULL)
        found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    return found


def nginx_version(binary: str | None) -> str:
    if binary is None:
        return "skipped"
    out = subprocess.run([binary, "-v"], check=False, capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


@dataclass
class Paths:
    urls: dict[str, str] = field(default_factory=dict)  # name -> base URL of /v1/inference
    children: list[ServiceProcess] = field(default_factory=list)
    relay_pgids: dict[str, int] = field(default_factory=dict)  # name -> process group doing the relaying
    helper_pgids: list[int] = field(default_factory=list)  # ours too, but not a path (subscriber, paced source)
    paced_pgid: int | None = None  # the A/B's paced source (--pair-rate), when it runs
    dashboard: ServiceProcess | None = None  # the subscriber, reading the events of path "queen+dashboard"
    logdir: Path | None = None
    moves: int = 0

    def subscribe_dashboard(self) -> None:
        """Start the subscriber on path "queen+dashboard"; back once that queen counts it."""
        url = self.urls["queen+dashboard"]
        self.dashboard = ServiceProcess("dashboard subscriber", [sys.executable, str(Path(__file__).resolve()),
                                                                 "--subscribe", url],
                                        self.logdir / f"subscriber-{self.moves}.log", f"{url}/health").start()
        self.helper_pgids = [p for p in (self.paced_pgid, self.dashboard.pid) if p is not None]
        _await_subscribers(url, 1, self.logdir)

    def move_dashboard(self) -> None:
        """The subscriber leaves one queen for the other: the two swap the paths' names."""
        if self.dashboard is None:
            return
        self.dashboard.stop()
        _await_subscribers(self.urls["queen+dashboard"], 0, self.logdir)
        for table in (self.urls, self.relay_pgids):
            table["queen"], table["queen+dashboard"] = table["queen+dashboard"], table["queen"]
        self.moves += 1
        self.subscribe_dashboard()

    def stop(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
        for child in reversed(self.children):
            child.stop()


def _await_subscribers(queen_url: str, n: int, logdir: Path | None) -> None:
    deadline = time.monotonic() + 30
    while subscribers(queen_url) != n:
        if time.monotonic() > deadline:
            raise BenchError(f"{queen_url} did not count {n} dashboard subscriber(s) within 30 s (see {logdir})")
        time.sleep(0.05)  # poll interval


def start_paths(args: argparse.Namespace, tmp: Path, nginx: str | None) -> Paths:
    paths = Paths(logdir=tmp)
    try:
        source_port, paths.relay_pgids["direct"] = start_source(paths, "token source", args.rate, tmp / "source.log")
        source_url = paths.urls["direct"] = f"http://127.0.0.1:{source_port}"

        start_queen(paths, "queen", source_url, tmp)
        if args.dashboard:
            start_queen(paths, "queen+dashboard", source_url, tmp)
            if args.pair_rate > 0:  # the A/B's own source, paced, behind both queens as a second model
                paced_port, paths.paced_pgid = start_source(paths, "paced token source", args.pair_rate,
                                                            tmp / "source-paced.log")
                for name in ("queen", "queen+dashboard"):
                    register_source(name, paths.urls[name], PACED_ID, f"http://127.0.0.1:{paced_port}", PACED_MODEL)
            paths.subscribe_dashboard()

        if not args.skip_floor:
            port = free_port()
            floor = ServiceProcess(FLOOR, [sys.executable, str(Path(__file__).resolve()), "--serve-floor", str(port),
                                           "--floor-source", source_url], tmp / "floor.log",
                                   f"http://127.0.0.1:{port}/health")
            paths.children.append(floor.start())
            floor.wait_ready(30)
            paths.urls[FLOOR], paths.relay_pgids[FLOOR] = f"http://127.0.0.1:{port}", floor.pid

        if nginx is not None:
            nginx_port = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(workers=args.nginx_workers, tmp=tmp, source_port=source_port,
                                              port=nginx_port))
            proxy = ServiceProcess("nginx", [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                                   tmp / "nginx.out", f"http://127.0.0.1:{nginx_port}/v1/health")
            paths.children.append(proxy.start())
            proxy.wait_ready(30)
            paths.urls["nginx"] = f"http://127.0.0.1:{nginx_port}"
            paths.relay_pgids["nginx"] = proxy.pid
        return paths
    except BaseException:
        paths.stop()
        raise


def start_queen(paths: Paths, name: str, source_url: str, tmp: Path) -> str:
    """A queen with the token source registered as its worker, as path ``name``. Returns its URL."""
    queen_port = free_port()
    queen_url = f"http://127.0.0.1:{queen_port}"
    log = tmp / f"{name.replace('+', '-')}.log"
    queen = ServiceProcess(name, [str(Path(sys.executable).parent / "queen-rbee"), "--port", str(queen_port)],
                           log, f"{queen_url}/health")
    paths.children.append(queen.start())
    queen.wait_ready(60)
    register_source(name, queen_url, SOURCE_ID, source_url, SOURCE_MODEL)
    paths.urls[name] = queen_url
    paths.relay_pgids[name] = queen.pid
    return queen_url


def register_source(name: str, queen_url: str, worker_id: str, source_url: str, model: str) -> None:
    r = requests.post(f"{queen_url}/v2/workers/register", timeout=10, json={
        "worker_id": worker_id, "url": source_url, "model_ref": model, "slots_total": SOURCE_SLOTS})
    if r.status_code != 200:
        raise BenchError(f"{name} refused to register the token source {worker_id}: HTTP {r.status_code} {r.text}")


def start_source(paths: Paths, name: str, rate: float, log: Path) -> tuple[int, int]:
    """A scripted token source child at ``rate`` events/s per stream (0: unlimited): its port and pid."""
    port = free_port()
    source = ServiceProcess(name, [sys.executable, str(Path(__file__).resolve()), "--serve-source", str(port),
                                   "--rate", str(rate)], log, f"http://127.0.0.1:{port}/v1/health")
    paths.children.append(source.start())
    source.wait_ready(30)
    return port, source.pid


# ---------------------------------------------------------------- the client


@dataclass
class Stream:
    ttft: float  # seconds to the first complete event
    events: int  # complete events, done and [DONE] included
    end: float


async def one_stream(session: aiohttp.ClientSession, base: str, events: int, model: str = SOURCE_MODEL) -> Stream:
    body = {"model": model, "prompt": "x", "max_tokens": events, "temperature": 0.0, "stream": True}
    start = time.perf_counter()
    ttft = -1.0
    count = 0
    tail = b""
    async with session.post(f"{base}/v1/inference", json=body) as resp:
        if resp.status != 200:
            raise BenchError(f"{base} answered HTTP {resp.status}: {(await resp.read())[:300]!r}")
        # Count event terminators (blank lines) without parsing: the client must stay cheaper than the relays.
        async for chunk in resp.content.iter_any():
            data = tail + chunk
            found = data.count(b"\n\n")
            if found and ttft < 0:
                ttft = time.perf_counter() - start
            count += found
            tail = data[-1:] if data.endswith(b"\n") and not data.endswith(b"\n\n") else b""
    end = time.perf_counter()
    if count != events + 2:
        raise BenchError(f"{base}: expected {events + 2} events, got {count}")
    return Stream(ttft=ttft, events=count, end=end)


def session_for(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                 connector=aiohttp.TCPConnector(limit=limit, force_close=False))


TTFT_BLOCK = 60  # interleaved rounds measured between two quiet-gate checks


async def measure_ttft(paths: Paths, samples: int, events: int, gate: QuietGate, retries: int) -> dict[str, list[float]]:
    """Interleaved: each round sends one request down every path, so drift hits all alike."""
    urls = paths.urls
    got: dict[str, list[float]] = {name: [] for name in urls}
    sessions = {name: session_for(1) for name in urls}
    try:
        for name, url in urls.items():  # warm-up: connections open, code paths hot
            for _ in range(20):
                await one_stream(sessions[name], url, events)
        done = 0
        while done < samples:
            rounds = min(TTFT_BLOCK, samples - done)
            for attempt in range(retries + 1):
                await asyncio.to_thread(gate.wait)
                gate.begin(*paths.relay_pgids.values(), *paths.helper_pgids)
                block: dict[str, list[float]] = {name: [] for name in urls}
                for i in range(done, done + rounds):
                    order = list(urls.items())
                    order = order[i % len(order):] + order[: i % len(order)]  # rotate who goes first
                    for name, url in order:
                        block[name].append((await one_stream(sessions[name], url, events)).ttft)
                if attempt == retries or not gate.disturbed():
                    break
                gate.discarded += 1
            gate.foreign_seen.append(gate.foreign())
            for name in urls:
                got[name] += block[name]
            done += rounds
            await asyncio.to_thread(paths.move_dashboard)
    finally:
        for s in sessions.values():
            await s.close()
    return got


@dataclass
class Wave:
    events_per_s: float
    cpu_ms_per_1k: float  # CPU the path's own process group spent per 1,000 events (direct: the source's)


async def measure_throughput(url: str, pgids: list[int], concurrency: int, events: int, gate: QuietGate,
                             retries: int, model: str = SOURCE_MODEL) -> Wave:
    """Aggregate events/s of ``concurrency`` lanes; each lane streams its share of ``events`` back to back."""
    share = max(MIN_LANE_EVENTS, events // concurrency)
    per_stream = min(MAX_STREAM_EVENTS, share)
    streams_per_lane = -(-share // per_stream)

    async def lane(session: aiohttp.ClientSession) -> tuple[int, float]:
        count = 0
        end = 0.0
        for _ in range(streams_per_lane):
            s = await one_stream(session, url, per_stream, model)
            count, end = count + s.events, s.end
        return count, end

    async with session_for(concurrency) as session:
        await asyncio.gather(*(one_stream(session, url, 50, model) for _ in range(concurrency)))  # open connections
        for attempt in range(retries + 1):
            await asyncio.to_thread(gate.wait)
            gate.begin(*pgids)
            cpu0 = group_cpu_seconds(pgids[-1])
            t0 = time.perf_counter()
            lanes = await asyncio.gather(*(lane(session) for _ in range(concurrency)))
            wall = max(end for _, end in lanes) - t0
            cpu = group_cpu_seconds(pgids[-1]) - cpu0
            if attempt == retries or not gate.disturbed():
                break
            gate.discarded += 1
        gate.foreign_seen.append(gate.foreign())
    total = sum(count for count, _ in lanes)
    return Wave(events_per_s=total / wall, cpu_ms_per_1k=cpu * 1000 / total * 1000)


# ---------------------------------------------------------------- report


def report(args: argparse.Namespace, ttft: dict[str, list[float]], tput: dict[tuple[str, int], list[float]],
           cpu: dict[tuple[str, int], list[float]], names: list[str], gate: QuietGate) -> None:
    base50 = percentile(ttft["direct"], 50)
    base99 = percentile(ttft["direct"], 99)
    print()
    print(f"TTFT: {args.ttft_samples} interleaved requests per path, 1 stream, {args.ttft_events} events each; "
          f"throughput: median of {args.reps} rep(s), {args.events} events a wave split over its streams (≥ {MIN_LANE_EVENTS} each, ≤ {MAX_STREAM_EVENTS} per request), "
          f"source rate {'unlimited' if args.rate <= 0 else f'{args.rate:g}/s per stream'}")
    headers = ["path", "TTFT p50 (ms)", "TTFT p99 (ms)", "added p50 (ms)", "added p99 (ms)"] + \
              [f"{c} stream{'s' if c > 1 else ''} (events/s)" for c in args.concurrency_levels]
    rows = []
    for name in names:
        p50, p99 = percentile(ttft[name], 50), percentile(ttft[name], 99)
        added = name != "direct"
        rows.append([name, f"{p50 * 1000:.3f}", f"{p99 * 1000:.3f}",
                     f"{(p50 - base50) * 1000:+.3f}" if added else "—", f"{(p99 - base99) * 1000:+.3f}" if added else "—"]
                    + [f"{median(tput[(name, c)]):,.0f}" for c in args.concurrency_levels])
    pairs = [("queen", "direct"), ("nginx", "direct"), ("queen", "nginx"), (FLOOR, "direct"), ("queen", FLOOR),
             ("queen+dashboard", "queen")]
    for a, b in pairs:
        if a in names and b in names:
            rows.append([f"{a} / {b}", ratio(percentile(ttft[a], 50), percentile(ttft[b], 50)),
                         ratio(percentile(ttft[a], 99), percentile(ttft[b], 99)), "", ""]
                        + [ratio(median(tput[(a, c)]), median(tput[(b, c)])) for c in args.concurrency_levels])
    print_table(headers, rows)
    print()
    print("CPU time per 1,000 events (ms, median) of the process doing the work on each path: the relay for "
          "queen and nginx, the source itself for direct. Less sensitive to other load than events/s.")
    cpu_rows = [[name] + [f"{median(cpu[(name, c)]):.1f}" for c in args.concurrency_levels] for name in names]
    if "queen+dashboard" in names:
        cpu_rows.append(["queen+dashboard / queen"] + [ratio(median(cpu[("queen+dashboard", c)]),
                                                             median(cpu[("queen", c)])) for c in args.concurrency_levels])
    if "queen" in names and "nginx" in names:
        cpu_rows.append(["queen / nginx"] + [ratio(median(cpu[("queen", c)]), median(cpu[("nginx", c)]))
                                             for c in args.concurrency_levels])
    print_table(["path"] + [f"{c} stream{'s' if c > 1 else ''}" for c in args.concurrency_levels], cpu_rows)
    print()
    if gate.enabled:
        spent = " (its budget ran out: later measurements went ahead regardless)" if not gate.active else ""
        print(f"quiet gate: waited {gate.waited:.0f} s in all for an idle machine{spent} "
              f"(gave up waiting {gate.gave_up}×); "
              f"{gate.discarded} TTFT block(s)/wave(s) repeated because other processes used CPU during them; "
              f"other processes' CPU during kept waves, median/max: {median(gate.foreign_seen):.2f}/"
              f"{max(gate.foreign_seen, default=0):.2f} cores")
    def paired(a: str, b: str, c: int) -> float:
        """Median over reps of a's events/s over b's in the same rep (measured back to back): drift of
        the machine between reps lands on both."""
        return median([x / y for x, y in zip(tput[(a, c)], tput[(b, c)], strict=True)])

    added50 = (percentile(ttft["queen"], 50) - base50) * 1000
    if FLOOR in names:
        floor50 = (percentile(ttft[FLOOR], 50) - base50) * 1000
        print(f"of the queen's +{added50:.3f} ms p50, +{floor50:.3f} ms is what the least relay on aiohttp adds "
              f"(its server and client, one hop); the queen's own work on the way to the first token is the "
              f"other {added50 - floor50:+.3f} ms")
    print(f"target queen adds ≤ 0.5 ms p50 TTFT: +{added50:.3f} ms → {'met' if added50 <= 0.5 else 'NOT met'}")
    top = max(args.concurrency_levels)
    rel = paired("queen", "direct", top)
    print(f"target queen relays {top} streams at ≥ 0.95× direct: {median(tput[('queen', top)]) / median(tput[('direct', top)]):.3f}× "
          f"(paired per rep {rel:.3f}×) → {'met' if rel >= 0.95 else 'NOT met'}")
    if "queen+dashboard" in names:
        d50, q50 = percentile(ttft["queen+dashboard"], 50), percentile(ttft["queen"], 50)
        worst = min(median(tput[("queen+dashboard", c)]) / median(tput[("queen", c)]) for c in args.concurrency_levels)
        worst_paired = min(paired("queen+dashboard", "queen", c) for c in args.concurrency_levels)
        ok = d50 <= 1.05 * q50 and worst_paired >= 0.95
        # With the A/B (--dashboard-pairs), the sweep's few reps only inform: the A/B's target line decides.
        lead = ("the sweep, for information (the A/B below decides)" if args.dashboard_pairs
                else "target a dashboard subscriber costs ≤ 5 % (the sweep)")
        print(f"{lead}: TTFT p50 {d50 / q50:.3f}× the plain queen's, "
              f"throughput ≥ {worst:.3f}× at every concurrency (paired per rep ≥ {worst_paired:.3f}×: "
              + ", ".join(f"{paired('queen+dashboard', 'queen', c):.3f}× at {c}" for c in args.concurrency_levels)
              + (f") → {'within' if ok else 'outside'} 5 %" if args.dashboard_pairs else f") → {'met' if ok else 'NOT met'}"))
    if "nginx" in names:
        q, n = median(tput[("queen", top)]), median(tput[("nginx", top)])
        print(f"target queen ≥ 0.8× nginx throughput at {top} streams: {q / n:.2f}× → "
              f"{'met' if q >= 0.8 * n else 'NOT met'}")


@dataclass
class DashboardAB:
    """Paired ratios, queen+dashboard over the plain queen, one per back-to-back pair of waves."""

    concurrency: int
    rate: float  # source events/s per stream (0: as fast as it can)
    queen_events_per_s: list[float] = field(default_factory=list)  # the plain queen's, to show the load
    events_per_s: list[float] = field(default_factory=list)
    cpu_per_event: list[float] = field(default_factory=list)


async def dashboard_ab(paths: Paths, args: argparse.Namespace, gate: QuietGate) -> DashboardAB:
    c = max(args.concurrency_levels)
    ab = DashboardAB(c, args.pair_rate)
    for i in range(args.dashboard_pairs):
        order = ["queen", "queen+dashboard"] if i % 2 == 0 else ["queen+dashboard", "queen"]
        waves: dict[str, Wave] = {}
        for name in order:
            pgids = [paths.relay_pgids["direct"], *paths.helper_pgids, paths.relay_pgids[name]]
            waves[name] = await measure_throughput(paths.urls[name], pgids, c, args.pair_events, gate, args.retries,
                                                   PACED_MODEL if args.pair_rate > 0 else SOURCE_MODEL)
        ab.queen_events_per_s.append(waves["queen"].events_per_s)
        ab.events_per_s.append(waves["queen+dashboard"].events_per_s / waves["queen"].events_per_s)
        ab.cpu_per_event.append(waves["queen+dashboard"].cpu_ms_per_1k / waves["queen"].cpu_ms_per_1k)
        print(f"pair {i + 1}/{args.dashboard_pairs} at {c} streams: events/s {ab.events_per_s[-1]:.3f}×, "
              f"CPU per event {ab.cpu_per_event[-1]:.3f}×", flush=True)
        if (i + 1) % PAIRS_PER_MOVE == 0:
            await asyncio.to_thread(paths.move_dashboard)
    return ab


PAIRS_PER_MOVE = 4  # the subscriber changes queens this often in the A/B, so neither process is favoured


def report_ab(ab: DashboardAB, ttft: dict[str, list[float]]) -> bool:
    """Print the A/B and whether the subscriber's cost is shown to stay within 5 %."""
    tput, cpu = median(ab.events_per_s), median(ab.cpu_per_event)
    (t_lo, t_hi), (c_lo, c_hi) = median_ci(ab.events_per_s), median_ci(ab.cpu_per_event)
    d50, q50 = percentile(ttft["queen+dashboard"], 50), percentile(ttft["queen"], 50)
    print(f"dashboard A/B, {len(ab.events_per_s)} back-to-back pairs at {ab.concurrency} streams (queen+dashboard / "
          f"queen, median with its bootstrap 95 % interval; source "
          + (f"paced at {ab.rate:g} events/s per stream, {ab.rate * ab.concurrency:,.0f} offered" if ab.rate > 0
             else "unlimited")
          + f", the plain queen relayed {median(ab.queen_events_per_s):,.0f} events/s): "
          f"events/s {tput:.3f}× ({t_lo:.3f}–{t_hi:.3f}), "
          f"relay CPU per event {cpu:.3f}× ({c_lo:.3f}–{c_hi:.3f}); TTFT p50 {d50 / q50:.3f}×")
    return t_lo >= 0.95 and c_hi <= 1.05 and d50 <= 1.05 * q50


async def run_all(args: argparse.Namespace, paths: Paths, gate: QuietGate) -> None:
    urls = paths.urls
    names = list(urls)
    print("measuring TTFT ...", flush=True)
    ttft = await measure_ttft(paths, args.ttft_samples, args.ttft_events, gate, args.retries)
    tput: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.reps):
        for c in args.concurrency_levels:
            order = names[rep % len(names):] + names[:rep % len(names)]  # interleaved, who goes first rotating
            for name in order:
                print(f"rep {rep + 1}/{args.reps}: {name}, {c} stream(s)", flush=True)
                # The source and the relay on this path are ours; anything else busy is someone else's.
                pgids = [paths.relay_pgids["direct"], *paths.helper_pgids, paths.relay_pgids[name]]
                wave = await measure_throughput(urls[name], pgids, c, args.events, gate, args.retries)
                tput.setdefault((name, c), []).append(wave.events_per_s)
                cpu.setdefault((name, c), []).append(wave.cpu_ms_per_1k)
            await asyncio.to_thread(paths.move_dashboard)
    ab = await dashboard_ab(paths, args, gate) if paths.dashboard is not None and args.dashboard_pairs else None
    if paths.dashboard is not None:
        print(f"the dashboard subscriber moved between the two queens {paths.moves}×")
    report(args, ttft, tput, cpu, names, gate)
    if ab is not None:
        met = report_ab(ab, ttft)
        print(f"target a dashboard subscriber costs ≤ 5 % (A/B: the interval of events/s above 0.95×, of CPU per "
              f"event below 1.05×, TTFT p50 ≤ 1.05×) → {'met' if met else 'NOT met'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ttft-samples", type=int, default=300, help="requests per path for the TTFT percentiles")
    p.add_argument("--ttft-events", type=int, default=16, help="events per stream in the TTFT runs")
    p.add_argument("--concurrency", default="1,16,64", help="concurrent stream counts, comma separated")
    p.add_argument("--events", type=int, default=160000, help="events per wave (split over its streams)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of the throughput sweep")
    p.add_argument("--rate", type=float, default=0.0, help="source events/s per stream (0 = as fast as it can)")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes (the queen is one process)")
    add_gate_args(p, "measurement")
    p.add_argument("--skip-nginx", action="store_true", help="do not run nginx")
    p.add_argument("--skip-floor", action="store_true", help="do not run the least relay on aiohttp (aiohttp floor)")
    p.add_argument("--dashboard", action="store_true",
                   help="also measure a second queen with a dashboard subscribed to its /v2/events")
    p.add_argument("--dashboard-pairs", type=int, default=40, help="with --dashboard: back-to-back pairs of waves "
                   "at the top concurrency for the subscriber's paired cost (0 = none)")
    p.add_argument("--pair-events", type=int, default=160000, help="events per wave in those pairs (CPU time is read in "
                   "10 ms ticks: a wave needs about a second of it)")
    p.add_argument("--pair-rate", type=float, default=0.0, help="with --dashboard: source events/s per stream in "
                   "those pairs (0 = as fast as it can). Below the relay's limit both queens relay the same events/s, "
                   "so the subscriber's cost shows as relay CPU per event at equal load")
    p.add_argument("--serve-source", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the child's own mode
    p.add_argument("--subscribe", metavar="QUEEN_URL", help=argparse.SUPPRESS)  # the subscriber child's mode
    p.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the floor child's mode
    p.add_argument("--floor-source", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.concurrency_levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve_source:
        serve_source(args.serve_source, args.rate)
        return
    if args.subscribe:
        subscribe(args.subscribe)
        return
    if args.serve_floor:
        serve_floor(args.serve_floor, args.floor_source)
        return
    exit_on_sigterm()
    nginx = None if args.skip_nginx else find_nginx()
    if nginx is None and not args.skip_nginx:
        print("nginx not found and could not be installed: running without it", flush=True)
    warn_if_busy()
    print("environment")
    print_table(["what", "value"], environment({"rbee commit": rbee_revision(), "nginx": nginx_version(nginx)}, dists=("rbee", "aiohttp")))
    tmp = Path(tempfile.mkdtemp(prefix="rbee-bench-relay-"))
    paths = start_paths(args, tmp, nginx)
    gate = gate_from_args(args)
    try:
        asyncio.run(run_all(args, paths, gate))
    finally:
        paths.stop()
    print(f"logs in {tmp}")


if __name__ == "__main__":
    run_script(main)
