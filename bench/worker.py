"""Benchmark llm-worker-rbee against llama.cpp's llama-server and llama-cpp-python's server.

Same GGUF, same thread count, matching parallelism for each stream count. For each stream count all
servers are started, idle ones using no CPU, and take turns: one wave each per round. Prints the
environment and one table of TTFT and tokens/s with ours/peer ratios, plain and paired per round.

    python bench/worker.py [--streams 1,2,4,8] [--tokens 128] [--skip-llama-server] [--skip-llama-cpp-python]
    python bench/worker.py --gpu-layers 999 ...   # all layers on the GPU (bench/gpu.sh runs it there)
    python bench/worker.py --sampling greedy,default ...   # one table per sampling setting

See bench/README.md. This is a script, not a test: nothing under tests/ or features/ runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from common import (
    QuietGate,
    add_gate_args,
    environment,
    exit_on_sigterm,
    free_port,
    gate_from_args,
    group_cpu_seconds,
    median,
    percentile,
    print_table,
    ratio,
    rbee_revision,
    run_script,
    warn_if_busy,
)
from peers import (
    LCP_SERVER,
    LLAMA_SERVER,
    OURS,
    StreamResult,
    Target,
    ensure_llama_server,
    llama_cpp_python_version,
    llama_server_version,
    make_targets,
)

from rbee.process import ServiceProcess

# ---------------------------------------------------------------- the measurement


class Prompts:
    """Each server gets the same sequence of prompts, so all of them decode the same text."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def next(self) -> str:
        # A count that greedy decoding continues far past 128 tokens, so no stream ends early on EOS,
        # and short (17 tokens), so TTFT is not all prefill. Prompts differ per request.
        n = 100 + next(self._ids) * 37 % 800
        return f"Count: {n}, {n + 1}, {n + 2},"


@dataclass
class Measurements:
    single: list[StreamResult] = field(default_factory=list)  # 1-stream runs
    aggregate: dict[int, list[float]] = field(default_factory=dict)  # streams -> tokens/s per wave
    short: dict[int, int] = field(default_factory=dict)  # streams -> streams that ended before --tokens
    finishes: dict[int, dict[str, int]] = field(default_factory=dict)
    ttft: dict[int, list[float]] = field(default_factory=dict)  # streams -> every stream's TTFT (s)
    foreign: list[float] = field(default_factory=list)  # other people's CPU (cores) during kept waves
    discarded: int = 0  # waves repeated because others disturbed them
    cpu_ms_per_token: dict[int, list[float]] = field(default_factory=dict)  # streams -> server CPU per token


@dataclass
class Server:
    """One running server under test, with its own client session and prompt sequence."""

    target: Target
    base: str
    pgid: int
    session: aiohttp.ClientSession | None = None
    prompts: Prompts = field(default_factory=Prompts)


async def wave(server: Server, streams: int, args: argparse.Namespace, m: Measurements, gate: QuietGate) -> float:
    """N streams sent at once, kept if nobody else disturbed them; returns its tokens/s."""
    target, session = server.target, server.session
    assert session is not None
    for attempt in range(args.retries + 1):
        await asyncio.to_thread(gate.wait)
        gate.begin(server.pgid)
        cpu0 = group_cpu_seconds(server.pgid)
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(target.stream(session, server.base, server.prompts.next(), args.tokens, args.temperature)
              for _ in range(streams))
        )
        wall = max(r.end for r in results) - t0
        cpu = group_cpu_seconds(server.pgid) - cpu0
        if attempt == args.retries or not gate.disturbed():
            break
        m.discarded += 1
    m.foreign.append(gate.foreign())
    tokens = sum(r.tokens for r in results)
    rate = tokens / wall
    if tokens:
        m.cpu_ms_per_token.setdefault(streams, []).append(cpu / tokens * 1000)
    m.aggregate.setdefault(streams, []).append(rate)
    m.ttft.setdefault(streams, []).extend(r.ttft for r in results if r.ttft is not None)
    m.short[streams] = m.short.get(streams, 0) + sum(r.tokens < args.tokens for r in results)
    counts = m.finishes.setdefault(streams, {})
    for r in results:
        counts[r.finish] = counts.get(r.finish, 0) + 1
    if streams == 1:
        m.single.extend(results)
    return rate


