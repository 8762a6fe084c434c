"""Where a cold start puts a new worker: the placement policy, over the hives' spawn plans.

Each live hive that has the model (or can fetch it) answers what a spawn would do now
(``POST /v1/workers/plan``: the footprint estimate, its headroom, evictions). The order:

1. hives where it fits as things are, most headroom left after the estimate first;
2. hives where it fits once idle workers of other models are evicted, fewest evictions first;
3. hives that would have to download it first (their estimate is unknown until then; another hive's
   estimate of the same model stands in when there is one), most headroom first.

Hives where it fits only once busy or recently started workers may go are *later*: the cold start
waits for them. When no hive is in any of these, nothing fits anywhere: 507 INSUFFICIENT_RESOURCES
with, per hive, what was needed and what was free. Pure: plans in, a decision out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import SpawnPlan

MIB = 1024 * 1024


@dataclass(frozen=True)
class Offer:
    """One hive's answer: its plan, or None when it could not say (an older hive: try it as it is)."""

    hive_id: str
    plan: SpawnPlan | None


@dataclass(frozen=True)
class Decision:
    order: list[str] = field(default_factory=list)  # hives to try, best first
    later: list[str] = field(default_factory=list)  # hives where it fits once workers may be evicted
    blocking: dict[str, list[str]] = field(default_factory=dict)  # hive -> workers whose eviction must wait
    refused: list[Offer] = field(default_factory=list)  # where it never fits


def _needed(plan: SpawnPlan) -> int | None:
    return plan.needed_host_bytes if plan.backend == "cpu" else plan.needed_device_bytes


def decide(offers: list[Offer]) -> Decision:
    known = next((p for o in offers if (p := o.plan) is not None and _needed(p) is not None), None)
    now: list[tuple[tuple, str]] = []
    decision = Decision()
    for offer in offers:
        plan = offer.plan
        if plan is None:
            now.append(((3, 0), offer.hive_id))
            continue
        free = plan.free_bytes if plan.free_bytes is not None else 0
        need = _needed(plan)
        if need is None:  # not on that hive yet: judged by another hive's estimate, when there is one
            guess = _needed(known) if known is not None else None
            if guess is None or guess <= free + _reclaimable(plan):
                now.append(((2, -free), offer.hive_id))
            else:
                decision.refused.append(offer)
        elif plan.fits and not plan.evict:
            now.append(((0, -(free - need)), offer.hive_id))
        elif plan.fits:
            now.append(((1, len(plan.evict), -free), offer.hive_id))
        elif plan.later:
            decision.later.append(offer.hive_id)
            decision.blocking[offer.hive_id] = list(plan.blocking)
        else:
            decision.refused.append(offer)
    decision.order.extend(hive for _, hive in sorted(now))
    return decision


def _reclaimable(plan: SpawnPlan) -> int:
    place = next((m for m in plan.memory if (m.backend, m.index) == (plan.backend, plan.device or 0)), None)
    return place.reclaimable_bytes if place is not None else 0


def no_room(model: str, offers: list[Offer]) -> RbeeError:
    """507 INSUFFICIENT_RESOURCES: nothing fits anywhere, with each hive's figures."""
    hives = []
    for o in offers:
        p = o.plan
        if p is None:
            continue
        hives.append({"hive_id": o.hive_id, "needed_bytes": _needed(p), "free_bytes": p.free_bytes,
                      "device": "host RAM" if p.backend == "cpu" else f"{p.backend}:{p.device}",
                      "reason": p.reason})
    figures = "; ".join(f"{h['hive_id']}: needs {_mib(h['needed_bytes'])} MiB of {h['device']}, "
                        f"{_mib(h['free_bytes'])} MiB free" for h in hives)
    return RbeeError(
        ErrorCode.INSUFFICIENT_RESOURCES,
        f"No hive has room for a worker on '{model}' ({figures or 'no figures'}). Stop workers of other models, "
        "raise a hive's --ram-budget-mb/--vram-budget-mb, add a hive, or use a smaller quantization.",
        {"model": model, "hives": hives},
    )


def _mib(n: int | None) -> str:
    return "?" if n is None else str(n // MIB)
