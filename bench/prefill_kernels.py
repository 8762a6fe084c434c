"""Benchmark what the batch-invariant reference kernels cost: prompt decoding in one worker engine,
for reproducible requests (temperature 0: the reference kernels) against sampled ones (the fast
kernels), in the same process, interleaved.

Two shapes, both as a chat meets them: a whole prompt decoded from scratch, and a new suffix decoded
after a long prefix the slot already holds (a chat's next turn: its rows attend to every cell before
them). Prints tokens/s per shape and the ratio reference / fast; one token is generated, so the
time is the prompt's.

    python bench/prefill_kernels.py [--prompt 1400] [--cached 1100] [--suffix 300] [--reps 3]

In process, on the engine itself (no HTTP): this measures llama.cpp's kernels as the engine drives
them. A script, not a test: nothing under tests/ or features/ runs it.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time

from common import (
    BenchError,
    QuietGate,
    add_gate_args,
    environment,
    gate_from_args,
    median,
    print_table,
    rbee_revision,
    run_script,
    warn_if_busy,
)

from rbee.events import Done
from rbee.models import default_model_path
from rbee.worker.engine import Engine, EngineConfig, Job, Sampling, Work

KINDS = {"reference (temperature 0)": 0.0, "fast (temperature 0.8)": 0.8}
_ids = itertools.count()


def decode(engine: Engine, slot: int, prompt: list[int], temperature: float, cache: bool) -> tuple[float, int]:
    """Seconds until the done event of a one-token answer to ``prompt``, and its cached tokens."""
    ended = threading.Event()
    done: list[Done] = []

    def emit(event: object) -> None:
        if isinstance(event, Done):
            done.append(event)
            ended.set()

    work = Work(request_id=f"pk{next(_ids)}", prompt_tokens=prompt, max_tokens=1,
                sampling=Sampling(temperature=temperature), stop=[], cache_prompt=cache)
    started = time.perf_counter()
    engine.submit(Job(work, slot, emit, lambda: None))
    if not ended.wait(600):
        raise BenchError("no done event within 600 s")
    return time.perf_counter() - started, done[0].cached_tokens or 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=int, default=1400, help="tokens of the prompt decoded from scratch")
    p.add_argument("--cached", type=int, default=1100, help="tokens the slot holds before the suffix")
    p.add_argument("--suffix", type=int, default=300, help="new tokens decoded after the cached ones")
    p.add_argument("--reps", type=int, default=3, help="measurements of each kind and shape (interleaved)")
    p.add_argument("--threads", type=int, default=2)
    add_gate_args(p, "measurement")
    args = p.parse_args()
    warn_if_busy()
    gate: QuietGate = gate_from_args(args)
    need = max(args.prompt, args.cached + args.suffix)
    engine = Engine(EngineConfig(model_path=default_model_path(), slots=2, ctx_size=need + 64, threads=args.threads))
    engine.load()
    engine.start()
    try:
        if not engine.batch_invariant:
            raise BenchError("this llama.cpp has no switchable reference kernels: nothing to compare")
        text = " ".join(f"Line {i}: the hive by the river had {i % 7} frames of brood and {i % 5} of honey."
                        for i in range(need // 8))
        tokens = engine.tokenize(text)
        if len(tokens) < need:
            raise BenchError(f"the text gave {len(tokens)} tokens, fewer than the {need} needed")
        whole, history, turn = tokens[:args.prompt], tokens[:args.cached], tokens[:args.cached + args.suffix]
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.reps):
            for kind, temperature in KINDS.items():
                for attempt in range(args.retries + 1):  # the engine runs in this process: the gate counts it
                    gate.wait()
                    gate.begin()
                    seconds, _ = decode(engine, 0, whole, temperature, cache=False)
                    decode(engine, 1, history, temperature, cache=False)
                    suffix_s, cached = decode(engine, 1, turn, temperature, cache=True)
                    if attempt == args.retries or not gate.disturbed():
                        break
                    gate.discarded += 1
                gate.foreign_seen.append(gate.foreign())
                if cached != args.cached:
                    raise BenchError(f"the suffix reused {cached} tokens, not the {args.cached} the slot held")
                rates.setdefault((kind, "whole"), []).append(len(whole) / seconds)
                rates.setdefault((kind, "suffix"), []).append(args.suffix / suffix_s)
    finally:
        engine.close()
    print(f"# bench/prefill_kernels.py --prompt {args.prompt} --cached {args.cached} --suffix {args.suffix} "
          f"--reps {args.reps}, rbee {rbee_revision()}")
    print_table(["what", "value"], environment({"threads": str(args.threads)}, ("llama-cpp-python",)))
    shapes = {"whole": f"{args.prompt} tokens from scratch", "suffix": f"{args.suffix} after {args.cached} cached"}
    rows = []
    for shape, label in shapes.items():
        ref, fast = (median(rates.get((kind, shape), [float("nan")])) for kind in KINDS)
        rows.append([label, f"{ref:.0f}", f"{fast:.0f}", f"{ref / fast:.2f}×"])
    print_table(["prompt tokens/s, median", *KINDS, "reference / fast"], rows)
    if gate.enabled:
        seen = median(gate.foreign_seen) if gate.foreign_seen else 0.0
        print(f"quiet gate: waited {gate.waited:.0f} s, repeated {gate.discarded} disturbed measurements; "
              f"others used {seen:.2f} cores (median) during the kept ones")


if __name__ == "__main__":
    run_script(main)
