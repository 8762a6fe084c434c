"""Benchmark multi-turn chats: rbee (the queen + one N-slot worker, prompt cache on and off) against
llama-server --parallel N with its defaults (its prompt cache on); with ``--fleet``, also a queen over
two workers routing by cache, one routing by load alone, and two llama-servers asked round-robin (what
an nginx or LiteLLM in front of llama.cpp does), each server of a pair with half the slots and threads.

Every chat opens with a document of about 700 tokens and asks about it turn after turn; each turn
sends the whole history again, as chat clients do. The chats run a few at a time, each turn a
moment (``--think``, the person reading) after the previous answer. Greedy (or ``--temperature T``), a fixed answer length (``ignore_eos``) so every system decodes the same
number of tokens. Prints TTFT per turn, the ratios on turns ≥ 3, and how many prompt tokens each
system reused instead of decoding.

    python bench/chat.py [--chats 8] [--turns 6] [--answer-tokens 32] [--rounds 2] [--fleet] [--llama-server PATH]

See bench/README.md. This is a script, not a test: nothing under tests/ or features/ runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import chat_servers
from common import (
    BenchError,
    QuietGate,
    add_gate_args,
    environment,
    exit_on_sigterm,
    gate_from_args,
    median,
    percentile,
    print_table,
    rbee_revision,
    run_script,
    warn_if_busy,
)
from peers import ensure_llama_server, llama_cpp_python_version, llama_server_version

from rbee import chat, sse
from rbee.events import Done, Failed, Token

RBEE = "rbee, cache on"
RBEE_NO_CACHE = "rbee, cache_prompt false"
LLAMA_SERVER = "llama-server"
FLEET_CACHE = "rbee, queen + 2 workers, cache-aware"
FLEET_LOAD = "rbee, queen + 2 workers, least-loaded"
LLAMA_PAIR = "2 llama-servers, round-robin"
QUESTIONS = [
    "Summarise the report above in two sentences.",
    "Which people does it name, and what does each of them do?",
    "What went wrong first, and when?",
    "What does the report recommend?",
    "Write a short title for it.",
    "What should happen next week?",
]

# ---------------------------------------------------------------- the workload

_NAMES = ["Ada", "Bram", "Chiara", "Dmitri", "Esme", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Lars"]
_PLACES = ["the north apiary", "the valley farm", "the river meadow", "the old orchard", "the hill station",
           "the lime avenue", "the school garden", "the heath"]
_THINGS = ["hive scales", "queen excluders", "honey supers", "feeding trays", "mite boards", "smokers",
           "frames", "extractors"]
_EVENTS = ["found a weak colony", "replaced two cracked boxes", "counted the mites", "moved the hives uphill",
           "harvested the spring honey", "noticed robbing at the entrance", "fed sugar syrup",
           "marked a new queen", "cleaned the extractor", "checked the brood pattern"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def document(seed: int, sentences: int = 25) -> str:
    """A made-up field report, different for every seed (about 700 tokens with SmolLM2's vocabulary)."""
    rng = random.Random(seed)
    lines = [f"Field report {seed} from {rng.choice(_PLACES)}."]
    for _ in range(sentences):
        lines.append(f"On {rng.choice(_DAYS)} {rng.choice(_NAMES)} {rng.choice(_EVENTS)} at {rng.choice(_PLACES)}, "
                     f"using {rng.randint(2, 40)} {rng.choice(_THINGS)}, and wrote that the weather was "
                     f"{rng.choice(['dry', 'wet', 'windy', 'warm', 'cold'])}.")
    return " ".join(lines)


@dataclass
class TurnResult:
    chat: int
    turn: int  # 1-based
    ttft: float | None  # seconds from sending to the first token's text
    prompt_tokens: int
    cached_tokens: int  # prompt tokens the server reused rather than decoded
    tokens: int
    finish: str
    text: str
    worker: str = ""  # the worker that answered (rbee's done event); "" where the server does not say
    route: str = ""  # the queen's reason: "cache" or "load"
    # Where the TTFT went: waiting for a slot, then the server's own time to the first token (rbee: the
    # queen's queued_ms and ttft_ms, dispatch included; llama-server: the rest and its timings.prompt_ms).
    waited: float | None = None
    served: float | None = None


Ask = Callable[[aiohttp.ClientSession, str, int], Awaitable[TurnResult]]


@dataclass
class System:
    """One server under test as the workload sees it: how to ask one turn, and whose CPU to watch."""

    name: str
    ask: Ask
    pgids: list[int]
    seeds: int = 0  # documents handed out so far: every system walks the same sequence
    rounds: list[list[TurnResult]] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)
    discarded: int = 0
    wall: list[float] = field(default_factory=list)


