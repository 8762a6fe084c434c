"""SSH failures told apart from what OpenSSH 9.2 really printed (``ssh -v -E LOG``, exit 255), each
answered in one line with the next step; and which of them are retried."""

from __future__ import annotations

import pytest

from rbee.errors import ErrorCode
from rbee.queen.ssh_diagnosis import RETRYABLE, Failure, Where, classify, connected, diagnose, keys_tried

BANNER = "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026\n"
CONNECTING = "debug1: Connecting to alpha [10.231.7.2] port 22.\n"

REFUSED = BANNER + "debug1: Connecting to 127.0.0.1 [127.0.0.1] port 1.\n" \
    "debug1: connect to address 127.0.0.1 port 1: Connection refused\n" \
    "ssh: connect to host 127.0.0.1 port 1: Connection refused\n"
TIMED_OUT = BANNER + CONNECTING + "debug1: connect to address 10.231.7.2 port 22: Connection timed out\n" \
    "ssh: connect to host alpha port 22: Connection timed out\n"
BANNER_TIMEOUT = BANNER + CONNECTING + "Connection timed out during banner exchange\n" \
    "Connection to 10.231.7.2 port 22 timed out\n"
UNRESOLVED = BANNER + "ssh: Could not resolve hostname nosuchhost.invalid: Name or service not known\n"
NO_ROUTE = BANNER + CONNECTING + "ssh: connect to host alpha port 22: No route to host\n"
AUTH = BANNER + CONNECTING + "debug1: Authenticating to alpha:22 as 'root'\n" \
    "debug1: Will attempt key: /tmp/bed/id_other ED25519 SHA256:Sqn explicit\n" \
    "debug1: Offering public key: /tmp/bed/id_other ED25519 SHA256:Sqn explicit\n" \
    "debug1: Authentications that can continue: publickey\n" \
    "debug1: No more authentication methods to try.\n" \
    "root@alpha: Permission denied (publickey).\n"
LOOSE = BANNER + CONNECTING + "debug1: Authenticating to alpha:22 as 'root'\n" \
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n" \
    "@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\n" \
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n" \
    "Permissions 0644 for '/tmp/loosekey' are too open.\n" \
    "It is required that your private key files are NOT accessible by others.\n" \
    "This private key will be ignored.\n" \
    'Load key "/tmp/loosekey": bad permissions\n' \
    "root@alpha: Permission denied (publickey).\n"
MISSING_KEY_STDERR = "Warning: Identity file /tmp/nokey not accessible: No such file or directory.\n"
CHANGED = BANNER + "debug1: Connecting to 127.0.0.1 [127.0.0.1] port 59959.\n" \
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n" \
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n" \
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n" \
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n" \
    "Add correct host key in /tmp/wrong_kh to get rid of this message.\n" \
    "Offending ED25519 key in /tmp/wrong_kh:1\n" \
    "  remove with:\n" \
    '  ssh-keygen -f "/tmp/wrong_kh" -R "[127.0.0.1]:59959"\n' \
    "Host key for [127.0.0.1]:59959 has changed and you have requested strict checking.\n" \
    "Host key verification failed.\n"
UNKNOWN = BANNER + "debug1: Connecting to 127.0.0.1 [127.0.0.1] port 59959.\n" \
    "No ED25519 host key is known for [127.0.0.1]:59959 and you have requested strict checking.\n" \
    "Host key verification failed.\n"
CLOSED = BANNER + CONNECTING + "kex_exchange_identification: Connection closed by remote host\n" \
    "Connection closed by 10.231.7.2 port 22\n"
LOGGED_IN = BANNER + CONNECTING + 'Authenticated to alpha ([10.231.7.2]:22) using "publickey".\n'


ALPHA = Where("alpha")


def _diagnose(log: str, where: Where = ALPHA, waited_s: float = 4.2, attempts: int = 3):
    return diagnose(classify(log), where, log, waited_s=waited_s, attempts=attempts, connect_timeout=10)


