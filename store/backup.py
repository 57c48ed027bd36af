"""`gatewayd db backup PATH`: an online, consistent copy while the daemon serves.

SQLite's backup API copies every page in one step under one read transaction: in WAL
mode that is a snapshot, and the writer goes on committing meanwhile. The copy is
made standalone (rollback journal, no -wal beside it), checked, fsync'd and renamed
into place, so PATH is either the old file or a whole, verified new one.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from store import changelog, check, migrations
from store.writer import connect


class BackupError(Exception):
    pass


def backup(src: str, dst: str) -> dict[str, Any]:
    tmp = f"{dst}.part"
    if os.path.exists(tmp):
        os.unlink(tmp)
    source = connect(src, readonly=True)
    target = sqlite3.connect(tmp, isolation_level=None)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
        problems = check.run(target)
        if problems:
            raise BackupError("the copy does not check out: " + "; ".join(problems[:5]))
        info = {"schema": migrations.current_version(target),
                "last_seq": changelog.last_seq(target)}
    except BaseException:
        target.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        source.close()
    target.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    dirfd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    info["bytes"] = os.path.getsize(dst)
    return info
