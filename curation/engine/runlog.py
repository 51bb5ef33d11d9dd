"""Run records: each run's start and end written into the audit, and a directory's run status read from them.

    DIR/audit/starts.jsonl   one line when a run starts (after the pre-flight, once the output exists):
                             run_id, started (epoch s), the last committed part at that moment, argv
    DIR/audit/runs.jsonl     one line when a run ends: run_id, started, ended, wall_s, last_part (the number
                             of the last committed part, None before any) and n_parts, plus what the
                             pipeline adds (sources, manifest, address, argv)

A directory's status comes from these records and the commit log alone, never from file modification times,
so a copy (`cp -r`, a sync to or from a bucket) reports exactly as the original: "finished" when the latest
start has its end record, the end names the last committed part, and no file of an unfinished commit is
there; otherwise "in progress or interrupted"."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass

from curation.engine.output import PART_RE, OutputDir

STARTS = "starts.jsonl"
RUNS = "runs.jsonl"


def _append(out: OutputDir, name: str, rec: dict) -> None:
    """One line into audit/NAME, local or on an object store (curation.engine.output.Store)."""
    out.store.append_line(f"audit/{name}", json.dumps(rec, default=str))


def _read(out: OutputDir, name: str) -> list[dict]:
    rel = f"audit/{name}"
    if not out.store.exists(rel):
        return []
    out_ = []
    for line in out.store.read(rel).decode("utf-8", errors="replace").splitlines():
        try:
            out_.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out_


def _last_part(out: OutputDir) -> tuple[int | None, int]:
    parts = out.committed_parts()
    return (parts[-1] if parts else None), len(parts)


@dataclass
class Run:
    out: OutputDir
    run_id: str
    started: float

    def end(self, fields: dict | None = None) -> dict:
        """Record the end of this run: its last commit and whatever the caller adds (sources, manifest...)."""
        last, n = _last_part(self.out)
        now = time.time()
        rec = {"run_id": self.run_id, "started": self.started, "ended": now, "wall_s": now - self.started,
               **(fields or {}), "last_part": last, "n_parts": n}
        _append(self.out, RUNS, rec)
        return rec


def begin(out: OutputDir, started: float | None = None, n_sources: int | None = None) -> Run:
    """Record the start of a run into `out` (which exists). Also hands the output to the terminal display
    (curation.report.progress), which from now on sends every library's log line to DIR/logs/run.log."""
    from curation.report import progress

    run = Run(out, uuid.uuid4().hex[:16], time.time() if started is None else started)
    last, _ = _last_part(out)
    _append(out, STARTS, {"run_id": run.run_id, "started": run.started, "last_part_before": last,
                                  "pid": os.getpid(), "argv": sys.argv})
    # an output on an object store keeps its log in the local cache of that output (curation.engine.output)
    from curation.engine.output import _cache_dir

    progress.output_ready(_cache_dir(out.uri) if out.remote else out.root, n_sources)
    return run


@dataclass
class Status:
    finished: bool
    text: str  # "finished" or "in progress or interrupted"
    why: str  # one sentence
    last_run: dict | None


def status(out: OutputDir) -> Status:
    """The run status of an output directory, from the run records and the commit log (no mtimes)."""
    starts = _read(out, STARTS)
    ends = _read(out, RUNS)
    last, n = _last_part(out)
    committed = set(out.committed_parts())
    pending = [n for d in ("shards", "audit/parts", "audit", "") for n in out.store.list(d) if n.endswith(".tmp")]
    uncommitted = [n for n in out.store.list("audit/parts") if n.startswith("clips-")
                   and (m := PART_RE.match(n)) and int(m.group(2)) not in committed]
    end = ends[-1] if ends else None

    def no(why: str) -> Status:
        return Status(False, "in progress or interrupted", why, end)

    if pending or uncommitted:
        return no(f"files of an unfinished commit are present ({len(pending)} temporary, {len(uncommitted)} "
                  "uncommitted parts)")
    if end is None:
        return no("no run has recorded its end" + (" yet" if starts else ""))
    if starts and starts[-1].get("run_id") != end.get("run_id"):
        return no("the latest run started and has not recorded its end")
    if "last_part" in end and (end["last_part"] != last or end.get("n_parts", n) != n):
        return no(f"parts were committed after the last recorded end (part {last} on disk, {end['last_part']} "
                  "at the end)")
    return Status(True, "finished", f"the last run ended with part {last} committed", end)
