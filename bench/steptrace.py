"""Run llm-worker-rbee with a per-step trace of its decode loop (a diagnostic, not a benchmark).

    python bench/steptrace.py TRACE.jsonl -- <llm-worker-rbee arguments>

Each line of TRACE.jsonl is one event, times in ms from the first: ``submit`` (the loop hands a
job over), ``admit`` (the decode thread takes it), ``step`` (tokens in the batch, outputs,
``decode`` = time inside llama_decode, ``post`` = sampling and emitting after it, ``gap`` = time
since the previous step ended, ``reused`` = llama.cpp's count so far of steps that reused the
graph of the step before). Written when the worker exits.
"""

from __future__ import annotations

import atexit
import json
import sys
import time

from rbee.worker import engine as eng
from rbee.worker.__main__ import main

events: list[dict] = []
T0 = time.perf_counter()
lc = eng.lc
_decode = lc.llama_decode
_last_end = [0.0]
_current: dict = {}


def now() -> float:
    return round((time.perf_counter() - T0) * 1000, 3)


def traced_decode(ctx, batch):  # type: ignore[no-untyped-def]
    start = now()
    rc = _decode(ctx, batch)
    _current.update(start=start, decode=round(now() - start, 3), tokens=batch.n_tokens)
    return rc


def wrap_step(step):  # type: ignore[no-untyped-def]
    def traced(self):  # type: ignore[no-untyped-def]
        begin = now()
        step(self)
        end = now()
        events.append({"ev": "step", "t": begin, "gap": round(begin - _last_end[0], 3), "tokens": _current.get("tokens"),
                       "seqs": len(self._active), "decode": _current.get("decode"),
                       "pre": round(_current.get("start", begin) - begin, 3),
                       "post": round(end - _current.get("start", begin) - _current.get("decode", 0), 3),
                       "reused": self.graphs_reused})
        _last_end[0] = end
    return traced


def wrap(name, fn):  # type: ignore[no-untyped-def]
    def traced(self, job):  # type: ignore[no-untyped-def]
        events.append({"ev": name, "t": now(), "slot": job.slot})
        return fn(self, job)
    return traced


eng.lc.llama_decode = traced_decode
eng.Engine._step = wrap_step(eng.Engine._step)
eng.Engine._admit = wrap("admit", eng.Engine._admit)
eng.Engine.submit = wrap("submit", eng.Engine.submit)


def dump(path: str = sys.argv[1]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)


atexit.register(dump)
if __name__ == "__main__":
    args = sys.argv[2:]
    main(args[1:] if args[:1] == ["--"] else args)
