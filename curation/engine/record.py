"""The clip record: what travels between stages (time spans, boxes, small arrays; never decoded video)."""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

CANDIDATE = "candidate"
KEPT = "kept"
REJECTED = "rejected"

def source_id_for(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def key_for(path: str, clip_index: int | None = None) -> str:
    """A WebDataset-safe key: no dots (webdataset splits extensions on the first dot), ASCII only."""
    stem = path.rstrip("/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:48] or "src"
    key = f"{stem}_{source_id_for(path)}"
    if clip_index is not None:
        key += f"_{clip_index:04d}"
    return key


@dataclass
class ClipRecord:
    """One candidate clip (or, before scene splitting, one source file).

    Times are seconds in the source's own timeline. `data` holds the small arrays stages hand to
    later stages (face track, person box, sync shift); `blobs` holds the encoded files the writer
    puts into the shard sample (mp4, wav, pose.npz)."""

    key: str
    source: str
    source_id: str
    audio_path: str | None = None
    clip_index: int | None = None  # None: still a source-level record
    n_siblings: int = 1  # candidate clips cut from the same source (for source completion)
    start_s: float | None = None
    end_s: float | None = None
    status: str = CANDIDATE
    stage: str | None = None
    reason: str | None = None
    message: str | None = None
    would_reject: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)  # numeric; None = not measured
    labels: dict[str, str | None] = field(default_factory=dict)  # string fields (a backend's name)
    data: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)  # stage -> [Ray node id, worker (actor id or task pid)]

    @classmethod
    def for_source(cls, path: str, audio_path: str | None = None) -> "ClipRecord":
        return cls(key=key_for(path), source=path, source_id=source_id_for(path), audio_path=audio_path)

    @property
    def duration_s(self) -> float:
        if self.start_s is None or self.end_s is None:
            return float(self.probe.get("duration_s") or 0.0)
        return max(0.0, self.end_s - self.start_s)

    @property
    def alive(self) -> bool:
        return self.status != REJECTED

    @property
    def is_source(self) -> bool:
        """A source-level record (before the scenes stage cut it into candidate clips)."""
        return self.clip_index is None

    def reject(self, stage: str, reason: str, message: str | None = None, would_only: bool = False) -> None:
        """Reject this clip. `would_only` (a threshold in a score-only run): only noted in `would_reject`.
        Stages reject through `Stage.check` / `Stage.reject`, which decide `would_only` from the declarations."""
        if would_only:
            self.would_reject.append(f"{stage}:{reason}")
            return
        if self.status == REJECTED:
            return
        self.status = REJECTED
        self.stage = stage
        self.reason = reason
        self.message = message

    def child(self, clip_index: int, n_siblings: int, start_s: float, end_s: float) -> "ClipRecord":
        """A candidate clip cut from this source record."""
        return ClipRecord(
            key=key_for(self.source, clip_index),
            source=self.source,
            source_id=self.source_id,
            audio_path=self.audio_path,
            clip_index=clip_index,
            n_siblings=n_siblings,
            start_s=start_s,
            end_s=end_s,
            probe=dict(self.probe),
            # Source-level scores (probe's) hold for every clip cut from the source: its checks were passed.
            scores=dict(self.scores),
            # The first child carries the source-level stages' time so the funnel sums it once.
            timings={k: list(v) for k, v in self.timings.items()} if clip_index == 0 else {},
            where={k: list(v) for k, v in self.where.items()},
        )

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(b: bytes) -> "ClipRecord":
        # Only ever records this pipeline serialised itself, passed between its own Ray workers.
        return pickle.loads(b)
