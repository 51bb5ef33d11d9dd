"""The stage contract: a plain class over a batch of clip records, testable without Ray.

A stage is built once per worker (models load in `__init__` or lazily on first use, once per actor),
then `process(records)` is called on batches. Records already rejected pass through untouched (in a
score-only run, records rejected only by a threshold keep being scored). Any exception on one clip
becomes a rejection `error:<stage>` with the message; a clip that overruns the stage's time limit
becomes `timeout:<stage>`. Wall and CPU seconds are charged to every record for the funnel."""

from __future__ import annotations

import ctypes
import fnmatch
import os
import resource
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from curation.media.ffmpeg import MediaError
from curation.engine.record import REJECTED, ClipRecord


class Params(BaseModel):
    """Base for a stage's manifest parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """What every stage needs besides its own params: run-wide settings, not thresholds."""

    weights_dir: str
    fps: float = 25.0
    audio_rate: int = 16000
    score_only: bool = False
    timeout_s: float = 600.0
    video: dict[str, Any] = field(default_factory=dict)  # the manifest's `video` section
    use_gpu: bool = False


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


# ---------------------------------------------------------------------------------------------------
# Fault injection, for testing the pipeline's fault handling on real workers (see docs/operations.md):
# CURATION_FAULTS="stage:action:match[;stage:action:match...]" makes `stage` do `action` on every clip whose
# key or source path contains `match` (a glob: `*` matches anything). Actions: raise (an exception), kill
# (SIGKILL its own worker, every time), kill_once (only the first time, across processes: a marker file in
# CURATION_FAULTS_DIR), hang (an endless Python loop), hang_native (blocked inside a C call, where no Python
# exception can reach it). Unset, nothing happens.

def _faults() -> list[tuple[str, str, str]]:
    spec = os.environ.get("CURATION_FAULTS", "")
    out = []
    for item in spec.split(";"):
        parts = item.split(":", 2)
        if len(parts) == 3 and all(parts):
            out.append((parts[0], parts[1], parts[2]))
    return out


def _inject_fault(stage: str, rec: ClipRecord) -> None:
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


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (ffmpeg subprocesses)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Stage:
    name: ClassVar[str] = "stage"
    Params: ClassVar[type[Params]] = Params
    # Weight files (names in curation.weights.REGISTRY) this stage needs with the given params;
    # checked at start-up so a missing file fails the run before any work, naming file and stage.
    uses_models: ClassVar[bool] = False  # True: run as a Ray actor pool (load once per actor)

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx

    @classmethod
    def required_weights(cls, params: Params) -> list[str]:
        return []

    # -- override one of these -------------------------------------------------------------------
    def process_one(self, rec: ClipRecord) -> ClipRecord | list[ClipRecord]:
        raise NotImplementedError

    def process_active(self, records: list[ClipRecord]) -> list[ClipRecord]:
        """Process the records this stage should see. Default: one by one, errors isolated per clip.
        Batched model stages override this (and must still isolate per-clip errors)."""
        out: list[ClipRecord] = []
        for rec in records:
            out.extend(self._guarded(rec))
        return out

    # -- machinery ---------------------------------------------------------------------------------
    def should_process(self, rec: ClipRecord) -> bool:
        if rec.status != REJECTED:
            return True
        return False

    def reject(self, rec: ClipRecord, reason: str, message: str | None = None) -> None:
        rec.reject(self.name, reason, message, score_only=self.ctx.score_only)

    def check(self, rec: ClipRecord, score: str, value: float | None, *, reason: str,
              min: float | None = None, max: float | None = None) -> bool:
        """Record `score` and reject with `reason` when it falls outside [min, max] (None = open)."""
        rec.scores[score] = None if value is None else float(value)
        ok = value is not None and (min is None or value >= min) and (max is None or value <= max)
        if not ok:
            bound = []
            if min is not None:
                bound.append(f">= {min:g}")
            if max is not None:
                bound.append(f"<= {max:g}")
            shown = "none" if value is None else f"{value:.4g}"
            self.reject(rec, reason, f"{score}={shown}, needs {' and '.join(bound)}")
        return ok

    # Set by the pipeline's Ray adapters: called with (record, reason, message) just before a worker that
    # is stuck in native code past its time limit kills itself, so the retry can reject the clip at once.
    on_hard_timeout: Callable[[ClipRecord, str, str], None] | None = None

    @contextmanager
    def time_limit(self, rec: ClipRecord):
        """Per-clip time limit (manifest `resources.timeout_s`), wherever the stage runs.

        On the main thread (Ray tasks) a SIGALRM raises StageTimeout in the stage's code; on another thread
        (Ray Data actors run the UDF in a worker thread) a watchdog raises it asynchronously in that thread.
        Either interrupts Python code and blocking reads; ffmpeg subprocesses also have their own deadlines
        (curation.media.ffmpeg). Code stuck inside a native call never sees the exception: when the pipeline has set
        `on_hard_timeout`, the watchdog records the verdict and kills the worker `hard_grace_s` later, and
        the retried batch rejects the clip as `timeout:<stage>` without running it again."""
        limit = self.ctx.timeout_s
        if not limit:
            _inject_fault(self.name, rec)
            yield
            return
        on_main = threading.current_thread() is threading.main_thread()
        msg = f"{self.name} took longer than {limit:g} s on {rec.key}"
        watch = _Watch()
        old = None
        if on_main:
            def _alarm(signum, frame):
                raise StageTimeout(msg)

            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, limit)
        hard = self.on_hard_timeout
        if not on_main or hard is not None:
            grace = hard_grace_s(limit)
            threading.Thread(target=_watchdog, name=f"watchdog-{self.name}", daemon=True,
                             args=(watch, threading.get_ident(), None if on_main else limit, limit + grace,
                                   hard, rec, f"timeout:{self.name}",
                                   f"{msg} (stuck in native code for {grace:g} s more: worker killed)")).start()
        try:
            _inject_fault(self.name, rec)
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

    def _guarded(self, rec: ClipRecord) -> list[ClipRecord]:
        try:
            with self.time_limit(rec):
                res = self.process_one(rec)
        except StageTimeout as e:
            rec.reject(self.name, f"timeout:{self.name}",
                       str(e) or f"{self.name} took longer than {self.ctx.timeout_s:g} s on {rec.key}")
            return [rec]
        except MediaError as e:  # ffmpeg could not read the clip, or ran past its own deadline
            reason = f"timeout:{self.name}" if e.reason.startswith("timeout:") else e.reason
            rec.reject(self.name, reason, str(e)[:2000])
            return [rec]
        except Exception as e:  # one bad clip never stops a run
            rec.reject(self.name, f"error:{self.name}", f"{type(e).__name__}: {e}"[:2000])
            rec.data.setdefault("tracebacks", {})[self.name] = traceback.format_exc(limit=6)[-4000:]
            return [rec]
        return res if isinstance(res, list) else [res]

    def process(self, records: list[ClipRecord]) -> list[ClipRecord]:
        active = [r for r in records if self.should_process(r)]
        passive = [r for r in records if not self.should_process(r)]
        if not active:
            return records
        w0, c0 = time.perf_counter(), cpu_seconds()
        try:
            out = self.process_active(active)
        except Exception as e:  # a batched stage that failed as a whole: reject the batch, go on
            msg = f"{type(e).__name__}: {e}"[:2000]
            for r in active:
                r.reject(self.name, f"error:{self.name}", msg)
            out = active
        wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        # Charge time to records in proportion to their duration (a source record: its whole length).
        total = sum(max(r.duration_s, 1e-3) for r in out) or 1.0
        for r in out:
            share = max(r.duration_s, 1e-3) / total
            t = r.timings.setdefault(self.name, [0.0, 0.0])
            t[0] += wall * share
            t[1] += cpu * share
        return out + passive

    def close(self) -> None:
        """Release models (called when a worker is done)."""
