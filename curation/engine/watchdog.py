"""Per-clip time limits: a SIGALRM on the main thread, a watchdog thread elsewhere, and a hard kill of a worker
stuck in native code (the verdict recorded first, so a retry rejects the clip at once). Used by
`stages.base.Stage`; nothing here knows about any one stage."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from curation.engine.faults import inject_fault
from curation.engine.record import ClipRecord


class StageTimeout(BaseException):
    """A clip overran its stage's time limit. A BaseException, so that stage code catching Exception (a
    decoder fallback, say) does not swallow it."""


def hard_grace_s(limit: float) -> float:
    """How long past its time limit a clip stuck in native code may hold a worker before it is killed."""
    return min(max(10.0, 0.25 * limit), 120.0)


class _Watch:
    def __init__(self):
        self.done = False
        self.lock = threading.Lock()
        self.wake = threading.Event()


def _async_raise(thread_id: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def _checkpoint() -> None:
    """A Python-level call: the interpreter raises pending asynchronous exceptions at such points."""


def _watchdog(watch: _Watch, thread_id: int, soft_after: float | None, hard_after: float,
              on_hard: Callable | None, rec: ClipRecord, reason: str, message: str) -> None:
    t0 = time.monotonic()
    if soft_after is not None:
        if watch.wake.wait(soft_after):
            return
        with watch.lock:
            if watch.done:
                return
            _async_raise(thread_id, StageTimeout)
    if on_hard is None:
        return
    if watch.wake.wait(max(0.0, hard_after - (time.monotonic() - t0))):
        return
    with watch.lock:
        if watch.done:
            return
        try:
            on_hard(rec, reason, message)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def time_limit(stage: str, rec: ClipRecord, limit: float,
               on_hard: Callable[[ClipRecord, str, str], None] | None = None) -> Iterator[None]:
    """Per-clip time limit (manifest `resources.timeout_s`) for `stage` on `rec`, wherever the stage runs.

    On the main thread (Ray tasks) a SIGALRM raises StageTimeout in the stage's code; on another thread
    (Ray Data actors run the UDF in a worker thread) a watchdog raises it asynchronously in that thread.
    Either interrupts Python code and blocking reads; ffmpeg subprocesses also have their own deadlines
    (curation.media.ffmpeg). Code stuck inside a native call never sees the exception: when `on_hard` is set
    (by the pipeline), the watchdog records the verdict with it and kills the worker `hard_grace_s` later, and
    the retried batch rejects the clip as `timeout:<stage>` without running it again. The test-only fault
    injector (curation.engine.faults) runs inside the limit."""
    if not limit:
        inject_fault(stage, rec)
        yield
        return
    on_main = threading.current_thread() is threading.main_thread()
    msg = f"{stage} took longer than {limit:g} s on {rec.key}"
    watch = _Watch()
    old = None
    if on_main:
        def _alarm(signum, frame):
            raise StageTimeout(msg)

        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    if not on_main or on_hard is not None:
        grace = hard_grace_s(limit)
        threading.Thread(target=_watchdog, name=f"watchdog-{stage}", daemon=True,
                         args=(watch, threading.get_ident(), None if on_main else limit, limit + grace,
                               on_hard, rec, f"timeout:{stage}",
                               f"{msg} (stuck in native code for {grace:g} s more: worker killed)")).start()
    try:
        inject_fault(stage, rec)
        yield
    finally:
        watch.done = True  # a plain store: cannot itself be interrupted by a pending async StageTimeout
        watch.wake.set()
        if on_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        with watch.lock:  # the watchdog checks `done` under this lock: after it, nothing more is raised
            pass
        _checkpoint()  # an exception injected just before `done` is raised here, inside this block
