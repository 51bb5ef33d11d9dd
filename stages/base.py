"""The stage contract: a plain class over a batch of clip records, testable without Ray.

A stage is built once per worker; `setup()` (load models) runs once per instance, before its first clip;
then `process(records)` is called on batches. Records already rejected pass through untouched (in a
score-only run, records rejected only by a threshold keep being scored). Any exception on one clip becomes a
rejection `error:<stage>` with the message; a clip that overruns the stage's time limit becomes
`timeout:<stage>`. Wall and CPU seconds are charged to every record for the funnel.

Decisions are declared, never written as code: a stage's `Params.checks` lists every check (score, the
params key holding the bound, min / max / max_abs, the reason, threshold or hard); `Stage.check(rec, score,
value)` records the score and runs the checks declared on it. Rejections that are not a bound on a score
(nothing decodable, no video stream) are the stage's `hard_reasons`, each documented; `Stage.reject` accepts
no other reason. A threshold is only noted (`would_reject`) in a `--score-only` run; a hard rejection always
applies. `curation.engine.thresholds` writes all of it to `audit/thresholds.json` for the report."""

from __future__ import annotations

import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from curation.engine.record import REJECTED, ClipRecord
from curation.engine.watchdog import StageTimeout, time_limit
from curation.media.ffmpeg import MediaError

Direction = Literal["min", "max", "max_abs"]


@dataclass(frozen=True)
class Check:
    """One declared decision: reject with `reason` when the score `score` is below (min), above (max) or,
    in absolute value, above (max_abs) the value of the params field `key`. A bound of None is not applied
    (the score is recorded only). `hard`: a hard rejection, applied in a score-only run too. `when`: the
    check applies only when these params fields have these values (e.g. one bound per backend)."""

    score: str
    key: str
    direction: Direction
    reason: str
    doc: str = ""
    hard: bool = False
    when: tuple[tuple[str, Any], ...] = ()
    unless: str = ""  # a recorded score that, when 1 (true), passes the clip whatever its value (a second vote)

    def applies(self, params: BaseModel) -> bool:
        return all(getattr(params, k) == v for k, v in self.when)

    def bound(self, params: BaseModel) -> float | None:
        v = getattr(params, self.key)
        return None if v is None else float(v)

    def passes(self, value: float | None, bound: float) -> bool:
        if value is None:  # not measurable: a decision cannot pass on it
            return False
        if self.direction == "min":
            return value >= bound
        if self.direction == "max":
            return value <= bound
        return abs(value) <= bound

    def needs(self, bound: float) -> str:
        return {"min": f">= {bound:g}", "max": f"<= {bound:g}",
                "max_abs": f">= {-bound:g} and <= {bound:g}"}[self.direction]


class Params(BaseModel):
    """Base for a stage's manifest parameters: unknown keys are errors. `checks`: the stage's decisions."""

    model_config = ConfigDict(extra="forbid")
    checks: ClassVar[tuple[Check, ...]] = ()

    @classmethod
    def validate_checks(cls) -> None:
        """Every declared check names a params field (called by the tests and by the thresholds table)."""
        for c in cls.checks:
            if c.key not in cls.model_fields:
                raise TypeError(f"{cls.__name__}: check on {c.score} names params key {c.key!r}, which does not exist")
            for k, _ in c.when:
                if k not in cls.model_fields:
                    raise TypeError(f"{cls.__name__}: check on {c.score}: `when` names unknown key {k!r}")


