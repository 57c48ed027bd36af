"""Idempotency keys: unique, and never handed out again by another process — a box
restored from an old backup, or a forked child — since the upstream dedupes on them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from store import outbox

KEY = re.compile(r"site-1-mp-([0-9a-f]{12})-([1-9][0-9]*)")


def test_keys_are_unique_and_share_the_run():
    keys = [outbox.new_key("site-1", "mp") for _ in range(10_000)]
    assert len(set(keys)) == len(keys)
    parts = [KEY.fullmatch(k) for k in keys]
    assert all(parts)
    assert len({m.group(1) for m in parts}) == 1          # one run id: compresses away
    counters = [int(m.group(2)) for m in parts]
    assert counters == sorted(counters)


def test_another_process_never_repeats_a_key():
    # What a restore from backup amounts to: the same database, a new process.
    code = "from store import outbox; print(outbox.new_key('site-1', 'mp'))"
    runs = {KEY.fullmatch(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                         text=True, check=True).stdout.strip()).group(1)
            for _ in range(3)}
    runs.add(KEY.fullmatch(outbox.new_key("site-1", "mp")).group(1))
    assert len(runs) == 4


def test_a_forked_child_gets_its_own_run():
    parent = outbox.new_key("site-1", "mp")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        os.write(w, outbox.new_key("site-1", "mp").encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 200).decode()
    os.close(r)
    assert KEY.fullmatch(child).group(1) != KEY.fullmatch(parent).group(1)
