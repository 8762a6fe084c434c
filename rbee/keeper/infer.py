"""``rbee-keeper infer``: one prompt through the queen, tokens to stdout as they arrive.

Outcomes and exit codes: finished (0), an error answer or a stream cut short (1, the partial text
saved to a file), Ctrl+C (130: closing the stream is the cancel — the queen then cancels at the
worker). A busy fleet is retried after 1, 2 and 4 seconds. When no queen answers, a local trio is
started for this one request (``--keep`` leaves it running), unless autostart is off.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

import requests

from rbee.client import QueenClient, while_refused
from rbee.errors import ErrorCode
from rbee.events import Provisioning, Queued, parse_note
from rbee.keeper import records
from rbee.keeper.failures import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_OK,
    KeeperError,
    envelope_of,
    from_envelope,
    reason,
)
from rbee.keeper.local import LocalTrio, TrioPlan
from rbee.keeper.output import Output
from rbee.peer import Backoff
from rbee.ports import free_port, port_is_free
from rbee.sse import iter_messages

RETRY_DELAYS_S = (1.0, 2.0, 4.0)
BUSY_CODES = frozenset({ErrorCode.NO_IDLE_WORKERS, ErrorCode.ALL_SLOTS_BUSY})
# A queen that was starting knows no worker until its hives register theirs again (each heartbeat):
# then "no workers" is retried like "busy".
STARTING_CODES = BUSY_CODES | {ErrorCode.NO_WORKERS}
PROBE_TIMEOUT_S = 2.0
# A queen that refuses the connection may be starting (`rbee-keeper up` in another shell, a restart, a
# loaded machine): 6 more tries within 7.75 s before saying none answers.
QUEEN_STARTING = Backoff(attempts=7, first=0.25, cap=2.0)


@dataclass
class InferOptions:
    prompt: str
    queen_url: str
    model: str | None = None
    max_tokens: int = 100
    temperature: float = 0.7
    seed: int | None = None
    system: str | None = None
    raw: bool = False  # the prompt as plain text to continue, without the model's chat template
    json: bool = False
    keep: bool = False
    api_key: str | None = None
    no_autostart: bool = False
    slots: int = 1
    backend: str = "cpu"
    queen_port: int = 8080
    hive_port: int = 9200
    hive: str | None = None  # served only by this hive's workers


def request_body(opts: InferOptions) -> dict[str, Any]:
    """The queen's /v1/inference body: a chat turn (the worker renders it with the GGUF's own chat
    template, as instruct models expect), or with ``raw`` plain text to continue."""
    body: dict[str, Any] = {"max_tokens": opts.max_tokens, "temperature": opts.temperature, "stream": True}
    if opts.raw:
        body["prompt"] = f"{opts.system.rstrip()}\n\n{opts.prompt}" if opts.system else opts.prompt
    else:
        system = [{"role": "system", "content": opts.system}] if opts.system else []
        body["messages"] = [*system, {"role": "user", "content": opts.prompt}]
    if opts.seed is not None:
        body["seed"] = opts.seed
    if opts.model:
        body["model"] = opts.model
    if opts.hive:
        body["hive"] = opts.hive
    return body


# ---------------------------------------------------------------- what one stream produced


@dataclass
class StreamOutcome:
    started: float
    tokens: list[str] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    terminated: bool = False  # saw [DONE]
    cancelled: bool = False
    broken: str | None = None  # why the connection ended early
    worker: str | None = None
    request_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def complete(self) -> bool:
        return (self.done is not None and self.error is None and not self.cancelled
                and self.done.get("finish_reason") not in ("cancelled", "error", "deadline"))


def tokens_word(count: int) -> str:
    return f"{count} token{'' if count == 1 else 's'}"


def format_stats(outcome: StreamOutcome, finished_at: float) -> str:
    """``42 tokens · TTFT 120 ms · 88.1 tok/s · worker w1 · finish length`` (rate after the first token)."""
    done = outcome.done or {}
    count = int(done.get("total_tokens", len(outcome.tokens)))
    parts = [tokens_word(count)]
    if outcome.first_at is not None:
        parts.append(f"TTFT {1000 * (outcome.first_at - outcome.started):.0f} ms")
        span = (outcome.last_at or finished_at) - outcome.first_at
        received = len(outcome.tokens)
        rate = (received - 1) / span if received > 1 and span > 0 else received / max(finished_at - outcome.started,
                                                                                         1e-9)
        parts.append(f"{rate:.1f} tok/s")
    parts.append(f"{finished_at - outcome.started:.2f} s")
    worker = outcome.worker or done.get("worker_id")  # no header when the stream began before a worker was chosen
    if worker:
        parts.append(f"worker {worker}")
    if done.get("finish_reason"):
        parts.append(f"finish {done['finish_reason']}")
    if done.get("max_tokens_clipped"):
        parts.append(f"max tokens clipped to {done['max_tokens_clipped']}")
    return " · ".join(parts)


def save_partial(outcome: StreamOutcome, folder: Path | None = None) -> Path:
    folder = folder or records.partial_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tag = (outcome.request_id or "no-id")[:16]
    path = folder / f"infer-{time.strftime('%Y%m%d-%H%M%S')}-{tag}.txt"
    path.write_text(outcome.text)
    return path


# ---------------------------------------------------------------- talking to the queen


def queen_answers(client: QueenClient) -> Exception | None:
    """None when something answers HTTP at the queen URL, else the connection failure."""
    try:
        client.get("/health", timeout=PROBE_TIMEOUT_S)
        return None
    except requests.RequestException as exc:
        return exc


def queen_answers_soon(client: QueenClient, out: Output, backoff: Backoff = QUEEN_STARTING,
                       sleep: Callable[[float], None] = time.sleep) -> Exception | None:
    """:func:`queen_answers`, trying again on ``backoff`` while the connection is refused (a queen that is
    starting), saying so once; another failure (a timeout, no route) is answered at once."""
    def note() -> None:
        out.note(f"rbee-keeper: the queen at {client.base_url} refused the connection; trying "
                 f"{backoff.describe()} in case it is starting")
    try:
        while_refused(lambda: client.get("/health", timeout=PROBE_TIMEOUT_S), backoff, note, sleep)
        return None
    except requests.RequestException as exc:
        return exc


def open_with_retries(client: QueenClient, body: dict[str, Any], out: Output,
                      sleep: Callable[[float], None] = time.sleep,
                      busy: frozenset[str] = BUSY_CODES) -> tuple[requests.Response, float]:
    """The 200 stream response and when it was asked for; a busy fleet (``busy``: the codes that mean it)
    is retried on the 1-2-4 s schedule."""
    for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
        started = time.monotonic()
        try:
            response = while_refused(lambda: client.open_stream("/v1/inference", body), QUEEN_STARTING,
                                     lambda: out.note(f"rbee-keeper: the queen at {client.base_url} refused the "
                                                      f"request; trying {QUEEN_STARTING.describe()}"), sleep)
        except requests.RequestException as exc:
            raise KeeperError(f"the queen at {client.base_url} did not take the request ({reason(exc)})",
                              "check it with `rbee-keeper status`") from None
        if response.status_code == 200:
            return response, started
        error = envelope_of(response)
        response.close()
        if error["code"] not in busy:
            raise from_envelope(error)
        if delay is None:
            raise KeeperError(
                f"every worker stayed busy through {len(RETRY_DELAYS_S)} retries: {error['message']}",
                "retry later; add capacity with `rbee-keeper up --slots 4` or another hive; "
                "see who is busy with `rbee-keeper workers list`",
                code=error["code"],
            )
        why = "the queen has no worker yet" if error["code"] == ErrorCode.NO_WORKERS else "all workers are busy"
        out.note(f"rbee-keeper: {why}; retrying in {delay:.0f} s "
                 f"(retry {attempt} of {len(RETRY_DELAYS_S)})")
        sleep(delay)  # the backoff schedule itself
    raise AssertionError("unreachable")


class WaitNotes:
    """Says on stderr why the answer has not started: the queen's SSE comments while a request waits
    (``queued position=N``, ``provisioning model=M elapsed_s=S``), without a line every second."""

    PROVISIONING_EVERY_S = 15

    def __init__(self, note: Callable[[str], None]) -> None:
        self._note = note
        self._position: int | None = None
        self._provisioning_next = 0

    def __call__(self, comment: str) -> None:
        note = parse_note(comment)
        if isinstance(note, Queued) and note.position != self._position:
            self._position = note.position
            self._note(f"rbee-keeper: every worker is busy; waiting in line (position {note.position})")
        elif isinstance(note, Provisioning) and note.elapsed_s >= self._provisioning_next:
            self._provisioning_next = note.elapsed_s + self.PROVISIONING_EVERY_S
            self._note(f"rbee-keeper: no worker serves {note.model or 'this model'} yet; a hive is "
                       f"getting it ready (download, then a worker start) — {note.elapsed_s} s so far")


def read_answer(response: requests.Response, started: float, raw_json: bool, stdout: TextIO,
                on_comment: Callable[[str], None] | None = None) -> StreamOutcome:
    """Print the stream as it comes; Ctrl+C (KeyboardInterrupt) closes it, which is the cancel."""
    outcome = StreamOutcome(started=started, worker=response.headers.get("X-Rbee-Worker"),
                            request_id=response.headers.get("X-Request-Id"))
    try:
        for kind, data in iter_messages(response.iter_content(chunk_size=None)):
            if kind == "comment":
                if on_comment is not None:
                    on_comment(data)
                continue
            if data == "[DONE]":
                outcome.terminated = True
                break
            event = json.loads(data)
            if raw_json:
                stdout.write(data + "\n")
                stdout.flush()
            if "token" in event:
                now = time.monotonic()
                outcome.first_at = outcome.first_at or now
                outcome.last_at = now
                outcome.tokens.append(event["token"])
                if not raw_json:
                    stdout.write(event["token"])
                    stdout.flush()
            elif event.get("done"):
                outcome.done = event
            elif "error" in event:
                outcome.error = event["error"]
    except KeyboardInterrupt:
        outcome.cancelled = True
    except (requests.RequestException, ValueError) as exc:
        outcome.broken = exc.__class__.__name__
    finally:
        response.close()  # for a cancel, this dropped connection is what tells the queen
    if not outcome.terminated and outcome.done is None and not outcome.cancelled and outcome.broken is None:
        outcome.broken = "the connection closed before [DONE]"
    return outcome


def report(outcome: StreamOutcome, opts: InferOptions, out: Output, stdout: TextIO) -> int:
    finished_at = time.monotonic()
    if not opts.json and outcome.text and not outcome.text.endswith("\n"):
        stdout.write("\n")
        stdout.flush()
    if outcome.cancelled:
        out.note(f"rbee-keeper: cancelled after {tokens_word(len(outcome.tokens))}; the request was stopped at the worker")
        return EXIT_CANCELLED
    if outcome.complete:
        out.note(format_stats(outcome, finished_at))
        return EXIT_OK
    if outcome.error is not None:
        why = f"{outcome.error.get('message', 'unknown error')} [{outcome.error.get('code', '?')}]"
    elif outcome.done is not None:
        finish = outcome.done.get("finish_reason")
        why = ("the request's deadline passed (the queen's --default-timeout)" if finish == "deadline"
               else f"the worker ended the answer early (finish {finish})")
    else:
        why = f"the stream was cut ({outcome.broken})"
    out.note(f"rbee-keeper: error: the answer stopped after {tokens_word(len(outcome.tokens))}: {why}")
    if outcome.tokens:
        out.note(f"rbee-keeper: partial answer saved to {save_partial(outcome)}")
    out.note("rbee-keeper: next: retry; check the worker with `rbee-keeper workers health` "
             "and `rbee-keeper logs llm-worker-rbee`")
    return EXIT_ERROR


def ask(client: QueenClient, opts: InferOptions, out: Output, stdout: TextIO, busy: frozenset[str] = BUSY_CODES) -> int:
    response, started = open_with_retries(client, request_body(opts), out, busy=busy)
    return report(read_answer(response, started, opts.json, stdout, WaitNotes(out.note)), opts, out, stdout)


# ---------------------------------------------------------------- the command


def run(opts: InferOptions, out: Output, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    client = QueenClient(opts.queen_url, api_key=opts.api_key, timeout=10)
    failure = queen_answers(client)
    busy = BUSY_CODES
    if failure is not None and _expects_a_queen(opts):
        failure = queen_answers_soon(client, out)  # refused: perhaps one is starting there
        busy = STARTING_CODES  # it was: its workers may not be registered again yet
    if failure is None:
        return ask(client, opts, out, stdout, busy)
    if opts.hive:  # a local trio started now would have no such hive
        raise KeeperError(f"no queen answers at {opts.queen_url} ({reason(failure)}); --hive {opts.hive} needs "
                          "the queen that runs that hive", "check --queen-url (env RBEE_QUEEN_URL)")
    if opts.no_autostart:
        # One line: what failed and the command that fixes it.
        raise KeeperError(f"no queen answers at {opts.queen_url} ({reason(failure)}) and autostart is off; "
                          "start one with: rbee-keeper up")
    if not is_loopback(opts.queen_url):
        raise KeeperError(f"no queen answers at {opts.queen_url} ({reason(failure)}); it is not on this machine, "
                          "so none is started here", "check --queen-url (env RBEE_QUEEN_URL) and that the queen runs")
    return run_ephemeral(opts, out, stdout)


def _expects_a_queen(opts: InferOptions) -> bool:
    """Whether a queen should answer at the URL (on another machine, one that runs a named hive, or the
    local one `rbee-keeper up` recorded), so a refused connection is worth a few more tries; otherwise the
    answer is at once (autostart starts a local trio, or the one-line error says how to)."""
    if opts.hive or not is_loopback(opts.queen_url):
        return True
    record = records.read_record()
    return record is not None and record.anything_running()


def ephemeral_plan(opts: InferOptions) -> TrioPlan:
    """Free ports for a one-off trio; with --keep, the usual ports when free so later commands find it."""
    queen_port = free_port()
    hive_port = free_port()
    if opts.keep:
        wanted = _loopback_port(opts.queen_url) or opts.queen_port
        queen_port = wanted if port_is_free(wanted) else queen_port
        hive_port = opts.hive_port if port_is_free(opts.hive_port) else hive_port
    return TrioPlan(queen_port=queen_port, hive_port=hive_port, log_dir=records.log_dir(), model=opts.model,
                    slots=opts.slots, backend=opts.backend)


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def _loopback_port(url: str) -> int | None:
    return urlparse(url).port if is_loopback(url) else None


def run_ephemeral(opts: InferOptions, out: Output, stdout: TextIO) -> int:
    existing = records.read_record()
    if opts.keep and existing is not None and existing.anything_running():
        raise KeeperError(f"a local cluster is already recorded (queen {existing.queen.url}) but does not answer "
                          f"at {opts.queen_url}", f"use --queen-url {existing.queen.url}, or `rbee-keeper down`")
    plan = ephemeral_plan(opts)
    out.note(f"rbee-keeper: no queen at {opts.queen_url}; starting a local queen + hive + worker "
             f"(logs: {plan.log_dir})")
    trio = LocalTrio(plan)
    t0 = time.monotonic()
    trio.start()
    try:
        out.note(f"rbee-keeper: local cluster ready in {time.monotonic() - t0:.1f} s (queen {plan.queen_url})")
        return ask(QueenClient(plan.queen_url, timeout=10), opts, out, stdout)
    finally:
        if opts.keep:
            records.write_record(trio.record(keeper_pid=None))
            out.note(f"rbee-keeper: left running: queen {plan.queen_url}, hive {plan.hive_url}; "
                     "stop them with: rbee-keeper down")
        else:
            trio.stop()