def rbee_asker(queen: str, cache: bool, temperature: float = 0.0) -> Ask:
    async def ask(session: aiohttp.ClientSession, prompt: str, n: int) -> TurnResult:
        body = {"prompt": prompt, "max_tokens": n, "temperature": temperature, "ignore_eos": True,
                "cache_prompt": cache}
        start, first, parts = time.perf_counter(), None, []
        done: Done | None = None
        finish = "?"
        async with session.post(f"{queen}/v1/inference", json=body) as resp:
            if resp.status != 200:
                return TurnResult(0, 0, None, 0, 0, 0, f"HTTP {resp.status}: {(await resp.text())[:200]}", "")
            async for data in sse.aiter_data(resp.content.iter_any()):
                event = sse.parse_event(data)
                if isinstance(event, Token):
                    first = first or time.perf_counter()
                    parts.append(event.text)
                elif isinstance(event, Done):
                    done, finish = event, event.finish_reason
                elif isinstance(event, Failed):
                    finish = event.code
        ttft = None if first is None else first - start
        return TurnResult(0, 0, ttft, done.prompt_tokens or 0 if done else 0,
                          done.cached_tokens or 0 if done else 0, done.total_tokens if done else 0, finish,
                          "".join(parts), (done.worker_id or "") if done else "", (done.route or "") if done else "",
                          *queue_split(ttft, done.queued_ms if done else None, done.ttft_ms if done else None))

    return ask


def llama_server_asker(base: str, temperature: float = 0.0) -> Ask:
    async def ask(session: aiohttp.ClientSession, prompt: str, n: int) -> TurnResult:
        # Its defaults, cache_prompt (on) included; repeat_penalty 1.0 and the temperature, as ours.
        body = {"prompt": prompt, "n_predict": n, "temperature": temperature, "ignore_eos": True,
                "repeat_penalty": 1.0, "stream": True}
        start, first, parts = time.perf_counter(), None, []
        last: dict = {}
        async with session.post(f"{base}/completion", json=body) as resp:
            if resp.status != 200:
                return TurnResult(0, 0, None, 0, 0, 0, f"HTTP {resp.status}: {(await resp.text())[:200]}", "")
            async for data in sse.aiter_data(resp.content.iter_any()):
                if data == sse.DONE:
                    break
                event = json.loads(data)
                if event.get("content"):
                    first = first or time.perf_counter()
                    parts.append(event["content"])
                if event.get("stop"):
                    last = event  # and read on to the end of the stream: the connection is reused
        timings = last.get("timings", {})
        cached = timings.get("cache_n", last.get("tokens_cached", 0))
        ttft = None if first is None else first - start
        return TurnResult(0, 0, ttft, cached + timings.get("prompt_n", 0),
                          cached, last.get("tokens_predicted", timings.get("predicted_n", 0)),
                          last.get("stop_type", "?"), "".join(parts), "", "",
                          *queue_split(ttft, None, timings.get("prompt_ms")))

    return ask


def queue_split(ttft: float | None, waited_ms: float | None, served_ms: float | None) -> tuple[float | None, float | None]:
    """(waited, served) in seconds for a turn, from what the server reported in milliseconds: whichever
    it did not report is the rest of the TTFT."""
    if ttft is None:
        return None, None
    waited = None if waited_ms is None else waited_ms / 1000
    served = None if served_ms is None else served_ms / 1000
    if waited is None and served is not None:
        waited = max(0.0, ttft - served)
    elif served is None and waited is not None:
        served = max(0.0, ttft - waited)
    return waited, served


