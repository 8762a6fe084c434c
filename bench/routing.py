"""Micro-benchmark of the queen's routing: admission to lease, with 4, 100 and 1,000 workers registered.

No network and no processes: the queen's own Registry, AdmissionQueue, scheduler and prefix index in
this one process, as the dispatcher uses them (``AdmissionQueue.admit`` with the cache-aware affinity
of :meth:`rbee.queen.dispatch.Dispatcher._affinity`). The fleet has up to 100 models, 4 slots per
worker, and half of every worker's slots already leased (so the pick has load to weigh); each timed call
admits one request for a random model (seeded) and its lease is then given back, untimed. A second
column times the same with requests already waiting in the queue (the pump's path: a lease given back
is handed to a waiter). Prints p50/p99 per fleet size against the 100 µs target.

    python bench/routing.py [--workers 4,100,1000] [--models 100] [--samples 20000]

See bench/README.md. This is a script, not a test: nothing under tests/ or features/ runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time

from common import environment, percentile, print_table, rbee_revision

from rbee.prefix import prefix_hashes
from rbee.protocol import InferenceRequest, WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.prefix_index import PrefixIndex
from rbee.queen.registry import Registry

TARGET_US = 100.0
SLOTS = 4


def build(workers: int, models: int, rng: random.Random) -> tuple[Registry, AdmissionQueue, PrefixIndex, int]:
    """A fleet of ``workers`` over ``min(models, workers)`` models, half its slots leased."""
    models = min(models, workers)
    registry = Registry()
    queue = AdmissionQueue(registry, max_size=100_000, timeout=30.0)
    for i in range(workers):
        registry.register(WorkerRegistration(worker_id=f"w{i}", url=f"http://127.0.0.1:{20000 + i}",
                                             model_ref=f"model-{i % models}", slots_total=SLOTS))
    for m in range(models):  # half of each model's slots (the least-loaded pick spreads them: 2 of 4 each)
        for _ in range(len(registry.list(f"model-{m}")) * SLOTS // 2):
            registry.acquire(f"model-{m}")
    prefixes = PrefixIndex()
    for i in range(workers):  # each worker has been sent a few conversations before
        for c in range(4):
            prefixes.record(f"w{i}", prefix_hashes(conversation(i * 4 + c)))
    return registry, queue, prefixes, models


def conversation(n: int) -> InferenceRequest:
    return InferenceRequest(messages=[{"role": "system", "content": f"You are assistant {n}."},
                                      {"role": "user", "content": f"Question {n}: what is {n} + {n}?"}])


async def admit_times(workers: int, models: int, samples: int, seed: int) -> list[float]:
    """Seconds per ``admit`` (a free slot exists: the immediate path)."""
    rng = random.Random(seed)
    registry, queue, prefixes, models = build(workers, models, rng)
    times = []
    for _ in range(samples):
        model = f"model-{rng.randrange(models)}"
        hashes = prefix_hashes(conversation(rng.randrange(workers * 4)))
        start = time.perf_counter()
        lease, _ = await queue.admit(model, "key", affinity=lambda w, h=hashes: prefixes.depth(w.worker_id, h))
        times.append(time.perf_counter() - start)
        registry.release(lease)
    return times


async def handover_times(workers: int, models: int, samples: int, seed: int, waiting: int = 64) -> list[float]:
    """Seconds from a lease given back to the waiter's lease taken (``waiting`` requests queued for
    one full model, across 8 keys): the pump's path, with the rest of the fleet registered."""
    rng = random.Random(seed)
    registry, queue, _, models = build(workers, models, rng)
    model = "model-0"
    held = []
    while registry.has_room(model):
        held.append(registry.acquire(model))
    times: list[float] = []

    async def waiter(key: str) -> None:
        lease, _ = await queue.admit(model, key)
        times.append(time.perf_counter() - released[0])
        held.append(lease)

    released = [0.0]
    tasks = [asyncio.ensure_future(waiter(f"k{i % 8}")) for i in range(waiting)]
    await asyncio.sleep(0)
    for _ in range(min(samples, 2000)):
        if not held:
            tasks.append(asyncio.ensure_future(waiter(f"k{rng.randrange(8)}")))
            await asyncio.sleep(0)
            continue
        lease = held.pop(rng.randrange(len(held)))
        tasks.append(asyncio.ensure_future(waiter(f"k{rng.randrange(8)}")))
        await asyncio.sleep(0)  # the new waiter is in line
        released[0] = time.perf_counter()
        registry.release(lease)  # the pump hands it on at once (the waiter's future is set here)
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return times


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(prog="bench/routing.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="4,100,1000", help="fleet sizes, comma-separated")
    p.add_argument("--models", type=int, default=100, help="models over the fleet (at most one per worker)")
    p.add_argument("--samples", type=int, default=20000, help="timed admissions per fleet size")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    print("environment")
    print_table(["what", "value"], environment({"rbee commit": rbee_revision()}))
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        gc.collect()
        admit = asyncio.run(admit_times(workers, args.models, args.samples, args.seed))
        handover = asyncio.run(handover_times(workers, args.models, args.samples, args.seed))
        p50 = percentile(admit, 50) * 1e6
        rows.append([str(workers), str(min(args.models, workers)), us(percentile(admit, 50)),
                     us(percentile(admit, 99)), us(percentile(handover, 50)), us(percentile(handover, 99)),
                     "met" if p50 < TARGET_US else "NOT met"])
    print(f"\nadmission to lease, µs ({args.samples} admissions per fleet size; target p50 < {TARGET_US:g} µs)")
    print_table(["workers", "models", "admit p50", "admit p99", "handover p50", "handover p99", "target"], rows)


if __name__ == "__main__":
    main()
