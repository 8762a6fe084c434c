"""Many slow clients against one server: connections that send half a request and wait, timed until
the server cuts them. Used by the slow-clients scenarios (features/slow_clients.feature)."""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from dataclasses import dataclass, field


@dataclass
class Cut:
    """How one slow connection ended: seconds after it sent its bytes, and what the server wrote first."""

    after: float
    first_bytes: bytes


@dataclass
class SlowClients:
    """``count`` connections from ``source`` (any 127.x address works on Linux loopback) to ``host:port``."""

    source: str
    host: str
    port: int
    sockets: list[socket.socket] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)  # fileno -> when its bytes went out

    def open(self, count: int, payload: bytes, timeout: float) -> None:
        ensure_open_files(count + 256)
        deadline = time.monotonic() + timeout
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sockets.append(sock)  # tracked first: closed by close() whatever happens next
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.bind((self.source, 0))
            sock.connect((self.host, self.port))
            if payload:
                sock.sendall(payload)
            self.sent_at[sock.fileno()] = time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"opened only {len(self.sockets)} of {count} connections in {timeout:.0f}s")

    def still_open(self) -> int:
        """How many connections the server has not closed (nor written to) yet."""
        sel = selectors.DefaultSelector()
        for sock in self.sockets:
            sel.register(sock, selectors.EVENT_READ)
        try:
            readable = len(sel.select(timeout=0))
        finally:
            sel.close()
        return len(self.sockets) - readable

    def wait_cut(self, timeout: float) -> list[Cut]:
        """Wait (up to ``timeout``) until the server has closed every connection; how each ended."""
        sel = selectors.DefaultSelector()
        buffers: dict[int, bytes] = {}
        for sock in self.sockets:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            buffers[sock.fileno()] = b""
        cuts: list[Cut] = []
        deadline = time.monotonic() + timeout
        try:
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    fd = sock.fileno()
                    try:
                        chunk = sock.recv(4096)
                    except ConnectionResetError:
                        chunk = b""
                    if chunk:
                        buffers[fd] += chunk
                        continue
                    cuts.append(Cut(time.monotonic() - self.sent_at[fd], buffers[fd]))
                    sel.unregister(sock)
            left = len(sel.get_map())
        finally:
            sel.close()
        if left:
            raise AssertionError(f"{left} of {len(self.sockets)} slow connections still open after {timeout:.0f}s")
        return cuts

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()


def ensure_open_files(needed: int) -> None:
    """Raise this process's soft open-file limit to ``needed`` (a test opening many sockets), or fail saying how."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise AssertionError(f"this test needs {needed} open files, the hard limit is {hard}: run it under "
                             f"`ulimit -Hn {needed}` or more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@contextlib.contextmanager
def open_file_limit(soft: int):
    """Run the body (a process being started, which inherits it) under a lower soft open-file limit."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, before), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))