def round_robin(askers: list[Ask]) -> Ask:
    """Each request to the next server in turn, whatever it holds (a proxy's round-robin)."""
    turn = itertools.count()

    async def ask(session: aiohttp.ClientSession, prompt: str, n: int) -> TurnResult:
        return await askers[next(turn) % len(askers)](session, prompt, n)

    return ask


async def hold_chat(system: System, session: aiohttp.ClientSession, index: int, doc: str, template: str | None,
                    args: argparse.Namespace) -> list[TurnResult]:
    """One conversation, turn after turn, each sending the whole history rendered with the model's template."""
    messages: list[dict[str, str]] = []
    results = []
    for turn in range(args.turns):
        question = QUESTIONS[turn % len(QUESTIONS)]
        messages.append({"role": "user", "content": f"{doc}\n\n{question}" if turn == 0 else question})
        prompt = chat.render(messages, template)
        result = await system.ask(session, prompt, args.answer_tokens)
        result.chat, result.turn = index, turn + 1
        results.append(result)
        messages.append({"role": "assistant", "content": result.text})
        if args.think > 0 and turn + 1 < args.turns:
            await asyncio.sleep(think_time(doc, turn, args.think))  # the person reads, then asks again
    return results


def think_time(doc: str, turn: int, mean: float) -> float:
    """How long a person reads an answer before the next question: 0.5× to 1.5× ``mean``, the same for
    every system (seeded by the conversation and the turn), so each sees the same arrivals."""
    return mean * random.Random(f"{doc[:64]}/{turn}").uniform(0.5, 1.5)


async def workload(system: System, template: str | None, args: argparse.Namespace) -> list[TurnResult]:
    docs = [document(system.seeds + c) for c in range(args.chats)]
    system.seeds += args.chats
    timeout = aiohttp.ClientTimeout(total=900)
    # A new connection per request, for every system alike: llama-server hangs up on a kept-alive
    # connection after a streamed answer now and then (ServerDisconnectedError on the next turn).
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    room = asyncio.Semaphore(args.at_once or args.chats)

    async def held(c: int, doc: str) -> list[TurnResult]:
        async with room:  # a few conversations at a time; the next starts when one ends
            return await hold_chat(system, session, c, doc, template, args)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        chats = await asyncio.gather(*(held(c, d) for c, d in enumerate(docs)))
    return [r for results in chats for r in results]


async def warm_up(system: System) -> None:
    async with aiohttp.ClientSession() as session:
        await system.ask(session, "Hello", 4)


def run_round(system: System, template: str | None, args: argparse.Namespace, gate: QuietGate) -> None:
    for attempt in range(args.retries + 1):
        gate.wait()
        gate.begin(*system.pgids)
        t0 = time.monotonic()
        results = asyncio.run(workload(system, template, args))
        wall = time.monotonic() - t0
        if attempt == args.retries or not gate.disturbed():
            break
        system.discarded += 1
    system.foreign.append(gate.foreign())
    system.rounds.append(results)
    system.wall.append(wall)
    failed = [r for r in results if r.ttft is None]
    if failed:
        raise BenchError(f"{system.name}: {len(failed)} of {len(results)} turns got no token; the first: "
                         f"{failed[0].finish!r} (server logs in the run's log folder)")
    late = [r.ttft for r in results if r.turn >= 3 and r.ttft is not None]
    moved = moves(results)
    print(f"  {system.name}: {wall:.1f} s, TTFT p50 on turns ≥ 3 {percentile(late, 50) * 1000:.0f} ms, "
          f"reused {sum(r.cached_tokens for r in results)} of {sum(r.prompt_tokens for r in results)} prompt tokens"
          + (f", {moved} turn(s) sent to another worker than the chat's previous turn" if moved is not None else ""),
          flush=True)


