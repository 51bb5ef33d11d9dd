"""audit/thresholds.json: every decision a run's manifest makes, as the stages declare it.

Written at the start of every run (from the validated manifest, before any clip), read by the report, which
so knows every threshold, its stage and its direction without guessing from names. Three tables:

  thresholds    one row per check in force: stage, score, key (the params field), bound, direction
                (min: reject below; max: reject above; max_abs: reject when |score| is above), reason,
                hard (true: applied in a --score-only run too), doc. Checks whose bound is null (recorded
                only) or whose `when` does not match the params are left out.
  hard_reasons  one row per rejection reason that is no bound on a score: stage, reason, doc (including
                `unreadable`, `error:<stage>` and `timeout:<stage>` for every stage, and `error:pipeline`
                for a source whose batches Ray lost twice).
  scores        one row per column a stage records: stage, score, type ("number" or "label"), doc.

Every rejection reason in audit/clips.parquet is a `thresholds` or a `hard_reasons` row of its stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.engine.config import Manifest
from curation.engine.output import OutputDir

FILE = "thresholds.json"

PIPELINE_HARD_REASONS = {
    "error:pipeline": "Ray lost the source's batches twice (workers died) and no stage could be blamed",
}


def table(manifest: Manifest) -> dict[str, list[dict[str, Any]]]:
    """The three tables for the manifest's enabled stages, in pipeline order."""
    from stages import stage_class  # local: stages import the engine

    thresholds, hard, scores = [], [], []
    for spec in manifest.enabled_stages():
        cls = stage_class(spec.name)
        params = manifest.params(spec.name)
        seen: set[str] = set()
        for c in cls.Params.checks:
            if c.score not in seen:
                seen.add(c.score)
                scores.append({"stage": spec.name, "score": c.score, "type": "number", "doc": c.doc})
            bound = c.bound(params)
            if bound is None or not c.applies(params):
                continue
            thresholds.append({"stage": spec.name, "score": c.score, "key": c.key, "bound": bound,
                               "direction": c.direction, "reason": c.reason, "hard": c.hard, "doc": c.doc})
        for name, doc in cls.records.items():
            scores.append({"stage": spec.name, "score": name, "type": "number", "doc": doc})
        for name, doc in cls.labels.items():
            scores.append({"stage": spec.name, "score": name, "type": "label", "doc": doc})
        for reason, doc in cls.hard_reason_names().items():
            hard.append({"stage": spec.name, "reason": reason, "doc": doc})
    for reason, doc in PIPELINE_HARD_REASONS.items():
        hard.append({"stage": "pipeline", "reason": reason, "doc": doc})
    return {"thresholds": thresholds, "hard_reasons": hard, "scores": scores}


def write(out: OutputDir, manifest: Manifest) -> Path:
    """Write audit/thresholds.json of an output directory (atomically)."""
    p = out.audit / FILE
    out.write_atomic(p, (json.dumps(table(manifest), indent=2) + "\n").encode())
    return p


def read(audit_dir: str | Path) -> dict[str, list[dict[str, Any]]] | None:
    """The tables of a run's audit directory; None when it has none (made before thresholds.json existed)."""
    p = Path(audit_dir) / FILE
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def unexplained(clips, tables: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """(stage, reason) pairs of rejected clip rows that are neither a threshold nor a hard reason of their stage
    (empty for a consistent run)."""
    known = {(r["stage"], r["reason"]) for r in tables["thresholds"]}
    known |= {(r["stage"], r["reason"]) for r in tables["hard_reasons"]}
    rej = clips[clips["status"] == "rejected"]
    pairs = set(zip(rej["stage"].astype(str), rej["reason"].astype(str)))
    if "would_reject" in clips:
        for v in clips["would_reject"].dropna():
            for item in str(v).split(";"):
                st, _, reason = item.partition(":")
                pairs.add((st, reason))
    return sorted(p for p in pairs if p not in known)
