"""Many concurrent streams against the queen, some abandoned mid-way: how every one of them ended."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import aiohttp

from rbee import sse
from rbee.events import Done, Failed


@dataclass
class Outcome:
    kind: str  # "done" | "error-event" | "refused" | "abandoned" | "broken"
    detail: str = ""


async def _one(session: aiohttp.ClientSession, url: str, body: dict, abandon_after: int | None,
               timeout: float) -> Outcome:
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as r:
                if r.status != 200:
                    payload = await r.json(content_type=None)
                    return Outcome("refused", payload["error"]["code"])
                seen = 0
                ended = None
                async for data in sse.aiter_data(r.content.iter_any()):
                    event = sse.parse_event(data)
                    if event is None:
                        return ended or Outcome("broken", "[DONE] without a done or error event")
                    if isinstance(event, Failed):
                        ended = Outcome("error-event", event.code)
                    elif isinstance(event, Done):
                        ended = Outcome("done", event.finish_reason)
                    seen += 1
                    if abandon_after is not None and seen >= abandon_after:
                        r.close()  # drop the TCP connection mid-stream
                        return Outcome("abandoned")
                return Outcome("broken", "stream closed before [DONE]")
    except TimeoutError:
        return Outcome("broken", f"no end within {timeout}s")
    except aiohttp.ClientError as exc:
        return Outcome("broken", exc.__class__.__name__)


async def _run(queen_url: str, count: int, abandon_share: float, max_tokens: int, timeout: float,
               seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    url = f"{queen_url}/v1/inference"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        jobs = []
        for i in range(count):
            abandon = rng.randint(1, max_tokens) if rng.random() < abandon_share else None
            body = {"prompt": f"request {i}", "max_tokens": max_tokens, "temperature": 0.5}
            jobs.append(_one(session, url, body, abandon, timeout))
        return await asyncio.gather(*jobs)


def run_load(queen_url: str, count: int, abandon_share: float = 0.2, max_tokens: int = 20,
             timeout: float = 120.0, seed: int = 7) -> list[Outcome]:
    return asyncio.run(_run(queen_url, count, abandon_share, max_tokens, timeout, seed))


def summary(outcomes: list[Outcome]) -> Counter:
    return Counter(f"{o.kind}:{o.detail}" if o.detail else o.kind for o in outcomes)