def moves(results: list[TurnResult]) -> int | None:
    """Turns that went to another worker than their conversation's previous turn (None: not a fleet)."""
    if len({r.worker for r in results if r.worker}) < 2:
        return None
    last: dict[int, str] = {}
    moved = 0
    for r in sorted(results, key=lambda r: (r.chat, r.turn)):
        moved += r.chat in last and r.worker != last[r.chat]
        last[r.chat] = r.worker
    return moved


# ---------------------------------------------------------------- the servers


def chat_template(model: Path) -> str | None:
    import gguf

    fields = gguf.GGUFReader(str(model)).fields
    field_ = fields.get("tokenizer.chat_template")
    return bytes(field_.parts[field_.data[0]]).decode() if field_ is not None else None


# ---------------------------------------------------------------- report


def ms(x: float) -> str:
    return "—" if math.isnan(x) else f"{x * 1000:.0f}"


def reused_share(system: System) -> float:
    results = [r for rnd in system.rounds for r in rnd]
    total = sum(r.prompt_tokens for r in results)
    return sum(r.cached_tokens for r in results) / total if total else math.nan


def report(systems: list[System], args: argparse.Namespace, gate: QuietGate) -> None:
    turns = range(1, args.turns + 1)
    print()
    print(f"TTFT (ms) by turn, p50 over {args.chats} chats × {len(systems[0].rounds)} round(s); "
          f"{args.answer_tokens} answer tokens a turn, greedy; {args.at_once or args.chats} chats at a time, "
          f"{args.think:g} s reading between turns (mean)")
    rows = []
    late: dict[str, list[float]] = {}
    for s in systems:
        results = [r for rnd in s.rounds for r in rnd]
        by_turn = [[r.ttft for r in results if r.turn == t and r.ttft is not None] for t in turns]
        late[s.name] = [r.ttft for r in results if r.turn >= 3 and r.ttft is not None]
        rows.append([s.name] + [ms(percentile(v, 50)) for v in by_turn]
                    + [ms(percentile(late[s.name], 50)), ms(percentile(late[s.name], 95))])
    print_table(["system"] + [f"turn {t}" for t in turns] + ["turns ≥ 3 p50", "turns ≥ 3 p95"], rows)

    print()
    print("prompt tokens: reused from the cache / all, summed over every turn of every round; "
          "prompt tokens at turn 1 and at the last turn (mean); wall time of a round (median)")
    rows = []
    for s in systems:
        results = [r for rnd in s.rounds for r in rnd]
        total, reused = sum(r.prompt_tokens for r in results), sum(r.cached_tokens for r in results)
        first = [r.prompt_tokens for r in results if r.turn == 1]
        last = [r.prompt_tokens for r in results if r.turn == args.turns]
        rows.append([s.name, f"{reused} / {total} ({reused / total:.0%})" if total else "—",
                     f"{sum(first) / len(first):.0f}" if first else "—", f"{sum(last) / len(last):.0f}" if last else "—",
                     f"{median(s.wall):.1f} s"])
    print_table(["system", "reused / prompt tokens", "turn 1 prompt", f"turn {args.turns} prompt", "round"], rows)

    print()
    print("where TTFT went on turns ≥ 3, p50 / sum over every round (s): waiting for a slot, then the server's "
          "own time to the first token; prompt tokens decoded (not reused) per second of that own time")
    rows = []
    for s in systems:
        results = [r for rnd in s.rounds for r in rnd if r.turn >= 3 and r.waited is not None]
        waited, served = [r.waited for r in results], [r.served for r in results]
        fresh = sum(r.prompt_tokens - r.cached_tokens for r in results)
        rows.append([s.name, f"{ms(percentile(waited, 50))} ms / {sum(waited):.1f}",
                     f"{ms(percentile(served, 50))} ms / {sum(served):.1f}",
                     f"{fresh / sum(served):.0f}" if results and sum(served) else "—"])
    print_table(["system", "waiting", "own time to first token", "decoded prompt tok/s"], rows)

    by_name = {s.name: s for s in systems}
    ours, peer, off = (percentile(late.get(n, []), 50) for n in (RBEE, LLAMA_SERVER, RBEE_NO_CACHE))
    print()

    def paired(a: str, b: str) -> float:
        """Median over rounds of the ratio within the round (a drift of the machine lands on both)."""
        pairs = zip(by_name[a].rounds, by_name[b].rounds, strict=False)
        return median([percentile([r.ttft for r in x if r.turn >= 3 and r.ttft], 50)
                       / percentile([r.ttft for r in y if r.turn >= 3 and r.ttft], 50) for x, y in pairs])

    if LLAMA_SERVER in by_name:
        got = ours / peer
        print(f"target TTFT p50 turns ≥ 3, rbee ≤ 1.0× llama-server: {got:.2f}× "
              f"(paired per round {paired(RBEE, LLAMA_SERVER):.2f}×) → {'met' if got <= 1.0 else 'NOT met'}")
    if RBEE_NO_CACHE in by_name:
        got = ours / off
        print(f"target TTFT p50 turns ≥ 3, rbee cache on ≤ 0.5× cache off: {got:.2f}× "
              f"(paired per round {paired(RBEE, RBEE_NO_CACHE):.2f}×) → {'met' if got <= 0.5 else 'NOT met'}")
    def target(a: str, b: str, bound: float) -> None:
        if a in by_name and b in by_name:
            got = percentile(late[a], 50) / percentile(late[b], 50)
            print(f"target TTFT p50 turns ≥ 3, {a} ≤ {bound}× {b}: {got:.2f}× (paired per round "
                  f"{paired(a, b):.2f}×) → {'met' if got <= bound else 'NOT met'}")

    target(FLEET_CACHE, LLAMA_PAIR, 0.7)
    target(FLEET_CACHE, FLEET_LOAD, 0.8)
    if FLEET_CACHE in by_name:
        got = reused_share(by_name[FLEET_CACHE]) / reused_share(by_name[RBEE])
        print(f"target cached share of prompt tokens, {FLEET_CACHE} ≥ 0.9× {RBEE}: {got:.2f}× "
              f"→ {'met' if got >= 0.9 else 'NOT met'}")
    bad = [(s.name, r.finish) for s in systems for rnd in s.rounds for r in rnd
           if r.tokens != args.answer_tokens]
    if bad:
        print(f"note: turns that did not answer {args.answer_tokens} tokens: {bad[:10]}")
    if gate.enabled:
        spent = " (its budget ran out: later rounds went ahead regardless)" if not gate.active else ""
        print(f"quiet gate: waited {gate.waited:.0f} s in all for an idle machine{spent} (gave up waiting "
              f"{gate.gave_up}×); rounds repeated because other processes used CPU during them: "
              + ", ".join(f"{s.name} {s.discarded}" for s in systems)
              + "; other processes' CPU during kept rounds, median/max (cores): "
              + ", ".join(f"{s.name} {median(s.foreign):.2f}/{max(s.foreign):.2f}" for s in systems))


