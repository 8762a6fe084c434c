"""rbee-keeper's hives commands as typed (argument parsing), the list as a person reads it, and the
version rule the queen applies to hives and workers."""

from __future__ import annotations

import pytest

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.keeper.cli import build_parser
from rbee.keeper.hives import ago, node_rows
from rbee.protocol import HiveRegistration, WorkerRegistration
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.registry import Registry
from rbee.versions import compatible, from_version_output


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_hives_add_takes_the_ssh_target_and_how_to_log_in():
    args = parse("hives", "add", "alpha", "--ssh", "root@10.0.0.2:2222", "--identity", "~/.ssh/id_rbee",
                 "--remote-dir", "/srv/rbee", "--hive-port", "9300", "--accept-new-host-key", "--replace")
    assert (args.name, args.ssh, args.identity, args.remote_dir) == ("alpha", "root@10.0.0.2:2222", "~/.ssh/id_rbee",
                                                                     "/srv/rbee")
    assert args.node_hive_port == 9300 and args.accept_new_host_key and args.replace


def test_hives_add_needs_ssh(capsys):
    with pytest.raises(SystemExit) as usage:
        parse("hives", "add", "alpha")
    assert usage.value.code == 2 and "--ssh" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["install", "start", "stop", "remove"])
def test_each_action_names_one_hive(action):
    assert parse("hives", action, "alpha").name == "alpha"


def test_logs_and_infer_take_a_hive():
    args = parse("logs", "--hive", "alpha", "--follow", "--lines", "5")
    assert (args.hive, args.follow, args.lines, args.program) == ("alpha", True, 5, None)
    assert parse("logs", "--hive", "alpha", "alpha-w1-1").program == "alpha-w1-1"
    assert parse("infer", "--prompt", "hi", "--hive", "alpha").hive == "alpha"


@pytest.mark.parametrize(("seconds", "shown"), [(None, "never"), (0.4, "0 s ago"), (3.2, "3 s ago"),
                                                 (125, "2 min ago"), (7300, "2 h ago"), (300000, "3 days ago")])
def test_heartbeats_are_said_as_a_person_says_them(seconds, shown):
    assert ago(seconds) == shown


def test_a_list_row_has_no_epoch_floats_and_no_json():
    row = node_rows([{"hive_id": "alpha", "ssh": "root@10.0.0.2", "state": "online", "version": "0.1.0", "workers": 2,
                      "ram_free_bytes": 24_459_444_224, "seconds_since_heartbeat": 3.1, "notes": []}])[0]
    assert row == ["alpha", "root@10.0.0.2", "online", "0.1.0", 2, "24.5 GB", "", "3 s ago"]


def test_a_list_row_says_each_devices_memory():
    memory = [{"backend": "cpu", "index": 0, "total_bytes": 8_000_000_000, "headroom_bytes": 300_000_000,
               "reserved_bytes": 250_000_000, "budget_bytes": 550_000_000},
              {"backend": "cuda", "index": 1, "total_bytes": 24_000_000_000, "headroom_bytes": 20_000_000_000,
               "reserved_bytes": 0, "budget_bytes": None}]
    row = node_rows([{"hive_id": "alpha", "state": "online", "memory": memory}])[0]
    assert row[6] == ("host 300.0 MB free of 8.0 GB, 250.0 MB reserved (budget 550.0 MB); "
                      "cuda:1 20.0 GB free of 24.0 GB, 0 B reserved")


# ---------------------------------------------------------------- versions


def test_compatible_means_the_same_major_minor():
    assert compatible("0.1.0", "0.1.7") and not compatible("0.2.0", "0.1.0") and not compatible("junk", "0.1.0")
    assert from_version_output("rbee-hive 0.1.0\n") == "0.1.0"
    assert from_version_output("Traceback ...\n  File \"/usr/lib/python3.11/x.py\"\nImportError: y") is None


def test_the_queen_refuses_a_hive_or_worker_of_another_line():
    with pytest.raises(RbeeError) as hive:
        HiveRegistry().register(HiveRegistration(hive_id="alpha", url="http://10.0.0.2:9200", version="9.0.0"))
    assert hive.value.code == ErrorCode.VERSION_MISMATCH and hive.value.status == 409
    assert hive.value.details == {"hive_id": "alpha", "peer_version": "9.0.0", "queen_version": __version__}
    with pytest.raises(RbeeError) as worker:
        Registry().register(WorkerRegistration(worker_id="w1", url="http://10.0.0.2:8081", model_ref="m",
                                               version="9.0.0"))
    assert worker.value.code == ErrorCode.VERSION_MISMATCH and "9.0.0" in worker.value.message


def test_peers_of_this_line_or_that_do_not_say_are_let_in():
    Registry().register(WorkerRegistration(worker_id="w1", url="http://h:1", model_ref="m", version=__version__))
    Registry().register(WorkerRegistration(worker_id="w1", url="http://h:1", model_ref="m"))
    HiveRegistry().register(HiveRegistration(hive_id="alpha", url="http://h:2"))


def test_requests_pinned_to_a_hive_get_only_its_workers():
    registry = Registry()
    for worker_id, node in (("a1", "alpha"), ("b1", "beta")):
        registry.register(WorkerRegistration(worker_id=worker_id, url=f"http://{node}:1", model_ref="m",
                                             node_name=node))
    assert {registry.acquire("m", hive="beta").worker_id for _ in range(1)} == {"b1"}
    with pytest.raises(RbeeError) as none_left:
        registry.acquire("m", hive="beta")
    assert none_left.value.code == ErrorCode.NO_IDLE_WORKERS
    with pytest.raises(RbeeError) as nowhere:
        registry.acquire("m", hive="gamma")
    assert nowhere.value.code == ErrorCode.NO_WORKERS and "gamma" in nowhere.value.message
    assert registry.hive_names() == {"alpha", "beta"}
