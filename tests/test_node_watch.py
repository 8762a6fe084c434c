"""The queen's background look at its machines (rbee.queen.node_watch), against real sockets and the
system's ssh (for ``ssh -G``): a machine nothing answers on is marked unreachable with the reason, one
that answers again is cleared, and a machine whose hive is online is not probed at all."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from rbee.peer import Backoff
from rbee.queen.node_watch import NodeWatch
from rbee.queen.nodes import Node, NodeRegistry
from rbee.queen.ssh import Ssh, SshOptions


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(name: str, port: int) -> Node:
    return Node(name=name, host="127.0.0.1", port=port, added_at=0.0)


def test_a_silent_machine_is_marked_unreachable_and_cleared_once_it_answers_again(tmp_path: Path):
    async def scenario() -> tuple[str | None, str | None, float | None]:
        port = _closed_port()
        nodes = NodeRegistry(tmp_path)
        nodes.add(_node("alpha", port))
        watch = NodeWatch(nodes, lambda name: False, Ssh(SshOptions()), interval=1.0, timeout=1.0)
        await watch.check_all()
        down = nodes.get("alpha").unreachable_reason
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        try:
            await watch.check_all()
        finally:
            server.close()
            await server.wait_closed()
        again = nodes.get("alpha")
        return down, again.unreachable_reason, again.unreachable_since

    down, reason_after, since_after = asyncio.run(scenario())
    assert down is not None and "refused" in down and "port" in down and "check the machine" in down
    assert reason_after is None and since_after is None
    assert NodeRegistry(tmp_path).get("alpha").unreachable_since is None  # persisted


def test_a_machine_whose_hive_is_online_is_left_alone(tmp_path: Path):
    nodes = NodeRegistry(tmp_path)
    nodes.add(_node("busy", _closed_port()))
    watch = NodeWatch(nodes, lambda name: name == "busy", Ssh(SshOptions()), interval=1.0, timeout=1.0)
    asyncio.run(watch.check_all())
    assert nodes.get("busy").unreachable_since is None



def test_one_failed_knock_does_not_mark_a_machine_unreachable_but_every_retry_failing_does(tmp_path: Path):
    """sshd restarting (refused for a moment): the retry finds it back, the node stays reachable. A port
    that stays closed is unreachable once all tries failed, bounded by the backoff, the reason says so."""
    async def scenario() -> tuple[str | None, float, str | None, float]:
        flaky, closed = _closed_port(), _closed_port()
        nodes = NodeRegistry(tmp_path)
        nodes.add(_node("flaky", flaky))
        nodes.add(_node("gone", closed))
        retry = Backoff(attempts=3, first=0.3, cap=0.3)
        watch = NodeWatch(nodes, lambda name: False, Ssh(SshOptions()), interval=1.0, timeout=1.0, retry=retry)
        servers = []

        async def back_soon() -> None:  # refused at the first knock, listening before the retry
            await asyncio.sleep(0.1)
            servers.append(await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", flaky))

        started = asyncio.get_running_loop().time()
        try:
            await asyncio.gather(watch.check(nodes.get("flaky")), back_soon(), watch.check(nodes.get("gone")))
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
        took = asyncio.get_running_loop().time() - started
        gone = nodes.get("gone")
        return nodes.get("flaky").unreachable_reason, took, gone.unreachable_reason, retry.total

    flaky_reason, took, gone_reason, total = asyncio.run(scenario())
    assert flaky_reason is None
    assert gone_reason is not None and "refused" in gone_reason and "3 tries" in gone_reason, gone_reason
    assert total <= took < total + 3.0, took