def build_systems(servers: chat_servers.Servers, args: argparse.Namespace, model: Path, llama_server: Path | None,
                  logdir: Path) -> list[System]:
    """Start the servers (all idle until their rounds) and say how the workload asks each system."""
    chat_servers.start_single(servers, model, llama_server, args.slots, args.threads, args.cache_ram_mb, logdir)
    if args.fleet:
        chat_servers.start_fleets(servers, model, llama_server, args.slots, args.threads, args.cache_ram_mb,
                                  logdir)
    servers.start(args.ready_timeout)
    chat_servers.register(servers, "queen", "worker", model, args.slots)
    urls, pgids, t = servers.urls, servers.pgids, args.temperature
    ours = [pgids["queen"], pgids["worker"]]
    systems = [System(RBEE, rbee_asker(urls["queen"], True, t), ours)]
    if llama_server is not None:
        systems.append(System(LLAMA_SERVER, llama_server_asker(urls[LLAMA_SERVER], t), [pgids[LLAMA_SERVER]]))
    if not args.skip_cache_off:
        systems.append(System(RBEE_NO_CACHE, rbee_asker(urls["queen"], False, t), ours))
    if args.fleet:
        chat_servers.register_fleets(servers, model, args.slots)
        for name, kind in ((FLEET_CACHE, "cache"), (FLEET_LOAD, "load")):
            systems.append(System(name, rbee_asker(urls[f"queen-{kind}"], True, t),
                                  [pgids[f"queen-{kind}"], pgids[f"{kind}-w1"], pgids[f"{kind}-w2"]]))
        if llama_server is not None:
            systems.append(System(LLAMA_PAIR, round_robin([llama_server_asker(urls[f"llama-{n}"], t) for n in (1, 2)]),
                                  [pgids["llama-1"], pgids["llama-2"]]))
    return systems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chats", type=int, default=8, help="conversations, held at the same time")
    p.add_argument("--turns", type=int, default=6, help="turns per conversation")
    p.add_argument("--at-once", type=int, default=3, help="conversations held at the same time (0 = all): the "
                   "next starts when one ends")
    p.add_argument("--think", type=float, default=1.0, help="seconds a person reads an answer before asking "
                   "again (mean; 0.5x-1.5x, seeded, the same for every system); 0 = ask at once")
    p.add_argument("--answer-tokens", type=int, default=32, help="tokens each answer decodes (ignore_eos)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every answer (0: "
                   "greedy, computed by rbee on the batch-invariant kernels; above 0, unseeded, on the fast ones "
                   "as chat clients' requests are)")
    p.add_argument("--slots", type=int, default=8, help="rbee worker slots = llama-server --parallel (a fleet's "
                   "servers get half each)")
    p.add_argument("--fleet", action="store_true", help="also the fleets: queen + 2 workers routing by cache, "
                   "by load alone, and 2 llama-servers round-robin")
    p.add_argument("--rounds", type=int, default=2, help="times each system runs the whole workload (new "
                   "documents each time), the order rotating")
    p.add_argument("--cache-ram-mb", type=int, default=0, help="rbee worker --cache-ram-mb (a fleet's get half "
                   "each); llama-server keeps its own default host-RAM cache")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for a single server (a fleet's get half each)")
    p.add_argument("--skip-llama-server", action="store_true", help="leave out llama-server (and the pair)")
    p.add_argument("--skip-cache-off", action="store_true", help="leave out rbee with cache_prompt false")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the built-in SmolLM2-135M Q4_1)")
    p.add_argument("--llama-server", type=Path, default=None, help="use this llama-server binary, build none")
    add_gate_args(p, "round")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds a server gets to become ready")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_on_sigterm()
    from rbee import models

    model = (args.model or models.default_model_path()).resolve()
    llama_server = None if args.skip_llama_server else (args.llama_server
                                                        or ensure_llama_server(llama_cpp_python_version()))
    template = chat_template(model)
    warn_if_busy()
    print("environment")
    print_table(["what", "value"], environment(
        {"rbee commit": rbee_revision(), "model": f"{model.name} ({model.stat().st_size / 2**20:.1f} MiB)",
         "threads": str(args.threads), "slots / --parallel": str(args.slots), "temperature": str(args.temperature),
         "llama-server": llama_server_version(llama_server) if llama_server else "—"},
        dists=("rbee", "llama-cpp-python", "aiohttp", "uvloop"),
    ))
    logdir = Path(tempfile.mkdtemp(prefix="rbee-bench-chat-"))
    gate = gate_from_args(args)
    servers = chat_servers.Servers()
    started = time.monotonic()
    try:
        systems = build_systems(servers, args, model, llama_server, logdir)
        for s in systems:
            for _ in range(2):  # both servers of a pair (one server twice: no harm)
                asyncio.run(warm_up(s))
        for rnd in range(args.rounds):
            k = rnd % len(systems)
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for s in systems[k:] + systems[:k]:
                run_round(s, template, args, gate)
    finally:
        servers.stop()
    print(f"\nmeasured in {time.monotonic() - started:.0f} s; server logs in {logdir}")
    report(systems, args, gate)


if __name__ == "__main__":
    run_script(main)
