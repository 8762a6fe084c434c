"""``hives install NAME``: this rbee, into a virtualenv under the node's remote dir, without internet there.

The steps, each reported as it starts (:class:`rbee.protocol.InstallEvent`): look at the node (a
``python3`` of the Python and machine the wheelhouse is for — else the node is told how to install
from the package index instead), make sure the wheelhouse is built here (:mod:`rbee.queen.wheelhouse`),
copy it over SSH as one tar on ssh's stdin unless the node holds that very wheelhouse already, make
``<remote-dir>/venv``, ``pip install --no-index --find-links`` into it, and check that
``rbee-hive --version`` there says this version and that llama.cpp loads there.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import InstallEvent
from rbee.queen.nodes import Node
from rbee.queen.remote_hive import RemoteFacts
from rbee.queen.ssh import Ssh, SshResult, script
from rbee.queen.wheelhouse import Platform, Wheelhouse, WheelhouseBuilder

COPY = r'''
d=$1; key=$2; digest=$3
if [ "$(cat "$d/wheels/$key/DIGEST" 2>/dev/null)" = "$digest" ]; then cat > /dev/null; echo "copied=already"; exit 0; fi
rm -rf "$d/wheels/$key.tmp" && mkdir -p "$d/wheels/$key.tmp" || exit 1
tar -xf - -C "$d/wheels/$key.tmp" || exit 1
printf '%s\n' "$digest" > "$d/wheels/$key.tmp/DIGEST"
rm -rf "$d/wheels/$key" && mv "$d/wheels/$key.tmp" "$d/wheels/$key" && echo "copied=yes"
'''

# A venv of another Python (the node's python3 was upgraded) is made again.
VENV = r'''
d=$1; want=$2
if [ -x "$d/venv/bin/python" ] && [ "$("$d/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$want" ]; then
  echo "venv=kept"; exit 0
fi
rm -rf "$d/venv"
python3 -m venv "$d/venv" && echo "venv=made"
'''

PIP_INSTALL = r'''
d=$1; key=$2; req=$3
pip="$d/venv/bin/python -m pip --disable-pip-version-check --no-input"
$pip install --no-index --find-links "$d/wheels/$key" "$req" || exit 1
$pip install --no-index --find-links "$d/wheels/$key" --no-deps --force-reinstall "$req" || exit 1
'''

VERIFY = r'''
d=$1
"$d/venv/bin/rbee-hive" --version 2>&1 | tail -n 1
"$d/venv/bin/python" -c 'import llama_cpp' 2>&1 | tail -n 1 | sed 's/^/llama: /'
'''


@dataclass(frozen=True)
class Plan:
    node: Node
    facts: RemoteFacts


def index_command(node: Node) -> str:
    """What to run instead where the wheels do not fit: install from the package index on the node."""
    venv = shlex.quote(node.path("venv"))
    remote = f"python3 -m venv {venv} && {venv}/bin/pip install rbee=={__version__}"
    port = f" -p {node.port}" if node.port else ""
    return f"ssh{port} {node.user + '@' if node.user else ''}{node.host} {shlex.quote(remote)}"


def check_platform(node: Node, facts: RemoteFacts, here: Platform) -> None:
    """The node can take wheels built here: a python3 of the same major.minor on the same machine type."""
    if facts.python is None:
        raise RbeeError(ErrorCode.REMOTE_UNSUPPORTED,
                        f"{node.name} has no python3 on its PATH. Install Python {here.python} there (Debian/"
                        f"Ubuntu: `apt-get install python3 python3-venv`), then install again.",
                        {"name": node.name, "needs": str(here)})
    there = Platform(facts.python_line or "?", facts.machine or "?")
    if there != here:
        raise RbeeError(ErrorCode.REMOTE_UNSUPPORTED,
                        f"{node.name} has {there}, and the wheels built here are for {here}, so they cannot be "
                        f"installed there. Install from the package index on {node.name} instead: "
                        f"`{index_command(node)}` (or install from a queen on a machine like it).",
                        {"name": node.name, "remote": str(there), "wheelhouse": str(here),
                         "command": index_command(node)})


class Installer:
    def __init__(self, ssh: Ssh, wheelhouse: WheelhouseBuilder) -> None:
        self.ssh = ssh
        self.wheelhouse = wheelhouse

    def plan(self, node: Node, facts: RemoteFacts) -> Plan:
        """Checked before anything is sent, so a node that cannot take the wheels is told at once."""
        check_platform(node, facts, self.wheelhouse.platform)
        return Plan(node, facts)

    async def run(self, plan: Plan) -> AsyncIterator[InstallEvent]:
        node = plan.node
        yield InstallEvent(stage="wheelhouse", message=f"wheelhouse for {self.wheelhouse.platform}, rbee {__version__}")
        notes: asyncio.Queue[str] = asyncio.Queue()
        building = asyncio.ensure_future(self.wheelhouse.ensure(notes.put))
        try:
            while not building.done() or not notes.empty():
                next_note = asyncio.ensure_future(notes.get())
                await asyncio.wait({building, next_note}, return_when=asyncio.FIRST_COMPLETED)
                if next_note.done():
                    yield InstallEvent(stage="wheelhouse", message=next_note.result())
                else:
                    next_note.cancel()
            house = building.result()
        finally:
            building.cancel()  # the client left mid-build: pip is stopped (WheelhouseBuilder._pip)
        yield InstallEvent(stage="copy", message=f"copying {len(house.wheels)} wheels to {node.name}:"
                           f"{node.path('wheels', house.key)}")
        copied = await self._copy(node, house)
        if copied == "already":
            yield InstallEvent(stage="copy", message=f"{node.name} holds this wheelhouse already")
        yield InstallEvent(stage="venv", message=f"virtualenv {node.path('venv')}")
        await self._step(node, script(VENV, node.remote_dir, house.platform.python), "making the virtualenv",
                         venv_failure=True)
        yield InstallEvent(stage="install", message=f"pip install --no-index rbee=={__version__}")
        await self._step(node, script(PIP_INSTALL, node.remote_dir, house.key, f"rbee=={__version__}"),
                         "pip install (offline, from the wheelhouse)", pip_failure=True, timeout=900)
        yield InstallEvent(stage="verify", message="rbee-hive --version, and llama.cpp loads")
        await self._verify(node)
        yield InstallEvent(stage="complete", message=f"rbee {__version__} is installed on {node.name} in "
                           f"{node.path('venv')}", version=__version__)

    async def _copy(self, node: Node, house: Wheelhouse) -> str:
        result = await self._step(node, script(COPY, node.remote_dir, house.key, house.digest),
                                  "copying the wheelhouse", stdin=house.tarball, timeout=1800)
        return "already" if "copied=already" in result.text else "yes"

    async def _step(self, node: Node, command: str, what: str, *, stdin=None, timeout: float = 300,
                    venv_failure: bool = False, pip_failure: bool = False) -> SshResult:
        result = await self.ssh.run(node.target, command, stdin=stdin, timeout=timeout)
        if result.exit_code == 0:
            return result
        said = [ln for ln in (result.error_text + "\n" + result.text).splitlines() if ln.strip()][-6:]
        last = said[-1].strip() if said else f"exit {result.exit_code}"
        details = {"name": node.name, "step": what, "exit_code": result.exit_code, "output": said}
        if venv_failure and any("ensurepip" in ln or "venv" in ln for ln in said):
            raise RbeeError(ErrorCode.REMOTE_UNSUPPORTED, f"`python3 -m venv` failed on {node.name}: {last}. "
                            "Install the venv module there (Debian/Ubuntu: `apt-get install python3-venv`), then "
                            "install again.", details)
        if pip_failure and any("No matching distribution" in ln or "is not a supported wheel" in ln
                               or "requires a different Python" in ln for ln in said):
            raise RbeeError(ErrorCode.REMOTE_UNSUPPORTED, f"{node.name} cannot take the wheels built here: {last}. "
                            f"Install from the package index there instead: `{index_command(node)}`.",
                            {**details, "command": index_command(node)})
        raise RbeeError(ErrorCode.INSTALL_FAILED, f"Installing on {node.name} failed while {what}: {last}. "
                        "Fix that there, then install again.", details)

    async def _verify(self, node: Node) -> None:
        result = await self.ssh.run(node.target, script(VERIFY, node.remote_dir), timeout=120)
        lines = result.text.strip().splitlines()
        said = lines[0].strip() if lines else ""
        if said != f"rbee-hive {__version__}":
            raise RbeeError(ErrorCode.INSTALL_FAILED, f"After installing, rbee-hive on {node.name} says '{said}' "
                            f"rather than 'rbee-hive {__version__}'. Check {node.path('venv')} there, then install "
                            "again.", {"name": node.name, "said": said})
        llama = next((ln for ln in lines if ln.startswith("llama: ")), None)
        if llama is not None:
            raise RbeeError(ErrorCode.REMOTE_UNSUPPORTED,
                            f"rbee is installed on {node.name}, but llama.cpp built here does not load there "
                            f"({llama[7:]}). Install from the package index there instead (it builds llama.cpp "
                            f"for that machine): `{index_command(node)}`.",
                            {"name": node.name, "command": index_command(node)})
