"""The node registry (persisted, survives a restart), ``[USER@]HOST[:PORT]``, what ``hives list`` shows
of a node, and the pieces of starting a hive over SSH that need no SSH (the facts a look found, the
queen's address as the node reaches it)."""

from __future__ import annotations

import json

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import HiveRegistration
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.nodes import DEFAULT_REMOTE_DIR, Node, NodeRegistry, remote_dir_of, view
from rbee.queen.remote_hive import RemoteFacts, hive_argv, parse_facts, queen_url_for, require_hive
from rbee.queen.ssh import Ssh, SshOptions, SshTarget, script


def node(name: str = "alpha", **kw) -> Node:
    return Node(name=name, host=kw.pop("host", "10.0.0.2"), added_at=kw.pop("added_at", 100.0), **kw)


# ---------------------------------------------------------------- the registry


def test_nodes_survive_a_restart(tmp_path):
    NodeRegistry(tmp_path).add(node(user="root", port=2222, identity="/k"))
    again = NodeRegistry(tmp_path)
    assert [n.name for n in again.list()] == ["alpha"]
    assert again.get("alpha").ssh == "root@10.0.0.2:2222" and again.get("alpha").identity == "/k"


def test_the_file_is_replaced_whole_and_names_its_format(tmp_path):
    registry = NodeRegistry(tmp_path)
    registry.add(node())
    registry.add(node("beta"))
    body = json.loads((tmp_path / "nodes.json").read_text())
    assert body["format"] == 1 and [n["name"] for n in body["nodes"]] == ["alpha", "beta"]
    assert not list(tmp_path.glob(".*.tmp"))  # written beside, then renamed over


def test_a_duplicate_name_is_refused_unless_replaced(tmp_path):
    registry = NodeRegistry(tmp_path)
    registry.add(node())
    with pytest.raises(RbeeError) as refused:
        registry.add(node(host="10.0.0.9"))
    assert refused.value.code == ErrorCode.HIVE_ALREADY_EXISTS and refused.value.status == 409
    assert "--replace" in refused.value.message
    registry.add(node(host="10.0.0.9"), replace=True)
    assert NodeRegistry(tmp_path).get("alpha").host == "10.0.0.9"


def test_an_unknown_name_lists_the_known_ones(tmp_path):
    registry = NodeRegistry(tmp_path)
    registry.add(node("beta"))
    with pytest.raises(RbeeError) as missing:
        registry.get("gamma")
    assert missing.value.code == ErrorCode.HIVE_NOT_FOUND and missing.value.details["known"] == ["beta"]


def test_removed_is_gone_after_a_restart(tmp_path):
    registry = NodeRegistry(tmp_path)
    registry.add(node())
    registry.remove("alpha")
    assert NodeRegistry(tmp_path).list() == []


def test_unreachable_is_remembered_until_an_ssh_works(tmp_path):
    clock = iter([5.0, 6.0]).__next__
    registry = NodeRegistry(tmp_path, clock=clock)
    registry.add(node())
    registry.unreachable("alpha", "timed out")
    registry.unreachable("alpha", "timed out again")
    assert registry.get("alpha").unreachable_since == 5.0  # since the first failure
    registry.reached("alpha")
    assert NodeRegistry(tmp_path).get("alpha").unreachable_since is None


