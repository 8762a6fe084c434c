"""``rbee-keeper audit verify PATH``: is the audit log whole? OK, or the first line edited, removed or
reordered (exit 1). Reads the files only: it works where the log was copied to, with no server."""

from __future__ import annotations

import argparse
from pathlib import Path

from rbee.audit import verify
from rbee.keeper.config import Resolved
from rbee.keeper.failures import EXIT_ERROR, EXIT_OK, KeeperError
from rbee.keeper.output import Output


def verify_command(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    path = Path(args.path).expanduser()
    try:
        verdict = verify(path)
    except OSError as err:
        raise KeeperError(f"cannot read the audit log {path} ({err.strerror})",
                          "check the path and that you may read it") from None
    if verdict.ok:
        print(verdict.message)
        return EXIT_OK
    print(f"FAILED: {verdict.message}")
    print(f"{verdict.entries} entries before it are whole; the log was changed after it was written.")
    return EXIT_ERROR
