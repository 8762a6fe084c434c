"""1,000 concurrent streams through one queen over 4 scripted workers on loopback.

Starts a queen (``--max-streams`` above the stream count, so it raises its own open-file limit) and
``--workers`` scripted workers (rbee.testing.fake_worker: no model, a token every ``--interval``
seconds) with ``--slots`` each, registers them, then opens ``--streams`` streams at once and reads
each to its end. Every stream has a deadline (``--deadline``); one that misses it, or goes longer
than ``--stall-gap`` seconds without a byte, counts as stalled. Prints how many completed, were
answered 503 (must be 0 while the workers have room), failed otherwise or stalled; the wave's time
and each stream's duration against the scripted one; the largest gap between a stream's bytes; the
queen's RSS before the wave, at its peak (sampled every 50 ms) and after (once every slot is free
again); and the queen's CPU seconds for the wave.

    python bench/scale.py [--streams 1000] [--workers 4] [--slots 256] [--tokens 100] [--interval 0.05]

See bench/README.md. This is a script, not a test: nothing under tests/ or features/ runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import requests
from common import (
    BenchError,
    environment,
    exit_on_sigterm,
    free_port,
    group_cpu_seconds,
    percentile,
    print_table,
    rbee_revision,
    run_script,
    warn_if_busy,
)

from rbee.listener import raise_open_file_limit
from rbee.process import ServiceProcess

MODEL = "scripted"  # the fake worker's model_ref


@dataclass
class Outcome:
    status: int  # HTTP status; 0 when the connection failed
    events: int = 0  # complete SSE blocks, done and [DONE] included
    seconds: float = 0.0  # from the request sent to the stream's end
    max_gap: float = 0.0  # longest wait between two reads
    stalled: bool = False  # missed its deadline or went silent past the stall gap
    code: str = ""  # the error code of a refused stream


@dataclass
class Fleet:
    queen: ServiceProcess
    queen_url: str
    workers: list[ServiceProcess]

    def stop(self) -> None:
        for child in [self.queen, *self.workers]:
            child.stop()


def start_fleet(args: argparse.Namespace, tmp: Path) -> Fleet:
    started: list[ServiceProcess] = []
    try:
        port = free_port()
        queen_url = f"http://127.0.0.1:{port}"
        queen = ServiceProcess("queen", [sys.executable, "-m", "rbee.queen", "--port", str(port),
                                         "--max-streams", str(max(args.streams * 2, 4096))],
                               tmp / "queen.log", f"{queen_url}/health")
        started.append(queen.start())
        workers = []
        for i in range(args.workers):
            wport = free_port()
            worker = ServiceProcess(f"worker-{i}", [sys.executable, "-m", "rbee.testing.fake_worker", "--port",
                                                    str(wport), "--slots", str(args.slots), "--interval",
                                                    str(args.interval)],
                                    tmp / f"worker-{i}.log", f"http://127.0.0.1:{wport}/v1/health")
            started.append(worker.start())
            workers.append(worker)
        for proc in started:
            proc.wait_ready(60)
        for i, worker in enumerate(workers):
            url = worker.ready_url.removesuffix("/v1/health")
            r = requests.post(f"{queen_url}/v2/workers/register", timeout=10, json={
                "worker_id": f"scripted-{i}", "url": url, "model_ref": MODEL, "slots_total": args.slots})
            if r.status_code != 200:
                raise BenchError(f"the queen refused worker {i}: HTTP {r.status_code} {r.text}")
        return Fleet(queen, queen_url, workers)
    except BaseException:
        for proc in started:
            proc.stop()
        raise


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_slots(queen_url: str) -> int:
    workers = requests.get(f"{queen_url}/v2/workers/list", timeout=10).json()["workers"]
    return sum(w["slots_available"] for w in workers)


def wait_all_free(queen_url: str, total: int, timeout: float) -> float:
    """Seconds until every slot is free again at the queen (polled, bounded)."""
    start = time.monotonic()
    while free_slots(queen_url) < total:
        if time.monotonic() - start > timeout:
            raise BenchError(f"slots still taken {timeout:g} s after the wave")
        time.sleep(0.1)  # poll
    return time.monotonic() - start


async def one_stream(session: aiohttp.ClientSession, url: str, tokens: int, deadline: float,
                     stall_gap: float) -> Outcome:
    body = {"prompt": "x", "max_tokens": tokens, "stream": True}
    start = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            async with session.post(f"{url}/v1/inference", json=body) as resp:
                if resp.status != 200:
                    data = await resp.json(content_type=None)
                    return Outcome(resp.status, code=str(data.get("error", {}).get("code", "")))
                out, tail, last = Outcome(200), b"", time.monotonic()
                while True:
                    try:
                        chunk = await asyncio.wait_for(resp.content.readany(), stall_gap)
                    except TimeoutError:
                        out.stalled = True
                        break
                    now = time.monotonic()
                    out.max_gap, last = max(out.max_gap, now - last), now
                    if not chunk:
                        break
                    data = tail + chunk
                    out.events += data.count(b"\n\n")
                    tail = data[-1:] if data.endswith(b"\n") and not data.endswith(b"\n\n") else b""
    except TimeoutError:
        return Outcome(200, stalled=True, seconds=time.monotonic() - start)
    except aiohttp.ClientError as exc:
        return Outcome(0, code=exc.__class__.__name__, seconds=time.monotonic() - start)
    out.seconds = time.monotonic() - start
    return out


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


async def wave(args: argparse.Namespace, fleet: Fleet) -> tuple[list[Outcome], float, int]:
    """Every stream at once. Returns the outcomes, the wave's seconds and the queen's peak RSS."""
    pid = fleet.queen.pid
    assert pid is not None
    peak, stop = [rss_bytes(pid)], asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(pid, peak, stop))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        start = time.monotonic()
        outcomes = await asyncio.gather(*(one_stream(session, fleet.queen_url, args.tokens, args.deadline,
                                                     args.stall_gap) for _ in range(args.streams)))
        took = time.monotonic() - start
    stop.set()
    await sampler
    return list(outcomes), took, peak[0]


def mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def report(args: argparse.Namespace, outcomes: list[Outcome], took: float, rss: tuple[int, int, int],
           cpu: float) -> bool:
    expected = args.tokens + 2  # token events, the done event, [DONE]
    done = [o for o in outcomes if o.status == 200 and not o.stalled and o.events == expected]
    refused = [o for o in outcomes if o.status == 503]
    stalled = [o for o in outcomes if o.stalled]
    other = len(outcomes) - len(done) - len(refused) - len(stalled)
    codes = sorted({o.code for o in refused})
    room = args.workers * args.slots >= args.streams
    scripted = args.tokens * args.interval
    print(f"\n{args.streams} streams at once through one queen, {args.workers} scripted workers x {args.slots} "
          f"slots, {args.tokens} tokens every {args.interval:g} s (a stream's scripted time: {scripted:.1f} s)")
    print_table(["what", "value"], [
        ("completed (all events)", f"{len(done)} of {len(outcomes)}"),
        ("answered 503", (f"{len(refused)}{' ' + ','.join(codes) if codes else ''}"
                         f"{' (must be 0: the workers have room)' if room and refused else ''}")),
        ("stalled (deadline or silence)", (f"{len(stalled)} (deadline {args.deadline:g} s, "
                                          f"silence > {args.stall_gap:g} s)")),
        ("failed otherwise", str(other)),
        ("wave time", f"{took:.1f} s"),
        ("stream time p50 / p99 / max", " / ".join(f"{percentile([o.seconds for o in done], q):.2f} s"
                                                   for q in (50, 99, 100)) if done else "—"),
        ("largest gap between bytes, p99 / max", " / ".join(
            f"{percentile([o.max_gap for o in done], q):.2f} s" for q in (99, 100)) if done else "—"),
        ("queen RSS before / peak / after", (f"{mb(rss[0])} / {mb(rss[1])} / {mb(rss[2])} "
                                            f"(peak +{mb(rss[1] - rss[0])})")),
        ("queen CPU for the wave", f"{cpu:.1f} s"),
    ])
    ok = len(done) == len(outcomes) or (not room and not stalled and not other)
    print("result:", "every stream completed, none stalled" if ok else "NOT every stream completed")
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000, help="streams opened at once")
    p.add_argument("--workers", type=int, default=4, help="scripted workers")
    p.add_argument("--slots", type=int, default=256, help="slots per worker")
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between a worker's tokens")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds a stream may take in all")
    p.add_argument("--stall-gap", type=float, default=10.0, help="seconds without a byte that count as a stall")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_on_sigterm()
    warn_if_busy()
    raise_open_file_limit(2 * args.streams + 1024, "--streams")  # this client holds one socket a stream
    print("environment")
    print_table(["what", "value"], environment({"rbee commit": rbee_revision()}, dists=("rbee", "aiohttp")))
    tmp = Path(tempfile.mkdtemp(prefix="rbee-bench-scale-"))
    fleet = start_fleet(args, tmp)
    try:
        pid = fleet.queen.pid
        assert pid is not None
        total = args.workers * args.slots
        warm = asyncio.run(wave(argparse.Namespace(**{**vars(args), "streams": min(8, args.streams)}), fleet))
        if any(o.status != 200 for o in warm[0]):
            raise BenchError(f"the warm-up failed: {[(o.status, o.code) for o in warm[0]]}")
        wait_all_free(fleet.queen_url, total, 30)
        before = rss_bytes(pid)
        cpu0 = group_cpu_seconds(pid)
        outcomes, took, peak = asyncio.run(wave(args, fleet))
        cpu = group_cpu_seconds(pid) - cpu0
        wait_all_free(fleet.queen_url, total, 60)
        after = rss_bytes(pid)
        ok = report(args, outcomes, took, (before, max(peak, before), after), cpu)
    finally:
        fleet.stop()
    print(f"logs in {tmp}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    run_script(main)