@pytest.mark.parametrize(("log", "failure"), [
    (REFUSED, Failure.REFUSED), (TIMED_OUT, Failure.TIMED_OUT), (BANNER_TIMEOUT, Failure.TIMED_OUT),
    (UNRESOLVED, Failure.UNRESOLVED), (NO_ROUTE, Failure.NO_ROUTE), (AUTH, Failure.AUTH), (LOOSE, Failure.AUTH),
    (CHANGED, Failure.HOST_KEY_CHANGED), (UNKNOWN, Failure.HOST_KEY_UNKNOWN), (CLOSED, Failure.CLOSED),
    (BANNER + "something new\n", Failure.OTHER),
])
def test_each_failure_is_told_apart(log, failure):
    assert classify(log) == failure


def test_only_connection_failures_are_retried():
    assert {Failure.REFUSED, Failure.TIMED_OUT, Failure.NO_ROUTE, Failure.CLOSED} == RETRYABLE
    assert not {Failure.AUTH, Failure.HOST_KEY_CHANGED, Failure.HOST_KEY_UNKNOWN, Failure.UNRESOLVED} & RETRYABLE


def test_refused_names_address_port_attempts_and_seconds():
    err = _diagnose(REFUSED, Where("127.0.0.1", 1))
    assert err.code == ErrorCode.SSH_UNREACHABLE and err.status == 504
    assert "127.0.0.1 port 1" in err.message and "connection refused" in err.message
    assert "3 attempts over 4.2 s" in err.message and "sshd" in err.message
    assert err.details["port"] == 1 and err.details["waited_s"] == 4.2


def test_timed_out_says_how_long_it_waited_and_for_which_address():
    err = _diagnose(TIMED_OUT, waited_s=33.0)
    assert err.code == ErrorCode.SSH_UNREACHABLE
    assert "alpha (10.231.7.2) port 22" in err.message and "timed out (3 attempts over 33.0 s, 10 s each)" \
        in err.message and "firewall" in err.message


def test_an_unknown_name_is_a_spelling_or_ssh_config_matter():
    err = _diagnose(UNRESOLVED, Where("nosuchhost.invalid"))
    assert err.code == ErrorCode.SSH_UNREACHABLE and "'nosuchhost.invalid'" in err.message \
        and "~/.ssh/config" in err.message


def test_auth_refused_names_the_keys_tried_and_ssh_copy_id():
    assert keys_tried(AUTH) == ["/tmp/bed/id_other"]
    err = _diagnose(AUTH)
    assert err.code == ErrorCode.SSH_AUTH_FAILED
    assert "root@alpha" in err.message and "/tmp/bed/id_other" in err.message
    assert "ssh-copy-id -i /tmp/bed/id_other.pub root@alpha" in err.message and "--identity" in err.message


def test_a_key_file_with_loose_permissions_says_chmod():
    err = _diagnose(LOOSE)
    assert err.code == ErrorCode.SSH_AUTH_FAILED
    assert "chmod 600 /tmp/loosekey" in err.message and "0644" in err.message


def test_a_missing_identity_file_is_named():
    err = _diagnose(AUTH + MISSING_KEY_STDERR)
    assert "/tmp/nokey does not exist" in err.message


def test_a_changed_host_key_says_which_file_and_how_to_remove_it():
    err = _diagnose(CHANGED, Where("127.0.0.1", 59959))
    assert err.code == ErrorCode.SSH_HOST_KEY_CHANGED
    assert "CHANGED" in err.message and "/tmp/wrong_kh" in err.message
    assert "ssh-keygen -f /tmp/wrong_kh -R '[127.0.0.1]:59959'" in err.message


def test_an_unknown_host_key_points_at_accept_new():
    err = _diagnose(UNKNOWN, Where("127.0.0.1", 59959))
    assert err.code == ErrorCode.SSH_HOST_KEY_UNKNOWN and "--accept-new-host-key" in err.message \
        and "ssh-keyscan -p 59959 127.0.0.1" in err.message


def test_anything_else_quotes_ssh_and_says_how_to_try_by_hand():
    err = _diagnose(BANNER + CONNECTING + "Bad configuration option: frobnicate\n")
    assert err.code == ErrorCode.SSH_FAILED and "Bad configuration option: frobnicate" in err.message
    assert "`ssh alpha true`" in err.message


def test_every_diagnosis_is_one_line():
    for log in (REFUSED, TIMED_OUT, UNRESOLVED, AUTH, LOOSE, CHANGED, UNKNOWN, CLOSED):
        assert "\n" not in _diagnose(log).message


def test_an_exit_255_after_login_is_the_remote_commands_own():
    assert connected(LOGGED_IN) and not connected(AUTH)