async def measure(servers: list[Server], streams: int, args: argparse.Namespace, results: dict[str, Measurements],
                  paired: list[dict[str, float]], gate: QuietGate) -> None:
    """Round after round, one wave on each server in turn (the order rotating), so that a drift in
    the machine's speed lands on all of them alike and each round gives a paired comparison."""
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        for server in servers:
            connector = aiohttp.TCPConnector(limit=0, force_close=server.target.fresh_connections)
            server.session = aiohttp.ClientSession(timeout=timeout, connector=connector)
            # Warm-up: first-request costs (graph allocation, page faults) are not what we compare.
            await server.target.stream(server.session, server.base, server.prompts.next(), 8, args.temperature)
        rounds = args.reps * (args.single_runs if streams == 1 else 1)
        for r in range(rounds):
            k = r % len(servers)
            rates = {}
            for server in servers[k:] + servers[:k]:
                rates[server.target.name] = await wave(server, streams, args, results[server.target.name], gate)
            paired.append(rates)
            print(f"  {streams} stream(s), round {r + 1}/{rounds}: "
                  + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()), flush=True)
    finally:
        for server in servers:
            if server.session is not None:
                await server.session.close()


def run_stream_count(targets: list[Target], streams: int, args: argparse.Namespace,
                     results: dict[str, Measurements], paired: list[dict[str, float]], logdir: Path,
                     gate: QuietGate) -> None:
    """Start every server with parallelism ``streams`` (idle ones use no CPU), measure, stop them."""
    children: list[tuple[Target, ServiceProcess, int]] = []
    try:
        for t in targets:
            port = free_port()
            child = ServiceProcess(t.name, t.argv(port, streams),
                                   logdir / f"{t.name.replace(' ', '-')}-{streams}.log",
                                   f"http://127.0.0.1:{port}{t.ready_path}", env=t.env, ready_check=t.ready_check)
            children.append((t, child, port))
            child.start()
        for _, child, _ in children:
            child.wait_ready(args.ready_timeout)
        servers = [Server(t, f"http://127.0.0.1:{port}", child.pid) for t, child, port in children]
        for server in servers:
            if args.temperature is None and server.target.name == LLAMA_SERVER and not args.peer_defaults:
                args.peer_defaults = llama_server_defaults(server.base)
        asyncio.run(measure(servers, streams, args, results, paired, gate))
    finally:
        for _, child, _ in children:
            child.stop()


# ---------------------------------------------------------------- report


def fmt(x: float, digits: int = 1) -> str:
    return "—" if math.isnan(x) else f"{x:.{digits}f}"


def summarise(m: Measurements, streams: list[int]) -> dict[str, float]:
    ttfts = [r.ttft for r in m.single if r.ttft is not None]
    decode = [(r.tokens - 1) / (r.end - r.first) for r in m.single if r.first is not None and r.tokens > 1
              and r.end > r.first]
    out = {"ttft_p50_ms": percentile(ttfts, 50) * 1000 if ttfts else float("nan"),
           "decode_1": median(decode)}
    for n in streams:
        waves = m.aggregate.get(n, [])
        out[f"agg_{n}"] = median(waves)
        out[f"min_{n}"] = min(waves, default=math.nan)
        out[f"max_{n}"] = max(waves, default=math.nan)
    return out


def paired_ratio(rounds: list[dict[str, float]], peer: str) -> float:
    """Median over rounds of ours/peer within the round: the steadier figure on a drifting machine."""
    return median([r[OURS] / r[peer] for r in rounds if r.get(OURS) and r.get(peer)])


