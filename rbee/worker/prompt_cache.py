"""The prompt cache's decisions, free of llama.cpp: how much of a new prompt a slot's KV already
holds, and which free slot a request should take.

Each slot keeps the KV of what it last decoded (prompt and answer) after its request ends. A new
prompt that starts with the same tokens, the next turn of a chat above all, needs only its new
suffix decoded. Slots are chosen as llama-server chooses them (its slot similarity): the free slot
whose tokens share the longest prefix with the prompt, provided that prefix is a real share of the
prompt (``MIN_SIMILARITY``); otherwise the least recently used free slot, so that a new conversation
(which shares no more than a system prompt with the others) lands where it destroys the least.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rbee.prefix import to_wire

# llama-server's --slot-prompt-similarity default: below this share of the prompt, a slot's match
# is not worth evicting what the slot holds for.
MIN_SIMILARITY = 0.1
_CHUNK = 256  # compare this many tokens at a time (one C-level slice comparison), then one by one


@dataclass(frozen=True, slots=True)
class Held:
    """What one free slot's KV cells hold, as the engine last published it."""

    tokens: tuple[int, ...] = ()
    released: int = 0  # when the slot was last released, as a counter (0: never used)
    exact: int = 0  # how many leading tokens' cells were computed on the reference kernels (Exactness)

    def for_request(self, reproducible: bool) -> Held:
        """What a request may reuse of it: a reproducible one only the exactly computed cells."""
        tokens = reusable_part(self.tokens, self.exact, reproducible)
        return self if tokens is self.tokens else Held(tokens, self.released, self.exact)


def reusable_part(tokens: tuple[int, ...], exact: int, reproducible: bool) -> tuple[int, ...]:
    """The tokens whose cells a request may reuse: a reproducible one only the first ``exact``
    (computed on the reference kernels, :class:`Exactness`), any other all of them."""
    return tokens[:exact] if reproducible and exact < len(tokens) else tokens


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    if type(a) is not type(b):  # a tuple slice never equals a list slice
        a, b = tuple(a), tuple(b)
    n = min(len(a), len(b))
    i = 0
    while i < n:
        j = min(i + _CHUNK, n)
        if a[i:j] != b[i:j]:
            break
        i = j
    else:
        return n
    while a[i] == b[i]:  # the first difference lies within this chunk
        i += 1
    return i


def reusable(held: Sequence[int], prompt: Sequence[int]) -> int:
    """How many of the prompt's tokens can keep their KV: the common prefix, less at least the
    prompt's last token, which is decoded again for the logits the first answer token is sampled from."""
    return min(common_prefix(held, prompt), len(prompt) - 1) if prompt else 0


def rank_slots(prompt: Sequence[int], free: Mapping[int, Held], use_cache: bool = True,
               min_similarity: float = MIN_SIMILARITY, elsewhere: int = 0) -> list[int]:
    """The free slots in the order a request for ``prompt`` should take them.

    First the slots whose held tokens share more than ``min_similarity`` of the prompt, longest
    prefix first; then the rest, least recently used first (never used ones before all). Without
    ``use_cache`` (the request opted out) only the latter order counts; nor does it when a saved
    state in host RAM would give more of the prompt (``elsewhere`` tokens) than any free slot:
    the state is then restored into the slot whose loss costs least.
    """

    def least_recent(slot: int) -> tuple[int, int]:
        return free[slot].released, slot

    if not use_cache or not prompt:
        return sorted(free, key=least_recent)
    key = tuple(prompt)
    shared = {slot: common_prefix(held.tokens, key) for slot, held in free.items()}
    similar = [slot for slot, n in shared.items() if n > 0 and n > min_similarity * len(key)
               and n >= elsewhere]
    similar.sort(key=lambda slot: (-shared[slot], *least_recent(slot)))
    others = sorted((slot for slot in free if slot not in similar), key=least_recent)
    return similar + others


class Exactness:
    """Per slot, how many leading cells were computed on ggml's reference kernels (cpu_reference), whose
    result for a token depends on nothing else in its batch. A reproducible request (greedy, seeded)
    reuses no more of a slot than that, so its answer equals the one decoded from scratch; the rest of
    the traffic runs on the fast kernels and reuses everything. Without ``tracking`` (the switch is not
    there, or it is turned off) every cell counts, as there is no guarantee to keep. Decode thread only.

    Cells are only ever appended at the end of what a slot holds (or cut back), so one count per slot
    says it all: a step on the reference kernels extends it when it was whole up to where the step
    writes; a step on the fast kernels ends it there."""

    def __init__(self, slots: int, tracking: bool) -> None:
        self.tracking = tracking
        self._exact = [0] * slots

    def of(self, slot: int, cells: int) -> int:
        """Of the slot's ``cells`` leading cells, how many were computed exactly."""
        return min(self._exact[slot], cells) if self.tracking else cells

    def wrote(self, slot: int, pos: int, n: int, exact: bool) -> None:
        """A step wrote cells ``pos`` … ``pos + n - 1`` of the slot (``pos``: all it held before)."""
        if not exact:
            self._exact[slot] = min(self._exact[slot], pos)
        elif self._exact[slot] >= pos:
            self._exact[slot] = pos + n

    def restored(self, slot: int, exact: int) -> None:
        """The slot's cells were replaced by a saved state of which ``exact`` leading cells were exact."""
        self._exact[slot] = exact


class Holdings:
    """Which queen-cut prompt (:mod:`rbee.prefix` hashes) each slot's KV holds, for the worker's report
    to the queen. Decode thread only; :meth:`report` is called there too, so each report is one state.

    A slot is tagged with its request's hashes when the request takes it, and untagged when the
    request ends before its prompt was decoded whole. States kept in host RAM carry the tags of the
    slot they came from (``RamCache``). The version grows with every report, across restarts as well
    (it starts from the clock), so the newest report wins however they arrive."""

    def __init__(self, slots: int, clock: int = 0) -> None:
        self._tags: list[tuple[bytes, ...]] = [()] * slots
        self._version = clock
        self._wire: dict[tuple[bytes, ...], str] = {}  # tags -> their wire string (reports repeat them)

    def of(self, slot: int) -> tuple[bytes, ...]:
        return self._tags[slot]

    def tag(self, slot: int, tags: tuple[bytes, ...]) -> None:
        self._tags[slot] = tags

    def report(self, kept: Iterable[tuple[bytes, ...]] = ()) -> tuple[int, list[str]]:
        """(version, one wire string per distinct held prompt): the slots' and ``kept`` (RAM)."""
        self._version += 1
        held = {tags for tags in (*self._tags, *kept) if tags}
        wire = {tags: self._wire.get(tags) or to_wire(tags) for tags in held}
        self._wire = wire
        return self._version, sorted(wire.values())
