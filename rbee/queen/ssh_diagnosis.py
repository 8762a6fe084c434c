"""What went wrong with an ``ssh`` that exited 255, in one line with the next step. Pure: no I/O.

The SSH runner (:mod:`rbee.queen.ssh`) runs ``ssh -v -E LOG``: ssh's own messages (errors and debug
lines) go to LOG, apart from what the remote command writes on stderr. From that text this module
tells the failures a person can act on apart — the host unreachable, the keys refused, the host key
changed or not yet known — and says what to do about each. Only the first kind is worth retrying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from rbee.errors import ErrorCode, RbeeError

SSH_FAILED_EXIT = 255  # ssh's own failure; any other exit status is the remote command's


class Failure(StrEnum):
    REFUSED = "connection refused"
    TIMED_OUT = "timed out"
    NO_ROUTE = "no route to host"
    UNRESOLVED = "unknown host name"
    CLOSED = "connection closed"  # by the server before login: sshd restarting, MaxStartups, a wrapper
    AUTH = "authentication refused"
    HOST_KEY_CHANGED = "host key changed"
    HOST_KEY_UNKNOWN = "host key unknown"
    OTHER = "failed"


# Connection failures: the network or the server may come back, so these are retried.
RETRYABLE = frozenset({Failure.REFUSED, Failure.TIMED_OUT, Failure.NO_ROUTE, Failure.CLOSED})

_PATTERNS: list[tuple[Failure, re.Pattern[str]]] = [(f, re.compile(p, re.IGNORECASE)) for f, p in [
    (Failure.HOST_KEY_CHANGED, r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed"),
    (Failure.HOST_KEY_UNKNOWN, r"No \S+ host key is known for|Host key verification failed"),
    (Failure.AUTH, r"Permission denied \(|Too many authentication failures|No more authentication methods"),
    (Failure.UNRESOLVED, r"Could not resolve hostname|Name or service not known|nodename nor servname"),
    (Failure.REFUSED, r"Connection refused"),
    (Failure.TIMED_OUT, r"timed out|Operation timed out"),
    (Failure.NO_ROUTE, r"No route to host|Network is unreachable"),
    (Failure.CLOSED, r"Connection closed by|Connection reset by|kex_exchange_identification"),
]]

_CONNECTING = re.compile(r"Connecting to (\S+) \[([^\]]+)\] port (\d+)")
_AS_USER = re.compile(r"Authenticating to \S+ as '([^']+)'")
_KEY_TRIED = re.compile(r"(?:Offering public key|Trying private key|Will attempt key): (\S+)")
_LOOSE_KEY = re.compile(r"Permissions (0\d+) for '([^']+)' are too open")
_MISSING_KEY = re.compile(r"Identity file (\S+) not accessible")
_OFFENDING = re.compile(r"Offending \S+ key in (\S+):(\d+)")
_AUTHENTICATED = re.compile(r"^Authenticated to ", re.MULTILINE)


def classify(log: str) -> Failure:
    for failure, pattern in _PATTERNS:
        if pattern.search(log):
            return failure
    return Failure.OTHER


def connected(log: str) -> bool:
    """Whether ssh logged in: an exit status of 255 after that is the remote command's own."""
    return _AUTHENTICATED.search(log) is not None


def keys_tried(log: str) -> list[str]:
    """The key files (or agent keys, by comment) ssh offered, in order, each once."""
    return list(dict.fromkeys(m[1] for m in _KEY_TRIED.finditer(log)))


@dataclass(frozen=True)
class Where:
    """The machine an ssh meant: as the user named it, and as ssh resolved it (``ssh_config`` applied)."""

    host: str  # as given: an address, a name, or a Host alias of ssh_config
    port: int | None = None
    user: str | None = None

    def resolved(self, log: str) -> tuple[str, int, str | None]:
        """``(address, port, user)`` as ssh logged them, falling back on what was given."""
        connecting = _CONNECTING.search(log)
        as_user = _AS_USER.search(log)
        address = connecting[2] if connecting else self.host
        port = int(connecting[3]) if connecting else (self.port or 22)
        return address, port, as_user[1] if as_user else self.user

    def login(self, log: str) -> str:
        _, port, user = self.resolved(log)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user + '@' if user else ''}{host}" + (f" -p {port}" if port != 22 else "")