# Every stage may reject with these; they are documented once here.
GENERIC_HARD_REASONS: dict[str, str] = {
    "unreadable": "the media could not be decoded (ffmpeg or the decoder failed, or no frame came out)",
    "too_large": "the source's frames are too large to decode within the stage's memory request (resources.memory_gb)",
    "error:{stage}": "the stage raised an exception on this clip (message and traceback in the audit)",
    "timeout:{stage}": "the clip overran the stage's per-clip time limit (resources.timeout_s)",
}


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


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (ffmpeg subprocesses)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Stage:
    name: ClassVar[str] = "stage"
    Params: ClassVar[type[Params]] = Params
    uses_models: ClassVar[bool] = False  # True: run as a Ray actor pool (load once per actor)
    # Declared outputs besides the checks (`Params.checks`): rejection reasons that are no bound on a score
    # (on top of GENERIC_HARD_REASONS), numeric scores recorded without a bound, and string fields (labels).
    hard_reasons: ClassVar[dict[str, str]] = {}
    records: ClassVar[dict[str, str]] = {}
    labels: ClassVar[dict[str, str]] = {}

    def __init__(self, params: Params, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self._set_up = False

    @classmethod
    def required_weights(cls, params: Params) -> list[str]:
        """Weight files (names in curation.weights.REGISTRY) this stage needs with the given params; checked
        at start-up so a missing file fails the run before any work, naming file and stage."""
        return []

    def weight(self, name: str) -> str:
        """The path of weight file `name` (curation.weights.REGISTRY) in the run's weights directory."""
        from curation.weights import resolve

        return str(resolve(name, self.ctx.weights_dir, stage=self.name))

    # -- override these ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models: called once per stage instance (one Ray actor), before its first clip."""

    def process_one(self, rec: ClipRecord) -> ClipRecord | list[ClipRecord]:
        raise NotImplementedError

    def process_active(self, records: list[ClipRecord]) -> list[ClipRecord]:
        """Process the records this stage should see. Default: one by one, errors isolated per clip.
        Batched model stages override this (and must still isolate per-clip errors)."""
        out: list[ClipRecord] = []
        for rec in records:
            out.extend(self._guarded(rec))
        return out

    # -- decisions -----------------------------------------------------------------------------------
    def ensure_setup(self) -> None:
        if not self._set_up:
            self.setup()
            self._set_up = True

    def should_process(self, rec: ClipRecord) -> bool:
        return rec.status != REJECTED

    @classmethod
    def hard_reason_names(cls) -> dict[str, str]:
        """Every hard reason of this stage, generic ones with the stage's name filled in."""
        out = {k.format(stage=cls.name): v for k, v in GENERIC_HARD_REASONS.items()}
        out.update(cls.hard_reasons)
        return out

    def reject(self, rec: ClipRecord, reason: str, message: str | None = None) -> None:
        """A hard rejection (no bound on a score): `reason` must be one of the stage's declared hard reasons."""
        if reason not in self.hard_reason_names():
            raise ValueError(f"stage {self.name}: reason {reason!r} is neither a declared check nor a hard reason")
        rec.reject(self.name, reason, message)

    def check(self, rec: ClipRecord, score: str, value: float | None) -> bool:
        """Record the numeric `score` (None: not measurable) and run the checks declared on it in `Params.checks`;
        the first failing one rejects (a threshold is only noted in a score-only run). True when all pass."""
        rec.scores[score] = None if value is None else float(value)
        decl = [c for c in self.Params.checks if c.score == score]
        if not decl:
            raise KeyError(f"stage {self.name}: no check declared on score {score!r} (Params.checks)")
        ok = True
        for c in decl:
            if not c.applies(self.params) or (c.unless and rec.scores.get(c.unless)):
                continue
            bound = c.bound(self.params)
            if bound is None or c.passes(rec.scores[score], bound):
                continue
            ok = False
            shown = "none" if value is None else f"{value:.4g}"
            rec.reject(self.name, c.reason, f"{score}={shown}, needs {c.needs(bound)}",
                       would_only=self.ctx.score_only and not c.hard)
        return ok

    def record(self, rec: ClipRecord, score: str, value: float | None) -> None:
        """Record a numeric score that no check bounds (declared in `records`); None: not measured."""
        if score not in self.records:
            raise KeyError(f"stage {self.name}: score {score!r} is not declared in {type(self).__name__}.records")
        rec.scores[score] = None if value is None else float(value)

    def label(self, rec: ClipRecord, name: str, value: str | None) -> None:
        """Record a string field (declared in `labels`), kept apart from the numeric scores."""
        if name not in self.labels:
            raise KeyError(f"stage {self.name}: label {name!r} is not declared in {type(self).__name__}.labels")
        rec.labels[name] = value

    # -- machinery -----------------------------------------------------------------------------------
    # Set by the pipeline's Ray adapters: called with (record, reason, message) just before a worker that
    # is stuck in native code past its time limit kills itself, so the retry can reject the clip at once.
    on_hard_timeout: Callable[[ClipRecord, str, str], None] | None = None

    def time_limit(self, rec: ClipRecord):
        """Per-clip time limit (manifest `resources.timeout_s`): see curation.engine.watchdog.time_limit."""
        return time_limit(self.name, rec, self.ctx.timeout_s, self.on_hard_timeout)

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
            self.ensure_setup()  # inside the guard: models that fail to load reject the batch, the run goes on
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