def test_a_broken_file_stops_the_queen_with_its_name(tmp_path):
    (tmp_path / "nodes.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="nodes.json"):
        NodeRegistry(tmp_path)


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize(("text", "host", "port", "user"), [
    ("alpha", "alpha", None, None), ("root@10.0.0.2", "10.0.0.2", None, "root"),
    ("bee@host.example:2222", "host.example", 2222, "bee"), ("[::1]:22", "::1", 22, None),
    ("me@[fe80::1]", "fe80::1", None, "me"),
])
def test_ssh_targets_parse(text, host, port, user):
    target = SshTarget.parse(text)
    assert (target.host, target.port, target.user) == (host, port, user)


@pytest.mark.parametrize("text", ["", "-oProxyCommand=x", "a b", "host:0", "host:99999", "host:ssh", "@host",
                                  "us er@host", "[::1"])
def test_bad_ssh_targets_say_why(text):
    with pytest.raises(ValueError):
        SshTarget.parse(text)


def test_the_ssh_command_line_is_batch_strict_and_ends_options_before_the_host():
    ssh = Ssh(SshOptions(connect_timeout=10))
    argv = ssh.argv(SshTarget("alpha", 2222, "root", "/k", accept_new_host_key=False), "true")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"] and "ConnectTimeout=10" in argv
    assert "StrictHostKeyChecking=yes" in argv and argv[-3:] == ["--", "alpha", "true"]
    assert argv[argv.index("-i") + 1] == "/k" and "IdentitiesOnly=yes" in argv
    assert "StrictHostKeyChecking=accept-new" in ssh.argv(SshTarget("alpha", accept_new_host_key=True), "true")


def test_script_values_are_arguments_never_code():
    assert script('echo "$1"', "x; rm -rf /") == """sh -c 'echo "$1"' sh 'x; rm -rf /'"""


def test_remote_dirs():
    assert remote_dir_of(None) == DEFAULT_REMOTE_DIR
    assert remote_dir_of("~/rbee") == "rbee" and remote_dir_of("/srv/rbee") == "/srv/rbee"
    with pytest.raises(ValueError):
        remote_dir_of("~")


# ---------------------------------------------------------------- what a look found


PROBED = """ssh_connection=10.231.7.1 40022 10.231.7.2 22
hive_path=/srv/rbee/venv/bin/rbee-hive
hive_version=rbee-hive 0.1.0
python=/usr/bin/python3
python_version=3.11.2
machine=x86_64
hive_pid=4242
"""


def test_the_look_around_is_read():
    facts = RemoteFacts.parse(PROBED)
    assert (facts.queen_address, facts.node_address) == ("10.231.7.1", "10.231.7.2")
    assert facts.hive_version == "0.1.0" and facts.python_line == "3.11" and facts.hive_pid == 4242
    assert parse_facts("a=1\na=2\nnoise\n") == {"a": "1"}


def test_a_hive_that_is_missing_broken_or_of_another_line_is_refused():
    n = node()
    with pytest.raises(RbeeError) as missing:
        require_hive(n, RemoteFacts.parse("ssh_connection=1 2 3 4\n"))
    assert missing.value.code == ErrorCode.HIVE_NOT_INSTALLED and "rbee-keeper hives install alpha" in \
        missing.value.message and missing.value.status == 424
    with pytest.raises(RbeeError) as broken:
        require_hive(n, RemoteFacts.parse("hive_path=/x\nhive_version=ModuleNotFoundError: rbee\n"))
    assert broken.value.code == ErrorCode.HIVE_NOT_INSTALLED and "does not run" in broken.value.message
    with pytest.raises(RbeeError) as other:
        require_hive(n, RemoteFacts.parse("hive_path=/x\nhive_version=rbee-hive 9.4.0\n"))
    assert other.value.code == ErrorCode.VERSION_MISMATCH and "9.4.0" in other.value.message
    assert "0.1.0" in other.value.message and "hives install alpha" in other.value.message


def test_the_queen_url_is_its_address_as_the_node_sees_it():
    facts = RemoteFacts.parse(PROBED)
    assert queen_url_for(node(), facts, listen_host="0.0.0.0", port=8080, advertise_url=None) == \
        "http://10.231.7.1:8080"
    assert queen_url_for(node(), facts, listen_host="0.0.0.0", port=8080, advertise_url="http://q:1/") == "http://q:1"
    local = RemoteFacts.parse("ssh_connection=127.0.0.1 5 127.0.0.1 22\n")
    assert queen_url_for(node(), local, listen_host="127.0.0.1", port=8080, advertise_url=None) == \
        "http://127.0.0.1:8080"


def test_a_queen_on_loopback_cannot_be_reached_from_another_machine():
    with pytest.raises(RbeeError) as refused:
        queen_url_for(node(), RemoteFacts.parse(PROBED), listen_host="127.0.0.1", port=8080, advertise_url=None)
    assert refused.value.code == ErrorCode.HIVE_START_FAILED and "--host 0.0.0.0" in refused.value.message


def test_the_hive_binds_where_the_queen_reached_it_and_reads_its_key_from_a_file():
    argv = hive_argv(node(remote_dir="/srv/rbee"), RemoteFacts.parse(PROBED), "http://10.231.7.1:8080", True)
    assert argv[argv.index("--host") + 1] == "10.231.7.2" and argv[argv.index("--node-name") + 1] == "alpha"
    assert argv[argv.index("--cluster-key-file") + 1] == "/srv/rbee/cluster.key"
    assert "--cluster-key" not in argv


# ---------------------------------------------------------------- as hives list shows it


def test_states_online_offline_unreachable():
    hives = HiveRegistry(timeout=5, clock=lambda: 50.0)
    record = hives.register(HiveRegistration(hive_id="alpha", url="http://10.0.0.2:9200", version="0.1.0"))
    added = node(hive_path="/x", installed_version="0.1.0")
    assert view(added, record, True, 53.0, "0.1.0").state == "online"
    assert view(added, record, True, 53.0, "0.1.0").seconds_since_heartbeat == 3.0
    stopped = added.model_copy(update={"stopped_at": 51.0})
    assert view(stopped, record, True, 53.0, "0.1.0").state == "offline"  # heartbeats before the stop
    assert view(added, record, False, 53.0, "0.1.0").state == "offline"
    lost = added.model_copy(update={"unreachable_since": 52.0, "unreachable_reason": "timed out"})
    shown = view(lost, None, False, 53.0, "0.1.0")
    assert shown.state == "unreachable" and "timed out" in shown.notes


def test_notes_say_what_to_do_next():
    fresh = view(node(), None, False, 1.0, "0.1.0")
    assert fresh.installed is False and "`rbee-keeper hives install alpha`" in fresh.notes[0]
    old = view(node(hive_path="/x", installed_version="0.0.9"), None, False, 1.0, "0.1.0")
    assert any("0.0.9" in n and "hives install alpha" in n for n in old.notes)


def test_a_hive_registered_by_hand_is_listed_without_ssh():
    hives = HiveRegistry(timeout=5, clock=lambda: 50.0)
    record = hives.register(HiveRegistration(hive_id="local", url="http://127.0.0.1:9200"))
    shown = view(None, record, True, 50.0, "0.1.0")
    assert shown.ssh is None and shown.state == "online" and shown.notes == []
