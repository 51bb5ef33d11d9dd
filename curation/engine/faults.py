"""Fault injection, for testing the pipeline's fault handling on real workers (see docs/operations.md).

CURATION_FAULTS="stage:action:match[;stage:action:match...]" makes `stage` do `action` on every clip whose
key or source path contains `match` (a glob: `*` matches anything). Actions: raise (an exception), kill
(SIGKILL its own worker, every time), kill_once (only the first time, across processes: a marker file in
CURATION_FAULTS_DIR), hang (an endless Python loop), hang_native (blocked inside a C call, where no Python
exception can reach it). Unset, nothing happens. Called by curation.engine.watchdog.time_limit."""

from __future__ import annotations

import ctypes
import fnmatch
import os
import signal
import tempfile
import time

from curation.engine.record import ClipRecord


def _faults() -> list[tuple[str, str, str]]:
    spec = os.environ.get("CURATION_FAULTS", "")
    out = []
    for item in spec.split(";"):
        parts = item.split(":", 2)
        if len(parts) == 3 and all(parts):
            out.append((parts[0], parts[1], parts[2]))
    return out


def inject_fault(stage: str, rec: ClipRecord) -> None:
    for st, action, match in _faults():
        if st != stage or not (fnmatch.fnmatchcase(rec.key, f"*{match}*") or fnmatch.fnmatchcase(rec.source, f"*{match}*")):
            continue
        if action == "raise":
            raise RuntimeError(f"injected fault in {stage} on {rec.key}")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "kill_once":
            d = os.environ.get("CURATION_FAULTS_DIR") or tempfile.gettempdir()
            marker = os.path.join(d, f"fault-{stage}-{rec.key}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang":  # slow Python code: short sleeps, so a pending exception gets in between
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                time.sleep(0.05)
        if action == "hang_native":  # lock a plain mutex twice: blocks in C, deaf to signals and async exceptions
            mutex = ctypes.create_string_buffer(64)
            libc = ctypes.CDLL(None)
            libc.pthread_mutex_lock(mutex)
            libc.pthread_mutex_lock(mutex)
