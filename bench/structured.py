"""What a grammar-constrained answer costs per token: ours constrained against ours free, and both
against llama.cpp's llama-server with the same ``json_schema``.

Same GGUF, same threads, one slot each, both servers up together and taking turns, greedy. The
constrained answer is a JSON array of a fixed number of small objects (``--items``), so its length
does not depend on the model's whims; the free answer is as many tokens with ``ignore_eos``. What is
measured is the time between tokens in the stream (first to last, over tokens - 1): decoding plus
sampling, prompt processing left out.

    python bench/structured.py [--rounds 5] [--items 12] [--skip-llama-server] [--llama-server PATH]

llama-server is the binary ``bench/peers.py`` builds (``ensure_llama_server``); this script never
builds it: without it (or with --skip-llama-server) only ours is measured, and it says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    BenchError,
    QuietGate,
    add_gate_args,
    environment,
    exit_on_sigterm,
    free_port,
    gate_from_args,
    median,
    print_table,
    rbee_revision,
    run_script,
    warn_if_busy,
)
from peers import (
    LLAMA_SERVER,
    OURS,
    Target,
    llama_cpp_python_version,
    llama_server_source,
    llama_server_version,
    make_targets,
)

from rbee import chat, sse
from rbee.process import ServiceProcess

QUESTION = "List some people with an id, a first name and the city they live in."


def schema(items: int) -> dict[str, Any]:
    person = {"type": "object", "properties": {"id": {"type": "integer"},
                                               "name": {"type": "string", "maxLength": 12},
                                               "city": {"type": "string", "maxLength": 12}},
              "required": ["id", "name", "city"], "additionalProperties": False}
    return {"type": "array", "items": person, "minItems": items, "maxItems": items}


@dataclass
class Answer:
    tokens: int
    per_token_ms: float
    text: str
    finish: str


async def ask(session: aiohttp.ClientSession, target: Target, base: str, prompt: str, *, constrained: dict | None,
              tokens: int) -> Answer:
    """One streamed request; per-token time from the first token event to the last."""
    if target.name == OURS:
        url, body = f"{base}/v1/inference", {"prompt": prompt, "temperature": 0, "cache_prompt": False, "stream": True}
        body |= {"json_schema": constrained, "max_tokens": 4096} if constrained else {"max_tokens": tokens,
                                                                                      "ignore_eos": True}
    else:
        url, body = f"{base}/completion", {"prompt": prompt, "temperature": 0, "repeat_penalty": 1.0,
                                           "cache_prompt": False, "stream": True}
        body |= {"json_schema": constrained, "n_predict": 4096} if constrained else {"n_predict": tokens,
                                                                                     "ignore_eos": True}
    stamps: list[float] = []
    parts: list[str] = []
    finish = "?"
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise BenchError(f"{target.name} answered {resp.status}: {(await resp.text())[:300]}")
        async for data in sse.aiter_data(resp.content.iter_any()):
            if data == "[DONE]":
                break
            event = json.loads(data)
            text = event.get("token") if target.name == OURS else event.get("content")
            if text:
                stamps.append(time.perf_counter())
                parts.append(text)
            if event.get("done") or event.get("stop"):
                finish = event.get("finish_reason") or event.get("stop_type") or "stop"
                break
            if "error" in event:
                raise BenchError(f"{target.name}: {event['error']}")
    n = len(stamps)
    per_token = (stamps[-1] - stamps[0]) / (n - 1) * 1000 if n > 1 else float("nan")
    return Answer(n, per_token, "".join(parts), finish)


@dataclass
class Results:
    per_token: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (server, mode) -> ms
    paired: dict[str, list[float]] = field(default_factory=dict)  # server -> constrained / free, per round
    tokens: dict[str, list[int]] = field(default_factory=dict)
    foreign: list[float] = field(default_factory=list)


async def measured(gate: QuietGate, pgid: int, retries: int, call: Any) -> tuple[Answer, float]:
    for attempt in range(retries + 1):
        await asyncio.to_thread(gate.wait)
        gate.begin(pgid)
        answer = await call()
        if attempt == retries or not gate.disturbed():
            return answer, gate.foreign()
        gate.discarded += 1
    raise AssertionError("unreachable")


async def run(servers: list[tuple[Target, str, int]], prompt: str, args: argparse.Namespace, gate: QuietGate,
              results: Results) -> None:
    want = schema(args.items)
    # A new connection per request: llama-server may close a kept-alive one after a stream.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900),
                                     connector=aiohttp.TCPConnector(force_close=True)) as session:
        for target, base, _ in servers:  # warm-up: load pages, build caches
            await ask(session, target, base, prompt, constrained=want, tokens=8)
            await ask(session, target, base, prompt, constrained=None, tokens=8)
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for target, base, pgid in order:
                constrained, seen = await measured(gate, pgid, args.retries, lambda t=target, b=base: ask(
                    session, t, b, prompt, constrained=want, tokens=0))
                results.foreign.append(seen)
                parsed = json.loads(constrained.text)
                if not (isinstance(parsed, list) and len(parsed) == args.items):
                    raise BenchError(f"{target.name}'s constrained answer is not {args.items} items: "
                                     f"{constrained.text[:200]}")
                free, seen = await measured(gate, pgid, args.retries, lambda t=target, b=base, n=constrained.tokens: ask(
                    session, t, b, prompt, constrained=None, tokens=n))
                results.foreign.append(seen)
                results.per_token.setdefault((target.name, "free"), []).append(free.per_token_ms)
                results.per_token.setdefault((target.name, "constrained"), []).append(constrained.per_token_ms)
                results.paired.setdefault(target.name, []).append(constrained.per_token_ms / free.per_token_ms)
                results.tokens.setdefault(target.name, []).append(constrained.tokens)
                print(f"round {r + 1} {target.name}: constrained {constrained.tokens} tokens "
                      f"{constrained.per_token_ms:.2f} ms/token, free {free.tokens} tokens "
                      f"{free.per_token_ms:.2f} ms/token", flush=True)


def report(results: Results, names: list[str], gate: QuietGate) -> None:
    rows = []
    for name in names:
        free = median(results.per_token[(name, "free")])
        constrained = median(results.per_token[(name, "constrained")])
        rows.append([name, f"{median(results.tokens[name]):.0f}", f"{free:.2f}", f"{constrained:.2f}",
                     f"{constrained - free:+.2f}", f"{median(results.paired[name]):.2f}×"])
    print()
    print_table(["server", "tokens", "free ms/token", "constrained ms/token", "grammar ms/token",
                 "constrained / free (paired median)"], rows)
    if OURS in names and LLAMA_SERVER in names:
        for mode in ("free", "constrained"):
            ours, peer = median(results.per_token[(OURS, mode)]), median(results.per_token[(LLAMA_SERVER, mode)])
            print(f"{mode}: ours / llama-server time per token {ours / peer:.2f}×")
    if gate.enabled:
        print(f"quiet gate: waited {gate.waited:.0f} s, repeated {gate.discarded} disturbed measurements; "
              f"others used a median {median(results.foreign):.2f} cores during the kept ones")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds; each is one constrained and one free answer "
                   "from each server")
    p.add_argument("--items", type=int, default=12, help="objects in the constrained answer's array")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gpu-layers", type=int, default=0)
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the built-in SmolLM2-135M Q4_1)")
    p.add_argument("--llama-server", type=Path, default=None, help="the llama-server binary (default: the one "
                   "bench/peers.py builds, when it exists)")
    p.add_argument("--skip-llama-server", action="store_true")
    p.add_argument("--ready-timeout", type=float, default=120.0)
    add_gate_args(p, "measurement")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.skip_llama_cpp_python = True
    exit_on_sigterm()
    from rbee import models

    model = (args.model or models.default_model_path()).resolve()
    llama_server = None
    if not args.skip_llama_server:
        built = args.llama_server or llama_server_source(llama_cpp_python_version()) / "build" / "bin" / "llama-server"
        if built.is_file():
            llama_server = built
        else:
            print(f"llama-server is not built at {built} (bench/peers.py builds it; this script does not): "
                  "measuring ours only", flush=True)
    targets = make_targets(args, model, llama_server)
    import gguf

    field_ = gguf.GGUFReader(str(model)).fields.get("tokenizer.chat_template")
    template = bytes(field_.parts[field_.data[0]]).decode() if field_ is not None else None
    prompt = chat.render([{"role": "user", "content": QUESTION}], template)

    warn_if_busy()
    print("environment")
    print_table(["what", "value"], environment(
        {"rbee commit": rbee_revision(), "model": model.name, "threads": str(args.threads),
         "llama-server": llama_server_version(llama_server), "schema": json.dumps(schema(args.items))[:90] + "…"},
        dists=("rbee", "llama-cpp-python")))
    gate = gate_from_args(args)
    logdir = Path(tempfile.mkdtemp(prefix="rbee-bench-structured-"))
    children: list[tuple[Target, ServiceProcess, int]] = []
    try:
        for t in targets:
            port = free_port()
            child = ServiceProcess(t.name, t.argv(port, 1), logdir / f"{t.name}.log",
                                   f"http://127.0.0.1:{port}{t.ready_path}", env=t.env, ready_check=t.ready_check)
            children.append((t, child, port))
            child.start()
        for _, child, _ in children:
            child.wait_ready(args.ready_timeout)
        servers = [(t, f"http://127.0.0.1:{port}", child.pid) for t, child, port in children]
        results = Results()
        asyncio.run(run(servers, prompt, args, gate, results))
    finally:
        for _, child, _ in children:
            child.stop()
    report(results, [t.name for t in targets], gate)
    print(f"server logs in {logdir}")


if __name__ == "__main__":
    run_script(main)
