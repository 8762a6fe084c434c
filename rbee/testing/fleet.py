"""The fleet of the fault scenarios (``@fleet``, ``@fixture.hosts``), shared by their step files: a
keyed queen on the control host with short fault timeouts, one real worker on each host's hive, and
the "measured: ..." lines each fault prints for the run's record.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from rbee.client import HiveClient, QueenClient, WorkerClient
from rbee.testing.clients import at_once, wait_until

HIVE_PORT = 9200
API_KEY = f"ak-{uuid.uuid4().hex}"      # clients of the queen
CLUSTER_KEY = f"ck-{uuid.uuid4().hex}"  # queen, hives and workers among themselves (what listens beyond loopback is keyed)
HEARTBEAT_TIMEOUT = 2  # seconds of silence before the queen drops a worker from routing
STALL_TIMEOUT = 4      # seconds without a byte before the queen gives up on a stream (a cut link's bound)
SLOTS = 2  # per worker: requests at once that fit the fleet never race a slot being freed
ROUTED = ("idle", "busy")


def _k(context) -> float:
    return context.cluster.k


def _queen(context) -> QueenClient:
    assert context.cluster.queen is not None
    return context.cluster.queen


def measured(context, what: str, seconds: float) -> None:
    line = f"measured: {what}: {seconds:.2f} s"
    context.fleet_timings.append(line)
    print(line, file=sys.__stdout__, flush=True)  # past behave's capture, for the run's record


def start_fleet_queen(context, *extra: str) -> QueenClient:
    """The queen on the control host, every address, keyed, with the fault timeouts; its state dir kept.
    Streams are not resumed (``--max-resumes 0``) unless ``extra`` says otherwise: the fault scenarios
    show what a client of a broken worker hears when no other worker takes over."""
    bed = context.testbed
    context.fleet_run = f"fleet-{uuid.uuid4().hex[:8]}"
    context.fleet_timings = []
    state = Path(context.log_dir) / context.fleet_run / "queen-state"
    queen = context.cluster.start_queen(
        "--host", "0.0.0.0", "--state-dir", str(state), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
        "--stall-timeout", str(STALL_TIMEOUT), "--queue-timeout", "120", "--api-key", API_KEY,
        "--cluster-key", CLUSTER_KEY, "--max-resumes", "0", *extra)
    queen.session.headers["Authorization"] = f"Bearer {API_KEY}"
    port = queen.base_url.rsplit(":", 1)[1]
    context.control_queen_url = f"http://{bed.control_address}:{port}"
    return queen


def start_fleet_hive(context, name: str, queen_url: str | None = None) -> HiveClient:
    """A hive started directly in host ``name``'s namespace (no SSH), bound to the host's address, serving
    ``queen_url`` (default: the queen on the control host; ``A,B`` for two)."""
    host = context.testbed.host(name)
    base = Path(context.log_dir) / context.fleet_run / name
    base.mkdir(parents=True)
    log = open(base / "hive.log", "ab")  # noqa: SIM115 - the hive's log, open for as long as it runs
    context.add_cleanup(log.close)
    host.run([f"{sys.prefix}/bin/rbee-hive", "--host", host.address, "--port", str(HIVE_PORT),
              "--queen-url", queen_url or context.control_queen_url, "--node-name", name, "--cluster-key",
              CLUSTER_KEY, "--models-dir", str(base / "models"), "--log-dir", str(base / "logs")],
             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    hive = HiveClient(f"http://{host.address}:{HIVE_PORT}", api_key=CLUSTER_KEY)
    wait_until(lambda: hive.get("/v1/health").status_code == 200, 30 * _k(context), what=f"the hive on {name}")
    return hive


def spawn_fleet_workers(context, hives: dict[str, HiveClient]) -> None:
    """One real worker on each hive, registered and idle at the queen, each warmed up with one answer."""
    bed, queen = context.testbed, _queen(context)
    names = list(hives)
    answers = at_once(*[lambda h=hives[n]: h.post(  # the hive answers once its worker is ready
        "/v1/workers/spawn", json={"slots": SLOTS, "wait": True}, timeout=180 * _k(context)) for n in names],
        timeout=200 * _k(context))
    spawned = {}
    for name, r in zip(names, answers, strict=True):
        assert not isinstance(r, BaseException) and r.status_code == 200, (name, r if isinstance(r, BaseException)
                                                                         else r.text)
        spawned[name] = r.json()["worker_id"]
    for name, worker_id in spawned.items():
        wait_until(lambda w=worker_id: (info := queen.worker(w)) is not None and info.state == "idle",
                   180 * _k(context), what=f"worker {worker_id} on {name} registered and idle at the queen")
    context.fleet_workers = spawned  # host -> worker id
    context.fleet_worker_urls = {name: queen.worker(w).url for name, w in spawned.items()}
    for name, url in context.fleet_worker_urls.items():
        assert url.startswith(f"http://{bed.host(name).address}:"), (name, url)
    # A cold worker's first answer can take longer than the stall timeout on a busy machine: each
    # answers once, asked directly, before the queen sends it anything.
    for name, url in context.fleet_worker_urls.items():
        warm = WorkerClient(url, api_key=CLUSTER_KEY).stream("/v1/inference", {"prompt": "Hello", "max_tokens": 2, "ignore_eos": True},
                                        read_timeout=120 * _k(context))
        assert warm.status == 200 and warm.terminated and warm.done, (name, warm.status, warm.error)