def report(targets: list[Target], results: dict[str, Measurements], paired: dict[int, list[dict[str, float]]],
           streams: list[int], args: argparse.Namespace, gate: QuietGate) -> None:
    summary = {t.name: summarise(results[t.name], streams) for t in targets}
    headers = ["system", "TTFT p50, 1 stream (ms)", "decode tok/s, 1 stream"] + \
              [f"{n} stream{'s' if n > 1 else ''} tok/s" for n in streams]
    rows = []
    for t in targets:
        s = summary[t.name]
        rows.append([t.name, fmt(s["ttft_p50_ms"]), fmt(s["decode_1"])]
                    + [f"{fmt(s[f'agg_{n}'])} ({fmt(s[f'min_{n}'], 0)}–{fmt(s[f'max_{n}'], 0)})" for n in streams])
    ours = summary[OURS]
    for peer in (LLAMA_SERVER, LCP_SERVER):
        if peer in summary:
            p = summary[peer]
            rows.append([f"ours / {peer}", ratio(ours["ttft_p50_ms"], p["ttft_p50_ms"]),
                         ratio(ours["decode_1"], p["decode_1"])]
                        + [ratio(ours[f"agg_{n}"], p[f"agg_{n}"]) for n in streams])
            rows.append([f"ours / {peer}, paired", "", ""]
                        + [f"{paired_ratio(paired.get(n, []), peer):.2f}×" for n in streams])
    print()
    print(f"tokens/s = tokens delivered / wall clock from sending the request(s) to the last event, TTFT "
          f"included; median (min–max) over rounds: {args.reps} at N streams, {args.reps * args.single_runs} "
          f"at 1 stream; {args.tokens} tokens a stream, sampling {describe(args.temperature)}. All servers are up "
          "at once and take turns, one wave each per round; 'paired' is the median over rounds of the "
          "ratio within a round")
    print_table(headers, rows)
    print()
    print("TTFT by stream count, ms: p50 / max over every stream of every wave (all of a wave's requests are "
          "sent at once, so at N streams the prompts queue behind each other's prefill)")
    ttft_rows = []
    for t in targets:
        per = results[t.name].ttft
        ttft_rows.append([t.name] + [f"{percentile(per.get(n, []), 50) * 1000:.0f} / {max(per.get(n, [math.nan])) * 1000:.0f}"
                                     for n in streams])
    print_table(["system"] + [f"{n} stream{'s' if n > 1 else ''}" for n in streams], ttft_rows)
    print()
    print("CPU per token, ms (all of the server's processes and threads, spin-waiting included; median over "
          "waves): what each token costs the machine, steadier than tokens/s when other tenants drift")
    print_table(["system"] + [f"{n} stream{'s' if n > 1 else ''}" for n in streams],
                [[t.name] + [fmt(median(results[t.name].cpu_ms_per_token.get(n, [])), 2) for n in streams]
                 for t in targets])
    print()
    checks = []
    if LLAMA_SERVER in summary:  # the token path's targets: at least llama-server's speed alone and batched
        checks += [(f"{n} stream{'s' if n > 1 else ''} ≥ 1.0× llama-server"
                    + (f" --parallel {n}" if n > 1 else ""), LLAMA_SERVER, n, 1.0) for n in (1, 4, 8) if n in streams]
    if LCP_SERVER in summary and 4 in streams:
        checks.append(("4 streams ≥ 2× llama-cpp-python server", LCP_SERVER, 4, 2.0))
    for label, peer, n, need in checks:
        got = paired_ratio(paired.get(n, []), peer)
        medians = ours[f"agg_{n}"] / summary[peer][f"agg_{n}"]
        verdict = "met" if got >= need else "NOT met"
        print(f"target {label}: paired {got:.3f}× (ratio of medians {medians:.3f}×) → {verdict}")
    if LLAMA_SERVER in summary and 1 in streams:
        mine, theirs = (median(results[name].cpu_ms_per_token.get(1, [])) for name in (OURS, LLAMA_SERVER))
        print(f"target CPU per token at 1 stream ≤ llama-server's: {mine:.2f} ms against {theirs:.2f} ms "
              f"({mine / theirs:.3f}×) → {'met' if mine <= theirs else 'NOT met'}")
    if gate.enabled:
        spent = " (its budget ran out: later measurements went ahead regardless)" if not gate.active else ""
        print(f"quiet gate: waited {gate.waited:.0f} s in all for an idle machine{spent} "
              f"(gave up waiting {gate.gave_up}×); "
              "waves repeated because other processes used CPU during them: "
              + ", ".join(f"{t.name} {results[t.name].discarded}" for t in targets)
              + "; other processes' CPU during kept waves, median/max (cores): "
              + ", ".join(f"{t.name} {median(results[t.name].foreign):.2f}/{max(results[t.name].foreign):.2f}"
                          for t in targets))
    for t in targets:
        m = results[t.name]
        short = {n: c for n, c in m.short.items() if c}
        if short:
            print(f"note: {t.name} streams that ended before {args.tokens} tokens, by stream count: {short}; "
                  f"finish reasons: {m.finishes}")


def parse_sampling(text: str) -> list[tuple[str, float | None]]:
    """``greedy`` (temperature 0), ``default`` (no sampling parameters sent: each server's own), or a
    temperature; comma separated, in order."""
    out: list[tuple[str, float | None]] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item == "greedy":
            out.append((item, 0.0))
        elif item == "default":
            out.append((item, None))
        else:
            try:
                out.append((f"temperature {float(item):g}", float(item)))
            except ValueError:
                raise argparse.ArgumentTypeError(f"--sampling: {item!r} is not greedy, default or a temperature")
    if not out:
        raise argparse.ArgumentTypeError("--sampling: name at least one setting (greedy, default, or a temperature)")
    return out


def describe(temperature: float | None) -> str:
    if temperature is None:
        return ("each server's default (none sent; ours: " + ours_defaults() + "; llama-server: its own, as its "
                "/props said below; llama-cpp-python's server: its own, but repeat_penalty 1.0 as always here)")
    return "greedy (temperature 0)" if temperature == 0 else f"temperature {temperature:g}"


