"""The queen's node routes (``/v2/nodes``): thin handlers over :class:`rbee.queen.hive_control.HiveControl`.

``/v2/nodes`` are the machines the queen manages over SSH (what ``rbee-keeper hives …`` drives);
``/v2/hives/…`` stays the hives' own side (register, heartbeat), whoever started them. A node's name
is its hive's id, so ``GET /v2/nodes`` lists both: the nodes added, and hives that registered alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import ValidationError

from rbee.errors import RbeeError, validation_error
from rbee.protocol import NodeAdd, NodeList, NodeLogQuery, NodeStarted, NodeStopped
from rbee.queen.appkeys import DISPATCHER, HIVE_CONTROL, HIVES, REGISTRY, SETTINGS
from rbee.queen.hive_control import HiveControl, QueenAddress
from rbee.queen.installer import Installer
from rbee.queen.node_watch import NodeWatch
from rbee.queen.nodes import NodeRegistry
from rbee.queen.ssh import Ssh, SshOptions
from rbee.queen.wheelhouse import WheelhouseBuilder
from rbee.sse import SSE_HEADERS, SSEWriter
from rbee.web import json_model, read_model

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
FOLLOW_CHUNK = 64 * 1024
CLIENT_CHECK_S = 1.0


@routes.get("/v2/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    return json_model(NodeList(hives=request.app[HIVE_CONTROL].list()))


@routes.post("/v2/nodes")
async def add_node(request: web.Request) -> web.Response:
    req = await read_model(request, NodeAdd)
    info, _ = await request.app[HIVE_CONTROL].add(req)
    log.info("node added", extra={"fields": {"name": info.hive_id, "ssh": info.ssh, "version": info.version}})
    return json_model(info, status=201)


@routes.get("/v2/nodes/{name}")
async def get_node(request: web.Request) -> web.Response:
    return json_model(request.app[HIVE_CONTROL].info(request.match_info["name"]))


@routes.delete("/v2/nodes/{name}")
async def remove_node(request: web.Request) -> web.Response:
    request.app[HIVE_CONTROL].remove(request.match_info["name"])
    return web.Response(status=204)


@routes.post("/v2/nodes/{name}/install")
async def install_node(request: web.Request) -> web.StreamResponse:
    """The install's steps as SSE (it may build a wheelhouse for minutes); a failure before the first
    step is a plain error answer, one after it an ``{"error": …}`` event, then ``[DONE]``."""
    control = request.app[HIVE_CONTROL]
    plan = await control.plan_install(request.match_info["name"])
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    writer = SSEWriter(response)
    try:
        async for event in control.install(plan):
            await writer.send(event.model_dump(mode="json", exclude_none=True))
    except RbeeError as err:
        log.warning("install on %s failed: %s [%s]", plan.node.name, err.message, err.code)
        await writer.send(err.envelope())
    await writer.done()
    return response


@routes.post("/v2/nodes/{name}/start")
async def start_node(request: web.Request) -> web.Response:
    started = await request.app[HIVE_CONTROL].start(request.match_info["name"])
    log.info("hive started over SSH", extra={"fields": {"name": started.node.hive_id, "pid": started.pid,
                                                        "queen_url": started.queen_url}})
    return json_model(NodeStarted(node=started.node, pid=started.pid, queen_url=started.queen_url,
                                  already_running=started.already_running, seconds=round(started.seconds, 2)))


@routes.post("/v2/nodes/{name}/stop")
async def stop_node(request: web.Request) -> web.Response:
    stopped = await request.app[HIVE_CONTROL].stop(request.match_info["name"])
    return json_model(NodeStopped(node=stopped.node, outcome=stopped.outcome,  # type: ignore[arg-type]
                                  workers_removed=stopped.workers_removed))


@routes.get("/v2/nodes/{name}/logs")
async def node_logs(request: web.Request) -> web.StreamResponse:
    """The hive's log there (or a worker's, ``?program=ID``), read over SSH: the last ``lines``, and with
    ``follow`` whatever is appended, until the client lets go."""
    try:
        query = NodeLogQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_error(exc) from None
    control, name = request.app[HIVE_CONTROL], request.match_info["name"]
    if not query.follow:
        text = await control.log_text(name, query.program, query.lines)
        return web.Response(text=text, content_type="text/plain")
    async with control.log_follow(name, query.program, query.lines) as lines:
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            while not _client_gone(request):
                try:
                    chunk = await asyncio.wait_for(lines.read(FOLLOW_CHUNK), CLIENT_CHECK_S)
                except TimeoutError:
                    continue  # a quiet log: look whether the client is still there
                if not chunk:
                    break
                await response.write(chunk)
    return response


def _client_gone(request: web.Request) -> bool:
    """aiohttp does not cancel a handler whose client left; a quiet log would keep ssh running for ever."""
    return request.transport is None or request.transport.is_closing()


# ---------------------------------------------------------------- wiring


async def _hive_control(app: web.Application) -> AsyncIterator[None]:
    """The node registry (read from the state dir), what acts on it, and the background look at its
    machines; requests pinned to a hive are checked against what it knows."""
    s = app[SETTINGS]
    ssh = Ssh(SshOptions(config_file=s.ssh_config, connect_timeout=s.ssh_connect_timeout, attempts=s.ssh_attempts))
    nodes = await asyncio.to_thread(NodeRegistry, s.state_dir)
    control = app[HIVE_CONTROL] = HiveControl(
        nodes, app[HIVES], app[REGISTRY], ssh, Installer(ssh, WheelhouseBuilder(s.wheelhouse_dir)),
        QueenAddress(s.host, s.port, s.advertise_url, s.cluster_key), start_timeout=s.hive_start_timeout)
    app[DISPATCHER].check_hive = control.check_pin
    watch = None
    if s.node_probe_interval > 0:
        watch = asyncio.get_running_loop().create_task(NodeWatch(
            nodes, lambda name: control.info(name).state == "online", ssh,
            interval=s.node_probe_interval, timeout=min(3.0, s.node_probe_interval)).run())
    yield
    if watch is not None:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


def setup(app: web.Application) -> None:
    """After the queen's services (the dispatcher) and the hive registry are set up."""
    app.cleanup_ctx.append(_hive_control)
    app.add_routes(routes)
