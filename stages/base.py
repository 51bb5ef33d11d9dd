"""The stage contract: a plain class over a batch of clip records, testable without Ray.

A stage is built once per worker (models load in `__init__` or lazily on first use, once per actor),
then `process(records)` is called on batches. Records already rejected pass through untouched (in a
score-only run, records rejected only by a threshold keep being scored). Any exception on one clip
becomes a rejection `error:<stage>` with the message; a clip that overruns the stage's time limit
becomes `timeout:<stage>`. Wall and CPU seconds are charged to every record for the funnel."""

from __future__ import annotations

import resource
import signal
import threading
import time
from contextlib import contextmanager
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from curation.record import REJECTED, ClipRecord


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


class StageTimeout(Exception):
    pass


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

    @contextmanager
    def time_limit(self, rec: ClipRecord):
        """Per-clip time limit (manifest `resources.timeout_s`). Subprocesses get their own timeouts;
        this alarm covers in-process work where the stage runs on the main thread (Ray workers do)."""
        limit = self.ctx.timeout_s
        if not limit or threading.current_thread() is not threading.main_thread():
            yield
            return

        def _alarm(signum, frame):
            raise StageTimeout(f"{self.name} took longer than {limit:g} s on {rec.key}")

        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def _guarded(self, rec: ClipRecord) -> list[ClipRecord]:
        try:
            with self.time_limit(rec):
                res = self.process_one(rec)
        except StageTimeout as e:
            rec.reject(self.name, f"timeout:{self.name}", str(e))
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