def ours_defaults() -> str:
    """Our worker's sampling defaults, from the request model itself (so this never goes stale)."""
    from rbee.protocol import InferenceRequest

    fields = InferenceRequest.model_fields
    return ", ".join(f"{name} {fields[name].default:g}" for name in
                     ("temperature", "top_k", "top_p", "min_p", "repeat_penalty") if name in fields)


def llama_server_defaults(base: str) -> str:
    """llama-server's default sampling, as its ``GET /props`` reports it ("?" when it does not say)."""
    import requests

    try:
        props = requests.get(f"{base}/props", timeout=10).json()
    except (requests.RequestException, ValueError):
        return "?"
    settings = props.get("default_generation_settings", {}) if isinstance(props, dict) else {}
    params = settings.get("params", settings) if isinstance(settings, dict) else {}
    said = [f"{k} {params[k]:g}" for k in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty")
            if isinstance(params.get(k), int | float)]
    return ", ".join(said) or "?"


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "none found"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,2,4,8", help="concurrent stream counts, comma separated")
    p.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the whole interleaved sweep")
    p.add_argument("--single-runs", type=int, default=3, help="sequential 1-stream requests per rep")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy); "
                   "--sampling sweeps several")
    p.add_argument("--sampling", type=parse_sampling, default=None, metavar="LIST",
                   help="sampling settings to sweep, one table each: greedy (temperature 0), default (no "
                        "sampling parameters sent: each server's own defaults), or a temperature; e.g. "
                        "greedy,default (default: --temperature alone)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every server")
    p.add_argument("--gpu-layers", type=int, default=0, help="layers each server offloads to the GPU (999 = all)")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the built-in SmolLM2-135M Q4_1)")
    p.add_argument("--llama-server", type=Path, default=None, help="use this llama-server binary, build none")
    p.add_argument("--skip-llama-server", action="store_true", help="do not build or run llama-server")
    p.add_argument("--skip-llama-cpp-python", action="store_true", help="do not run llama_cpp.server")
    add_gate_args(p, "wave")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds a server gets to become ready")
    args = p.parse_args(argv)
    args.stream_counts = sorted({int(s) for s in args.streams.split(",") if s.strip()})
    if args.sampling is None:
        args.sampling = [(describe(args.temperature), args.temperature)]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_on_sigterm()
    from rbee import models

    model = (args.model or models.default_model_path()).resolve()
    version = llama_cpp_python_version()
    llama_server: Path | None = None
    if not args.skip_llama_server:
        llama_server = args.llama_server or ensure_llama_server(version)
    targets = make_targets(args, model, llama_server)
    if not args.skip_llama_cpp_python:
        try:
            import fastapi  # noqa: F401
            import sse_starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise SystemExit("llama_cpp.server needs its extras: pip install fastapi uvicorn sse-starlette "
                             "starlette-context pydantic-settings (or pass --skip-llama-cpp-python)") from None

    warn_if_busy()
    print("environment")
    print_table(["what", "value"], environment(
        {"rbee commit": rbee_revision(), "model": f"{model.name} ({model.stat().st_size / 2**20:.1f} MiB)", "threads": str(args.threads),
         "GPU layers": str(args.gpu_layers),
         **({"GPU": gpu_name()} if args.gpu_layers else {}),
         "llama-server": llama_server_version(llama_server)},
        dists=("rbee", "llama-cpp-python", "aiohttp", "uvloop", "fastapi", "uvicorn"),
    ))
    gate = gate_from_args(args)
    logdir = Path(tempfile.mkdtemp(prefix="rbee-bench-worker-"))
    for label, temperature in args.sampling:
        sweep = argparse.Namespace(**{**vars(args), "temperature": temperature, "peer_defaults": ""})
        results = {t.name: Measurements() for t in targets}
        started = time.monotonic()
        paired: dict[int, list[dict[str, float]]] = {}
        print(f"\nsampling: {label}", flush=True)
        for n in args.stream_counts:
            print(f"{n} stream(s): starting {', '.join(t.name for t in targets)}", flush=True)
            run_stream_count(targets, n, sweep, results, paired.setdefault(n, []), logdir, gate)
        print(f"\nmeasured in {time.monotonic() - started:.0f} s; server logs in {logdir}")
        print(f"\n## sampling: {describe(temperature)}")
        if temperature is None:
            print(f"llama-server's defaults, from its /props: {sweep.peer_defaults or '? (not asked)'}")
        report(targets, results, paired, args.stream_counts, sweep, gate)


if __name__ == "__main__":
    run_script(main)