def diagnose(failure: Failure, where: Where, log: str, *, waited_s: float, attempts: int,
             connect_timeout: float) -> RbeeError:
    """The error to answer for an ssh that failed with ``failure``; ``log`` is what ssh said."""
    address, port, user = where.resolved(log)
    named = where.host if where.host == address else f"{where.host} ({address})"
    details = {"ssh_host": where.host, "address": address, "port": port, "user": user, "failure": str(failure),
               "attempts": attempts, "waited_s": round(waited_s, 1)}
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''} over {waited_s:.1f} s"
    if failure == Failure.REFUSED:
        return RbeeError(ErrorCode.SSH_UNREACHABLE, f"Cannot reach {named} port {port} over SSH: connection "
                         f"refused ({tries}). Check that sshd runs there and listens on port {port} "
                         "(the port goes in --ssh USER@HOST:PORT).", details)
    if failure == Failure.TIMED_OUT:
        return RbeeError(ErrorCode.SSH_UNREACHABLE, f"Cannot reach {named} port {port} over SSH: timed out "
                         f"({tries}, {connect_timeout:g} s each). Check that the machine is up, the address "
                         f"is right and no firewall drops port {port}.", details)
    if failure == Failure.NO_ROUTE:
        return RbeeError(ErrorCode.SSH_UNREACHABLE, f"Cannot reach {named} port {port} over SSH: no route to "
                         f"it ({tries}). Check the address and this machine's network.", details)
    if failure == Failure.CLOSED:
        return RbeeError(ErrorCode.SSH_UNREACHABLE, f"{named} port {port} closed the SSH connection before "
                         f"login ({tries}). Check its sshd log (restarting? MaxStartups? a firewall?).", details)
    if failure == Failure.UNRESOLVED:
        return RbeeError(ErrorCode.SSH_UNREACHABLE, f"Cannot resolve the host name '{where.host}'. Check the "
                         "spelling, or give its address, or add a Host entry for it to ~/.ssh/config.", details)
    if failure == Failure.AUTH:
        return _auth_refused(where, log, named, details)
    if failure == Failure.HOST_KEY_CHANGED:
        offending = _OFFENDING.search(log)
        known_hosts = offending[1] if offending else "~/.ssh/known_hosts"
        spec = address if port == 22 else f"[{address}]:{port}"
        return RbeeError(ErrorCode.SSH_HOST_KEY_CHANGED, f"The host key of {named} has CHANGED since it was "
                         f"recorded in {known_hosts}: a reinstalled machine, or someone in between. If you know "
                         f"why it changed, remove the old key with `ssh-keygen -f {known_hosts} -R '{spec}'` "
                         "and add the hive again with --accept-new-host-key.",
                         {**details, "known_hosts": known_hosts})
    if failure == Failure.HOST_KEY_UNKNOWN:
        keyscan = f"ssh-keyscan -p {port} {address} >> ~/.ssh/known_hosts"
        return RbeeError(ErrorCode.SSH_HOST_KEY_UNKNOWN, f"The host key of {named} is not known yet, and "
                         "strict checking is on. Check its fingerprint, then add the hive again with "
                         f"--accept-new-host-key to record it on first use (or add it with `{keyscan}`).", details)
    last = _last_error_line(log) or "no message"
    return RbeeError(ErrorCode.SSH_FAILED, f"SSH to {named} port {port} failed: {last}. Try "
                     f"`ssh {where.login(log)} true` by hand to see why.", {**details, "ssh_said": last})


def _auth_refused(where: Where, log: str, named: str, details: dict) -> RbeeError:
    loose = _LOOSE_KEY.search(log)
    missing = _MISSING_KEY.search(log)
    tried = keys_tried(log)
    user = details["user"]
    login = f"{user + '@' if user else ''}{where.host}"
    details = {**details, "keys_tried": tried}
    if loose:
        mode, path = loose[1], loose[2]
        return RbeeError(ErrorCode.SSH_AUTH_FAILED, f"SSH login to {login} refused: the key file {path} is "
                         f"ignored because its permissions ({mode}) let others read it. Fix with "
                         f"`chmod 600 {path}`, then retry.", {**details, "key_file": path, "key_mode": mode})
    if missing:
        path = missing[1].rstrip(".:")
        return RbeeError(ErrorCode.SSH_AUTH_FAILED, f"SSH login to {login} refused: the identity file {path} "
                         "does not exist (on the queen's machine). Pass an existing private key with "
                         "--identity FILE.", {**details, "key_file": path})
    keys = ", ".join(tried) if tried else "none (no key file and no agent key)"
    copy_id = f"ssh-copy-id{' -i ' + tried[0] + '.pub' if tried and '/' in tried[0] else ''}" \
              f"{' -p ' + str(details['port']) if details['port'] != 22 else ''} {login}"
    return RbeeError(ErrorCode.SSH_AUTH_FAILED, f"SSH login to {login} refused: the server accepted none of the "
                     f"keys tried ({keys}). Authorise your key there with `{copy_id}`, or pass the key it "
                     "accepts with --identity FILE.", details)


def _last_error_line(log: str) -> str | None:
    lines = [ln.strip() for ln in log.splitlines()
             if ln.strip() and not ln.startswith(("debug", "OpenSSH_", "Transferred:", "Bytes per second"))]
    return lines[-1].rstrip(".") if lines else None
